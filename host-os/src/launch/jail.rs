//! The last step before QEMU runs, in the process that becomes QEMU (Firecracker's jailer
//! pattern): join the VM's cgroup, so every page and thread QEMU makes is the cgroup's from
//! its first instruction; set the locked-memory limit when VFIO must pin guest memory
//! (before the drop: QEMU could not raise it); drop to the unprivileged user with no
//! supplementary groups; ask for SIGKILL when the supervisor dies (no orphan VM); then exec
//! QEMU with an empty environment. `plinth-host guest exec-qemu` runs this; the supervisor starts that verb.

use super::qemu::{command, RunAs};
use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

/// Why QEMU could not be started.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{path}: joining the VM's cgroup: {source}")]
    Cgroup {
        path: String,
        source: std::io::Error,
    },
    #[error("dropping to uid {uid} gid {gid}: {source}")]
    Drop {
        uid: u32,
        gid: u32,
        source: nix::Error,
    },
    #[error("setting RLIMIT_MEMLOCK to {bytes} bytes: {source}\n  hint: only CAP_SYS_RESOURCE raises the hard limit; start the supervisor with one at least this high (plinth-guest.service has LimitMEMLOCK=infinity)")]
    Memlock { bytes: u64, source: nix::Error },
    #[error("asking for SIGKILL when the supervisor dies: {0}")]
    Deathsig(nix::Error),
    #[error("starting qemu-system-x86_64: {0}\n  hint: install qemu-system-x86")]
    Exec(std::io::Error),
}

/// Join `cgroups` (their directories), set RLIMIT_MEMLOCK to `memlock` bytes, drop to
/// `run_as`, exec QEMU with `args`. Returns only on failure.
pub fn exec(
    cgroups: &[PathBuf],
    memlock: Option<u64>,
    run_as: Option<RunAs>,
    args: &[String],
) -> JailError {
    for dir in cgroups {
        let procs = dir.join("cgroup.procs");
        if let Err(source) = std::fs::write(&procs, std::process::id().to_string()) {
            return JailError::Cgroup {
                path: procs.display().to_string(),
                source,
            };
        }
    }
    if let Some(bytes) = memlock {
        if let Err(source) = setrlimit(Resource::RLIMIT_MEMLOCK, bytes, bytes) {
            return JailError::Memlock { bytes, source };
        }
    }
    if let Some(u) = run_as {
        let dropped = setgroups(&[])
            .and_then(|()| setgid(Gid::from_raw(u.gid)))
            .and_then(|()| setuid(Uid::from_raw(u.uid)));
        if let Err(source) = dropped {
            return JailError::Drop {
                uid: u.uid,
                gid: u.gid,
                source,
            };
        }
    }
    // After the uid change, which clears it.
    if let Err(e) = prctl::set_pdeathsig(Some(Signal::SIGKILL)) {
        return JailError::Deathsig(e);
    }
    JailError::Exec(command(args, None).exec())
}
