//! Firmware and trust: measurement prediction and checking for TPM measured boot (PCR
//! arithmetic, the PE Authenticode digest firmware measures, the TCG event log, the UEFI
//! events of a boot, and `measurements.json`). The hardware catalog, the AMD SEV guest
//! firmware recipe and attestation join with the firmware issue.

pub mod authenticode;
pub mod eventlog;
pub mod measurements;
pub mod pcr;
pub mod uefi;
