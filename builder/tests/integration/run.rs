//! `plinth run` without a built image: bad input is refused before anything starts, and a
//! real QEMU + OVMF + swtpm run on a blank disk (OVMF finds nothing to boot and says so on
//! the serial console) ends at the expected text or at the timeout, leaving no process and
//! no temporary file behind.

use crate::support::Plinth;
use std::path::Path;
use std::process::Output;

/// Run `plinth` with its own temporary directory (`TMPDIR`, where [`vm_dirs`] looks): the
/// other tests of this binary run beside it.
fn plinth(args: &[&str]) -> Output {
    Plinth::new()
        .args(args)
        .env("TMPDIR", private_tmp())
        .output()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !cmdline.contains("cargo") {
            found.push(cmdline);
        }
    }
    found
}

/// The calling test's private temporary directory for `plinth run` (each test runs on its own
/// thread; removed when it ends).
fn private_tmp() -> std::path::PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().unwrap();
    }
    DIR.with(|d| d.path().to_path_buf())
}

fn vm_dirs() -> usize {
    std::fs::read_dir(private_tmp())
        .unwrap()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("plinth-vm-") || name.starts_with("plinth-run-")
        })
        .count()
}

#[test]
fn bad_input_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = plinth(&["run", "no-such-os"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("is not an OS"), "{}", text(&out));

    let empty = dir.path().join("out");
    let out = plinth(&[
        "run",
        "guest-os",
        "--profile",
        "test",
        "--out",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("hint: build it first: plinth build guest-os --profile test"),
        "{}",
        text(&out)
    );

    let disk = dir.path().join("blank.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let out = plinth(&[
        "run",
        disk.to_str().unwrap(),
        "--numa",
        "4",
        "--expect",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("4 NUMA nodes for 2 vCPUs"),
        "{}",
        text(&out)
    );

    let out = plinth(&["run", disk.to_str().unwrap(), "--disk", "/no/such.img"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("/no/such.img: no such disk image"));
}

#[test]
fn ovmf_on_a_blank_disk_with_a_tpm_then_everything_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("blank-disk-for-run-test.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let disk_s = disk.to_str().unwrap();
    let before = vm_dirs();

    // OVMF's boot manager reports on the serial console that nothing boots.
    let out = plinth(&[
        "run",
        disk_s,
        "--tpm",
        "--accel",
        "tcg",
        "--expect",
        "BdsDxe",
        "--timeout",
        "120",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ending"], "marker", "{report}");
    assert_eq!(report["accel"], "tcg");
    assert!(report["console_tail"].as_str().unwrap().contains("BdsDxe"));
    // QEMU names the boot disk; QEMU and swtpm name their files in the run's directory.
    assert!(processes_with(disk_s).is_empty(), "QEMU left running");
    assert!(
        processes_with("plinth-vm-").is_empty(),
        "swtpm left running"
    );
    assert_eq!(vm_dirs(), before, "a temporary directory was left behind");

    // Text that never comes: exit 1 at the timeout, with the console's last lines.
    let log = dir.path().join("console.log");
    let out = plinth(&[
        "run",
        disk_s,
        "--accel",
        "tcg",
        "--expect",
        "never printed",
        "--timeout",
        "3",
        "--console-log",
        log.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no `never printed` within 3 s"),
        "{}",
        text(&out)
    );
    assert!(Path::new(&log).is_file());
    assert!(processes_with(disk_s).is_empty(), "left running");
    assert_eq!(vm_dirs(), before, "a temporary directory was left behind");
    // The boot disk was opened copy-on-write.
    assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0));
}
