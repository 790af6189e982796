//! `measurements.json`: what a boot of a release measures, per boot slot: the TPM's PCR values
//! once the system is up, the events of the firmware's log behind them, the extends that come
//! after the log, the PCRs not predicted and why; and, for an OS launched as an SEV-SNP guest,
//! what its launch must show ([`SnpExpected`]: the guest firmware, the launch digest of every
//! slot, vCPU count and type, the guest policy and VMPL). The build writes it; the booted agent,
//! `plinth attest verify` and HostOS read it. The predictions themselves are computed and
//! checked in `plinth-firmware`.

use crate::digest::{Measurement, Sha256};
use crate::names::{Os, Version};
use crate::slot::Slot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The file's name in a release directory.
pub const FILE_NAME: &str = "measurements.json";
/// The serial number of the read-only disk that carries the file into a test machine (its
/// bytes, padded with NULs).
pub const DISK_SERIAL: &str = "plinth-measurements";
/// Bumped when a field changes meaning.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    pub format_version: u32,
    pub os: Os,
    pub version: Version,
    /// The platform the prediction holds for.
    pub platform: Platform,
    /// One per boot slot (slot `null` for an OS without A/B slots).
    pub slots: Vec<SlotPrediction>,
    /// The PCRs not predicted, each with why.
    pub not_predicted: Vec<NotPredicted>,
    /// For an OS launched as an SEV-SNP guest (GuestOS): its launch digests and policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpExpected>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    pub firmware: String,
    pub secure_boot: bool,
    /// The PCR bank of every value here.
    pub bank: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotPrediction {
    pub slot: Option<Slot>,
    /// sha256 of the slot's UKI.
    pub uki_sha256: Sha256,
    /// PCR number → its value once the system is up (hex).
    pub pcrs: BTreeMap<u32, Sha256>,
    /// The events of those PCRs in the firmware's log, in log order.
    pub events: Vec<Event>,
    /// Extends of those PCRs after the firmware's log (not in it), in order.
    pub later: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub pcr: u32,
    #[serde(rename = "type")]
    pub event_type: String,
    pub sha256: Sha256,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotPredicted {
    pub pcr: u32,
    pub why: String,
}

impl Measurements {
    /// Parse the text of a measurements file; `origin` names it in errors (a value that breaks
    /// its type's rule is named by its field: `slots[0].pcrs.7 (PCR 7)`).
    pub fn parse(text: &str, origin: &str) -> Result<Measurements, String> {
        // The version first, so that another format is refused as such.
        #[derive(Deserialize)]
        struct Format {
            format_version: u32,
        }
        if let Ok(v) = serde_json::from_str::<Format>(text) {
            if v.format_version != FORMAT_VERSION {
                return Err(format!(
                    "{origin}: format_version {}, this plinth reads {FORMAT_VERSION}\n  hint: measure the release again with this plinth (plinth measure)",
                    v.format_version
                ));
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let m: Measurements = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let e = e.into_inner();
            if e.is_data() && field != "." {
                let at = format!(" at line {} column {}", e.line(), e.column());
                let message = e.to_string();
                let message = message.strip_suffix(&at).unwrap_or(&message);
                let pcr = field
                    .rsplit_once(".pcrs.")
                    .map_or(String::new(), |(_, n)| format!(" (PCR {n})"));
                format!("{origin}: {field}{pcr}: {message}")
            } else {
                format!("{origin}: not a plinth measurements file: {e}")
            }
        })?;
        de.end()
            .map_err(|e| format!("{origin}: not a plinth measurements file: {e}"))?;
        Ok(m)
    }

    /// The prediction for `slot` (`None`: the OS has no slots).
    pub fn slot(&self, slot: Option<Slot>) -> Option<&SlotPrediction> {
        self.slots.iter().find(|s| s.slot == slot)
    }
}

/// The SEV-SNP expectations of one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpExpected {
    /// The guest firmware every digest was computed for.
    pub firmware: GuestFirmware,
    /// The VMM whose launch sequence the digests model (`QEMU`).
    pub vmm: String,
    /// The SEV features of the guest's VMSAs (`0x1`: SNP active), as hex.
    pub guest_features: String,
    /// The guest policy HostOS launches with, and which a report must show.
    pub policy: Policy,
    /// The VMPL a report must be requested at (0 without an SVSM).
    pub vmpl: u32,
    /// One per (slot, vCPU count, vCPU type).
    pub launch_digests: Vec<LaunchDigest>,
}

