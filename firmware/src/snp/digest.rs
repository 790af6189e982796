//! The SEV-SNP launch digest of a GuestOS launch: the AMD SEV OVMF's pages, the SEV hashes
//! table (sha256 of kernel, initrd and command line, which QEMU places in the firmware's
//! SNP_KERNEL_HASHES page) and one VMSA per vCPU, as the `sev` crate's measurement module
//! computes them (equal to `sev-snp-measure --mode snp`).

use sev::measurement::snp::{calc_snp_ovmf_hash, snp_calc_launch_digest, SnpMeasurementArgs};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};
use std::path::{Path, PathBuf};

/// The SEV features of the guest's VMSAs: SNP active, nothing else (QEMU's default).
pub const GUEST_FEATURES: u64 = 0x1;
/// The VMM whose launch the digest models.
pub const VMM: &str = "QEMU";

/// QEMU's vCPU model names the digest can model (what `qemu -cpu` and sev-snp-measure's
/// `--vcpu-type` take).
pub const VCPU_TYPES: &[&str] = &[
    "EPYC",
    "EPYC-v1",
    "EPYC-v2",
    "EPYC-IBPB",
    "EPYC-v3",
    "EPYC-v4",
    "EPYC-Rome",
    "EPYC-Rome-v1",
    "EPYC-Rome-v2",
    "EPYC-Rome-v3",
    "EPYC-Milan",
    "EPYC-Milan-v1",
    "EPYC-Milan-v2",
    "EPYC-Genoa",
    "EPYC-Genoa-v1",
    "EPYC-Turin",
    "EPYC-Turin-v1",
    "EPYC-Turin-v2",
];

/// The largest vCPU count a digest is computed for.
pub const MAX_VCPUS: u32 = 512;

/// Why a digest could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error("vCPU type `{0}` is not one of {list}", list = VCPU_TYPES.join(", "))]
    VcpuType(String),
    #[error("{path}: {message}\n  hint: the firmware must be edk2's OvmfPkg/AmdSev build with an SNP_KERNEL_HASHES section (plinth build guest-os makes it)")]
    Firmware { path: String, message: String },
    #[error("launch digest for {vcpus} vCPUs of type {vcpu_type}: {message}")]
    Launch {
        vcpus: u32,
        vcpu_type: String,
        message: String,
    },
}

/// What a launch measures besides the vCPUs.
#[derive(Debug, Clone)]
pub struct LaunchImage {
    pub ovmf: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The command line QEMU is given (`-append`), without the trailing NUL it adds.
    pub cmdline: String,
    /// The firmware's own page digest, computed once for every launch of it.
    ovmf_digest: String,
}

impl LaunchImage {
    pub fn new(
        ovmf: &Path,
        kernel: &Path,
        initrd: &Path,
        cmdline: &str,
    ) -> Result<LaunchImage, DigestError> {
        let firmware = |e: &dyn std::fmt::Display| DigestError::Firmware {
            path: ovmf.display().to_string(),
            message: e.to_string(),
        };
        let ovmf_digest = calc_snp_ovmf_hash(ovmf.to_path_buf())
            .map_err(|e| firmware(&e))?
            .get_hex_ld();
        Ok(LaunchImage {
            ovmf: ovmf.to_path_buf(),
            kernel: kernel.to_path_buf(),
            initrd: initrd.to_path_buf(),
            cmdline: cmdline.to_string(),
            ovmf_digest,
        })
    }

    /// The launch digest of this image on `vcpus` vCPUs of `vcpu_type`.
    pub fn digest(
        &self,
        vcpus: u32,
        vcpu_type: &str,
    ) -> Result<plinth_release::Measurement, DigestError> {
        let cpu = cpu_type(vcpu_type)?;
        let launch = |message: String| DigestError::Launch {
            vcpus,
            vcpu_type: vcpu_type.to_string(),
            message,
        };
        if vcpus == 0 || vcpus > MAX_VCPUS {
            return Err(launch(format!("the count must be 1 to {MAX_VCPUS}")));
        }
        let args = SnpMeasurementArgs {
            vcpus,
            vcpu_type: cpu,
            ovmf_file: self.ovmf.clone(),
            guest_features: GuestFeatures(GUEST_FEATURES),
            kernel_file: Some(self.kernel.clone()),
            initrd_file: Some(self.initrd.clone()),
            append: Some(&self.cmdline),
            ovmf_hash_str: Some(&self.ovmf_digest),
            vmm_type: Some(VMMType::QEMU),
        };
        let digest = snp_calc_launch_digest(args).map_err(|e| launch(e.to_string()))?;
        let hex = digest.get_hex_ld().to_ascii_lowercase();
        hex.parse()
            .map_err(|e| launch(format!("the sev crate's digest: {e}")))
    }
}

/// The `sev` crate's type for QEMU's vCPU model `name` (exact spelling, as QEMU takes it).
pub fn cpu_type(name: &str) -> Result<CpuType, DigestError> {
    if !VCPU_TYPES.contains(&name) {
        return Err(DigestError::VcpuType(name.to_string()));
    }
    CpuType::try_from(name).map_err(|_| DigestError::VcpuType(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_vcpu_type_is_known_to_the_sev_crate() {
        for name in VCPU_TYPES {
            let cpu = cpu_type(name).unwrap();
            assert_eq!(cpu.to_string(), *name);
        }
        assert!(cpu_type("epyc-v4").is_err(), "QEMU's spelling only");
        assert!(cpu_type("Skylake").is_err());
    }

    #[test]
    fn a_firmware_without_sev_metadata_is_refused() {
        let dir = std::env::temp_dir().join(format!("plinth-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("not-ovmf.fd");
        std::fs::write(&fake, vec![0u8; 64 * 1024]).unwrap();
        let e = LaunchImage::new(&fake, &fake, &fake, "quiet").unwrap_err();
        assert!(matches!(e, DigestError::Firmware { .. }), "{e}");
        assert!(e.to_string().contains("not-ovmf.fd"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
