//! The SEV-SNP launch digests of a GuestOS build: for each boot slot (the UKI's `.linux`,
//! `.initrd` and `.cmdline`, which HostOS passes to QEMU by direct boot), each vCPU count and
//! each vCPU type of `os.yaml`'s `snp`, with the release's AMD SEV firmware. They become the
//! `snp` part of `measurements.json` ([`plinth_firmware::snp::SnpExpected`]).

use plinth_firmware::snp::digest::{LaunchImage, GUEST_FEATURES, VMM};
use plinth_firmware::snp::{GuestFirmware, LaunchDigest, Policy, SnpExpected};
use plinth_release::slot::{self, Slot};
use plinth_release::Sha256;
use std::path::Path;

/// The launches to compute, as `os.yaml` (or a published file) lists them.
#[derive(Debug, Clone)]
pub struct Launches {
    pub vcpus: Vec<u32>,
    pub vcpu_types: Vec<String>,
    pub smt: bool,
}

impl From<&crate::spec::SnpSpec> for Launches {
    fn from(s: &crate::spec::SnpSpec) -> Launches {
        Launches {
            vcpus: s.vcpus.clone(),
            vcpu_types: s.vcpu_types.clone(),
            smt: s.smt,
        }
    }
}

impl Launches {
    /// The launches a published expectation lists (to recompute them).
    pub fn of(expected: &SnpExpected) -> Launches {
        let mut vcpus = Vec::new();
        let mut vcpu_types = Vec::new();
        for d in &expected.launch_digests {
            if !vcpus.contains(&d.vcpus) {
                vcpus.push(d.vcpus);
            }
            if !vcpu_types.contains(&d.vcpu_type) {
                vcpu_types.push(d.vcpu_type.clone());
            }
        }
        Launches {
            vcpus,
            vcpu_types,
            smt: expected.policy.smt,
        }
    }
}

/// The release's firmware.
pub struct FirmwareFile<'a> {
    pub path: &'a Path,
    /// Its name in the release.
    pub name: &'a str,
    pub sha256: Sha256,
    /// The Debian edk2 version it was built from.
    pub edk2: &'a str,
}

/// A slot's UKI.
pub struct SlotUki<'a> {
    pub slot: Option<Slot>,
    pub uki: &'a [u8],
}

/// Why the digests could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    #[error("slot {slot}: {source}")]
    Uki {
        slot: String,
        source: plinth_firmware::systemd_stub::SectionError,
    },
    #[error("slot {slot}: the UKI's .cmdline is not UTF-8 text\n  hint: the UKI was not made by plinth, or is damaged")]
    Cmdline { slot: String },
    #[error(transparent)]
    Digest(#[from] plinth_firmware::snp::digest::DigestError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Every launch digest, slots in order, then vCPU counts, then types. `scratch` holds the
/// kernel and initrd the digest reads (a directory this call owns).
pub fn expected(
    firmware: &FirmwareFile<'_>,
    launches: &Launches,
    slots: &[SlotUki<'_>],
    scratch: &Path,
) -> Result<SnpExpected, SnpError> {
    std::fs::create_dir_all(scratch).map_err(io(scratch))?;
    let mut launch_digests = Vec::new();
    for s in slots {
        let name = slot::or_none(s.slot);
        let section = |section: &str| {
            plinth_firmware::systemd_stub::section(s.uki, section).map_err(|source| SnpError::Uki {
                slot: name.to_string(),
                source,
            })
        };
        let kernel = scratch.join(format!("vmlinuz-{name}"));
        let initrd = scratch.join(format!("initrd-{name}"));
        std::fs::write(&kernel, section(".linux")?).map_err(io(&kernel))?;
        std::fs::write(&initrd, section(".initrd")?).map_err(io(&initrd))?;
        let cmdline = cmdline_text(&section(".cmdline")?).ok_or_else(|| SnpError::Cmdline {
            slot: name.to_string(),
        })?;
        let image = LaunchImage::new(firmware.path, &kernel, &initrd, &cmdline)?;
        for &vcpus in &launches.vcpus {
            for vcpu_type in &launches.vcpu_types {
                launch_digests.push(LaunchDigest {
                    slot: s.slot,
                    vcpus,
                    vcpu_type: vcpu_type.clone(),
                    measurement: image.digest(vcpus, vcpu_type)?,
                });
            }
        }
    }
    Ok(SnpExpected {
        firmware: GuestFirmware {
            file: firmware.name.to_string(),
            sha256: firmware.sha256,
            edk2: firmware.edk2.to_string(),
        },
        vmm: VMM.to_string(),
        guest_features: format!("{GUEST_FEATURES:#x}"),
        policy: Policy {
            abi_major: 0,
            abi_minor: 0,
            smt: launches.smt,
            debug: false,
            migrate_ma: false,
        },
        vmpl: 0,
        launch_digests,
    })
}

/// The command line QEMU gets with `-append` (it measures these bytes and a NUL): the UKI's
/// `.cmdline` without trailing NULs or line ends; `None` if it is not UTF-8.
pub fn cmdline_text(section: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(section).ok()?;
    Some(text.trim_end_matches(['\0', '\n']).to_string())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnpError + '_ {
    move |source| SnpError::Io {
        path: path.display().to_string(),
        source,
    }
}
