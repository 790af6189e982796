//! The GuestOS VM's cgroup: QEMU and every thread it starts are confined to the plan's host
//! threads (`cpuset.cpus`: vCPUs, emulator, I/O threads) and nodes (`cpuset.mems`: the guest
//! nodes' host nodes; under SEV-SNP this is what binds guest_memfd's private memory), with a
//! memory limit on what is not hugetlb. cgroup v2 (HostOS: systemd, the service's own cgroup
//! delegated) or v1 (hybrid hosts such as CI's: the cpuset and memory hierarchies).

use crate::plan::{MemoryBacking, Plan};
use crate::topology::sysfs::format_cpulist;
use std::path::{Path, PathBuf};

/// QEMU's own memory beside the guest's: 1 GiB and 2% of the guest's.
const OVERHEAD_BYTES: u64 = 1 << 30;
const GIB: u64 = 1 << 30;

/// Which cgroup hierarchy a machine has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// The unified hierarchy, mounted at this directory.
    V2(PathBuf),
    /// Separate cpuset and memory hierarchies.
    V1 { cpuset: PathBuf, memory: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{mount}: neither a cgroup v2 hierarchy with cpuset and memory nor cgroup v1 cpuset and memory hierarchies\n  hint: HostOS mounts cgroup2 at /sys/fs/cgroup; check that the cpuset and memory controllers are enabled")]
    NoHierarchy { mount: String },
    #[error("a delegated cgroup needs the unified hierarchy (cgroup v2); this machine has cgroup v1 cpuset and memory hierarchies\n  hint: leave out --cgroup-delegated (the VM's cgroup then goes below --cgroup-parent)")]
    NotDelegable,
    #[error("/proc/self/cgroup names no cgroup v2 (no `0::` line)\n  hint: a delegated cgroup needs the unified hierarchy")]
    NoOwnV2,
    #[error("{path}: another VM runs in this cgroup (processes {pids})\n  hint: stop it first (`plinth-host guest stop`), or give this launch another --cgroup-parent")]
    Busy { path: String, pids: String },
    #[error("{path}: {action}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// What the VM's cgroup allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub cpus: Vec<u32>,
    pub mems: Vec<u32>,
    pub memory_max_bytes: u64,
}

impl Limits {
    /// The plan's host threads and nodes; memory: QEMU's overhead, plus the guest's memory
    /// when it is not on hugepages (hugetlb pages are not charged to the memory controller).
    pub fn of(plan: &Plan) -> Limits {
        let p = &plan.placement;
        let mut cpus: Vec<u32> = p
            .vcpu_pins
            .iter()
            .map(|v| v.host_cpu)
            .chain(p.emulator_cpus.iter().copied())
            .chain(p.iothread_cpus.iter().copied())
            .collect();
        cpus.sort_unstable();
        cpus.dedup();
        let mut mems: Vec<u32> = p.guest_nodes.iter().map(|g| g.host_node).collect();
        mems.sort_unstable();
        mems.dedup();
        let guest = plan.memory_gib * GIB;
        let charged = match p.memory {
            MemoryBacking::Hugepages1G | MemoryBacking::Hugepages2M => 0,
            MemoryBacking::GuestMemfd | MemoryBacking::Memfd => guest,
        };
        Limits {
            cpus,
            mems,
            memory_max_bytes: charged + OVERHEAD_BYTES + guest / 50,
        }
    }
}

impl Hierarchy {
    /// The hierarchy mounted under `mount` (normally /sys/fs/cgroup).
    pub fn detect(mount: &Path) -> Result<Hierarchy, CgroupError> {
        if let Ok(controllers) = std::fs::read_to_string(mount.join("cgroup.controllers")) {
            let has = |c: &str| controllers.split_whitespace().any(|w| w == c);
            if has("cpuset") && has("memory") {
                return Ok(Hierarchy::V2(mount.to_path_buf()));
            }
        }
        let (cpuset, memory) = (mount.join("cpuset"), mount.join("memory"));
        if cpuset.join("cpuset.cpus").is_file() && memory.join("memory.limit_in_bytes").is_file() {
            return Ok(Hierarchy::V1 { cpuset, memory });
        }
        Err(CgroupError::NoHierarchy {
            mount: mount.display().to_string(),
        })
    }
}

/// The cgroup a process is in on the unified hierarchy (relative to its mount), from the
/// `0::` line of its `/proc/<pid>/cgroup`; None on a machine without one.
pub fn own_v2(proc_cgroup: &str) -> Option<PathBuf> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim().trim_start_matches('/')))
}

