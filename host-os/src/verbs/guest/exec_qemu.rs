//! `plinth-host guest exec-qemu` (hidden): the supervisor's jail step, run in the process
//! that becomes QEMU ([`plinth_host::launch::jail`]).

use plinth_host::launch::{jail, qemu::RunAs};
use std::path::PathBuf;
use std::process::ExitCode;

/// Join the cgroups, drop to the user, exec QEMU with the arguments after `--`.
#[derive(Debug, clap::Args)]
pub struct ExecQemuArgs {
    /// A cgroup directory to join (one per hierarchy).
    #[arg(long = "cgroup", value_name = "DIR")]
    cgroups: Vec<PathBuf>,
    #[arg(long, requires = "gid")]
    uid: Option<u32>,
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    /// QEMU's arguments.
    #[arg(last = true, required = true)]
    args: Vec<String>,
}

impl ExecQemuArgs {
    pub fn run(self) -> ExitCode {
        let run_as = self.uid.zip(self.gid).map(|(uid, gid)| RunAs { uid, gid });
        let e = jail::exec(&self.cgroups, run_as, &self.args);
        eprintln!("error: {e}");
        ExitCode::FAILURE
    }
}
