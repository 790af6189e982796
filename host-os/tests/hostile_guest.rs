//! A hostile guest: QEMU is treated as compromised (a guest escape lands in it), so
//! whatever its user (`nobody`, uid 65534, here) can do must not trick root, the
//! supervisor. Each test is one attack, with real tools (setpriv, QEMU, prlimit), as root:
//! - links QEMU's user plants in its own directory (`<state>/qemu/`) are not followed when
//!   root prepares the next start (no root file copied over, none given away);
//! - a state directory QEMU's user can write is refused;
//! - a disk image swapped for a link to a root file is not given to QEMU's user;
//! - paths with commas cannot add options to QEMU's option strings: a real QEMU opens the
//!   literal names;
//! - a vCPU type with `,+feature` flags (or any unknown model) is refused, exit 2;
//! - the jail: core dumps off (soft and hard) in the QEMU it becomes, and QEMU is not
//!   started when the supervisor is no longer its parent.

use plinth_host::launch::access;
use plinth_host::launch::qemu::{self, Accel, DiskSettings, Firmware, Launch, RunAs};
use plinth_host::launch::qmp::Qmp;
use plinth_host::launch::supervise::prepare_start;
use plinth_testkit::procfs::{status_field, wait_for_exec};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = env!("CARGO_BIN_EXE_plinth-host");
const NOBODY: RunAs = RunAs {
    uid: 65534,
    gid: 65534,
};
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

fn need_root() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "these tests run as root (they change owners and drop to nobody)"
    );
}

/// Run `args` as nobody (uid and gid 65534, no supplementary groups), as QEMU runs.
fn as_nobody(args: &[&str]) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args)
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        out.status.success(),
        "as nobody: {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown(p: &Path, to: RunAs) {
    std::os::unix::fs::chown(p, Some(to.uid), Some(to.gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A root-owned file with `mode` and `text`.
fn root_file(p: &Path, mode: u32, text: &str) {
    std::fs::write(p, text).unwrap();
    chmod(p, mode);
}

/// Owner, group, permission bits and content of `p` (not followed).
fn seen(p: &Path) -> (u32, u32, u32, String) {
    let m = std::fs::symlink_metadata(p).unwrap();
    assert!(m.is_file(), "{}: not a regular file", p.display());
    (
        m.uid(),
        m.gid(),
        m.mode() & 0o7777,
        std::fs::read_to_string(p).unwrap(),
    )
}

/// A directory nobody can reach (the temporary directory is root's, 0700), holding a
/// state directory (root's, 0755) and `<state>/qemu` as a previous start left it
/// (nobody's).
fn tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o755);
    std::fs::create_dir(state.join("qemu")).unwrap();
    chown(&state.join("qemu"), NOBODY);
    (dir, state)
}

/// QEMU's user plants, in its own directory, the vars copy's name as a link to a root
/// file (root would copy the template over it) and another link to a root-only file
/// (root would give it to nobody while giving away the directory's entries). The next
/// start's setup follows neither: both root files keep owner, mode and content, and the
/// vars copy is a fresh regular file, nobody's.
#[test]
fn links_planted_in_qemus_directory_are_not_followed() {
    need_root();
    let (dir, state) = tree();
    let secret = dir.path().join("secret");
    let victim = dir.path().join("victim");
    root_file(&secret, 0o600, "root only\n");
    root_file(&victim, 0o644, "keep\n");
    let template = dir.path().join("vars-template.fd");
    root_file(&template, 0o644, "VARS\n");
    let qemu_dir = state.join("qemu");
    as_nobody(&[
        "ln",
        "-s",
        victim.to_str().unwrap(),
        qemu_dir.join("OVMF_VARS.fd").to_str().unwrap(),
    ]);
    as_nobody(&[
        "ln",
        "-s",
        secret.to_str().unwrap(),
        qemu_dir.join("evil").to_str().unwrap(),
    ]);
    let (s0, v0) = (seen(&secret), seen(&victim));
    let got = prepare_start(&state, Some(NOBODY), Some(&template));
    assert_eq!(seen(&secret), s0, "the root-only file changed");
    assert_eq!(seen(&victim), v0, "the root file changed");
    let files = got.unwrap();
    assert_eq!(files.qemu_dir, qemu_dir);
    assert_eq!(files.qmp_socket, qemu_dir.join("qmp.sock"));
    let vars = files.vars.unwrap();
    assert_eq!(vars, qemu_dir.join("OVMF_VARS.fd"));
    assert_eq!(seen(&vars), (65534, 65534, 0o600, "VARS\n".into()));
    // A fresh directory, QEMU's alone: nothing planted is left in it.
    let m = std::fs::symlink_metadata(&qemu_dir).unwrap();
    assert!(m.is_dir());
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (65534, 65534, 0o700));
    let names: Vec<String> = std::fs::read_dir(&qemu_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["OVMF_VARS.fd"]);
}

