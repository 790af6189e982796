//! Reading an SEV-SNP attestation report (SEV-SNP ABI specification 56860, "ATTESTATION_REPORT
//! Structure"): 1184 bytes, as raw binary or as hex text, parsed by the `sev` crate and kept
//! with its original bytes, over which the signature is checked.

use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;
use std::path::Path;

/// The size of a report.
pub const REPORT_LEN: usize = 1184;
/// The signature covers bytes 0 to 0x29F (ABI spec 56860: "SIGNATURE ... of bytes 0h to
/// 29Fh inclusive of this report").
pub const SIGNED_LEN: usize = 0x2a0;
/// Where the signature starts: R (72 bytes, little-endian), then S (72), then reserved.
pub const SIGNATURE_OFFSET: usize = 0x2a0;
/// The length of each signature component; P-384 uses the low 48 bytes.
pub const SIGNATURE_COMPONENT_LEN: usize = 72;
const CPUID_FAMILY_OFFSET: usize = 0x188;
const CPUID_MODEL_OFFSET: usize = 0x189;
const CHIP_ID: std::ops::Range<usize> = 0x1a0..0x1e0;

/// A report that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{origin}: cannot read: {source}")]
    Io {
        origin: String,
        source: std::io::Error,
    },
    #[error("{origin}: {len} bytes: expected an SEV-SNP attestation report, {REPORT_LEN} bytes of binary or {} hex digits\n  hint: plinth-guest attest writes it as report.bin", REPORT_LEN * 2)]
    Length { origin: String, len: usize },
    #[error("{origin}: report version {version}: expected 2 or later (versions 0 and 1 predate SEV-SNP's released ABI)")]
    Version { origin: String, version: u32 },
    #[error("{origin}: a version 2 report with the chip id masked (all zero): its processor generation, hence its TCB layout, cannot be told\n  hint: launch without MASK_CHIP_ID, or request the report from firmware that writes version 3 reports")]
    MaskedChipId { origin: String },
    #[error("{origin}: CPU family {family:#04x} model {model:#04x}: not a processor with SEV-SNP that this plinth knows")]
    UnknownCpu {
        origin: String,
        family: u8,
        model: u8,
    },
    #[error("{origin}: not an SEV-SNP attestation report: {message}")]
    Parse { origin: String, message: String },
}

/// Which key signed a report (the report's SIGNING_KEY field, KEY_INFO bits 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    Vcek,
    Vlek,
    /// 7: the report is not signed.
    None,
    /// Reserved values (2 to 6).
    Reserved(u32),
}

/// A parsed report with its original bytes.
#[derive(Debug, Clone)]
pub struct Report {
    bytes: Vec<u8>,
    /// The fields, as the `sev` crate parses them.
    pub parsed: AttestationReport,
}

impl Report {
    /// Read a report file (binary or hex).
    pub fn read(path: &Path) -> Result<Report, ReportError> {
        let origin = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| ReportError::Io {
            origin: origin.clone(),
            source,
        })?;
        Report::from_bytes(&data, &origin)
    }

    /// A report from `data`: exactly [`REPORT_LEN`] bytes of binary, or that many bytes as hex
    /// text (whitespace ignored). `origin` names it in errors.
    pub fn from_bytes(data: &[u8], origin: &str) -> Result<Report, ReportError> {
        let bytes = if data.len() == REPORT_LEN {
            data.to_vec()
        } else {
            from_hex(data).ok_or_else(|| ReportError::Length {
                origin: origin.to_string(),
                len: data.len(),
            })?
        };
        if bytes.len() != REPORT_LEN {
            return Err(ReportError::Length {
                origin: origin.to_string(),
                len: bytes.len(),
            });
        }
        check_decodable(&bytes, origin)?;
        let parsed = AttestationReport::from_bytes(&bytes).map_err(|e| ReportError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        Ok(Report { bytes, parsed })
    }

    /// All 1184 bytes as read.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.bytes[..SIGNED_LEN]
    }

    /// The signature's R and S, each [`SIGNATURE_COMPONENT_LEN`] little-endian bytes.
    pub fn signature_components(&self) -> (&[u8], &[u8]) {
        let r = SIGNATURE_OFFSET..SIGNATURE_OFFSET + SIGNATURE_COMPONENT_LEN;
        let s = r.end..r.end + SIGNATURE_COMPONENT_LEN;
        (&self.bytes[r], &self.bytes[s])
    }

    /// CPUID family and model (reports of version 3 and later carry them).
    pub fn cpuid(&self) -> Option<(u8, u8)> {
        Some((self.parsed.cpuid_fam_id?, self.parsed.cpuid_mod_id?))
    }

    /// Which key the report says signed it.
    pub fn signing_key(&self) -> SigningKey {
        match self.parsed.key_info.signing_key() {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            n => SigningKey::Reserved(n),
        }
    }
}

