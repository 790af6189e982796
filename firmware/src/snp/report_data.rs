//! How a caller's nonce is bound into an attestation report: the one convention both sides
//! use (`plinth-guest attest --nonce` puts it into its request, `plinth attest verify
//! --nonce` checks it).
//!
//! The nonce is 1 to 64 bytes; REPORT_DATA (the 64 bytes a guest puts into its report
//! request, which the AMD firmware signs with the rest of the report) is the nonce followed
//! by zero bytes up to 64. Zero padding makes `ab` and `ab00` the same nonce: a verifier
//! should pick 32 or more random bytes, as freshness rests on the nonce being unguessable.

/// The longest nonce: all of REPORT_DATA.
pub const MAX_NONCE_LEN: usize = 64;

/// A nonce that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("the nonce is empty: expected 1 to {MAX_NONCE_LEN} bytes (2 to 128 hex digits)")]
    Empty,
    #[error("the nonce is {len} bytes: expected at most {MAX_NONCE_LEN} (128 hex digits)")]
    TooLong { len: usize },
    #[error("the nonce `{text}` is not hex: expected an even number of hex digits (0-9, a-f), e.g. `$(openssl rand -hex 32)`")]
    NotHex { text: String },
}

/// REPORT_DATA for `nonce`: the nonce, zero-padded to 64 bytes.
pub fn report_data(nonce: &[u8]) -> Result<[u8; 64], NonceError> {
    if nonce.is_empty() {
        return Err(NonceError::Empty);
    }
    if nonce.len() > MAX_NONCE_LEN {
        return Err(NonceError::TooLong { len: nonce.len() });
    }
    let mut data = [0u8; 64];
    data[..nonce.len()].copy_from_slice(nonce);
    Ok(data)
}

/// A nonce given as hex on a command line, checked for length.
pub fn parse_nonce_hex(text: &str) -> Result<Vec<u8>, NonceError> {
    let nonce = hex::decode(text.trim()).map_err(|_| NonceError::NotHex {
        text: text.to_string(),
    })?;
    report_data(&nonce)?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_zero_padded() {
        let data = report_data(&[0xab, 0xcd]).unwrap();
        assert_eq!(&data[..2], &[0xab, 0xcd]);
        assert!(data[2..].iter().all(|&b| b == 0));
        assert_eq!(report_data(&[7; 64]).unwrap(), [7; 64]);
        assert_eq!(report_data(&[]), Err(NonceError::Empty));
        assert_eq!(report_data(&[0; 65]), Err(NonceError::TooLong { len: 65 }));
        assert_eq!(parse_nonce_hex("abcd").unwrap(), [0xab, 0xcd]);
        assert!(matches!(
            parse_nonce_hex("xyz"),
            Err(NonceError::NotHex { .. })
        ));
        assert!(matches!(
            parse_nonce_hex(&"00".repeat(65)),
            Err(NonceError::TooLong { len: 65 })
        ));
    }
}
