//! The Authenticode digest of a PE image, as UEFI firmware computes it before it starts an
//! image and measures it into PCR 4 (edk2 `MeasureBootPeCoff.c`, `Tcg2MeasurePeImage`): the
//! file hashed without its checksum and certificate-table fields, the sections in file order,
//! then whatever follows them except the certificate table. No padding is added (systemd's
//! and sbsign's own digests pad to 8 bytes; the firmware's does not).

use crate::pcr::Sha256Digest;
use crate::pe::{self, DIR_SECURITY};
use sha2::{Digest as _, Sha256};

/// Why a file has no Authenticode digest.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    NotPe(String),
    #[error("PE image truncated: {0}")]
    Truncated(String),
}

impl From<pe::PeError> for PeError {
    fn from(e: pe::PeError) -> PeError {
        match e {
            pe::PeError::Truncated { .. } | pe::PeError::SectionOutOfFile { .. } => {
                PeError::Truncated(e.to_string())
            }
            _ => PeError::NotPe(e.to_string()),
        }
    }
}

fn range(b: &[u8], start: usize, end: usize) -> Result<&[u8], PeError> {
    b.get(start..end)
        .ok_or_else(|| PeError::Truncated(format!("bytes {start:#x}..{end:#x} of {:#x}", b.len())))
}

/// The SHA-256 Authenticode digest of the PE file `pe`, edk2's way.
pub fn sha256(pe: &[u8]) -> Result<Sha256Digest, PeError> {
    let image = pe::parse(pe)?;
    let checksum_at = image.checksum_offset();
    let headers = image.size_of_headers as usize;

    let mut h = Sha256::new();
    h.update(range(pe, 0, checksum_at)?);
    match image.directory_offset(DIR_SECURITY) {
        None => h.update(range(pe, checksum_at + 4, headers)?),
        Some(cert_dir_at) => {
            h.update(range(pe, checksum_at + 4, cert_dir_at)?);
            h.update(range(pe, cert_dir_at + 8, headers)?);
        }
    }
    let mut sum = headers;
    let mut spans: Vec<(usize, usize)> = image
        .sections
        .iter()
        .map(|s| (s.raw_offset as usize, s.raw_size as usize))
        .collect();
    // edk2 sorts by PointerToRawData with a stable insertion sort.
    spans.sort_by_key(|&(ptr, _)| ptr);
    for (ptr, size) in spans.into_iter().filter(|&(_, size)| size > 0) {
        h.update(range(pe, ptr, ptr + size)?);
        sum += size;
    }
    if pe.len() > sum {
        let cert_size = image.security.1 as usize;
        if pe.len() < sum + cert_size {
            return Err(PeError::Truncated(format!(
                "the certificate table ({cert_size} B) does not fit after the sections"
            )));
        }
        h.update(range(pe, sum, pe.len() - cert_size)?);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PE32+ image with two sections and `tail` bytes after them.
    fn synth(tail: &[u8]) -> Vec<u8> {
        let mut pe = vec![0u8; 0x400];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        pe[0x86..0x88].copy_from_slice(&2u16.to_le_bytes());
        pe[0x94..0x96].copy_from_slice(&240u16.to_le_bytes());
        let opt = 0x98;
        pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        pe[opt + 60..opt + 64].copy_from_slice(&0x200u32.to_le_bytes());
        pe[opt + 64..opt + 68].copy_from_slice(&0xdeadbeefu32.to_le_bytes());
        pe[opt + 108..opt + 112].copy_from_slice(&16u32.to_le_bytes());
        let table = opt + 240;
        // Section table order is the reverse of file order: the digest sorts them.
        for (i, ptr) in [0x300u32, 0x200].iter().enumerate() {
            let at = table + i * 40;
            pe[at..at + 8].copy_from_slice(format!(".s{i}\0\0\0\0\0").as_bytes());
            pe[at + 16..at + 20].copy_from_slice(&0x100u32.to_le_bytes());
            pe[at + 20..at + 24].copy_from_slice(&ptr.to_le_bytes());
        }
        for (i, b) in pe[0x200..0x400].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        pe.extend_from_slice(tail);
        pe
    }

    #[test]
    fn skips_checksum_and_certificate_directory() {
        let pe = synth(b"tail");
        let d = sha256(&pe).unwrap();
        // The same bytes hashed by hand, the edk2 way.
        let opt = 0x98;
        let cert = opt + 112 + 32;
        let mut h = Sha256::new();
        h.update(&pe[..opt + 64]);
        h.update(&pe[opt + 68..cert]);
        h.update(&pe[cert + 8..0x200]);
        h.update(&pe[0x200..0x300]);
        h.update(&pe[0x300..0x400]);
        h.update(b"tail");
        assert_eq!(d, <[u8; 32]>::from(h.finalize()));
        // Checksum and certificate directory do not count; any other header byte does.
        let mut other = pe.clone();
        other[opt + 64] ^= 0xff;
        other[cert] ^= 0xff;
        assert_eq!(sha256(&other).unwrap(), d);
        other[opt + 70] ^= 1;
        assert_ne!(sha256(&other).unwrap(), d);
    }

    #[test]
    fn certificate_table_is_left_out() {
        let mut pe = synth(b"tailCERTCERT");
        let cert = 0x98 + 112 + 32;
        pe[cert + 4..cert + 8].copy_from_slice(&8u32.to_le_bytes());
        let with_cert = sha256(&pe).unwrap();
        assert_eq!(with_cert, sha256(&synth(b"tail")).unwrap());
        pe[cert + 4..cert + 8].copy_from_slice(&100u32.to_le_bytes());
        assert!(matches!(sha256(&pe), Err(PeError::Truncated(_))));
    }

    #[test]
    fn refuses_what_is_not_pe() {
        assert!(matches!(sha256(b"hello"), Err(PeError::NotPe(_))));
        let mut pe = synth(b"");
        pe[0x80] = b'X';
        assert!(matches!(sha256(&pe), Err(PeError::NotPe(_))));
        assert!(matches!(
            sha256(&pe[..0x90]),
            Err(PeError::NotPe(_)) | Err(PeError::Truncated(_))
        ));
    }
}
