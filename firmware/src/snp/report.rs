//! Reading an SEV-SNP attestation report (SEV-SNP ABI specification 56860, "ATTESTATION_REPORT
//! Structure"): 1184 bytes, as raw binary or as hex text, parsed by the `sev` crate and kept
//! with its original bytes, over which the signature is checked.
//!
//! A version 2 report names no CPU (CPUID came with version 3), and the layout of its TCB
//! fields depends on the generation (Turin's has an FMC). The `sev` crate guesses it from
//! the chip id (8 bytes on Turin, 64 before) and refuses a masked, all-zero one, which is
//! what hosts with MASK_CHIP_ID set write, AWS EC2's among them. Such a report is read here
//! in the Milan and Genoa layout, and read again in its generation's once that is known
//! ([`Report::for_generation`], from `--generation` or the certificates).

use super::generation::Generation;
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
        let parsed = parse(&bytes, None).map_err(|message| ReportError::Parse {
            origin: origin.to_string(),
            message,
        })?;
        Ok(Report { bytes, parsed })
    }

    /// The same report with its TCB fields read in `generation`'s layout. Only a version 2
    /// report can change (later ones name their CPU, which decides the layout).
    pub fn for_generation(&self, generation: Generation) -> Result<Report, ReportError> {
        if self.parsed.version != 2 {
            return Ok(self.clone());
        }
        let parsed =
            parse(&self.bytes, Some(generation)).map_err(|message| ReportError::Parse {
                origin: format!("the report read as {}'s", generation.product()),
                message,
            })?;
        Ok(Report {
            bytes: self.bytes.clone(),
            parsed,
        })
    }

    /// Whether CHIP_ID is all zero: masked by the host (MASK_CHIP_ID in its SNP
    /// configuration), as hosts that sign with a VLEK do.
    pub fn chip_id_masked(&self) -> bool {
        self.parsed.chip_id.iter().all(|&b| b == 0)
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

/// The fields of `bytes`, by the `sev` crate. A version 2 report's TCB layout is `layout`'s
/// when given; else the crate's guess from the chip id, and for a masked (all-zero) chip id,
/// which the crate refuses, the Milan and Genoa layout. The crate's guess is steered with a
/// placeholder chip id of the layout's shape; the real one is put back.
fn parse(bytes: &[u8], layout: Option<Generation>) -> Result<AttestationReport, String> {
    let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let masked = bytes[CHIP_ID].iter().all(|&b| b == 0);
    if version != 2 || (layout.is_none() && !masked) {
        return AttestationReport::from_bytes(bytes).map_err(|e| e.to_string());
    }
    let mut steered = bytes.to_vec();
    let chip = &mut steered[CHIP_ID];
    chip.fill(0);
    chip[0] = 1;
    if layout != Some(Generation::Turin) {
        // Past Turin's 8 bytes: the Milan and Genoa layout.
        chip[8] = 1;
    }
    let mut parsed = AttestationReport::from_bytes(&steered).map_err(|e| e.to_string())?;
    parsed.chip_id.copy_from_slice(&bytes[CHIP_ID]);
    Ok(parsed)
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

    /// A version 2 report with a masked chip id (as AWS EC2 hosts write them) reads, in the
    /// Milan and Genoa TCB layout until its generation is known.
    #[test]
    fn masked_chip_id_reads() {
        let real = Report::from_bytes(MILAN_HEX, "x").unwrap();
        let mut bytes = real.bytes().to_vec();
        bytes[CHIP_ID].fill(0);
        let r = Report::from_bytes(&bytes, "r.bin").unwrap();
        assert!(r.chip_id_masked() && !real.chip_id_masked());
        assert_eq!(r.parsed.chip_id, [0; 64]);
        assert_eq!(r.bytes(), &bytes[..]);
        assert_eq!(r.parsed.reported_tcb, real.parsed.reported_tcb);
        assert_eq!(r.parsed.reported_tcb.microcode, 115);
        let milan = r.for_generation(Generation::Milan).unwrap();
        assert_eq!(milan.parsed, r.parsed);
        // Turin's layout reads the same eight bytes otherwise (FMC first, microcode last).
        let turin = r.for_generation(Generation::Turin).unwrap();
        assert_eq!(turin.parsed.chip_id, [0; 64]);
        assert_eq!(turin.parsed.reported_tcb.fmc, Some(3));
        assert_ne!(turin.parsed.reported_tcb, r.parsed.reported_tcb);
        // An unmasked report keeps its chip id whatever the layout.
        let as_genoa = real.for_generation(Generation::Genoa).unwrap();
        assert_eq!(as_genoa.parsed, real.parsed);
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
        bytes[0] = 3;
        bytes[CPUID_FAMILY_OFFSET] = 0x17;
        let err = Report::from_bytes(&bytes, "r.bin").unwrap_err().to_string();
        assert!(err.contains("CPU family 0x17"), "{err}");
    }
}
