//! `plinth-host guest launch` with a real QEMU (TCG), planned in the development layout on
//! this machine's own topology (two guest NUMA nodes on its one host node): the supervisor
//! starts QEMU as nobody, under seccomp, in a cgroup of its own, pins every thread as the
//! plan says (read back from /proc), restarts QEMU when it is killed, and `guest stop` ends
//! it all, the cgroup removed (needs root), core dumps off and the state directory laid out
//! as the supervisor's doc says; and the jail step alone sets QEMU's locked-memory limit
//! before the drop. The disk is blank: OVMF finds nothing to boot, which is enough
//! here; the release tier boots GuestOS this way.

use plinth_testkit::procfs::{status_field, wait_for_exec};
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = env!("CARGO_BIN_EXE_plinth-host");

fn status(state: &Path) -> Value {
    let out = Command::new(HOST)
        .args(["guest", "status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Wait until status.json says `state` for start `start`.
fn wait_for(state: &Path, launch: &mut Child, wanted: &str, start: u64) -> Value {
    let t = Instant::now();
    loop {
        let s = status(state);
        if s["state"] == wanted && s["starts"] == start {
            return s;
        }
        if let Ok(Some(code)) = launch.try_wait() {
            panic!("guest launch ended ({code}) before {wanted}: {s}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no {wanted} in 120 s: {s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Launches of this file take turns: each makes the VM's cgroup (`plinth-guest-os`, below
/// the default parent), which one VM at a time may hold.
static ONE_VM_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_vm() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn launch_pins_sandboxes_restarts_and_stops() {
    let _vm = one_vm();
    assert!(
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists(),
        "needs Debian's OVMF (ci/setup installs ovmf)"
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let state = dir.path().join("state");
    let plan_args = [
        "--vcpus",
        "2",
        "--memory",
        "2",
        "--development",
        "--guest-nodes",
        "2",
        "--disk",
        disk.to_str().unwrap(),
    ];
    let plan = Command::new(HOST)
        .args(["guest", "plan", "--json"])
        .args(plan_args)
        .output()
        .unwrap();
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["guest_nodes"].as_array().unwrap().len(), 2);
    let mut launch = Command::new(HOST)
        .args(["guest", "launch"])
        .args(plan_args)
        .args([
            "--accel",
            "tcg",
            "--user",
            "nobody",
            "--stop-timeout",
            "5",
            "--state-dir",
        ])
        .arg(&state)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let s = wait_for(&state, &mut launch, "running", 1);
        let pid = s["qemu_pid"].as_i64().unwrap();
        // Every pinned thread's affinity, read here from /proc, is the plan's.
        let threads = s["threads"].as_array().unwrap();
        for pin in plan["vcpu_pins"].as_array().unwrap() {
            let role = format!("vcpu {}", pin["vcpu"]);
            let t = threads.iter().find(|t| t["role"] == role.as_str()).unwrap();
            let allowed = status_field(t["thread_id"].as_i64().unwrap(), "Cpus_allowed_list:");
            assert_eq!(allowed, pin["host_cpu"].to_string(), "{role}");
        }
        let io = threads
            .iter()
            .find(|t| t["role"] == "iothread io0")
            .unwrap();
        assert_eq!(
            status_field(io["thread_id"].as_i64().unwrap(), "Cpus_allowed_list:"),
            plan["iothread_cpus"][0].to_string()
        );
        assert_eq!(
            status_field(pid, "Cpus_allowed_list:"),
            plan["emulator_cpus"][0].to_string()
        );
        // Unprivileged, no supplementary group, seccomp filter mode, its own cgroup.
        assert_eq!(status_field(pid, "Uid:"), "65534 65534 65534 65534");
        // The real gid differs (the jail: not dumpable after exec); files go by the others.
        assert_eq!(status_field(pid, "Gid:"), "65533 65534 65534 65534");
        let mem = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&mem),
            0,
            "QEMU is dumpable"
        );
        assert_eq!(status_field(pid, "Groups:"), "");
        assert_eq!(status_field(pid, "Seccomp:"), "2");
        // No core dumps; the state directory root's, QEMU's directory and console its own.
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let core = limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap();
        assert_eq!(
            core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
            ["0", "0"]
        );
        let owner = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(p).unwrap();
            (m.uid(), m.mode() & 0o7777)
        };
        assert_eq!(owner(&state), (0, 0o755));
        assert_eq!(owner(&state.join("qemu")), (65534, 0o700));
        assert_eq!(owner(&state.join("qemu/OVMF_VARS.fd")), (65534, 0o600));
        assert_eq!(owner(&state.join("console.log")), (65534, 0o600));
        assert_eq!(owner(&state.join("status.json")), (0, 0o644));
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert!(
            cgroups.lines().any(|l| l.ends_with("/plinth-guest-os")),
            "{cgroups}"
        );
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(
            args.iter()
                .filter(|a| a.starts_with("node,nodeid="))
                .count(),
            2
        );
        // Killed: started again (on-failure), pinned again.
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        let s = wait_for(&state, &mut launch, "running", 2);
        assert_ne!(s["qemu_pid"].as_i64().unwrap(), pid);
        assert_eq!(s["last_exit"], "killed by signal 9");
        let again = s["qemu_pid"].as_i64().unwrap();
        assert_eq!(status_field(again, "Seccomp:"), "2");
        // Stopped: power-down asked, QEMU quits, the supervisor ends cleanly.
        let stop = Command::new(HOST)
            .args(["guest", "stop", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        assert!(
            stop.status.success(),
            "{}",
            String::from_utf8_lossy(&stop.stderr)
        );
        let code = launch.wait().unwrap();
        assert!(code.success(), "guest launch: {code}");
        let s = status(&state);
        assert_eq!(s["state"], "stopped");
        assert_eq!(s["supervisor_alive"], false);
        for d in s["cgroup"].as_array().unwrap() {
            assert!(!Path::new(d.as_str().unwrap()).exists(), "{d} left behind");
        }
        assert!(
            !Path::new(&format!("/proc/{again}")).exists(),
            "QEMU {again} left running"
        );
        let st = Command::new(HOST)
            .args(["guest", "status", "--state-dir"])
            .arg(&state)
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(3), "status of a stopped VM");
    }));
    if let Err(panic) = result {
        let _ = launch.kill();
        let out = launch.wait_with_output().unwrap();
        eprintln!(
            "guest launch said:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        eprintln!(
            "{}",
            std::fs::read_to_string(state.join("qemu.log")).unwrap_or_default()
        );
        std::panic::resume_unwind(panic);
    }
}

/// The "Max locked memory" of a /proc/PID/limits: soft, hard, unit.
fn memlock(limits: &str) -> Vec<&str> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .unwrap();
    line.split_whitespace().skip(3).collect()
}

/// The jail step alone: the QEMU it becomes runs as nobody with the locked-memory limit a
/// VFIO plan asks for, set before the drop (QEMU could not change it after). Half the
/// limit this test runs under: lowering needs no CAP_SYS_RESOURCE, which CI may lack.
#[test]
fn the_jail_sets_the_locked_memory_limit_before_dropping_root() {
    let ours = std::fs::read_to_string("/proc/self/limits").unwrap();
    let bytes: u64 = memlock(&ours)[1].parse::<u64>().map_or(9 << 30, |b| b / 2);
    let mut qemu = Command::new(HOST)
        .args(["guest", "exec-qemu", "--uid", "65534", "--gid", "65534"])
        .args(["--memlock", &bytes.to_string(), "--"])
        .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = wait_for_exec(&mut qemu, "qemu-system", Duration::from_secs(30));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let uid = status_field(pid, "Uid:");
    qemu.kill().unwrap();
    qemu.wait().unwrap();
    assert_eq!(
        memlock(&limits),
        [bytes.to_string().as_str(), &bytes.to_string(), "bytes"],
        "{limits}"
    );
    assert_eq!(uid, "65534 65534 65534 65534");
}

/// A disk QEMU's user cannot reach (a private directory above it): the supervisor names
/// the directory before QEMU starts, and, when QEMU then fails to open it, reports that
/// QEMU ended at once rather than waiting out the QMP socket's 60 s.
#[test]
fn a_disk_qemus_user_cannot_reach_is_named_and_the_failure_is_prompt() {
    let _vm = one_vm();
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let disk = private.join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let state = dir.path().join("state");
    let started = Instant::now();
    let out = Command::new(HOST)
        .args(["guest", "launch", "--vcpus", "1", "--memory", "1"])
        .args(["--development", "--disk"])
        .arg(&disk)
        .args(["--accel", "tcg", "--user", "nobody", "--restart", "never"])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    let real = std::fs::canonicalize(&private).unwrap();
    assert!(
        text.contains(&format!(
            "warning: {}: QEMU's user (uid 65534, gid 65534) cannot reach it: {} is mode 700",
            disk.display(),
            real.display()
        )),
        "{text}"
    );
    let s = status(&state);
    assert_eq!(s["state"], "failed", "{s}");
    let why = s["last_exit"].as_str().unwrap_or_default();
    assert!(why.starts_with("QEMU ended before its QMP socket"), "{s}");
    assert!(
        elapsed < Duration::from_secs(50),
        "the failure took {elapsed:?}: {s}"
    );
}
