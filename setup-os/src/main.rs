//! `plinth-setup`: the SetupOS agent. Today it reports the boot (`boot-report`, run at boot by
//! `plinth-boot-report.service`) and its measurements (`measured-boot`), both from the crate
//! `plinth-boot-report`. Checking the hardware and installing HostOS and GuestOS come with the
//! issues that build them.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The SetupOS agent: reports the boot and the TPM's measurements of it.
#[derive(Debug, Parser)]
#[command(name = "plinth-setup", version)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// `boot-report` and `measured-boot`.
    #[command(flatten)]
    Common(plinth_boot_report::CommonVerb),
}

fn main() -> ExitCode {
    match Cli::parse().verb {
        Verb::Common(verb) => verb.run("setup-os", &Vec::new),
    }
}
