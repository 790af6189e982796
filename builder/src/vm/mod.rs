//! Booting images in QEMU, for `plinth run` and the boot tests: q35 with OVMF (the code
//! read-only, a private copy of the VARS file), KVM when it really runs guests here and TCG
//! otherwise ([`accel`]), an optional software TPM started and stopped with the VM
//! ([`swtpm`]), the boot disk opened copy-on-write (never written) and extra disks as given,
//! the serial console copied to the terminal and kept in a log, and a marker to wait for.
//!
//! However the run ends (the guest powers off, the marker appears, the timeout passes,
//! Ctrl-C, SIGTERM or SIGHUP once [`catch_interrupts`] was called, a panic), QEMU and swtpm
//! are stopped and the temporary directory removed before [`run`] returns. What cannot be
//! caught (SIGKILL of plinth) leaves QEMU running; swtpm then ends with QEMU's connection.

pub mod accel;
pub mod swtpm;

use accel::Accel;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// OVMF from Debian's `ovmf` package (4 MiB flash, no Secure Boot keys enrolled).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The virtual machine.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The disk it boots from; opened with `snapshot=on`, so the file is never written,
    /// unless `write_boot_disk`.
    pub boot_disk: PathBuf,
    /// Write the boot disk itself (reboot tests: a second run sees what the first wrote).
    pub write_boot_disk: bool,
    /// More disks (virtio), written by the guest.
    pub disks: Vec<PathBuf>,
    /// Read-only disks with a serial number the guest finds them by (`/sys/block/*/serial`).
    pub labelled_disks: Vec<(PathBuf, String)>,
    /// Emulated NVMe drives (`-device nvme`), written by the guest, each with its serial; they
    /// come after the boot disk in the boot order, or before it with `boot_disk_last`.
    pub nvme: Vec<(PathBuf, String)>,
    /// The boot disk is the last boot option (an installer stick: once the NVMe holds an
    /// installed system, a reboot boots that).
    pub boot_disk_last: bool,
    pub memory_mib: u64,
    pub cpus: u32,
    /// Guest NUMA nodes (vCPUs and memory split evenly); 1: no NUMA topology.
    pub numa_nodes: u32,
    /// A software TPM 2.0 (swtpm).
    pub tpm: bool,
    /// Where the TPM's state is kept across runs (`None`: a fresh TPM each run).
    pub tpm_state: Option<PathBuf>,
    /// `None`: detect ([`accel::detect`]).
    pub accel: Option<Accel>,
    /// The vCPU model (`-cpu`); `None`: `host` under KVM, QEMU's default under TCG.
    pub cpu_model: Option<String>,
    /// A single-image firmware (no variable store) instead of Debian's OVMF: a GuestOS
    /// release's AMD SEV OVMF. It has no TPM support.
    pub firmware: Option<PathBuf>,
}

impl Machine {
    /// 2 vCPUs, 1.5 GiB, one node, no TPM, accelerator detected.
    pub fn new(boot_disk: impl Into<PathBuf>) -> Machine {
        Machine {
            boot_disk: boot_disk.into(),
            write_boot_disk: false,
            disks: Vec::new(),
            labelled_disks: Vec::new(),
            nvme: Vec::new(),
            boot_disk_last: false,
            memory_mib: 1536,
            cpus: 2,
            numa_nodes: 1,
            tpm: false,
            tpm_state: None,
            accel: None,
            cpu_model: None,
            firmware: None,
        }
    }
}

/// Where the console goes besides the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// Nowhere (tests read [`Run::console`]).
    Off,
    Stdout,
    Stderr,
    /// The terminal is the serial console, both ways (stdin must be a terminal).
    Interactive,
}