/// Take a cgroup delegated to this service (systemd's `Delegate=yes`) for the VM: move
/// process `pid` from `own` (relative to the v2 mount) into its leaf `leaf`, so that `own`
/// holds no process and may give its children the cpuset and memory controllers (cgroup
/// v2 lets no cgroup both hold processes and enable controllers for its children). The
/// VM's cgroup is then made beside the leaf, with `own` as its parent.
pub fn enter_delegated_leaf(
    h: &Hierarchy,
    own: &Path,
    leaf: &str,
    pid: u32,
) -> Result<(), CgroupError> {
    let Hierarchy::V2(root) = h else {
        return Err(CgroupError::NotDelegable);
    };
    let dir = root.join(own).join(leaf);
    mkdir(&dir)?;
    write(&dir.join("cgroup.procs"), &pid.to_string())
}

/// This process's own cgroup, delegated to it, taken for the VM as [`enter_delegated_leaf`]
/// does (this process goes into its leaf `leaf`); the cgroup v2 hierarchy is at `mount`.
/// Returns the own cgroup, relative to the mount: the VM's cgroup's parent.
pub fn take_delegated(mount: &Path, leaf: &str) -> Result<PathBuf, CgroupError> {
    let h = Hierarchy::detect(mount)?;
    let proc = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(proc).map_err(|source| CgroupError::Io {
        action: "read",
        path: proc.display().to_string(),
        source,
    })?;
    let own = own_v2(&text).ok_or(CgroupError::NoOwnV2)?;
    enter_delegated_leaf(&h, &own, leaf, std::process::id())?;
    Ok(own)
}

