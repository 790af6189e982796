//! The upgrade agent's core, one library for HostOS and GuestOS: a node takes only what the
//! governance record (a TUF repository, [`plinth_governance`]) elects for its wave, streams
//! it into its inactive slot, checks what it wrote, and only then flips.
//!
//! One module per job, in the order of an upgrade: [`repo`] (load the record with tough from
//! mirrors, with a datastore that keeps rollback protection), [`choose`] (which version this
//! node takes: a pure function), [`fetch`] (download into staging, resumed, from mirrors,
//! hash-checked), [`slots`] (the A/B slots and their atomically written state; only the
//! inactive slot can be written), [`apply`] (the ordered steps from record to flip; the archive passes and their threads are
//! [`passes`]) and
//! [`status`] (what is on each slot and what happened last). The node's side: [`config`]
//! (its upgrade.yaml) and [`cli`] (the verbs `init`, `check`, `apply`, `status`, `daemon`,
//! which the `plinth-upgrade` binary runs). Every failure is an [`UpgradeError`] naming
//! what failed and what to do.

pub mod apply;
pub mod choose;
pub mod cli;
pub mod config;
pub mod error;
pub mod fetch;
pub mod passes;
pub mod repo;
pub mod settle;
pub mod slots;
pub mod status;

pub use error::UpgradeError;