/// A state directory QEMU's user owns (it could swap any name in it for a link) is
/// refused before anything is made in it.
#[test]
fn a_state_directory_qemus_user_can_write_is_refused() {
    need_root();
    let (dir, state) = tree();
    chown(&state, NOBODY);
    let victim = dir.path().join("victim");
    root_file(&victim, 0o644, "keep\n");
    as_nobody(&[
        "ln",
        "-s",
        victim.to_str().unwrap(),
        state.join("qemu/OVMF_VARS.fd").to_str().unwrap(),
    ]);
    let template = dir.path().join("vars-template.fd");
    root_file(&template, 0o644, "VARS\n");
    let e = prepare_start(&state, Some(NOBODY), Some(&template))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("{}: owned by uid 65534", state.display())),
        "{e}"
    );
    assert!(e.contains("hint:"), "{e}");
    assert_eq!(seen(&victim), (0, 0, 0o644, "keep\n".into()));
}

/// A development disk image in a directory QEMU's user can write: QEMU swaps the image
/// for a link to a root-only file (or a hard link to it, where the kernel lets it).
/// Giving the disk to QEMU's user before the next start refuses it; the root file keeps
/// its owner.
#[test]
fn a_disk_image_swapped_for_a_link_is_not_given_away() {
    need_root();
    let (dir, _state) = tree();
    let secret = dir.path().join("secret");
    root_file(&secret, 0o600, "root only\n");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    chown(&images, NOBODY);
    let disk = images.join("disk.img");
    as_nobody(&["ln", "-s", secret.to_str().unwrap(), disk.to_str().unwrap()]);
    let e = access::give(std::slice::from_ref(&disk), NOBODY)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("giving {}", disk.display())), "{e}");
    assert_eq!(seen(&secret), (0, 0, 0o600, "root only\n".into()));
    // A hard link (root's own here: protected_hardlinks keeps nobody from making one).
    std::fs::remove_file(&disk).unwrap();
    std::fs::hard_link(&secret, &disk).unwrap();
    let e = access::give(std::slice::from_ref(&disk), NOBODY)
        .unwrap_err()
        .to_string();
    assert!(e.contains("hard link"), "{e}");
    assert_eq!(seen(&secret), (0, 0, 0o600, "root only\n".into()));
}

