//! Pinning a running QEMU's threads as its plan says: each vCPU thread (its id from QMP's
//! `query-cpus-fast`) to its one host thread, each I/O thread (`query-iothreads`) to the I/O
//! core, every other thread of the process (main loop, RCU, workers) to the emulator core.
//! Affinities are set with sched_setaffinity and read back from /proc. Only QEMU's own
//! threads are pinned: a thread id QMP names that is not in `/proc/PID/task` is refused
//! before any affinity is set (QMP is QEMU's word, and QEMU is not trusted).

use super::qmp::{IoThread, VcpuThread};
use crate::plan::Plan;
use crate::topology::sysfs::parse_cpulist;
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use std::path::Path;

/// What a QEMU thread runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Vcpu(u32),
    IoThread(String),
    Emulator,
}

/// One pinned thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub thread_id: i32,
    pub role: Role,
    pub cpus: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("QEMU has {found} vCPU threads, the plan {planned}")]
    VcpuCount { found: usize, planned: usize },
    #[error("QMP named thread {thread_id} ({role:?}), which is not a thread of QEMU (pid {pid}): refused")]
    NotQemus {
        thread_id: i32,
        role: Role,
        pid: i32,
    },
    #[error("{path}: {source}")]
    Proc {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "thread {thread_id} ({role:?}): setting its affinity to host threads {cpus:?}: {source}"
    )]
    Affinity {
        thread_id: i32,
        role: Role,
        cpus: Vec<u32>,
        source: nix::Error,
    },
}

/// Pin every thread of QEMU process `pid`; `proc_root` is `/proc` (tests may point elsewhere
/// only for reading).
pub fn pin(
    pid: i32,
    plan: &Plan,
    vcpus: &[VcpuThread],
    iothreads: &[IoThread],
    proc_root: &Path,
) -> Result<Vec<Pinned>, PinError> {
    let p = &plan.placement;
    if vcpus.len() != p.vcpu_pins.len() {
        return Err(PinError::VcpuCount {
            found: vcpus.len(),
            planned: p.vcpu_pins.len(),
        });
    }
    let mut wanted: Vec<Pinned> = Vec::new();
    for v in vcpus {
        let host = p
            .vcpu_pins
            .iter()
            .find(|pin| pin.vcpu == v.cpu_index)
            .map(|pin| pin.host_cpu)
            .ok_or(PinError::VcpuCount {
                found: vcpus.len(),
                planned: p.vcpu_pins.len(),
            })?;
        wanted.push(Pinned {
            thread_id: v.thread_id,
            role: Role::Vcpu(v.cpu_index),
            cpus: vec![host],
        });
    }
    let io_cpus = if p.iothread_cpus.is_empty() {
        &p.emulator_cpus
    } else {
        &p.iothread_cpus
    };
    for t in iothreads {
        wanted.push(Pinned {
            thread_id: t.thread_id,
            role: Role::IoThread(t.id.clone()),
            cpus: io_cpus.clone(),
        });
    }
    let own = threads(pid, proc_root)?;
    // QMP's answer names the threads: only QEMU's own are pinned.
    if let Some(w) = wanted.iter().find(|w| !own.contains(&w.thread_id)) {
        return Err(PinError::NotQemus {
            thread_id: w.thread_id,
            role: w.role.clone(),
            pid,
        });
    }
    for tid in own {
        if !wanted.iter().any(|w| w.thread_id == tid) {
            wanted.push(Pinned {
                thread_id: tid,
                role: Role::Emulator,
                cpus: p.emulator_cpus.clone(),
            });
        }
    }
    for w in &wanted {
        let mut set = CpuSet::new();
        for c in &w.cpus {
            set.set(*c as usize).map_err(|source| PinError::Affinity {
                thread_id: w.thread_id,
                role: w.role.clone(),
                cpus: w.cpus.clone(),
                source,
            })?;
        }
        sched_setaffinity(Pid::from_raw(w.thread_id), &set).map_err(|source| {
            PinError::Affinity {
                thread_id: w.thread_id,
                role: w.role.clone(),
                cpus: w.cpus.clone(),
                source,
            }
        })?;
    }
    Ok(wanted)
}

/// The thread ids of process `pid`.
pub fn threads(pid: i32, proc_root: &Path) -> Result<Vec<i32>, PinError> {
    let dir = proc_root.join(pid.to_string()).join("task");
    let entries = std::fs::read_dir(&dir).map_err(|source| PinError::Proc {
        path: dir.display().to_string(),
        source,
    })?;
    let mut out: Vec<i32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// The host threads thread `tid` of `pid` may run on (`Cpus_allowed_list` in its status).
pub fn affinity(pid: i32, tid: i32, proc_root: &Path) -> Result<Vec<u32>, PinError> {
    let path = proc_root
        .join(pid.to_string())
        .join("task")
        .join(tid.to_string())
        .join("status");
    let text = std::fs::read_to_string(&path).map_err(|source| PinError::Proc {
        path: path.display().to_string(),
        source,
    })?;
    let list = text
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim();
    parse_cpulist(list).map_err(|e| PinError::Proc {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, VmRequest};
    use crate::topology::fixture::Machine;
    use crate::topology::sysfs;

    #[test]
    fn a_thread_qmp_names_outside_qemu_is_not_pinned() {
        let dir = tempfile::tempdir().unwrap();
        Machine::one_socket().write(dir.path()).unwrap();
        let t = sysfs::read(dir.path()).unwrap();
        let p = plan(&t, &VmRequest::plain(2, 2, vec![])).unwrap();
        // "QEMU" is this test process; QMP names pid 1's thread for a vCPU.
        let me = std::process::id() as i32;
        let vcpus = [
            VcpuThread {
                cpu_index: 0,
                thread_id: me,
            },
            VcpuThread {
                cpu_index: 1,
                thread_id: 1,
            },
        ];
        let e = pin(me, &p, &vcpus, &[], Path::new("/proc")).unwrap_err();
        assert!(matches!(e, PinError::NotQemus { thread_id: 1, .. }), "{e}");
        let before = std::fs::read_to_string("/proc/self/status").unwrap();
        let allowed = |s: &str| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .map(str::to_string)
        };
        let now = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(allowed(&before), allowed(&now), "nothing was pinned");
    }
}
