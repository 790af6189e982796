//! `plinth-guest`: the guest-os agent. GuestOS agent: attestation (SEV-SNP reports bound to a caller's nonce), data volume key, replica supervision and upgrades.
//!
//! Its verbs arrive with the issues that build them; today it answers `--help` and
//! `--version`, so that images can already install and start it.

use clap::Parser;

/// GuestOS agent: attestation (SEV-SNP reports bound to a caller's nonce), data volume key, replica supervision and upgrades.
#[derive(Debug, Parser)]
#[command(name = "plinth-guest", version)]
struct Cli {}

fn main() {
    Cli::parse();
}
