//! What a GuestOS release expects of an SEV-SNP launch, as published in the `snp` part of
//! `measurements.json`: the guest firmware, the launch digest for every supported vCPU count,
//! vCPU type and boot slot, and the guest policy and VMPL a node's attestation report must
//! show. The build writes it (`plinth measure`); `plinth attest verify` checks reports
//! against it.

use serde::{Deserialize, Serialize};

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
    pub sha256: String,
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
    pub slot: Option<String>,
    pub vcpus: u32,
    /// QEMU's name of the vCPU model (`EPYC-v4`, `EPYC-Milan`, `EPYC-Genoa`, ...).
    pub vcpu_type: String,
    /// The 48-byte SNP launch digest, as 96 lower-case hex digits.
    pub measurement: String,
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
    pub fn single(measurement: &str, vcpu_type: &str) -> SnpExpected {
        SnpExpected {
            firmware: GuestFirmware {
                file: "OVMF.fd".into(),
                sha256: "00".repeat(32),
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
                slot: Some("A".into()),
                vcpus: 4,
                vcpu_type: vcpu_type.into(),
                measurement: measurement.into(),
            }],
        }
    }

    /// The launch configurations whose digest is `measurement` (hex).
    pub fn matching(&self, measurement: &str) -> Vec<&LaunchDigest> {
        self.launch_digests
            .iter()
            .filter(|d| d.measurement.eq_ignore_ascii_case(measurement))
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
