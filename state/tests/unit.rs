//! `plinth-state.service`, the initrd unit that opens the state before the switch to the new
//! root: it passes `systemd-analyze verify` in a root holding the real plinth-state binary,
//! systemd's own targets and a `sysroot.mount` as the initrd's fstab generator writes it; it
//! is pulled in by initrd-fs.target and runs after /sysroot is mounted.

use std::path::Path;
use std::process::Command;

const STATE: &str = env!("CARGO_BIN_EXE_plinth-state");
const UNITS: &str = "usr/lib/systemd/system";

fn initrd() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/initrd"))
}

#[test]
fn the_unit_verifies_and_runs_between_sysroot_and_initrd_fs() {
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join(UNITS);
    std::fs::create_dir_all(&units).unwrap();
    std::fs::copy(
        initrd().join(UNITS).join("plinth-state.service"),
        units.join("plinth-state.service"),
    )
    .unwrap();
    let host_units = Path::new("/usr/lib/systemd/system");
    assert!(
        host_units.join("initrd-fs.target").exists(),
        "needs systemd's units (ci/setup installs systemd)"
    );
    for entry in std::fs::read_dir(host_units).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        if name_str.ends_with(".target") || name_str == "systemd-udevd.service" {
            std::fs::copy(entry.path(), units.join(&name)).unwrap();
        }
    }
    // What systemd-fstab-generator makes of root= in the initrd.
    std::fs::write(
        units.join("sysroot.mount"),
        "[Unit]\nBefore=initrd-root-fs.target\n[Mount]\nWhat=/dev/mapper/root\nWhere=/sysroot\nOptions=ro\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    std::fs::copy(STATE, root.path().join("usr/bin/plinth-state")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("plinth-state.service")
        .output()
        .expect("systemd-analyze (ci/setup installs systemd)");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    let wants = initrd()
        .join(UNITS)
        .join("initrd-fs.target.wants/plinth-state.service");
    assert_eq!(
        std::fs::read_link(&wants).unwrap(),
        Path::new("../plinth-state.service")
    );
    let unit = std::fs::read_to_string(initrd().join(UNITS).join("plinth-state.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/plinth-state open --root /sysroot",
        "Requires=sysroot.mount",
        "Wants=systemd-pcrphase-initrd.service",
        "After=sysroot.mount systemd-udevd.service systemd-pcrphase-initrd.service",
        "Before=initrd-fs.target initrd-parse-etc.service",
        "DefaultDependencies=no",
        "Type=oneshot",
    ] {
        assert!(unit.lines().any(|l| l == line), "no `{line}` in the unit");
    }
}