/// When to stop.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Stop as soon as each of these texts is on the console (in any order; none: run until
    /// the guest powers off).
    pub expect: Vec<String>,
    /// Instead of stopping QEMU when the texts have appeared, cut its power this long after the
    /// last:
    /// SIGKILL, with no shutdown and nothing flushed by the guest (a power-loss trial).
    pub power_off_after: Option<Duration>,
    pub timeout: Option<Duration>,
    pub echo: Echo,
    /// Keep the console log here as well (it is written as it comes).
    pub console_log: Option<PathBuf>,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// QEMU exited: the guest powered off (or QEMU failed: see the status).
    Exited {
        success: bool,
    },
    /// The expected text appeared.
    Marker,
    Timeout,
    /// Ctrl-C or SIGTERM.
    Interrupted,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Run {
    pub accel: Accel,
    /// Why that accelerator (e.g. why not KVM).
    pub accel_reason: String,
    pub ending: Ending,
    /// Everything the serial console printed.
    pub console: String,
    /// What QEMU printed on stderr.
    pub qemu_stderr: String,
    pub seconds: f64,
}

impl Run {
    /// The console's last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// Why a VM could not be run.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}\n  hint: {hint}")]
    Bad { what: String, hint: String },
    #[error("qemu-system-x86_64 could not be started: {0}\n  hint: install the Debian package qemu-system-x86 (ci/setup does)")]
    NoQemu(std::io::Error),
    #[error(transparent)]
    Tpm(#[from] swtpm::SwtpmError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> VmError + '_ {
    move |source| VmError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Catch Ctrl-C, SIGTERM and SIGHUP from now on: they set the returned flag instead of
/// killing the process, so that a run in progress stops its VM and removes its files. The
/// handlers are in place when this returns; call it before creating anything to clean up.
pub fn catch_interrupts() -> &'static AtomicBool {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let (ready, installed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                let _ = ready.send(());
                return;
            };
            use tokio::signal::unix::{signal, SignalKind};
            // Registered here, before `ready`: from then on the signals are caught.
            let streams = rt.block_on(async {
                (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                )
            });
            let _ = ready.send(());
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = streams else {
                return;
            };
            rt.block_on(async {
                loop {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                    set.store(true, Ordering::SeqCst);
                }
            });
        });
        let _ = installed.recv();
        flag
    })
}

/// Check the machine's settings before anything starts.
/// A path or value as QEMU's option syntax takes it: a comma is written twice, so that
/// `file=a,b` cannot add an option `b`. [`check`] has refused what QEMU cannot take at all.
pub fn qemu_value(value: &Path) -> String {
    value.display().to_string().replace(',', ",,")
}

/// A path QEMU's option syntax can carry: UTF-8 (it is passed as text) without control
/// characters.
fn qemu_safe(path: &Path) -> bool {
    path.to_str()
        .is_some_and(|s| !s.is_empty() && !s.chars().any(char::is_control))
}

fn check(m: &Machine, echo: Echo) -> Result<(), VmError> {
    let bad = |what: String, hint: &str| VmError::Bad {
        what,
        hint: hint.into(),
    };
    let paths = std::iter::once(&m.boot_disk)
        .chain(&m.disks)
        .chain(&m.firmware)
        .chain(m.labelled_disks.iter().map(|(d, _)| d))
        .chain(m.nvme.iter().map(|(d, _)| d));
    for path in paths {
        if !qemu_safe(path) {
            return Err(bad(
                format!(
                    "{}: QEMU cannot be given this path (not UTF-8, or a control character)",
                    path.display()
                ),
                "rename or copy the file to a plain path",
            ));
        }
    }
    for (_, serial) in m.labelled_disks.iter().chain(&m.nvme) {
        if !qemu_safe(Path::new(serial)) || serial.contains(',') {
            return Err(bad(
                format!("disk serial {serial:?}: a control character"),
                "use a plain serial",
            ));
        }
    }
    for disk in std::iter::once(&m.boot_disk)
        .chain(&m.disks)
        .chain(m.nvme.iter().map(|(d, _)| d))
    {
        if !disk.is_file() {
            return Err(bad(
                format!("{}: no such disk image", disk.display()),
                "give the path of a raw disk image file",
            ));
        }
    }
    if m.numa_nodes == 0 || m.cpus < m.numa_nodes || m.memory_mib < 64 * m.numa_nodes as u64 {
        return Err(bad(
            format!(
                "{} NUMA nodes for {} vCPUs and {} MiB: every node needs a vCPU and 64 MiB",
                m.numa_nodes, m.cpus, m.memory_mib
            ),
            "lower --numa or raise --cpus / --memory",
        ));
    }
    if let Some(f) = &m.firmware {
        if !f.is_file() {
            return Err(bad(
                format!("{}: no such firmware file", f.display()),
                "give a GuestOS release's OVMF-AmdSev.fd",
            ));
        }
        if m.tpm {
            return Err(bad(
                format!("{} has no TPM support", f.display()),
                "leave out --tpm (the TPM predictions hold for Debian's OVMF)",
            ));
        }
    }
    for path in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(path).is_file() {
            return Err(bad(
                format!("{path}: missing"),
                "install the Debian package ovmf (ci/setup does)",
            ));
        }
    }
    if echo == Echo::Interactive && !std::io::stdin().is_terminal() {
        return Err(bad(
            "an interactive console needs a terminal on stdin".into(),
            "run it from a terminal, or pass --expect TEXT",
        ));
    }
    Ok(())
}

