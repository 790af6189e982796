//! What a GuestOS release expects of an SEV-SNP launch, as published in the `snp` part of
//! `measurements.json` (the types live with the file's, in `plinth_release::measurements`):
//! the guest firmware, the launch digest for every supported vCPU count, vCPU type and boot
//! slot, and the guest policy and VMPL a node's attestation report must show. The build
//! writes it (`plinth measure`); `plinth attest verify` checks reports against it.

pub use plinth_release::measurements::{GuestFirmware, LaunchDigest, Policy, SnpExpected};
