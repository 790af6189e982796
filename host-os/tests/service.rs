//! `plinth-guest.service`, the HostOS unit that runs `plinth-host guest launch` at boot: its
//! units pass `systemd-analyze verify` in a root of the HostOS overlay (with the real
//! plinth-host as /usr/bin/plinth-host and the host's systemd targets), the service is
//! enabled, and the configuration it reads (PLINTH_GUEST_* variables, as SetupOS writes
//! them into guest-os.env) plans the VM it names.

use std::path::Path;
use std::process::Command;

const HOST: &str = env!("CARGO_BIN_EXE_plinth-host");
const UNITS: &str = "usr/lib/systemd/system";

fn overlay() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/rootfs"))
}

#[test]
fn the_units_verify_and_the_service_is_enabled() {
    let root = tempfile::tempdir().unwrap();
    let units = root.path().join(UNITS);
    std::fs::create_dir_all(&units).unwrap();
    // The overlay's units (its drop-in directories change units of packages, not these).
    for entry in std::fs::read_dir(overlay().join(UNITS)).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), units.join(entry.file_name())).unwrap();
        }
    }
    // The targets they name come from systemd itself.
    let host_units = Path::new("/usr/lib/systemd/system");
    assert!(
        host_units.join("multi-user.target").exists(),
        "needs systemd's units (ci/setup installs systemd)"
    );
    for entry in std::fs::read_dir(host_units).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".target") && !units.join(&name).exists() {
            std::fs::copy(entry.path(), units.join(&name)).unwrap();
        }
    }
    std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
    std::fs::copy(HOST, root.path().join("usr/bin/plinth-host")).unwrap();
    // plinth-config.service unmounts with the image's umount (util-linux's `mount`).
    std::fs::copy("/usr/bin/umount", root.path().join("usr/bin/umount")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(["plinth-guest.service", "plinth-config.service"])
        .output()
        .expect("systemd-analyze (ci/setup installs systemd)");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");

    let wants = overlay().join("etc/systemd/system/multi-user.target.wants/plinth-guest.service");
    assert_eq!(
        std::fs::read_link(&wants).unwrap(),
        Path::new("/").join(UNITS).join("plinth-guest.service")
    );
    let unit = std::fs::read_to_string(overlay().join(UNITS).join("plinth-guest.service")).unwrap();
    for line in [
        "ExecStart=/usr/bin/plinth-host guest launch --cgroup-delegated --state-dir /run/plinth/guest",
        "EnvironmentFile=/run/plinth/config/guest-os.env",
        "ConditionPathExists=/run/plinth/config/guest-os.env",
        "KillMode=mixed",
        "Type=notify",
        "RestartPreventExitStatus=2",
        "Delegate=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "no `{line}` in the unit");
    }
}

#[test]
fn the_service_configuration_plans_the_vm_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<String> = ["a.img", "b.img"]
        .iter()
        .map(|n| {
            let p = dir.path().join(n);
            std::fs::File::create(&p)
                .unwrap()
                .set_len(16 << 20)
                .unwrap();
            p.display().to_string()
        })
        .collect();
    // What guest-os.env holds, read by clap from the environment systemd gives the service.
    let out = Command::new(HOST)
        .args(["guest", "plan", "--json", "--development"])
        .env("PLINTH_GUEST_VCPUS", "2")
        .env("PLINTH_GUEST_MEMORY_GIB", "1")
        .env("PLINTH_GUEST_DISKS", disks.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["vcpus"], 2);
    assert_eq!(plan["memory_gib"], 1);
    let planned: Vec<&str> = plan["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(planned, disks);

    // A bad value names its variable.
    let out = Command::new(HOST)
        .args(["guest", "plan", "--development"])
        .env("PLINTH_GUEST_VCPUS", "two")
        .env("PLINTH_GUEST_MEMORY_GIB", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("two") && err.contains("--vcpus"), "{err}");
}
