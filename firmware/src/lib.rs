//! Firmware and trust: measurement prediction and checking for TPM measured boot (PCR
//! arithmetic, the one PE image reader, the PE Authenticode digest firmware measures, the TCG
//! event log, the UEFI events of a boot and systemd-stub's PCR 11, `measurements.json`, and
//! the signed PCR policy sealed state is bound to);
//! AMD SEV-SNP (launch expectations and attestation report checks); and the firmware catalog
//! of the certified AMD generations.

pub mod authenticode;
pub mod catalog;
pub mod certification;
pub mod ek;
pub mod eventlog;
pub mod measurements;
pub mod pcr;
pub mod pcr_policy;
pub mod pe;
pub mod snp;
pub mod systemd_stub;
pub mod uefi;
