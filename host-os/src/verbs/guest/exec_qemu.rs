//! `plinth-host guest exec-qemu` (hidden): the supervisor's jail step, run in the process
//! that becomes QEMU ([`plinth_host::launch::jail`]).

use plinth_host::launch::{jail, qemu::RunAs};
use std::path::PathBuf;

/// Join the cgroups, set the locked-memory limit, turn core dumps off, drop to the user,
/// exec QEMU with the arguments after `--` (if the supervisor still runs).
#[derive(Debug, clap::Args)]
pub struct ExecQemuArgs {
    /// A cgroup directory to join (one per hierarchy).
    #[arg(long = "cgroup", value_name = "DIR")]
    cgroups: Vec<PathBuf>,
    #[arg(long, requires = "gid")]
    uid: Option<u32>,
    #[arg(long, requires = "uid")]
    gid: Option<u32>,
    /// RLIMIT_MEMLOCK for QEMU, soft and hard, in bytes (VFIO pins guest memory).
    #[arg(long, value_name = "BYTES")]
    memlock: Option<u64>,
    /// The supervisor's pid: QEMU is not started when it is no longer the parent (default:
    /// the parent when this starts).
    #[arg(long, value_name = "PID")]
    parent: Option<i32>,
    /// QEMU's arguments.
    #[arg(last = true, required = true)]
    args: Vec<String>,
}

impl ExecQemuArgs {
    /// Returns only when QEMU could not be started.
    pub fn run(self) -> anyhow::Result<()> {
        let run_as = self.uid.zip(self.gid).map(|(uid, gid)| RunAs { uid, gid });
        let e = jail::exec(&self.cgroups, self.memlock, run_as, self.parent, &self.args);
        Err(anyhow::anyhow!("{e}"))
    }
}