/// Every path of a launch under a directory named `x,file=evil` with names like
/// `code,readonly=off.fd`: the option strings double each comma, and a real QEMU (TCG,
/// paused) opens exactly those files: the firmware's pflash drives and the disk (as QMP's
/// `query-block` reports them), the console log and the QMP socket.
#[test]
fn commas_in_paths_do_not_add_options_to_qemu() {
    need_root();
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("x,file=evil");
    std::fs::create_dir(&odd).unwrap();
    let code = odd.join("code,readonly=off.fd");
    let vars = odd.join("vars,unit=0.fd");
    std::fs::copy(OVMF_CODE, &code).unwrap();
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let disk = odd.join("disk,format=qcow2.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let topology = plinth_host::topology::sysfs::read(Path::new("/")).unwrap();
    let plan = plinth_host::plan::plan(
        &topology,
        &plinth_host::plan::VmRequest {
            vcpus: 1,
            memory_gib: 1,
            disks: vec![disk.display().to_string()],
            sev: None,
            layout: plinth_host::plan::Layout::Development { guest_nodes: 1 },
        },
    )
    .unwrap();
    for settings in [DiskSettings::Planned, DiskSettings::QemuDefault] {
        let qmp_socket = odd.join(format!("qmp,server=off,{settings:?}.sock"));
        let console_log = odd.join(format!("console,append=off,{settings:?}.log"));
        let launch = Launch {
            accel: Accel::Tcg,
            firmware: Firmware::Pflash {
                code: code.clone(),
                vars: Some(vars.clone()),
            },
            qmp_socket: qmp_socket.clone(),
            console_log: console_log.clone(),
            disk_settings: settings,
            vtpm: None,
        };
        let mut args = qemu::args(&plan, &launch).unwrap();
        let text = args.join(" ");
        // A vTPM's socket too (only rendered: QEMU would need a swtpm there to start).
        let vtpm = odd.join(format!("swtpm,server=on,{settings:?}.sock"));
        let with_vtpm = Launch {
            vtpm: Some(vtpm.clone()),
            ..launch.clone()
        };
        let text = format!(
            "{text} {}",
            qemu::args(&plan, &with_vtpm).unwrap().join(" ")
        );
        for p in [&code, &vars, &qmp_socket, &console_log, &vtpm] {
            let doubled = p.display().to_string().replace(',', ",,");
            assert!(
                text.contains(&doubled),
                "{} not doubled in {text}",
                p.display()
            );
        }
        args.push("-S".into());
        let mut qemu = qemu::command(&args, None)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !qmp_socket.exists() {
            if let Ok(Some(code)) = qemu.try_wait() {
                let mut err = String::new();
                std::io::Read::read_to_string(qemu.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("QEMU ended ({code}) with {settings:?}: {err}\n{text}");
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no QMP socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut qmp = Qmp::connect(&qmp_socket, Duration::from_secs(30)).unwrap();
        let blocks = qmp.execute("query-block", None).unwrap();
        let _ = qmp.quit();
        qemu.wait().unwrap();
        let mut files: Vec<String> = blocks
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["inserted"]["image"]["filename"].as_str())
            .map(str::to_string)
            .collect();
        files.sort();
        let mut wanted: Vec<String> = [&code, &disk, &vars]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        wanted.sort();
        assert_eq!(files, wanted, "{settings:?}: {blocks}");
        assert!(console_log.is_file(), "{}", console_log.display());
    }
}

/// `--vcpu-type` (PLINTH_GUEST_VCPU_TYPE) reaches `-cpu`, whose string also takes
/// `,+feature` flags: a value that is not a known model is refused before anything starts,
/// exit 2, naming the option, the variable and the models allowed.
#[test]
fn an_unknown_vcpu_type_is_refused_with_exit_2() {
    for (flag, env) in [
        (Some("EPYC-Milan,+svm,-sev-snp"), None),
        (None, Some("EPYC-Milan,kvm=off")),
        (Some("qemu64"), None),
    ] {
        let mut cmd = Command::new(HOST);
        cmd.args(["guest", "launch", "--vcpus", "2", "--memory", "2"])
            .args([
                "--user",
                "no-such-user-plinth",
                "--state-dir",
                "/nonexistent",
            ]);
        if let Some(f) = flag {
            cmd.args(["--vcpu-type", f]);
        }
        if let Some(e) = env {
            cmd.env("PLINTH_GUEST_VCPU_TYPE", e);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let given = flag.or(env).unwrap();
        assert!(
            err.contains(&format!(
                "vCPU type `{given}` (--vcpu-type, PLINTH_GUEST_VCPU_TYPE) is not one of EPYC, "
            )),
            "{err}"
        );
        assert!(err.contains("EPYC-Genoa"), "{err}");
    }
}

/// The soft and hard limits of `name` in a /proc/PID/limits.
fn limit<'a>(limits: &'a str, name: &str) -> Vec<&'a str> {
    let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
    line[name.len()..].split_whitespace().take(2).collect()
}

/// The jail (`guest exec-qemu`) started with core dumps allowed (prlimit, 1 MiB) still
/// gives QEMU no core dumps: RLIMIT_CORE 0 soft and hard (nobody cannot raise it), and
/// QEMU is not dumpable after its exec: its /proc/PID files are root's (the kernel's sign
/// of a non-dumpable process), because its real gid differs from its effective one.
#[test]
fn the_jail_turns_core_dumps_off_for_good() {
    need_root();
    let mut qemu = Command::new("prlimit")
        .arg("--core=1048576:1048576")
        .arg(HOST)
        .args([
            "guest",
            "exec-qemu",
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--",
        ])
        .args(["-machine", "none", "-nodefaults", "-display", "none", "-S"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = wait_for_exec(&mut qemu, "qemu-system", Duration::from_secs(30));
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let uid = status_field(pid, "Uid:");
    let gid = status_field(pid, "Gid:");
    let proc_owner = std::fs::metadata(format!("/proc/{pid}/mem")).unwrap().uid();
    qemu.kill().unwrap();
    qemu.wait().unwrap();
    assert_eq!(limit(&limits, "Max core file size"), ["0", "0"], "{limits}");
    assert_eq!(uid, "65534 65534 65534 65534");
    assert_eq!(gid, "65533 65534 65534 65534", "real, effective, saved, fs");
    assert_eq!(proc_owner, 0, "QEMU is dumpable after exec");
}

/// The supervisor died before the jail asked for its death signal (here: the pid given as
/// the supervisor's is not the parent's): QEMU is not started, the jail says why.
#[test]
fn the_jail_does_not_start_qemu_when_the_supervisor_is_gone() {
    let out = Command::new(HOST)
        .args(["guest", "exec-qemu", "--parent", "1", "--", "-version"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the supervisor (pid 1) ended before QEMU started"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("QEMU emulator"),
        "QEMU ran"
    );
    // With the real parent, it runs.
    let out = Command::new(HOST)
        .args(["guest", "exec-qemu", "--", "-version"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("QEMU emulator"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
