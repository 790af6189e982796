//! The verb: find the marked disks, wait for the end of startup, benchmark each (and through
//! dm-crypt when its header asks), and print every line on stdout and the active consoles.

use crate::{crypt, direct, scratch};
use nix::fcntl::OFlag;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long the verb waits for the end of startup before benchmarking anyway.
const STARTUP_WAIT: Duration = Duration::from_secs(600);
const O_NOCTTY: i32 = OFlag::O_NOCTTY.bits();

/// Benchmark the disks marked as benchmark disks (none: nothing is written, nothing printed
/// on the consoles).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A disk is benchmarked only when its first sector starts with \
\"PLINTH DISK BENCH SCRATCH v1\\n\" (ci/bench-launch and ci/bench-state write it); past its \
first MiB it is overwritten. A header line dm_crypt=1 benchmarks it again through dm-crypt \
with the open state volume's parameters, and reads that volume against its raw partition.\n\n\
Exit status: 0 no marked disk, or every benchmark ran; 1 one failed."
)]
pub struct DiskBenchArgs {
    /// Start at once instead of waiting for the end of startup.
    #[arg(long)]
    pub no_wait: bool,
}

impl DiskBenchArgs {
    /// Run the verb for the agent `agent` (its name in the message about no disk).
    pub fn run(self, agent: &str) -> ExitCode {
        let disks = scratch::marked_disks(Path::new("/sys"), Path::new("/dev"));
        if disks.is_empty() {
            println!("{agent}: no benchmark disk");
            return ExitCode::SUCCESS;
        }
        if !self.no_wait {
            wait_for_startup(STARTUP_WAIT);
        }
        let (mut ok, mut failed) = (0, 0);
        for disk in disks {
            let lines = match disk.header.clone() {
                Ok(header) if header.dm_crypt => crypt::compare(&disk, &header),
                Ok(header) => direct::bench(&disk.path, disk.capacity, &header, true)
                    .map(|f| vec![direct::line(&disk.name, "", &f)]),
                Err(why) => Err(why),
            };
            match lines {
                Ok(lines) => {
                    ok += 1;
                    lines.iter().for_each(|l| say(l));
                }
                Err(why) => {
                    failed += 1;
                    say(&format!(
                        "PLINTH DISK BENCH disk={} FAILED: {why}",
                        disk.name
                    ));
                }
            }
        }
        say(&format!(
            "PLINTH DISK BENCH finished ok={ok} failed={failed}"
        ));
        if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// Wait until systemd has no start job left, at most `limit` (then go on).
pub fn wait_for_startup(limit: Duration) {
    let Ok(mut child) = std::process::Command::new("systemctl")
        .args(["is-system-running", "--wait"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return;
    };
    let started = Instant::now();
    while started.elapsed() < limit {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            _ => return,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Print `line` on stdout and on every active console (as the boot report does).
fn say(line: &str) {
    use std::io::Write;
    println!("{line}");
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    for console in active.split_whitespace() {
        // Not as the controlling terminal: the service is a session leader.
        let tty = OpenOptions::new()
            .write(true)
            .custom_flags(O_NOCTTY)
            .open(format!("/dev/{console}"));
        if let Ok(mut tty) = tty {
            let _ = tty.write_all(format!("\r\n{line}\r\n").as_bytes());
        }
    }
}