/// A cgroup made for the VM (one directory per hierarchy).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// Make `<parent>/<name>` (parent relative to the hierarchy's root) with `limits`.
    pub fn create(
        h: &Hierarchy,
        parent: &Path,
        name: &str,
        limits: &Limits,
    ) -> Result<Cgroup, CgroupError> {
        let (cpus, mems) = (format_cpulist(&limits.cpus), format_cpulist(&limits.mems));
        let memory = limits.memory_max_bytes.to_string();
        match h {
            Hierarchy::V2(root) => {
                let parent = root.join(parent);
                // The controllers must be on in the parent for its children.
                write(&parent.join("cgroup.subtree_control"), "+cpuset +memory")?;
                let dir = parent.join(name);
                mkdir_vacant(&dir)?;
                write(&dir.join("cpuset.cpus"), &cpus)?;
                write(&dir.join("cpuset.mems"), &mems)?;
                write(&dir.join("memory.max"), &memory)?;
                Ok(Cgroup { dirs: vec![dir] })
            }
            Hierarchy::V1 {
                cpuset,
                memory: mem,
            } => {
                let c = cpuset.join(parent).join(name);
                mkdir_vacant(&c)?;
                // v1 takes no task before both are set.
                write(&c.join("cpuset.cpus"), &cpus)?;
                write(&c.join("cpuset.mems"), &mems)?;
                let m = mem.join(parent).join(name);
                mkdir_vacant(&m)?;
                write(&m.join("memory.limit_in_bytes"), &memory)?;
                Ok(Cgroup { dirs: vec![c, m] })
            }
        }
    }

    /// Move process `pid` (and so the threads it starts later) into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The cgroup's directories.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Remove the cgroup (its processes gone).
    pub fn remove(self) -> Result<(), CgroupError> {
        self.try_remove()
    }

    /// Remove the cgroup's directories that are still there (busy while a process of it
    /// is still exiting: the caller may try again).
    pub fn try_remove(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing", d)(e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Make cgroup `dir`, or take the one a killed supervisor left (its QEMU died with it, by its
/// death signal), but never one whose processes still run: another VM's.
fn mkdir_vacant(dir: &Path) -> Result<(), CgroupError> {
    mkdir(dir)?;
    let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io("reading", &dir.join("cgroup.procs"))(e)),
    };
    let pids: Vec<&str> = procs.split_whitespace().collect();
    if pids.is_empty() {
        Ok(())
    } else {
        Err(CgroupError::Busy {
            path: dir.display().to_string(),
            pids: pids.join(" "),
        })
    }
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(io("creating", dir)(e)),
        _ => Ok(()),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io("writing", path))
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.display().to_string();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, VmRequest};
    use crate::topology::fixture::Machine;
    use crate::topology::sysfs;

    fn nps4_plan(vcpus: u32) -> Plan {
        let dir = tempfile::tempdir().unwrap();
        Machine::two_socket_nps4().write(dir.path()).unwrap();
        let t = sysfs::read(dir.path()).unwrap();
        let disks = vec!["nvme1n1".to_string()];
        plan(&t, &VmRequest::plain(vcpus, 96, disks)).unwrap()
    }

    #[test]
    fn limits_cover_the_plan_and_nothing_else() {
        let p = nps4_plan(40);
        let l = Limits::of(&p);
        let pl = &p.placement;
        for c in pl
            .vcpu_pins
            .iter()
            .map(|v| v.host_cpu)
            .chain(pl.emulator_cpus.iter().copied())
            .chain(pl.iothread_cpus.iter().copied())
        {
            assert!(l.cpus.contains(&c));
        }
        assert_eq!(
            l.cpus.len(),
            40 + pl.emulator_cpus.len() + pl.iothread_cpus.len()
        );
        assert!(l.cpus.iter().all(|c| !pl.host_cpus.contains(c)));
        assert_eq!(l.mems, vec![4, 5]);
        // Hugepages are not charged: QEMU's overhead only.
        assert_eq!(l.memory_max_bytes, GIB + 96 * GIB / 50);
    }

    #[test]
    fn v2_and_v1_trees_are_written() {
        let p = nps4_plan(8);
        let l = Limits::of(&p);
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids",
        )
        .unwrap();
        std::fs::create_dir(root.path().join("plinth-host.service")).unwrap();
        let h = Hierarchy::detect(root.path()).unwrap();
        assert_eq!(h, Hierarchy::V2(root.path().to_path_buf()));
        let cg = Cgroup::create(&h, Path::new("plinth-host.service"), "guest-os", &l).unwrap();
        let dir = root.path().join("plinth-host.service/guest-os");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("cpuset.cpus"), format_cpulist(&l.cpus));
        assert_eq!(read("cpuset.mems"), "5");
        assert_eq!(read("memory.max"), l.memory_max_bytes.to_string());
        assert_eq!(
            std::fs::read_to_string(
                root.path()
                    .join("plinth-host.service/cgroup.subtree_control")
            )
            .unwrap(),
            "+cpuset +memory"
        );
        cg.add(4242).unwrap();
        assert_eq!(read("cgroup.procs"), "4242");

        let v1 = tempfile::tempdir().unwrap();
        for (d, f) in [
            ("cpuset", "cpuset.cpus"),
            ("memory", "memory.limit_in_bytes"),
        ] {
            std::fs::create_dir(v1.path().join(d)).unwrap();
            std::fs::write(v1.path().join(d).join(f), "").unwrap();
        }
        let h = Hierarchy::detect(v1.path()).unwrap();
        assert!(matches!(h, Hierarchy::V1 { .. }));
        let cg = Cgroup::create(&h, Path::new(""), "guest-os", &l).unwrap();
        assert_eq!(cg.dirs().len(), 2);
        let limit =
            std::fs::read_to_string(v1.path().join("memory/guest-os/memory.limit_in_bytes"));
        assert_eq!(limit.unwrap(), l.memory_max_bytes.to_string());

        let none = tempfile::tempdir().unwrap();
        let err = Hierarchy::detect(none.path()).unwrap_err();
        assert!(err.to_string().contains("neither a cgroup v2"), "{err}");
    }

    #[test]
    fn a_delegated_cgroup_is_taken_through_a_leaf() {
        let own = own_v2("12:cpuset:/\n0::/system.slice/plinth-guest.service\n");
        assert_eq!(
            own,
            Some(PathBuf::from("system.slice/plinth-guest.service"))
        );
        assert_eq!(own_v2("9:memory:/\n"), None);
        let root = tempfile::tempdir().unwrap();
        let own = own.unwrap();
        std::fs::create_dir_all(root.path().join(&own)).unwrap();
        let h = Hierarchy::V2(root.path().to_path_buf());
        enter_delegated_leaf(&h, &own, "supervisor", 4242).unwrap();
        let procs = root.path().join(&own).join("supervisor/cgroup.procs");
        assert_eq!(std::fs::read_to_string(procs).unwrap(), "4242");
        let v1 = Hierarchy::V1 {
            cpuset: root.path().join("cpuset"),
            memory: root.path().join("memory"),
        };
        let err = enter_delegated_leaf(&v1, &own, "supervisor", 1).unwrap_err();
        assert!(
            err.to_string().contains("needs the unified hierarchy"),
            "{err}"
        );
    }

    #[test]
    fn a_cgroup_another_vm_runs_in_is_not_taken() {
        let l = Limits::of(&nps4_plan(8));
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpuset memory").unwrap();
        let h = Hierarchy::V2(root.path().to_path_buf());
        // Left by a killed supervisor, empty: taken over.
        std::fs::create_dir(root.path().join("guest-os")).unwrap();
        std::fs::write(root.path().join("guest-os/cgroup.procs"), "").unwrap();
        Cgroup::create(&h, Path::new(""), "guest-os", &l).unwrap();
        // Another VM's QEMU in it: refused, nothing changed.
        std::fs::write(root.path().join("guest-os/cgroup.procs"), "4242\n4243\n").unwrap();
        std::fs::write(root.path().join("guest-os/cpuset.cpus"), "9").unwrap();
        let err = Cgroup::create(&h, Path::new(""), "guest-os", &l).unwrap_err();
        assert!(err.to_string().contains("processes 4242 4243"), "{err}");
        let cpus = std::fs::read_to_string(root.path().join("guest-os/cpuset.cpus")).unwrap();
        assert_eq!(cpus, "9");
    }
}