/// The QEMU arguments for `m` with `accel`, the VARS copy `vars` and the console `console`.
pub fn qemu_args(m: &Machine, accel: Accel, vars: &Path, console: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "-machine",
        "q35",
        "-accel",
        accel.name(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-nic",
        "none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    match (&m.cpu_model, accel) {
        (Some(model), _) => a.extend(["-cpu".into(), model.clone()]),
        (None, Accel::Kvm) => a.extend(["-cpu".into(), "host".into()]),
        (None, _) => {}
    }
    a.extend(["-m".into(), format!("{}M", m.memory_mib)]);
    a.extend(["-smp".into(), m.cpus.to_string()]);
    if m.numa_nodes > 1 {
        let n = m.numa_nodes as u64;
        let cpus = m.cpus as u64;
        for i in 0..n {
            // Memory and vCPUs split evenly; the last node takes the remainders.
            let mem = if i + 1 == n {
                m.memory_mib - (m.memory_mib / n) * (n - 1)
            } else {
                m.memory_mib / n
            };
            let first = i * (cpus / n);
            let last = if i + 1 == n {
                cpus - 1
            } else {
                first + cpus / n - 1
            };
            a.extend([
                "-object".into(),
                format!("memory-backend-ram,id=mem{i},size={mem}M"),
                "-numa".into(),
                format!("node,nodeid={i},cpus={first}-{last},memdev=mem{i}"),
            ]);
        }
    }
    match &m.firmware {
        Some(f) => a.extend([
            "-drive".into(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                qemu_value(f)
            ),
        ]),
        None => a.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive".into(),
            format!("if=pflash,format=raw,unit=1,file={}", qemu_value(vars)),
        ]),
    }
    a.extend([
        // The boot disk is the first boot option (bootindex), so the firmware's first boot
        // attempt is the one that boots: a failed attempt on another disk would add events
        // to PCR 4.
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id=boot{}",
            qemu_value(&m.boot_disk),
            if m.write_boot_disk {
                ""
            } else {
                ",snapshot=on"
            }
        ),
        "-device".into(),
        format!(
            "virtio-blk-pci,drive=boot,bootindex={}",
            if m.boot_disk_last { m.nvme.len() } else { 0 }
        ),
    ]);
    for (i, (d, serial)) in m.nvme.iter().enumerate() {
        let index = if m.boot_disk_last { i } else { i + 1 };
        a.extend([
            "-drive".into(),
            format!("file={},format=raw,if=none,id=nvme{i}", qemu_value(d)),
            "-device".into(),
            format!(
                "nvme,drive=nvme{i},serial={},bootindex={index}",
                qemu_value(Path::new(serial))
            ),
        ]);
    }
    for d in &m.disks {
        a.extend([
            "-drive".into(),
            format!("file={},format=raw,if=virtio", qemu_value(d)),
        ]);
    }
    for (i, (d, serial)) in m.labelled_disks.iter().enumerate() {
        a.extend([
            "-drive".into(),
            format!(
                "file={},format=raw,if=none,id=labelled{i},readonly=on",
                qemu_value(d)
            ),
            "-device".into(),
            format!(
                "virtio-blk-pci,drive=labelled{i},serial={}",
                qemu_value(Path::new(serial))
            ),
        ]);
    }
    a.extend(console.iter().cloned());
    a.extend(["-serial".into(), "chardev:con0".into()]);
    a
}

