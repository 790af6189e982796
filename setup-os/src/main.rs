//! `plinth-setup`: the setup-os agent. SetupOS installer agent: certifies the hardware, validates the node provider's configuration, then installs HostOS and GuestOS.
//!
//! Its verbs arrive with the issues that build them; today it answers `--help` and
//! `--version`, so that images can already install and start it.

use clap::Parser;

/// SetupOS installer agent: certifies the hardware, validates the node provider's configuration, then installs HostOS and GuestOS.
#[derive(Debug, Parser)]
#[command(name = "plinth-setup", version)]
struct Cli {}

fn main() {
    Cli::parse();
}
