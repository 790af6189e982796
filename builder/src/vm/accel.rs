//! Which accelerator QEMU can use here: KVM when it really runs guest code, TCG otherwise.
//!
//! `/dev/kvm` can exist and open and still not run a guest (a PVM backend on a cloud VM stops
//! with "KVM internal error" at the first instruction it cannot emulate), so the probe boots a
//! 512-byte boot sector under KVM through SeaBIOS that writes one byte to the serial port, and
//! KVM counts as working only if that byte arrives.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// QEMU's name for it (`-accel <name>`).
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How long the probe waits for its byte: SeaBIOS reaches a boot sector in well under a
/// second under KVM.
const PROBE_WAIT: Duration = Duration::from_secs(2);

/// KVM if it runs a guest here, else TCG, with the reason for TCG.
pub fn detect(scratch: &Path) -> (Accel, String) {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Err(e) => (Accel::Tcg, format!("/dev/kvm: {e}")),
        Ok(_) => match probe(scratch) {
            Ok(()) => (Accel::Kvm, "/dev/kvm runs a guest".into()),
            Err(why) => (Accel::Tcg, why),
        },
    }
}

/// Boot the probe sector under KVM; Ok if it wrote its byte to the serial port.
fn probe(scratch: &Path) -> Result<(), String> {
    // mov dx, 0x3f8; mov al, 'K'; out dx, al; hlt; jmp $-1 — then the boot signature.
    let mut sector = vec![0xBA, 0xF8, 0x03, 0xB0, b'K', 0xEE, 0xF4, 0xEB, 0xFD];
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xAA]);
    sector.resize(4096, 0);
    let image = scratch.join("kvm-probe.img");
    let out = scratch.join("kvm-probe.out");
    std::fs::write(&image, &sector).map_err(|e| format!("{}: {e}", image.display()))?;
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-machine", "pc", "-m", "16", "-nodefaults"])
        .args(["-display", "none", "-monitor", "none", "-no-user-config"])
        .arg("-serial")
        .arg(format!("file:{}", out.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", image.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("qemu-system-x86_64 could not be started: {e}"))?;
    // The wait starts once QEMU has opened its serial file (its own start-up can be slow).
    let spawned = Instant::now();
    let mut start: Option<Instant> = None;
    let result = loop {
        if start.is_none() && (out.exists() || spawned.elapsed() > Duration::from_secs(10)) {
            start = Some(Instant::now());
        }
        if std::fs::read(&out).is_ok_and(|b| b.contains(&b'K')) {
            break Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!(
                "a KVM guest could not start (QEMU exited: {status})"
            ));
        }
        if start.is_some_and(|s| s.elapsed() > PROBE_WAIT) {
            break Err(format!(
                "/dev/kvm opens but a guest under it ran no code in {} s",
                PROBE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_file(&out);
    result
}
