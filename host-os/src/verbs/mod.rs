//! The verbs of `plinth-host`, one module each, and how their outcome becomes an exit code
//! (as `plinth`'s): each verb returns `anyhow::Result`, with its modules' typed errors inside;
//! [`BadInput`] (and the errors of input that cannot be used: an unreadable topology, a VM
//! that cannot be planned) exit 2, every other error 1, success 0. A closed stdout (`| head`)
//! is success: the reader has what it wanted.

pub mod config;
pub mod guest;
pub mod topology;

use std::process::ExitCode;

/// Bad input or usage (exit 2): a flag, a file or the machine's tree that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

impl From<String> for BadInput {
    fn from(message: String) -> BadInput {
        BadInput(message)
    }
}

/// The exit code of a verb's error: 2 for bad input, else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.chain().any(|e| {
        e.is::<BadInput>()
            || e.is::<plinth_host::topology::sysfs::TopologyError>()
            || e.is::<plinth_host::plan::PlanError>()
    });
    if bad_input {
        2
    } else {
        1
    }
}

/// The process's exit code for a verb's result, the error printed (with its causes).
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
