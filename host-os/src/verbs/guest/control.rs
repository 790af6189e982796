//! `plinth-host guest stop` and `guest status`: they talk to a running `guest launch`
//! through its state directory (status.json; SIGTERM to the supervisor for a stop).

use super::super::BadInput;
use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plinth_host::launch::supervise::{read_status, State, Status};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The supervisor's state directory (as given to `guest launch`).
const STATE_DIR: &str = "/run/plinth/guest";

/// Stop the VM: the supervisor powers the guest down through QMP (ACPI), tells QEMU to
/// quit when that takes too long, and ends.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 stopped, or nothing was running; 1 the supervisor \
did not end in time; 2 no readable status.\n\nExamples:\n  plinth-host guest stop\n  \
plinth-host guest stop --state-dir /tmp/vm --timeout 30"
)]
pub struct StopArgs {
    #[arg(long, value_name = "DIR", default_value = STATE_DIR)]
    state_dir: PathBuf,
    /// Seconds to wait for the supervisor to end.
    #[arg(long, value_name = "S", default_value_t = 120)]
    timeout: u64,
}

/// What the supervisor of the VM says: its state, the boot report, QEMU's pinned threads.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 the VM runs; 3 it does not (stopped, failed, or no \
supervisor); 2 no readable status.\n\nExamples:\n  plinth-host guest status\n  \
plinth-host guest status --json"
)]
pub struct StatusArgs {
    #[arg(long, value_name = "DIR", default_value = STATE_DIR)]
    state_dir: PathBuf,
    /// Print status.json as the supervisor wrote it, with `supervisor_alive`.
    #[arg(long)]
    json: bool,
}

/// The supervisor's status (unreadable: bad input, exit 2).
fn status_of(state_dir: &std::path::Path) -> Result<Status, BadInput> {
    read_status(state_dir).map_err(|e| BadInput(e.to_string()))
}

/// The process exists and has not ended (a zombie waiting for its parent has).
fn alive(pid: u32) -> bool {
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false);
    kill(Pid::from_raw(pid as i32), None).is_ok() && !zombie
}

impl StopArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let status = status_of(&self.state_dir)?;
        let pid = status.supervisor_pid;
        if !alive(pid) {
            println!(
                "not running (supervisor {pid} is gone; last state {:?})",
                status.state
            );
            return Ok(());
        }
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM)
            .with_context(|| format!("signalling supervisor {pid}"))?;
        let start = Instant::now();
        while alive(pid) {
            if start.elapsed() > Duration::from_secs(self.timeout) {
                anyhow::bail!(
                    "supervisor {pid} did not end in {} s\n  hint: see {}",
                    self.timeout,
                    self.state_dir.join("qemu.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let last = read_status(&self.state_dir)
            .map(|s| s.message)
            .unwrap_or_default();
        println!("stopped in {:.1} s: {last}", start.elapsed().as_secs_f64());
        Ok(())
    }
}

impl StatusArgs {
    /// Print the status; whether the VM runs.
    pub fn run(self) -> anyhow::Result<bool> {
        let status = status_of(&self.state_dir)?;
        let supervised = alive(status.supervisor_pid);
        let runs = supervised
            && matches!(
                status.state,
                State::Starting
                    | State::Running
                    | State::Booted
                    | State::BootFailed
                    | State::Restarting
                    | State::Stopping
            );
        if self.json {
            let mut v = serde_json::to_value(&status).unwrap_or_default();
            v["supervisor_alive"] = supervised.into();
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            print!("{}", render(&status, supervised));
        }
        Ok(runs)
    }
}

fn render(s: &Status, supervised: bool) -> String {
    let mut out = format!(
        "state: {:?}{}\n",
        s.state,
        if supervised {
            String::new()
        } else {
            format!(" (supervisor {} is gone)", s.supervisor_pid)
        }
    );
    out.push_str(&format!("  {}\n", s.message));
    if let Some(pid) = s.qemu_pid {
        out.push_str(&format!("  QEMU pid {pid}, start {}\n", s.starts));
    }
    if let (Some(line), Some(t)) = (&s.boot_line, s.boot_seconds) {
        out.push_str(&format!("  boot report after {t:.1} s: {line}\n"));
    }
    if let Some(last) = &s.last_exit {
        out.push_str(&format!("  last QEMU end: {last}\n"));
    }
    for t in &s.threads {
        out.push_str(&format!(
            "  thread {} {}: host threads {:?}\n",
            t.thread_id, t.role, t.cpus
        ));
    }
    out.push_str(&format!("  console: {}\n", s.console_log.display()));
    out
}
