//! `plinth-upgrade`: the upgrade agent of HostOS and GuestOS (clap dispatch only; the verbs
//! are [`plinth_upgrade::cli`]).

use clap::Parser;
use std::process::ExitCode;

/// The upgrade agent: takes only what the governance record elects for this node, writes it
/// to the inactive slot, reads it back, and flips.
#[derive(Debug, Parser)]
#[command(name = "plinth-upgrade", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    verb: plinth_upgrade::cli::UpgradeVerb,
}

fn main() -> ExitCode {
    plinth_upgrade::cli::run(Cli::parse().verb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli() {
        Cli::command().debug_assert();
    }
}
