//! AMD SEV-SNP: the launch digest of a GuestOS launch, what a release expects of a launch,
//! and the checks of a node's attestation report against it.
//!
//! Reading: [`report`] (the report), [`certs`] and [`cert_table`] (the certificates, from
//! files or an extended report's table), [`extensions`] (what a VCEK says of itself).
//! Knowing: [`generation`] (Milan, Genoa, Turin and their built-in roots), [`tcb`], [`kds`]
//! (AMD's URLs), [`report_data`] (the nonce convention). Checking: [`verify`].

pub mod cert_table;
pub mod certs;
pub mod digest;
pub mod expected;
pub mod extensions;
pub mod generation;
pub mod kds;
pub mod report;
pub mod report_data;
pub mod tcb;
#[cfg(test)]
pub(crate) mod testing;
pub mod verify;

pub use expected::{GuestFirmware, LaunchDigest, Policy, SnpExpected};
