//! `plinth-host`: the host-os agent. HostOS agent: plans and launches the GuestOS VM from the machine's topology, quotes TPM measurements and applies upgrades.
//!
//! Its verbs arrive with the issues that build them; today it answers `--help` and
//! `--version`, so that images can already install and start it.

use clap::Parser;

/// HostOS agent: plans and launches the GuestOS VM from the machine's topology, quotes TPM measurements and applies upgrades.
#[derive(Debug, Parser)]
#[command(name = "plinth-host", version)]
struct Cli {}

fn main() {
    Cli::parse();
}
