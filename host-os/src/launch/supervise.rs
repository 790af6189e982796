//! Supervising the GuestOS VM: start QEMU (through the `exec-qemu` jail, paused), pin its
//! threads from QMP's thread ids, let it run; watch the serial log for GuestOS's boot report
//! (`PLINTH BOOT OK|FAILED`); restart it by policy when it dies; on a stop request, a clean
//! ACPI power-down through QMP, then `quit`, then SIGKILL. What the supervisor knows is
//! written to `status.json` in the state directory after every change, for
//! `plinth-host guest status`.
//!
//! QEMU is treated as compromised (a guest escape lands in it), so no path root opens or
//! changes can be redirected by QEMU's user. The state directory's layout:
//! - `<state>/` root's, writable by root alone (checked at every start, its ancestors too:
//!   owned by root, not writable by others unless sticky): `status.json` (written to a
//!   temporary file and renamed), `qemu.log` (QEMU's output, by descriptor) and
//!   `console.log` (the serial console; created by root, given to QEMU's user through its
//!   descriptor, then read by root only through that descriptor, never reopened by path);
//!   none of these names can be planted, since only root writes the directory;
//! - `<state>/qemu/`, QEMU's own (0700; the QMP socket, which QEMU makes, and the private
//!   copy of the firmware variables): made fresh for every start. The previous one is
//!   removed with `remove_dir_all`, which unlinks planted links without following them
//!   (std opens each level with `O_NOFOLLOW` and unlinks relative to it), and `qemu`
//!   itself cannot be swapped, being a name in `<state>`. The new one is root's until the
//!   vars copy is made in it (`O_CREAT|O_EXCL|O_NOFOLLOW`, relative to the directory's
//!   descriptor) and given by `fchown`; the directory is given last, by descriptor. Nothing
//!   in it is walked or changed by path afterwards; root only connects to the QMP socket
//!   (see [`Supervisor::start_guest`]).

use super::access;
use super::cgroup::{Cgroup, Hierarchy, Limits};
use super::pin::{affinity, pin, Role};
use super::qemu::{self, Launch, RunAs};
use super::qmp::Qmp;
use crate::plan::Plan;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fchmod, fstat, Mode};
use nix::unistd::{fchown, geteuid, Gid, Uid};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// When a QEMU that ended is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    Never,
    /// When QEMU fails or is killed; not when the guest powers itself off.
    OnFailure,
    Always,
}

/// How the supervisor runs the VM.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds status.json, console.log, qemu.log, and `qemu/` (QEMU's own: QMP socket, vars).
    pub state_dir: PathBuf,
    pub run_as: Option<RunAs>,
    /// The cgroup mount (normally /sys/fs/cgroup) and the VM cgroup's parent below it.
    pub cgroup_mount: PathBuf,
    pub cgroup_parent: PathBuf,
    /// The `plinth-host` binary whose `guest exec-qemu` becomes QEMU.
    pub jail: PathBuf,
    pub restart: Restart,
    /// Starts in a row that end before the boot report, before the supervisor gives up.
    pub max_failures: u32,
    /// How long a power-down may take before QEMU is told to quit.
    pub stop_timeout: Duration,
    /// The boot report's marker on the serial console.
    pub marker: String,
    /// Where the devices QEMU opens are looked up (`/sys`, `/dev`).
    pub roots: access::Roots,
}

/// What `status.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: State,
    pub supervisor_pid: u32,
    pub qemu_pid: Option<i32>,
    /// QEMU starts so far (1 on the first).
    pub starts: u32,
    /// The boot report line of the current start, and when it came (seconds after the start).
    pub boot_line: Option<String>,
    pub boot_seconds: Option<f64>,
    /// How the last QEMU ended.
    pub last_exit: Option<String>,
    /// QEMU's pinned threads, their affinity as read back from /proc.
    pub threads: Vec<ThreadStatus>,
    pub cgroup: Vec<PathBuf>,
    pub console_log: PathBuf,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Starting,
    /// QEMU runs; no boot report yet.
    Running,
    /// GuestOS reported `PLINTH BOOT OK`.
    Booted,
    /// GuestOS reported `PLINTH BOOT FAILED`; QEMU still runs.
    BootFailed,
    /// Waiting before the next start.
    Restarting,
    Stopping,
    Stopped,
    /// Given up (see `message`).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadStatus {
    pub thread_id: i32,
    /// `vcpu 0`, `iothread io0` or `emulator`.
    pub role: String,
    pub cpus: Vec<u32>,
}

