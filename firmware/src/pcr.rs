//! PCR arithmetic in the SHA-256 bank: `PCR = sha256(PCR || digest)` from 32 zero bytes, and
//! digests written as lower-case hex.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest or PCR value.
pub type Sha256Digest = [u8; 32];

/// sha256 of `data`.
pub fn digest(data: &[u8]) -> Sha256Digest {
    Sha256::digest(data).into()
}

/// `pcr` extended with `digest`.
pub fn extend(pcr: Sha256Digest, digest: &Sha256Digest) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

/// The PCR value after extending, from zero, with each digest in turn.
pub fn replay<'a>(digests: impl IntoIterator<Item = &'a Sha256Digest>) -> Sha256Digest {
    digests.into_iter().fold([0; 32], extend)
}

/// `text` as UTF-16LE, as UEFI measures names and command lines (no NUL added).
pub fn utf16le(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// A digest from 64 hex digits; `None` for anything else.
pub fn from_hex(text: &str) -> Option<Sha256Digest> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_and_hex() {
        // sha256(32 zero bytes || sha256("")) is what any TPM gives for this extend.
        let e = extend([0; 32], &digest(b""));
        assert_eq!(e, replay([&digest(b"")]));
        assert_eq!(from_hex(&hex::encode(e)), Some(e));
        assert_eq!(from_hex("00"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