/// The guest firmware (edk2 `OvmfPkg/AmdSev`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestFirmware {
    /// Its file name in the release.
    pub file: String,
    /// sha256 of the file.
    pub sha256: Sha256,
    /// The edk2 source it was built from (Debian source package version).
    pub edk2: String,
}

/// The parts of the guest policy a report is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The lowest SNP firmware ABI (major, minor) the guest accepts.
    pub abi_major: u8,
    pub abi_minor: u8,
    /// Whether the guest may run with SMT enabled (policy bit 16).
    pub smt: bool,
    /// Debugging allowed (bit 19): must be false for a production guest.
    pub debug: bool,
    /// Association with a migration agent (bit 18): must be false.
    pub migrate_ma: bool,
}

/// The launch digest of one launch configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchDigest {
    /// The boot slot whose kernel, initrd and command line were measured.
    pub slot: Option<Slot>,
    pub vcpus: u32,
    /// QEMU's name of the vCPU model (`EPYC-v4`, `EPYC-Milan`, `EPYC-Genoa`, ...).
    pub vcpu_type: String,
    /// The 48-byte SNP launch digest, as 96 lower-case hex digits.
    pub measurement: Measurement,
}

impl Policy {
    /// The policy word HostOS passes to QEMU (`-object sev-snp-guest,policy=...`): bit 17 is
    /// reserved and must be one.
    pub fn bits(&self) -> u64 {
        u64::from(self.abi_minor)
            | u64::from(self.abi_major) << 8
            | u64::from(self.smt) << 16
            | 1 << 17
            | u64::from(self.migrate_ma) << 18
            | u64::from(self.debug) << 19
    }
}

impl SnpExpected {
    /// An expectation of one launch (slot A, 4 × `vcpu_type`) whose digest is `measurement`
    /// (hex), with QEMU's default guest policy (SMT allowed, debug and migration agent off,
    /// ABI 0.0) at VMPL 0, for a firmware named `OVMF.fd`: for tests, fuzzing and examples.
    pub fn single(measurement: Measurement, vcpu_type: &str) -> SnpExpected {
        SnpExpected {
            firmware: GuestFirmware {
                file: "OVMF.fd".into(),
                sha256: Sha256::default(),
                edk2: "2025.02-1".into(),
            },
            vmm: "QEMU".into(),
            guest_features: "0x1".into(),
            policy: Policy {
                abi_major: 0,
                abi_minor: 0,
                smt: true,
                debug: false,
                migrate_ma: false,
            },
            vmpl: 0,
            launch_digests: vec![LaunchDigest {
                slot: Some(Slot::A),
                vcpus: 4,
                vcpu_type: vcpu_type.into(),
                measurement,
            }],
        }
    }

    /// The launch configurations whose digest is `measurement`.
    pub fn matching(&self, measurement: &Measurement) -> Vec<&LaunchDigest> {
        self.launch_digests
            .iter()
            .filter(|d| d.measurement == *measurement)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_word_matches_qemus_default() {
        // QEMU's default SNP policy is 0x30000: SMT allowed, the reserved bit set.
        let p = Policy {
            abi_major: 0,
            abi_minor: 0,
            smt: true,
            debug: false,
            migrate_ma: false,
        };
        assert_eq!(p.bits(), 0x30000);
        let p = Policy {
            debug: true,
            smt: false,
            ..p
        };
        assert_eq!(p.bits(), 0xa0000);
    }
}
