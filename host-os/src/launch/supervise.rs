//! Supervising the GuestOS VM: start QEMU (through the `exec-qemu` jail, paused), pin its
//! threads from QMP's thread ids, let it run; watch the serial log for GuestOS's boot report
//! (`PLINTH BOOT OK|FAILED`); restart it by policy when it dies; on a stop request, a clean
//! ACPI power-down through QMP, then `quit`, then SIGKILL. What the supervisor knows is
//! written to `status.json` in the state directory after every change, for
//! `plinth-host guest status`.

use super::access;
use super::cgroup::{Cgroup, Hierarchy, Limits};
use super::pin::{affinity, pin, Role};
use super::qemu::{self, Launch, RunAs};
use super::qmp::Qmp;
use crate::plan::Plan;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
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

/// The state directory's status file.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Read a supervisor's status.
pub fn read_status(state_dir: &Path) -> Result<Status, String> {
    let path = status_path(state_dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "{}: {e}\n  hint: is `plinth-host guest launch --state-dir {}` running?",
            path.display(),
            state_dir.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{}: not a status file: {e}", path.display()))
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
        let qemu_dir = opts.state_dir.join("qemu");
        std::fs::create_dir_all(&qemu_dir)
            .map_err(|e| setup(&qemu_dir.display().to_string(), &e))?;
        let console_log = opts.state_dir.join("console.log");
        let mut launch = launch.clone();
        launch.qmp_socket = qemu_dir.join("qmp.sock");
        launch.console_log = console_log.clone();
        // A private copy of the firmware's variables, QEMU's to write.
        if let qemu::Firmware::Pflash {
            vars: Some(vars), ..
        } = &mut launch.firmware
        {
            let copy = qemu_dir.join("OVMF_VARS.fd");
            std::fs::copy(&*vars, &copy)
                .map_err(|e| setup(&format!("copying {}", vars.display()), &e))?;
            *vars = copy;
        }
        // QEMU, unprivileged, opens its files and disks itself: they become its user's.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console_log)
            .map_err(|e| setup(&console_log.display().to_string(), &e))?;
        let devices = access::devices(&plan.disks, &plan.boot, &opts.roots)
            .map_err(|e| SuperviseError::Setup(e.to_string()))?;
        if let Some(u) = opts.run_as {
            let mut owned = vec![qemu_dir.clone(), console_log.clone()];
            owned.extend(
                std::fs::read_dir(&qemu_dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
            owned.extend(devices);
            access::give(&owned, u).map_err(|e| SuperviseError::Setup(e.to_string()))?;
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
        if std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
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
        let console_start = std::fs::metadata(&self.status.console_log).map_or(0, |m| m.len());
        let log_path = self.opts.state_dir.join("qemu.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
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
        let ended = match self.start_guest(pid) {
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
    fn start_guest(&mut self, pid: i32) -> Result<Qmp, String> {
        let mut qmp = Qmp::connect(&self.launch.qmp_socket, Duration::from_secs(60))
            .map_err(|e| e.to_string())?;
        let vcpus = qmp.vcpu_threads().map_err(|e| e.to_string())?;
        let iothreads = qmp.iothreads().map_err(|e| e.to_string())?;
        let proc_root = Path::new("/proc");
        let pinned =
            pin(pid, self.plan, &vcpus, &iothreads, proc_root).map_err(|e| e.to_string())?;
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
        qmp.execute("cont", None).map_err(|e| e.to_string())?;
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
        let mut console = ConsoleWatch::new(&self.status.console_log, console_start);
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

/// The serial log's lines as they are written.
struct ConsoleWatch {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl ConsoleWatch {
    fn new(path: &Path, offset: u64) -> ConsoleWatch {
        ConsoleWatch {
            path: path.to_path_buf(),
            offset,
            partial: Vec::new(),
        }
    }

    /// The whole lines written since the last call.
    fn new_lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(&bytes);
        let Some(last) = self.partial.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let whole: Vec<u8> = self.partial.drain(..=last).collect();
        String::from_utf8_lossy(&whole)
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_come_whole_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "old line\n").unwrap();
        let mut w = ConsoleWatch::new(&log, 9);
        assert!(w.new_lines().is_empty());
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"\x1b[0mPLINTH BOOT OK guest-os 1.0 slot=A\r\nhalf")
            .unwrap();
        assert_eq!(w.new_lines(), ["\x1b[0mPLINTH BOOT OK guest-os 1.0 slot=A"]);
        f.write_all(b" a line\n").unwrap();
        assert_eq!(w.new_lines(), ["half a line"]);
    }

    #[test]
    fn a_missing_status_names_the_file_and_the_verb() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_status(dir.path()).unwrap_err();
        assert!(
            e.contains("status.json") && e.contains("guest launch --state-dir"),
            "{e}"
        );
    }
}
