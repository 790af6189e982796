//! A real QEMU (TCG) started with the command line of a two-guest-node plan: QMP reports a
//! thread per vCPU and per I/O thread, the pinning puts each where the plan says (read back
//! from /proc), the guest sees the plan's NUMA layout, QEMU runs as nobody, under seccomp,
//! in a cgroup of its own (needs root).
//!
//! The plan is written by hand: this machine (2 threads, 1 node) is too small for the
//! planner's reservations, so here the two guest nodes share host node 0 and the vCPUs share
//! the host's threads with QEMU's.

use plinth_host::launch::cgroup::{Cgroup, Hierarchy, Limits};
use plinth_host::launch::pin::{affinity, pin, Role};
use plinth_host::launch::qemu::{args, command, Accel, Firmware, Launch, RunAs};
use plinth_host::launch::qmp::Qmp;
use plinth_host::plan::{Boot, DiskPlan, GuestNode, MemoryBacking, Placement, Plan, VcpuPin};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn hand_plan(disk: &Path) -> Plan {
    Plan {
        vcpus: 2,
        memory_gib: 2,
        home_node: 0,
        placement: Placement {
            threads_per_core: 1,
            guest_nodes: vec![
                GuestNode {
                    id: 0,
                    host_node: 0,
                    vcpus: vec![0],
                    memory_gib: 1,
                },
                GuestNode {
                    id: 1,
                    host_node: 0,
                    vcpus: vec![1],
                    memory_gib: 1,
                },
            ],
            vcpu_pins: vec![
                VcpuPin {
                    vcpu: 0,
                    host_cpu: 1,
                    guest_node: 0,
                },
                VcpuPin {
                    vcpu: 1,
                    host_cpu: 0,
                    guest_node: 1,
                },
            ],
            emulator_cpus: vec![0],
            iothread_cpus: vec![1],
            host_cpus: vec![],
            // Plain memfd (this machine has no hugepages).
            memory: MemoryBacking::GuestMemfd,
        },
        disks: vec![DiskPlan::VirtioBlk {
            path: disk.display().to_string(),
            pci: String::new(),
            node: None,
            iothread: 0,
            iothread_cpu: 1,
            queues: 2,
            aio: "io_uring",
            direct: true,
        }],
        boot: Boot::Disk,
        reasons: vec![],
    }
}

#[test]
fn qemu_runs_the_plan_pinned_and_sandboxed() {
    if !Path::new(OVMF_CODE).exists()
        || std::thread::available_parallelism().map_or(1, |n| n.get()) < 2
    {
        panic!("needs {OVMF_CODE} (ci/setup installs ovmf) and 2 host threads");
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let plan = hand_plan(&disk);
    let launch = Launch {
        accel: Accel::Tcg,
        firmware: Firmware::Pflash {
            code: OVMF_CODE.into(),
            vars,
        },
        qmp_socket: dir.path().join("qmp.sock"),
        console_log: dir.path().join("console.log"),
    };
    // As nobody (HostOS has a system user of its own): the files it opens are its.
    let nobody = RunAs {
        uid: 65534,
        gid: 65534,
    };
    for p in [dir.path(), &disk, &dir.path().join("vars.fd")] {
        std::os::unix::fs::chown(p, Some(nobody.uid), Some(nobody.gid)).unwrap();
    }
    let mut qemu = command(&args(&plan, &launch).unwrap(), Some(nobody))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = qemu.id() as i32;
    // Its own cgroup (root; cgroup v2, or v1 as on CI's hybrid hosts).
    let hierarchy = Hierarchy::detect(Path::new("/sys/fs/cgroup")).unwrap();
    let name = format!("plinth-test-{}", std::process::id());
    let cgroup = Cgroup::create(&hierarchy, Path::new(""), &name, &Limits::of(&plan)).unwrap();
    let result = std::panic::catch_unwind(|| {
        cgroup.add(pid).unwrap();
        let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            membership.lines().any(|l| l.ends_with(&format!("/{name}"))),
            "{membership}"
        );
        let mut qmp = Qmp::connect(&launch.qmp_socket, Duration::from_secs(30)).unwrap();
        let vcpus = qmp.vcpu_threads().unwrap();
        let iothreads = qmp.iothreads().unwrap();
        assert_eq!(vcpus.len(), 2);
        assert_eq!(iothreads.len(), 1);
        let guest_numa = qmp
            .execute(
                "human-monitor-command",
                Some(serde_json::json!({"command-line": "info numa"})),
            )
            .unwrap();
        let numa = guest_numa.as_str().unwrap();
        let lines: Vec<&str> = numa.lines().map(str::trim).collect();
        assert!(
            lines.contains(&"2 nodes")
                && lines.contains(&"node 0 cpus: 0")
                && lines.contains(&"node 1 cpus: 1"),
            "{numa}"
        );
        let pinned = pin(pid, &plan, &vcpus, &iothreads, Path::new("/proc")).unwrap();
        let proc_root = Path::new("/proc");
        for p in &pinned {
            assert_eq!(
                affinity(pid, p.thread_id, proc_root).unwrap(),
                p.cpus,
                "{p:?}"
            );
        }
        let host_of = |role: Role| pinned.iter().find(|p| p.role == role).unwrap().cpus.clone();
        assert_eq!(host_of(Role::Vcpu(0)), [1]);
        assert_eq!(host_of(Role::Vcpu(1)), [0]);
        assert_eq!(host_of(Role::IoThread("io0".into())), [1]);
        assert!(pinned
            .iter()
            .any(|p| p.role == Role::Emulator && p.thread_id == pid));
        // Unprivileged: every uid of the process is nobody's, no supplementary group.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(field("Uid:"), "65534 65534 65534 65534");
        assert_eq!(field("Gid:"), "65534 65534 65534 65534");
        assert_eq!(field("Groups:"), "");
        // -sandbox on: seccomp filter mode (2).
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]),
            "{status}"
        );
        assert_eq!(qmp.status().unwrap(), "running");
        qmp.quit().unwrap();
    });
    if result.is_err() {
        let _ = qemu.kill();
    }
    let out = qemu.wait_with_output().unwrap();
    cgroup.remove().unwrap();
    if let Err(panic) = result {
        eprintln!("qemu: {}", String::from_utf8_lossy(&out.stderr));
        std::panic::resume_unwind(panic);
    }
}
