//! What a plinth release is, in the words every crate shares: the digests ([`Sha256`], the
//! SEV-SNP [`Measurement`], [`CommitId`]), the update [`Slot`], the names that become paths
//! ([`Os`], [`Version`], [`Name`], [`FileName`], [`Role`]), and the files a node reads from a
//! release: `manifest.json` ([`manifest`], whose partition digests [`blocks`] computes),
//! `measurements.json` ([`measurements`]) and its archives ([`archive`]). Each type exists
//! only with a legal value, so parsing a release file is validating it. Opening a downloaded
//! release's files safely is [`untrusted`]'s job.
//!
//! The builder, the firmware models, the boot report and the three agents depend on this
//! crate; it depends on none of them.

pub mod archive;
pub mod atomic;
pub mod blocks;
pub mod digest;
pub mod manifest;
pub mod measurements;
pub mod names;
pub mod slot;
pub mod untrusted;

pub use digest::{CommitId, Measurement, Sha256, Sha256Writer};
pub use names::{FileName, Name, Os, Role, Version};
pub use slot::Slot;
