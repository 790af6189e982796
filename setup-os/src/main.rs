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