/// Boot `m` and watch its console until `w` says stop (or QEMU exits).
pub fn run(m: &Machine, w: &Watch) -> Result<Run, VmError> {
    check(m, w.echo)?;
    let tmp = crate::pipeline::artifacts::scratch_dir("plinth-vm-")
        .map_err(io(Path::new("a temporary directory")))?;
    let dir = tmp.path();
    let (accel, accel_reason) = match m.accel {
        Some(a) => (a, "as asked".to_string()),
        None => accel::detect(dir),
    };
    let vars = dir.join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).map_err(io(&vars))?;
    let log = dir.join("console.log");
    let console = if w.echo == Echo::Interactive {
        vec![
            "-chardev".into(),
            format!("stdio,id=con0,signal=on,logfile={}", qemu_value(&log)),
        ]
    } else {
        vec![
            "-chardev".into(),
            format!("file,id=con0,path={}", qemu_value(&log)),
        ]
    };
    let tpm = if m.tpm {
        Some(swtpm::Swtpm::start(
            &dir.join("tpm"),
            m.tpm_state.as_deref(),
        )?)
    } else {
        None
    };
    let mut args = qemu_args(m, accel, &vars, &console);
    if let Some(t) = &tpm {
        args.extend(t.qemu_args());
    }
    let stderr_path = dir.join("qemu.stderr");
    let stderr = std::fs::File::create(&stderr_path).map_err(io(&stderr_path))?;
    let interactive = w.echo == Echo::Interactive;
    let interrupted = catch_interrupts();
    if interrupted.load(Ordering::SeqCst) {
        return Ok(Run {
            accel,
            accel_reason,
            ending: Ending::Interrupted,
            console: String::new(),
            qemu_stderr: String::new(),
            seconds: 0.0,
        });
    }
    // QEMU puts an interactive terminal in raw mode; it is restored whatever happens to QEMU.
    let terminal = interactive
        .then(|| nix::sys::termios::tcgetattr(std::io::stdin()).ok())
        .flatten();
    let start = Instant::now();
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(&args).stderr(stderr);
    if interactive {
        cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
    } else {
        // Its own process group: the terminal's Ctrl-C reaches plinth only, which stops it.
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0);
    }
    let mut qemu = Qemu(cmd.spawn().map_err(VmError::NoQemu)?);
    let watched = watch(&mut qemu.0, &log, w, interrupted, start);
    drop(qemu);
    drop(tpm);
    if let Some(t) = terminal {
        let _ =
            nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
    let (mut ending, console) = watched?;
    let qemu_stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // An interactive Ctrl-C reaches QEMU as a key, and QEMU ends itself.
    if matches!(ending, Ending::Exited { .. }) && qemu_stderr.contains("terminating on signal") {
        ending = Ending::Interrupted;
    }
    Ok(Run {
        accel,
        accel_reason,
        ending,
        console,
        qemu_stderr,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// QEMU, stopped when dropped (also on a panic).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// Follow the console log until the run ends; returns the ending and the whole console.
/// After the last marker, the rest of its line is read too (up to a second more).
fn watch(
    child: &mut Child,
    log: &Path,
    w: &Watch,
    interrupted: &AtomicBool,
    start: Instant,
) -> Result<(Ending, String), VmError> {
    let mut keep = match &w.console_log {
        Some(p) => Some(std::fs::File::create(p).map_err(io(p))?),
        None => None,
    };
    let mut console: Vec<u8> = Vec::new();
    let mut reader: Option<std::fs::File> = None;
    // Where the marker search goes on from, where each marker ended (once seen), and where
    // and when the last of them was seen.
    let mut searched = 0usize;
    let markers: Vec<&[u8]> = w.expect.iter().map(|m| m.as_bytes()).collect();
    let mut ends: Vec<Option<usize>> = vec![None; markers.len()];
    let mut seen: Option<(usize, Instant)> = None;
    let finish =
        |ending, console: &[u8]| Ok((ending, String::from_utf8_lossy(console).into_owned()));
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return finish(Ending::Interrupted, &console);
        }
        let exited = child.try_wait().ok().flatten();
        // New console bytes (after an exit too: the last ones).
        if reader.is_none() {
            reader = std::fs::File::open(log).ok();
        }
        if let Some(r) = reader.as_mut() {
            let mut fresh = Vec::new();
            r.seek(SeekFrom::Start(console.len() as u64))
                .and_then(|_| r.read_to_end(&mut fresh))
                .map_err(io(log))?;
            if !fresh.is_empty() {
                match w.echo {
                    Echo::Stdout => {
                        let _ = std::io::stdout().write_all(&fresh);
                        let _ = std::io::stdout().flush();
                    }
                    Echo::Stderr => {
                        let _ = std::io::stderr().write_all(&fresh);
                    }
                    Echo::Off | Echo::Interactive => {}
                }
                if let Some(k) = keep.as_mut() {
                    let _ = k.write_all(&fresh);
                }
                console.extend_from_slice(&fresh);
            }
        }
        if !markers.is_empty() && seen.is_none() {
            for (m, end) in markers.iter().zip(ends.iter_mut()) {
                if end.is_none() {
                    let from = searched.saturating_sub(m.len().saturating_sub(1));
                    *end = find(&console[from..], m).map(|at| from + at + m.len());
                }
            }
            if ends.iter().all(Option::is_some) {
                seen = Some((
                    ends.iter().flatten().copied().max().unwrap_or(0),
                    Instant::now(),
                ));
            }
            searched = console.len();
        }
        match (seen, w.power_off_after) {
            // The power cut, unless QEMU ended by itself first (then that is the ending).
            (Some((_, when)), Some(after)) if exited.is_none() && when.elapsed() >= after => {
                let _ = child.kill();
                let _ = child.wait();
                return finish(Ending::Marker, &console);
            }
            _ => {}
        }
        if let (Some((end, when)), None) = (seen, w.power_off_after) {
            let line_done = console[end..].contains(&b'\n');
            if line_done || exited.is_some() || when.elapsed() > Duration::from_secs(1) {
                return finish(Ending::Marker, &console);
            }
        }
        if let Some(status) = exited {
            return finish(
                Ending::Exited {
                    success: status.success(),
                },
                &console,
            );
        }
        if w.timeout.is_some_and(|t| start.elapsed() > t) {
            return finish(Ending::Timeout, &console);
        }
        // A power cut is timed to a few milliseconds of the text's arrival.
        std::thread::sleep(Duration::from_millis(if w.power_off_after.is_some() {
            5
        } else {
            100
        }));
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// SIGTERM (QEMU restores the terminal and exits), then SIGKILL after 5 s.
fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `watch` over a console that `script` (sh) writes, expecting `expect`.
    fn watched(script: &str, expect: &[&str]) -> (Ending, String) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let w = Watch {
            expect: expect.iter().map(|e| e.to_string()).collect(),
            power_off_after: None,
            timeout: Some(Duration::from_secs(20)),
            echo: Echo::Off,
            console_log: None,
        };
        let ended = watch(
            &mut child,
            &log,
            &w,
            &AtomicBool::new(false),
            Instant::now(),
        )
        .unwrap();
        let _ = child.kill();
        let _ = child.wait();
        ended
    }

    #[test]
    fn every_expected_text_is_awaited_in_any_order() {
        // The second text first, the first in two writes: the run ends once both are there,
        // with the line of the last one read to its end.
        let (ending, console) = watched(
            "printf 'PLINTH BOOT OK x\\n'; sleep 0.3; printf 'PLINTH SETUP '; sleep 0.3; \
             printf 'FAILED: memory\\n'; sleep 30",
            &["PLINTH SETUP FAILED", "PLINTH BOOT OK"],
        );
        assert_eq!(ending, Ending::Marker);
        assert!(
            console.ends_with("PLINTH SETUP FAILED: memory\n"),
            "{console}"
        );
        // One of two never comes: the guest's end (here the script's) is the ending.
        let (ending, _) = watched("printf 'PLINTH BOOT OK\\n'", &["PLINTH BOOT OK", "never"]);
        assert_eq!(ending, Ending::Exited { success: true });
    }

    #[test]
    fn numa_split_and_disk_modes() {
        let mut m = Machine::new("/boot.img");
        m.cpus = 3;
        m.memory_mib = 1000;
        m.numa_nodes = 2;
        m.disks = vec!["/extra.img".into()];
        let args = qemu_args(&m, Accel::Tcg, Path::new("/v.fd"), &[]).join(" ");
        assert!(
            args.contains(
                "memory-backend-ram,id=mem0,size=500M -numa node,nodeid=0,cpus=0-0,memdev=mem0"
            ),
            "{args}"
        );
        assert!(
            args.contains(
                "memory-backend-ram,id=mem1,size=500M -numa node,nodeid=1,cpus=1-2,memdev=mem1"
            ),
            "{args}"
        );
        assert!(args.contains("file=/boot.img,format=raw,if=none,id=boot,snapshot=on"));
        assert!(args.contains("virtio-blk-pci,drive=boot,bootindex=0"));
        assert!(args.contains("file=/extra.img,format=raw,if=virtio "));
        assert!(args.contains("-accel tcg") && !args.contains("-cpu host"));
        assert!(args.contains("readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"));
    }

    #[test]
    fn a_cpu_model_is_passed_as_given() {
        let mut m = Machine::new("/boot.img");
        m.cpu_model = Some("max".into());
        let args = qemu_args(&m, Accel::Tcg, Path::new("/v.fd"), &[]).join(" ");
        assert!(
            args.contains("-accel tcg -nodefaults") && args.contains(" -cpu max "),
            "{args}"
        );
    }

    #[test]
    fn bad_machines_are_refused_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Machine::new(dir.path().join("none.img"));
        let err = check(&missing, Echo::Off).unwrap_err().to_string();
        assert!(err.contains("none.img: no such disk image"), "{err}");
        let disk = dir.path().join("d.img");
        std::fs::write(&disk, [0u8; 512]).unwrap();
        let mut m = Machine::new(&disk);
        m.numa_nodes = 3;
        let err = check(&m, Echo::Off).unwrap_err().to_string();
        assert!(err.contains("3 NUMA nodes for 2 vCPUs"), "{err}");

        // A path with a control character cannot be written in QEMU's option syntax.
        let odd = dir.path().join("d\nfile=x.img");
        std::fs::write(&odd, [0u8; 512]).unwrap();
        let err = check(&Machine::new(&odd), Echo::Off)
            .unwrap_err()
            .to_string();
        assert!(err.contains("QEMU cannot be given this path"), "{err}");
    }

    #[test]
    fn commas_in_paths_cannot_add_qemu_options() {
        // The attack: a disk named so that its `file=` value ends early and the rest of
        // the name becomes options of the drive (here: a second file, and writable).
        let mut m = Machine::new("/img/a,file=/etc/shadow,snapshot=off");
        m.disks = vec!["/img/b,if=none".into()];
        m.labelled_disks = vec![("/img/c,readonly=off".into(), "s,n".into())];
        m.firmware = Some("/fw/x,unit=1".into());
        let args = qemu_args(&m, Accel::Tcg, Path::new("/v,readonly=off.fd"), &[]);
        let drives: Vec<&String> = args
            .iter()
            .zip(args.iter().skip(1))
            .filter(|(flag, _)| *flag == "-drive")
            .map(|(_, value)| value)
            .collect();
        assert!(drives.contains(
            &&"file=/img/a,,file=/etc/shadow,,snapshot=off,format=raw,if=none,id=boot,snapshot=on"
                .to_string()
        ));
        assert!(drives.contains(&&"file=/img/b,,if=none,format=raw,if=virtio".to_string()));
        assert!(drives.contains(
            &&"file=/img/c,,readonly=off,format=raw,if=none,id=labelled0,readonly=on".to_string()
        ));
        assert!(drives
            .contains(&&"if=pflash,format=raw,unit=0,readonly=on,file=/fw/x,,unit=1".to_string()));
        assert!(args.contains(&"virtio-blk-pci,drive=labelled0,serial=s,,n".to_string()));
    }
}
