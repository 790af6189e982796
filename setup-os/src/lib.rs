//! `plinth-setup` as a library: what the SetupOS agent's verbs are built from, for its
//! binary and for tests: the machine's [`inventory`] and its certification against the
//! catalog ([`certify`]), and the report of it ([`report`]).

pub mod certify;
pub mod install;
pub mod inventory;
pub mod report;
pub mod tpm;
