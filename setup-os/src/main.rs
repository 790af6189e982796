//! `plinth-setup`: the setup-os agent. SetupOS installer agent: certifies the hardware, validates the node provider's configuration, then installs HostOS and GuestOS.
//!
//! Verbs arrive with the issues that build them; today: `boot-report`, run at boot by
//! `plinth-boot-report.service`, and `measured-boot` (both in the crate `plinth-boot-report`).

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// SetupOS installer agent: certifies the hardware, validates the node provider's configuration, then installs HostOS and GuestOS.
#[derive(Debug, Parser)]
#[command(name = "plinth-setup", version)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Check the boot (image identity, dm-verity root, failed units) and print
    /// `PLINTH BOOT OK|FAILED ...` on every active console.
    BootReport,
    /// Print the TPM's PCRs and the firmware's event log, checked against measurements.json.
    MeasuredBoot(plinth_boot_report::MeasuredBootArgs),
}

fn main() -> ExitCode {
    match Cli::parse().verb {
        Verb::MeasuredBoot(args) => args.run(),
        Verb::BootReport => {
            if plinth_boot_report::report("setup-os") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
