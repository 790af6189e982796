//! The last step before QEMU runs, in the process that becomes QEMU (Firecracker's jailer
//! pattern): join the VM's cgroup, so every page and thread QEMU makes is the cgroup's from
//! its first instruction; set the locked-memory limit when VFIO must pin guest memory
//! (before the drop: QEMU could not raise it); turn core dumps off (RLIMIT_CORE 0, soft and
//! hard, before the drop: QEMU's user cannot raise it again, and it survives exec); drop to
//! the unprivileged user with no supplementary groups; ask for SIGKILL when the supervisor
//! dies (no orphan VM), then check the supervisor is still the parent (it may have died
//! before the death signal was asked for: then QEMU is not started); then exec QEMU with an
//! empty environment. `plinth-host guest exec-qemu` runs this; the supervisor starts that
//! verb.
//!
//! Dumpability: QEMU is not dumpable after exec, and core dumps are off besides. execve
//! resets `PR_SET_DUMPABLE` to 1 for a binary run with equal real and effective ids, so the
//! drop leaves the real gid different from the effective one ([`nondumpable_real_gid`]: a
//! group that owns nothing); execve then sets dumpability to `fs.suid_dumpable` (0 on
//! Debian and HostOS): no core, /proc/PID/mem and friends root's, no ptrace by QEMU's own
//! user. QEMU's files are opened with its effective (and saved) gid, the group it runs as;
//! its seccomp filter (`elevateprivileges=deny`) forbids every set*id call, so it cannot
//! swap in the other group. RLIMIT_CORE 0 (hard, before the drop) and QEMU's
//! `dump-guest-core=off` (guest RAM marked MADV_DONTDUMP, which also covers a core piped to
//! a helper such as systemd-coredump) hold whatever `fs.suid_dumpable` says.

use super::qemu::{command, RunAs};
use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::unistd::{getppid, setgroups, setresgid, setuid, Gid, Pid, Uid};
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
    #[error("turning core dumps off (RLIMIT_CORE 0): {0}")]
    Core(nix::Error),
    #[error("asking for SIGKILL when the supervisor dies: {0}")]
    Deathsig(nix::Error),
    #[error("the supervisor (pid {parent}) ended before QEMU started (parent now {now}): QEMU is not started")]
    ParentGone { parent: i32, now: i32 },
    #[error("starting qemu-system-x86_64: {0}\n  hint: install qemu-system-x86")]
    Exec(std::io::Error),
}

/// Join `cgroups` (their directories), set RLIMIT_MEMLOCK to `memlock` bytes and
/// RLIMIT_CORE to 0, drop to `run_as`, ask for SIGKILL when `parent` (the supervisor's pid,
/// recorded before it started this process; by default the parent now) dies, and exec QEMU
/// with `args` if `parent` still is the parent. Returns only on failure.
pub fn exec(
    cgroups: &[PathBuf],
    memlock: Option<u64>,
    run_as: Option<RunAs>,
    parent: Option<i32>,
    args: &[String],
) -> JailError {
    let parent = parent.map_or_else(getppid, Pid::from_raw);
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
    if let Err(e) = setrlimit(Resource::RLIMIT_CORE, 0, 0) {
        return JailError::Core(e);
    }
    if let Some(u) = run_as {
        let gid = Gid::from_raw(u.gid);
        let real = Gid::from_raw(nondumpable_real_gid(u.gid));
        let dropped = setgroups(&[])
            .and_then(|()| setresgid(real, gid, gid))
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
    // The supervisor may have died before the death signal was asked for: this process
    // was then given to a reaper, and no signal will come.
    let now = getppid();
    if now != parent {
        return JailError::ParentGone {
            parent: parent.as_raw(),
            now: now.as_raw(),
        };
    }
    JailError::Exec(command(args, None).exec())
}

/// The real gid QEMU runs with, other than its effective `gid` so that execve leaves it
/// non-dumpable: `nogroup` (65534), or 65533 when QEMU's group is `nogroup` itself. Neither
/// owns a file on HostOS.
pub fn nondumpable_real_gid(gid: u32) -> u32 {
    const NOGROUP: u32 = 65534;
    if gid == NOGROUP {
        NOGROUP - 1
    } else {
        NOGROUP
    }
}
