//! `plinth-setup` as a library: what the SetupOS agent's verbs are built from, for its
//! binary and for tests: the machine's [`inventory`] and its certification against the
//! catalog ([`certify`]), the report of it ([`report`]), the install ([`install`]) and its
//! benchmark against `dd` ([`bench`]).

pub mod bench;
pub mod certify;
pub mod install;
pub mod inventory;
pub mod report;
pub mod tpm;