/// Why supervision ended without a clean stop.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("{0}")]
    Setup(String),
    #[error("QEMU failed {failures} times in a row before GuestOS reported its boot; last: {last}\n  hint: see {log} and {console}")]
    GaveUp {
        failures: u32,
        last: String,
        log: String,
        console: String,
    },
}

/// Why a started QEMU did not reach a running guest (the start counts as a failure).
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{}: no QMP socket after {} s: {source}\n  hint: QEMU did not start; see its output", socket.display(), wait.as_secs())]
    NoSocket {
        socket: PathBuf,
        wait: Duration,
        source: std::io::Error,
    },
    #[error("{}: not a socket of QEMU's user (uid {uid}): refused", socket.display())]
    ForeignSocket { socket: PathBuf, uid: u32 },
    #[error("QEMU ended before its QMP socket {} answered\n  hint: see its output (qemu.log in the state directory)", socket.display())]
    EndedEarly { socket: PathBuf },
    #[error(transparent)]
    Qmp(#[from] super::qmp::QmpError),
    #[error(transparent)]
    Pin(#[from] super::pin::PinError),
}

/// Why a supervisor's status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{}: {source}\n  hint: is `plinth-host guest launch --state-dir {}` running?", path.display(), state_dir.display())]
    Unreadable {
        path: PathBuf,
        state_dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a status file: {source}", path.display())]
    NotStatus {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The state directory's status file.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Read a supervisor's status.
pub fn read_status(state_dir: &Path) -> Result<Status, StatusError> {
    let path = status_path(state_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(source) => {
            return Err(StatusError::Unreadable {
                path,
                state_dir: state_dir.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_str(&text).map_err(|source| StatusError::NotStatus { path, source })
}

/// Run the VM of `plan` as `launch` says (its QMP socket and console log are replaced by the
/// state directory's) until `stop_requested` or the restart policy ends it. `say` gets one
/// line per event, with the state it enters when it is a change of state.
pub fn supervise(
    plan: &Plan,
    launch: &Launch,
    opts: &Options,
    stop_requested: &dyn Fn() -> bool,
    say: &dyn Fn(Option<State>, &str),
) -> Result<(), SuperviseError> {
    let mut sup = Supervisor::new(plan, launch, opts, say)?;
    let mut failures = 0u32;
    loop {
        let ended = sup.run_once(stop_requested)?;
        match ended {
            Ended::Stopped(how) => {
                sup.set(State::Stopped, format!("stopped on request: {how}"));
                return Ok(());
            }
            Ended::Exited { clean, booted, how } => {
                failures = if booted { 0 } else { failures + 1 };
                let again = match opts.restart {
                    Restart::Never => false,
                    Restart::OnFailure => !clean,
                    Restart::Always => true,
                };
                if !again {
                    let state = if clean { State::Stopped } else { State::Failed };
                    sup.set(
                        state,
                        format!("QEMU ended ({how}); restart policy {:?}", opts.restart),
                    );
                    return if clean {
                        Ok(())
                    } else {
                        Err(sup.gave_up(failures, how))
                    };
                }
                if failures > opts.max_failures {
                    sup.set(
                        State::Failed,
                        format!(
                            "QEMU ended ({how}) {failures} times in a row before the boot report"
                        ),
                    );
                    return Err(sup.gave_up(failures, how));
                }
                let wait = Duration::from_secs(1u64 << failures.min(6));
                sup.set(
                    State::Restarting,
                    format!("QEMU ended ({how}); starting again in {} s", wait.as_secs()),
                );
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if stop_requested() {
                        sup.set(
                            State::Stopped,
                            "stopped on request while waiting to restart".into(),
                        );
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// The files of one QEMU start in the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFiles {
    /// `<state>/qemu`, fresh, QEMU's user's (0700).
    pub qemu_dir: PathBuf,
    /// Where QEMU makes its QMP socket.
    pub qmp_socket: PathBuf,
    /// QEMU's private copy of the firmware variables (0600, QEMU's user's).
    pub vars: Option<PathBuf>,
}

fn setup_err(what: &Path, e: &dyn std::fmt::Display) -> SuperviseError {
    SuperviseError::Setup(format!("{}: {e}", what.display()))
}

/// Open `path` as `opts` says, with `flags` and `O_CLOEXEC`, not following a link.
fn open_nofollow(
    path: &Path,
    opts: &mut std::fs::OpenOptions,
    flags: OFlag,
) -> std::io::Result<std::fs::File> {
    opts.custom_flags((flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC).bits())
        .open(path)
}

/// Check that no one but root (this supervisor's user) can change what `state_dir` holds:
/// it is a directory (not a link), owned by this user, not writable by group or others;
/// every directory above it is owned by root or this user and not writable by others
/// unless sticky (`/tmp`).
pub fn check_state_dir(state_dir: &Path) -> Result<(), SuperviseError> {
    let me = geteuid().as_raw();
    let hint = "the state directory must be writable by root alone (chown root, chmod 0755), and so must every directory above it";
    let dir = open_nofollow(
        state_dir,
        std::fs::OpenOptions::new().read(true),
        OFlag::O_DIRECTORY,
    )
    .map_err(|e| {
        SuperviseError::Setup(format!(
            "{}: not a directory (or a link): {e}\n  hint: {hint}",
            state_dir.display()
        ))
    })?;
    let st = fstat(&dir).map_err(|e| setup_err(state_dir, &e))?;
    if st.st_uid != me {
        return Err(SuperviseError::Setup(format!(
            "{}: owned by uid {}, not by this supervisor's (uid {me})\n  hint: {hint}",
            state_dir.display(),
            st.st_uid
        )));
    }
    if st.st_mode & 0o022 != 0 {
        return Err(SuperviseError::Setup(format!(
            "{}: writable by group or others (mode {:o})\n  hint: {hint}",
            state_dir.display(),
            st.st_mode & 0o7777
        )));
    }
    let real = std::fs::canonicalize(state_dir).map_err(|e| setup_err(state_dir, &e))?;
    for above in real.ancestors().skip(1) {
        let m = std::fs::symlink_metadata(above).map_err(|e| setup_err(above, &e))?;
        let sticky = m.mode() & 0o1000 != 0;
        let others_write = m.mode() & 0o002 != 0 || (m.mode() & 0o020 != 0 && m.gid() != 0);
        if (m.uid() != 0 && m.uid() != me) || (others_write && !sticky) {
            return Err(SuperviseError::Setup(format!(
                "{}: above the state directory {}, and changeable by others (owner uid {}, mode {:o})\n  hint: {hint}",
                above.display(),
                state_dir.display(),
                m.uid(),
                m.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

/// Make `<state>/qemu` fresh for a start, with a copy of `vars_template` in it, and give
/// both to `run_as` by descriptor (see the module doc). Nothing that was in it is
/// followed.
pub fn prepare_start(
    state_dir: &Path,
    run_as: Option<RunAs>,
    vars_template: Option<&Path>,
) -> Result<StartFiles, SuperviseError> {
    check_state_dir(state_dir)?;
    let qemu_dir = state_dir.join("qemu");
    // What the previous start left, links QEMU's user planted included.
    let removed = match std::fs::symlink_metadata(&qemu_dir) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&qemu_dir),
        Ok(_) => std::fs::remove_file(&qemu_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(|e| setup_err(&qemu_dir, &format!("removing the previous start's: {e}")))?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&qemu_dir)
        .map_err(|e| setup_err(&qemu_dir, &e))?;
    let dir = open_nofollow(
        &qemu_dir,
        std::fs::OpenOptions::new().read(true),
        OFlag::O_DIRECTORY,
    )
    .map_err(|e| setup_err(&qemu_dir, &e))?;
    let give = |fd: &std::fs::File, path: &Path, mode: u32| -> Result<(), SuperviseError> {
        if let Some(u) = run_as {
            fchown(fd, Some(Uid::from_raw(u.uid)), Some(Gid::from_raw(u.gid)))
                .map_err(|e| setup_err(path, &format!("giving it to uid {}: {e}", u.uid)))?;
        }
        fchmod(fd, Mode::from_bits_truncate(mode)).map_err(|e| setup_err(path, &e))
    };
    let mut vars = None;
    if let Some(template) = vars_template {
        let copy = qemu_dir.join("OVMF_VARS.fd");
        let mut from = std::fs::File::open(template).map_err(|e| setup_err(template, &e))?;
        let fd = openat(
            &dir,
            "OVMF_VARS.fd",
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| setup_err(&copy, &e))?;
        let mut to = std::fs::File::from(fd);
        std::io::copy(&mut from, &mut to)
            .map_err(|e| setup_err(&copy, &format!("copying {}: {e}", template.display())))?;
        give(&to, &copy, 0o600)?;
        vars = Some(copy);
    }
    // Last: from here QEMU's user may write in it.
    give(&dir, &qemu_dir, 0o700)?;
    Ok(StartFiles {
        qmp_socket: qemu_dir.join("qmp.sock"),
        qemu_dir,
        vars,
    })
}

/// Open (or make) `<state>/console.log` for QEMU's serial console: not through a link, a
/// regular file with one name, given to `run_as` (0600) by descriptor. The supervisor reads
/// the console through the descriptor returned.
pub fn open_console(
    state_dir: &Path,
    run_as: Option<RunAs>,
) -> Result<std::fs::File, SuperviseError> {
    check_state_dir(state_dir)?;
    let path = state_dir.join("console.log");
    let file = open_nofollow(
        &path,
        std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600),
        OFlag::empty(),
    )
    .map_err(|e| setup_err(&path, &e))?;
    let m = file.metadata().map_err(|e| setup_err(&path, &e))?;
    if !m.is_file() || m.nlink() != 1 {
        return Err(setup_err(
            &path,
            &"not a regular file with one name\n  hint: remove it; the supervisor makes it",
        ));
    }
    if let Some(u) = run_as {
        fchown(
            &file,
            Some(Uid::from_raw(u.uid)),
            Some(Gid::from_raw(u.gid)),
        )
        .map_err(|e| setup_err(&path, &format!("giving it to uid {}: {e}", u.uid)))?;
    }
    fchmod(&file, Mode::from_bits_truncate(0o600)).map_err(|e| setup_err(&path, &e))?;
    Ok(file)
}

/// Why a start failed when QEMU exited before its QMP socket answered.
fn ended_early(socket: &Path) -> StartError {
    StartError::EndedEarly {
        socket: socket.to_path_buf(),
    }
}

enum Ended {
    Stopped(&'static str),
    Exited {
        /// Exit status 0: the guest powered off.
        clean: bool,
        booted: bool,
        how: String,
    },
}

struct Supervisor<'a> {
    plan: &'a Plan,
    launch: Launch,
    opts: &'a Options,
    say: &'a dyn Fn(Option<State>, &str),
    status: Status,
    hierarchy: Hierarchy,
    /// The serial console, read through this descriptor only.
    console: std::fs::File,
    /// The firmware variables' template, copied fresh for every start.
    vars_template: Option<PathBuf>,
}

impl<'a> Supervisor<'a> {
    fn new(
        plan: &'a Plan,
        launch: &Launch,
        opts: &'a Options,
        say: &'a dyn Fn(Option<State>, &str),
    ) -> Result<Supervisor<'a>, SuperviseError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| SuperviseError::Setup(format!("{what}: {e}"));
        let console_log = opts.state_dir.join("console.log");
        let launch = launch.clone();
        let vars_template = match &launch.firmware {
            qemu::Firmware::Pflash { vars, .. } => vars.clone(),
            qemu::Firmware::SevSnp { .. } => None,
        };
        // QEMU, unprivileged, opens its files and disks itself: they become its user's.
        let console = open_console(&opts.state_dir, opts.run_as)?;
        let devices = access::devices(&plan.disks, &plan.boot, &opts.roots)
            .map_err(|e| SuperviseError::Setup(e.to_string()))?;
        if let Some(u) = opts.run_as {
            access::give(&devices, u).map_err(|e| SuperviseError::Setup(e.to_string()))?;
            let mut opened: Vec<&Path> = devices.iter().map(PathBuf::as_path).collect();
            opened.push(&console_log);
            match &launch.firmware {
                qemu::Firmware::Pflash { code, .. } => opened.push(code),
                qemu::Firmware::SevSnp {
                    ovmf,
                    kernel,
                    initrd,
                    ..
                } => opened.extend([ovmf.as_path(), kernel, initrd]),
            }
            if let Err(e) = access::reachable(&opened, u) {
                say(None, &format!("warning: {e}"));
            }
        }
        let hierarchy = Hierarchy::detect(&opts.cgroup_mount).map_err(|e| setup("cgroup", &e))?;
        let status = Status {
            state: State::Starting,
            supervisor_pid: std::process::id(),
            qemu_pid: None,
            starts: 0,
            boot_line: None,
            boot_seconds: None,
            last_exit: None,
            threads: Vec::new(),
            cgroup: Vec::new(),
            console_log,
            message: String::new(),
        };
        Ok(Supervisor {
            plan,
            launch,
            opts,
            say,
            status,
            hierarchy,
            console,
            vars_template,
        })
    }

    /// Set the state, say why, write status.json.
    fn set(&mut self, state: State, message: String) {
        self.status.state = state;
        (self.say)(Some(state), &message);
        self.status.message = message;
        self.write_status();
    }

    fn write_status(&self) {
        let path = status_path(&self.opts.state_dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&self.status).unwrap_or_default() + "\n";
        // (The state directory is root's alone: O_NOFOLLOW is a second guard.)
        let written = open_nofollow(
            &tmp,
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644),
            OFlag::empty(),
        )
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            (self.say)(
                None,
                &format!("warning: {} could not be written", path.display()),
            );
        }
    }

    fn gave_up(&self, failures: u32, last: String) -> SuperviseError {
        SuperviseError::GaveUp {
            failures,
            last,
            log: self.opts.state_dir.join("qemu.log").display().to_string(),
            console: self.status.console_log.display().to_string(),
        }
    }

    /// One QEMU from start to end.
    fn run_once(&mut self, stop_requested: &dyn Fn() -> bool) -> Result<Ended, SuperviseError> {
        let setup =
            |what: &str, e: &dyn std::fmt::Display| SuperviseError::Setup(format!("{what}: {e}"));
        self.status.starts += 1;
        self.status.boot_line = None;
        self.status.boot_seconds = None;
        self.status.threads.clear();
        self.set(
            State::Starting,
            format!("starting QEMU (start {})", self.status.starts),
        );
        let files = prepare_start(
            &self.opts.state_dir,
            self.opts.run_as,
            self.vars_template.as_deref(),
        )?;
        self.launch.qmp_socket = files.qmp_socket;
        self.launch.console_log = self.status.console_log.clone();
        if let (qemu::Firmware::Pflash { vars, .. }, Some(copy)) =
            (&mut self.launch.firmware, files.vars)
        {
            *vars = Some(copy);
        }
        let mut args =
            qemu::args(self.plan, &self.launch).map_err(|e| setup("QEMU command line", &e))?;
        // Paused until its threads are pinned.
        args.push("-S".into());
        let name = "plinth-guest-os";
        let parent = &self.opts.cgroup_parent;
        // (A cgroup a killed supervisor left is taken over: QEMU died with it, by its death
        // signal.)
        let cgroup = Cgroup::create(&self.hierarchy, parent, name, &Limits::of(self.plan))
            .map_err(|e| setup("the VM's cgroup", &e))?;
        self.status.cgroup = cgroup.dirs().to_vec();
        let console_start = self.console.metadata().map_or(0, |m| m.len());
        let log_path = self.opts.state_dir.join("qemu.log");
        let log = open_nofollow(
            &log_path,
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640),
            OFlag::empty(),
        )
        .map_err(|e| setup(&log_path.display().to_string(), &e))?;
        let _ = writeln!(
            &log,
            "--- plinth-host: start {}: {} {}",
            self.status.starts,
            qemu::QEMU,
            args.join(" ")
        );
        let mut cmd = Command::new(&self.opts.jail);
        cmd.args(["guest", "exec-qemu"]);
        for d in cgroup.dirs() {
            cmd.arg("--cgroup").arg(d);
        }
        if let Some(u) = self.opts.run_as {
            cmd.args(["--uid", &u.uid.to_string(), "--gid", &u.gid.to_string()]);
        }
        if let Some(bytes) = access::memlock_bytes(self.plan) {
            cmd.args(["--memlock", &bytes.to_string()]);
        }
        // The jail starts QEMU only while this process is its parent.
        cmd.args(["--parent", &std::process::id().to_string()]);
        cmd.arg("--").args(&args);
        let stderr = log.try_clone().map_err(|e| setup("qemu.log", &e))?;
        let spawned = cmd.stdin(Stdio::null()).stdout(log).stderr(stderr).spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(setup(&format!("starting {}", self.opts.jail.display()), &e));
            }
        };
        let pid = child.id() as i32;
        self.status.qemu_pid = Some(pid);
        let started = Instant::now();
        let ended = match self.start_guest(&mut child) {
            Ok(qmp) => self.watch(&mut child, qmp, started, console_start, stop_requested),
            Err(why) => {
                let _ = child.kill();
                let status = child.wait();
                Ended::Exited {
                    clean: false,
                    booted: false,
                    how: format!("{why}; QEMU {}", describe(status)),
                }
            }
        };
        self.status.qemu_pid = None;
        self.status.threads.clear();
        if let Ended::Exited { how, .. } = &ended {
            self.status.last_exit = Some(how.clone());
        }
        // Its processes are gone: the cgroup can go.
        let mut tries = 0;
        while let Err(e) = cgroup.try_remove() {
            tries += 1;
            if tries > 50 {
                (self.say)(None, &format!("warning: the VM's cgroup stays: {e}"));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(ended)
    }

    /// QMP, the pins, then `cont`.
    ///
    /// The QMP socket is connected to by path, in QEMU's directory: QEMU's user could put
    /// another socket (or a link to one) there. That is kept, for this reason: the
    /// directory is fresh for this start, and this QEMU, paused before any guest code ran,
    /// is the only process of its user (the previous one was waited for); the socket is
    /// checked to be a socket of QEMU's user first (not race-free: a check, not the
    /// guarantee). A planted socket could at most make root connect to another listener
    /// and write QMP commands to it, a denial of service; the thread ids it answered
    /// would be refused by the pinning, which takes only threads of QEMU's process.
    fn start_guest(&mut self, child: &mut Child) -> Result<Qmp, StartError> {
        let pid = child.id() as i32;
        let socket = &self.launch.qmp_socket;
        let wait = Duration::from_secs(60);
        let since = Instant::now();
        if let Some(u) = self.opts.run_as {
            use std::os::unix::fs::FileTypeExt;
            let m = loop {
                match std::fs::symlink_metadata(socket) {
                    Ok(m) => break m,
                    Err(source) if since.elapsed() >= wait => {
                        return Err(StartError::NoSocket {
                            socket: socket.clone(),
                            wait,
                            source,
                        })
                    }
                    Err(_) => {
                        if let Ok(Some(_)) = child.try_wait() {
                            return Err(ended_early(socket));
                        }
                        std::thread::sleep(Duration::from_millis(50))
                    }
                }
            };
            if !m.file_type().is_socket() || m.uid() != u.uid {
                return Err(StartError::ForeignSocket {
                    socket: socket.clone(),
                    uid: u.uid,
                });
            }
        }
        // Tried once per step while QEMU lives: one that failed at start leaves its socket.
        let mut qmp = loop {
            match Qmp::connect(socket, Duration::ZERO) {
                Ok(q) => break q,
                Err(e) if since.elapsed() >= wait => return Err(e.into()),
                Err(_) => {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Err(ended_early(socket));
                    }
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
        };
        let vcpus = qmp.vcpu_threads()?;
        let iothreads = qmp.iothreads()?;
        let proc_root = Path::new("/proc");
        let pinned = pin(pid, self.plan, &vcpus, &iothreads, proc_root)?;
        for p in &pinned {
            let cpus = affinity(pid, p.thread_id, proc_root).unwrap_or_default();
            self.status.threads.push(ThreadStatus {
                thread_id: p.thread_id,
                role: match &p.role {
                    Role::Vcpu(i) => format!("vcpu {i}"),
                    Role::IoThread(id) => format!("iothread {id}"),
                    Role::Emulator => "emulator".into(),
                },
                cpus,
            });
        }
        qmp.execute("cont", None)?;
        let vcpu_pins: Vec<String> = self
            .status
            .threads
            .iter()
            .filter(|t| t.role.starts_with("vcpu"))
            .map(|t| format!("{} on {:?}", t.role, t.cpus))
            .collect();
        self.set(
            State::Running,
            format!(
                "QEMU {pid} started (start {}), {} threads pinned ({}), cgroup {}",
                self.status.starts,
                self.status.threads.len(),
                vcpu_pins.join(", "),
                self.status
                    .cgroup
                    .first()
                    .map_or(String::new(), |d| d.display().to_string())
            ),
        );
        Ok(qmp)
    }

    /// Until QEMU ends, or a stop request has ended it.
    fn watch(
        &mut self,
        child: &mut Child,
        mut qmp: Qmp,
        started: Instant,
        console_start: u64,
        stop_requested: &dyn Fn() -> bool,
    ) -> Ended {
        let mut console = match self.console.try_clone() {
            Ok(f) => ConsoleWatch::new(f, console_start),
            Err(e) => {
                (self.say)(
                    None,
                    &format!("warning: the console log is not watched: {e}"),
                );
                ConsoleWatch::new_closed()
            }
        };
        let mut stopping: Option<(Instant, bool)> = None;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let booted = self.status.boot_line.is_some();
                return if let Some((_, quit)) = stopping {
                    Ended::Stopped(if quit {
                        "the guest did not power down in time; QEMU quit"
                    } else {
                        "the guest powered down"
                    })
                } else {
                    Ended::Exited {
                        clean: status.success(),
                        booted,
                        how: describe(Ok(status)),
                    }
                };
            }
            for line in console.new_lines() {
                if self.status.boot_line.is_none() && line.contains(&self.opts.marker) {
                    let ok = line.contains(&format!("{}OK", self.opts.marker));
                    self.status.boot_line = Some(line.trim().to_string());
                    self.status.boot_seconds = Some(started.elapsed().as_secs_f64());
                    let state = if ok { State::Booted } else { State::BootFailed };
                    self.set(
                        state,
                        format!(
                            "GuestOS after {:.1} s: {}",
                            started.elapsed().as_secs_f64(),
                            line.trim()
                        ),
                    );
                }
            }
            match stopping {
                None if stop_requested() => {
                    self.set(
                        State::Stopping,
                        "stop requested: ACPI power-down through QMP".into(),
                    );
                    if let Err(e) = qmp.powerdown() {
                        (self.say)(None, &format!("power-down not sent: {e}"));
                    }
                    stopping = Some((Instant::now(), false));
                }
                Some((since, false)) if since.elapsed() > self.opts.stop_timeout => {
                    (self.say)(
                        None,
                        &format!(
                            "the guest did not power down in {} s: QEMU is told to quit",
                            self.opts.stop_timeout.as_secs()
                        ),
                    );
                    let _ = qmp.quit();
                    stopping = Some((Instant::now(), true));
                }
                Some((since, true)) if since.elapsed() > Duration::from_secs(10) => {
                    (self.say)(None, "QEMU did not quit in 10 s: killed");
                    let _ = child.kill();
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// How a child ended.
fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) if s.success() => "exit 0: the guest powered off".into(),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended".into(),
        },
        Err(e) => format!("not waited for: {e}"),
    }
}

/// The serial log's lines as they are written, read through the supervisor's descriptor.
struct ConsoleWatch {
    file: Option<std::fs::File>,
    offset: u64,
    partial: Vec<u8>,
    /// The current line grew past [`MAX_CONSOLE_LINE`]: its bytes are dropped up to its end.
    skipping: bool,
}

/// The most of the console read per call: QEMU (hostile) writes the log, and may make it
/// grow (or a hole in it) faster than it is read; each call does a bounded amount of work,
/// so the supervisor still watches QEMU and its stop requests between calls.
const MAX_CONSOLE_READ: u64 = 1 << 20;
/// The longest console line kept; a longer one is dropped whole (the boot marker is short).
const MAX_CONSOLE_LINE: usize = 64 << 10;

impl ConsoleWatch {
    fn new(file: std::fs::File, offset: u64) -> ConsoleWatch {
        ConsoleWatch {
            file: Some(file),
            offset,
            partial: Vec::new(),
            skipping: false,
        }
    }

    fn new_closed() -> ConsoleWatch {
        ConsoleWatch {
            file: None,
            offset: 0,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// The whole lines written since the last call (at most [`MAX_CONSOLE_READ`] bytes of
    /// them; the rest comes with the next calls), none longer than [`MAX_CONSOLE_LINE`].
    fn new_lines(&mut self) -> Vec<String> {
        let Some(f) = &self.file else {
            return Vec::new();
        };
        let mut buf = vec![0u8; 64 << 10];
        let mut lines = Vec::new();
        let mut read = 0;
        while read < MAX_CONSOLE_READ {
            let n = match f.read_at(&mut buf, self.offset) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.offset += n as u64;
            read += n as u64;
            for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
                let ends = chunk.last() == Some(&b'\n');
                if !self.skipping {
                    self.partial.extend_from_slice(chunk);
                    if ends {
                        lines.push(
                            String::from_utf8_lossy(&self.partial)
                                .trim_end_matches(['\n', '\r'])
                                .to_string(),
                        );
                        self.partial.clear();
                    } else if self.partial.len() > MAX_CONSOLE_LINE {
                        self.partial.clear();
                        self.skipping = true;
                    }
                } else if ends {
                    self.skipping = false;
                }
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_qemu_floods_is_read_in_bounded_steps() {
        // The attack: QEMU's user makes the log huge (a hole of 1 TiB) and a line endless.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let f = std::fs::File::create(&log).unwrap();
        f.set_len(1 << 40).unwrap();
        let mut w = ConsoleWatch::new(std::fs::File::open(&log).unwrap(), 0);
        let t = std::time::Instant::now();
        assert!(w.new_lines().is_empty());
        assert_eq!(
            w.offset, MAX_CONSOLE_READ,
            "one call reads a bounded amount"
        );
        assert!(w.partial.len() <= MAX_CONSOLE_LINE && w.skipping);
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // A marker after an overlong line still comes whole once the line ends.
        let mut a = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        use std::io::{Seek, SeekFrom};
        a.seek(SeekFrom::Start(MAX_CONSOLE_READ + 10)).unwrap();
        a.write_all(b"end of the long line\nPLINTH BOOT OK guest-os\n")
            .unwrap();
        assert_eq!(w.new_lines(), vec!["PLINTH BOOT OK guest-os".to_string()]);
    }

    #[test]
    fn console_lines_come_whole_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "old line\n").unwrap();
        let mut w = ConsoleWatch::new(std::fs::File::open(&log).unwrap(), 9);
        assert!(w.new_lines().is_empty());
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"\x1b[0mPLINTH BOOT OK guest-os 1.0 slot=A\r\nhalf")
            .unwrap();
        assert_eq!(w.new_lines(), ["\x1b[0mPLINTH BOOT OK guest-os 1.0 slot=A"]);
        f.write_all(b" a line\n").unwrap();
        assert_eq!(w.new_lines(), ["half a line"]);
    }

    /// A scratch directory and its `state` (mode 755).
    fn state_dir() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&state)
            .unwrap();
        (dir, state)
    }

    #[test]
    fn the_console_log_is_never_opened_through_a_link_or_a_second_name() {
        let (dir, state) = state_dir();
        let other = dir.path().join("other");
        std::fs::write(&other, "keep\n").unwrap();
        std::os::unix::fs::symlink(&other, state.join("console.log")).unwrap();
        let e = open_console(&state, None).unwrap_err().to_string();
        assert!(
            e.starts_with(&state.join("console.log").display().to_string()),
            "{e}"
        );
        std::fs::remove_file(state.join("console.log")).unwrap();
        std::fs::hard_link(&other, state.join("console.log")).unwrap();
        let e = open_console(&state, None).unwrap_err().to_string();
        assert!(e.contains("one name"), "{e}");
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep\n");
        std::fs::remove_file(state.join("console.log")).unwrap();
        let f = open_console(&state, None).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
    }

    #[test]
    fn a_state_directory_others_can_write_is_refused() {
        let (dir, state) = state_dir();
        check_state_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o775))
            .unwrap();
        let e = check_state_dir(&state).unwrap_err().to_string();
        assert!(e.contains("writable by group or others (mode 775)"), "{e}");
        // A directory above it anyone may write (not sticky): its entries can be swapped.
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let e = check_state_dir(&state).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}: above the state directory",
                dir.path().display()
            )),
            "{e}"
        );
        // A link as the state directory is refused too.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let e = check_state_dir(&link).unwrap_err().to_string();
        assert!(e.contains("not a directory (or a link)"), "{e}");
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let e = check_state_dir(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory (or a link)"), "{e}");
    }

    #[test]
    fn a_missing_status_names_the_file_and_the_verb() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_status(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("status.json") && e.contains("guest launch --state-dir"),
            "{e}"
        );
    }
}
