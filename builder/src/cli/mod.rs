//! The command line: global options, the verbs, and how failures map to exit codes.
//!
//! Exit codes: 0 success; 1 a check or an operation failed (a lock that disagrees with its
//! spec, a hash mismatch, a download that could not complete); 2 bad input or usage (an invalid
//! spec or lock, an unknown OS, a wrong flag); 130 interrupted (`flash`).

mod attest;
mod build;
mod check;
mod config;
mod diff;
mod fetch;
mod flash;
mod governance;
mod image;
mod lock;
mod measure;
pub mod output;
mod run;
mod verify;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub use output::Output;

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 a check or operation failed, 2 bad input or usage.

Examples:
  plinth check                      validate all os.yaml specs
  plinth config check config.yaml   check a node provider's configuration
  plinth lock all                   resolve and pin every OS's packages
  plinth fetch guest-os --offline   list what the cache lacks, download nothing
  plinth build guest-os --profile test   build the small GuestOS image into out/
  plinth verify out/guest-os/0.1.0  rebuild a release and compare every byte
  plinth diff out/a/guest-os/1.0.0 out/b/guest-os/1.1.0   what changed
  plinth run host-os --tpm          boot the built HostOS in QEMU
  plinth measure host-os            the PCRs its boot will produce
  plinth attest verify report.bin --certs certs --expect measurements.json
                                    check a node's SEV-SNP attestation
  plinth flash out/setup-os/0.1.0 /dev/sdb --config config.yaml
                                    write a SetupOS USB stick and verify it
  plinth governance elect out/host-os/1.2.0 --waves waves.yaml --workdir gov
                                    stage a release's election for signing";

/// Build, lock and verify the OS images of Internet Computer nodes.
#[derive(Debug, Parser)]
#[command(name = "plinth", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub verb: Verb,
}

/// Options every verb takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// More detail on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr; no progress bars.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print the result as JSON on stdout (for machines).
    #[arg(long, global = true)]
    pub json: bool,
    /// The plinth source tree (default: found upwards from the current directory).
    #[arg(long, global = true, env = "PLINTH_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Mirror choices (lock and fetch).
#[derive(Debug, Clone, clap::Args)]
pub struct MirrorArgs {
    /// Debian mirror for all suites but security [env: PLINTH_MIRROR].
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Mirror for the -security suite [env: PLINTH_SECURITY_MIRROR].
    #[arg(long, value_name = "URL")]
    pub security_mirror: Option<String>,
}

impl MirrorArgs {
    pub fn overrides(&self) -> crate::packages::mirror::MirrorOverrides {
        crate::packages::mirror::MirrorOverrides {
            main: self.mirror.clone(),
            security: self.security_mirror.clone(),
        }
    }
}

/// The cache directory (lock keeps indexes there, fetch the packages).
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArg {
    /// Cache directory [env: PLINTH_CACHE_DIR; default:
    /// $XDG_CACHE_HOME/plinth].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    Check(check::Args),
    Config(config::Args),
    Build(build::Args),
    Lock(lock::Args),
    Fetch(fetch::Args),
    Verify(verify::Args),
    Diff(diff::Args),
    Run(run::Args),
    Measure(measure::Args),
    Attest(attest::Args),
    Flash(flash::Args),
    Governance(governance::Args),
}

/// A failed check (exit code 1): the message has been printed or is in the error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckFailed(pub String);

/// Interrupted by Ctrl-C or SIGTERM (exit code 130): the message says what state is left.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Interrupted(pub String);

/// Bad input (exit code 2) that is not a spec error: a malformed lock, a bad flag value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Run one verb and turn its outcome into an exit code.
pub fn run(cli: Cli) -> ExitCode {
    let out = Output::new(&cli.global);
    let result = match cli.verb {
        Verb::Check(args) => check::run(&cli.global, &out, args),
        Verb::Config(args) => config::run(&cli.global, &out, args),
        Verb::Build(args) => build::run(&cli.global, &out, args),
        Verb::Lock(args) => lock::run(&cli.global, &out, args),
        Verb::Fetch(args) => fetch::run(&cli.global, &out, args),
        Verb::Verify(args) => verify::run(&cli.global, &out, args),
        Verb::Diff(args) => diff::run(&cli.global, &out, args),
        Verb::Run(args) => run::run(&cli.global, &out, args),
        Verb::Measure(args) => measure::run(&cli.global, &out, args),
        Verb::Attest(args) => attest::run(&cli.global, &out, args),
        Verb::Flash(args) => flash::run(&cli.global, &out, args),
        Verb::Governance(args) => governance::run(&cli.global, &out, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            out.error(&err);
            ExitCode::from(exit_code(&err))
        }
    }
}

/// 130 for an interruption, 2 for bad input anywhere in the error's chain, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|e| e.is::<Interrupted>()) {
        return 130;
    }
    let bad_input = err.chain().any(|e| {
        e.is::<crate::spec::SpecErrors>()
            || e.is::<BadInput>()
            || e.is::<crate::workspace::WorkspaceError>()
            || e.is::<crate::spec::UnknownProfile>()
            || e.is::<crate::packages::lockfile::LockError>()
            || e.downcast_ref::<crate::compare::release::ReleaseDirError>()
                .is_some_and(|r| r.is_crafted())
            || e.downcast_ref::<crate::compare::CompareError>()
                .is_some_and(|c| c.is_crafted())
            || e.downcast_ref::<crate::pipeline::artifacts::ArtifactError>()
                .is_some_and(|a| a.is_crafted())
    });
    if bad_input {
        2
    } else {
        1
    }
}

/// A comparison's error for `verify` and `diff`: a malformed or crafted release is bad input
/// (exit 2), anything else keeps its own code.
pub(crate) fn compare_error(e: crate::compare::CompareError) -> anyhow::Error {
    if e.is_crafted() {
        BadInput(e.to_string()).into()
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_fits_80_columns() {
        let mut cmd = Cli::command().term_width(80);
        let mut texts = vec![cmd.render_long_help().to_string()];
        for sub in cmd.get_subcommands_mut() {
            texts.push(sub.clone().term_width(80).render_long_help().to_string());
            for nested in sub.get_subcommands_mut() {
                texts.push(nested.clone().term_width(80).render_long_help().to_string());
            }
        }
        for text in texts {
            for line in text.lines() {
                assert!(
                    line.chars().count() <= 80,
                    "help line over 80 columns: {line}"
                );
            }
        }
    }
}