/// The bytes of hex text, if `data` is hex digits and whitespace only.
fn from_hex(data: &[u8]) -> Option<Vec<u8>> {
    let digits: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    hex::decode(digits).ok()
}

/// Refuse, with a precise reason, what the `sev` crate's parser would refuse with a vague one.
fn check_decodable(bytes: &[u8], origin: &str) -> Result<(), ReportError> {
    let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if version < 2 {
        return Err(ReportError::Version {
            origin: origin.to_string(),
            version,
        });
    }
    if version == 2 {
        if bytes[CHIP_ID].iter().all(|&b| b == 0) {
            return Err(ReportError::MaskedChipId {
                origin: origin.to_string(),
            });
        }
        return Ok(());
    }
    let (family, model) = (bytes[CPUID_FAMILY_OFFSET], bytes[CPUID_MODEL_OFFSET]);
    if sev::Generation::identify_cpu(family, model).is_err() {
        return Err(ReportError::UnknownCpu {
            origin: origin.to_string(),
            family,
            model,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MILAN_HEX: &[u8] = include_bytes!("../../testdata/snp/report_milan.hex");
    const MILAN_AZURE: &[u8] = include_bytes!("../../testdata/snp/report_milan_azure.bin");

    #[test]
    fn reads_hex_and_binary() {
        let r = Report::from_bytes(MILAN_HEX, "report_milan.hex").unwrap();
        assert_eq!(r.parsed.version, 2);
        assert_eq!(r.signing_key(), SigningKey::Vcek);
        assert_eq!(r.cpuid(), None);
        let binary = Report::from_bytes(r.bytes(), "report.bin").unwrap();
        assert_eq!(binary.parsed, r.parsed);
        let azure = Report::from_bytes(MILAN_AZURE, "azure.bin").unwrap();
        assert_eq!(u64::from(azure.parsed.policy), 0x3001f);
        assert_eq!(r.signed_bytes().len(), SIGNED_LEN);
    }

    #[test]
    fn refusals_name_the_file_and_what_was_expected() {
        let err = Report::from_bytes(b"hello", "r.bin")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("r.bin: 5 bytes: expected an SEV-SNP"),
            "{err}"
        );
        let mut bytes = Report::from_bytes(MILAN_HEX, "x").unwrap().bytes().to_vec();
        bytes[0] = 1;
        let err = Report::from_bytes(&bytes, "r.bin").unwrap_err().to_string();
        assert!(err.contains("report version 1"), "{err}");
        bytes[0] = 2;
        bytes[CHIP_ID].fill(0);
        let err = Report::from_bytes(&bytes, "r.bin").unwrap_err().to_string();
        assert!(err.contains("chip id masked"), "{err}");
        bytes[0] = 3;
        bytes[CPUID_FAMILY_OFFSET] = 0x17;
        let err = Report::from_bytes(&bytes, "r.bin").unwrap_err().to_string();
        assert!(err.contains("CPU family 0x17"), "{err}");
    }
}
