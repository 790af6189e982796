//! The `plinth` command: parse the command line and dispatch to one verb.

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = plinth::cli::Cli::parse();
    plinth::cli::run(cli)
}
