//! Network tier (run by `ci/test`, or by hand with
//! `cargo test --test network -- --ignored --test-threads=1`):
//! a real lock of the project's own specs from Debian's mirror, the lock compared with what
//! mmdebstrap really installs, and a real fetch of the `test` profiles into a fresh cache.

use crate::support::Plinth;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A scratch workspace holding copies of the project's three specs.
fn scratch_workspace() -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    for os in ["guest-os", "host-os", "setup-os"] {
        std::fs::create_dir_all(ws.path().join(os)).unwrap();
        std::fs::copy(
            source_root().join(os).join("os.yaml"),
            ws.path().join(os).join("os.yaml"),
        )
        .unwrap();
    }
    ws
}

fn plinth(ws: &Path, cache: &Path, args: &[&str]) -> Output {
    let out = Plinth::new().root(ws).args(args).cache(cache).output();
    eprintln!(
        "plinth {}:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lock_json(ws: &Path, os: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(ws.join(os).join("packages.lock")).unwrap())
        .unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
#[ignore = "network tier: needs Debian's mirror "]
fn real_lock_is_deterministic_and_fetch_fills_a_verified_cache() {
    let ws = scratch_workspace();
    let cache = tempfile::tempdir().unwrap();
    let first = plinth(ws.path(), cache.path(), &["lock", "all"]);
    assert!(first.status.success());
    let bytes: Vec<Vec<u8>> = ["guest-os", "host-os", "setup-os"]
        .iter()
        .map(|os| std::fs::read(ws.path().join(os).join("packages.lock")).unwrap())
        .collect();
    // Again, with the index cache dropped: same mirror state, same bytes.
    std::fs::remove_dir_all(cache.path().join("indexes")).unwrap();
    let second = plinth(ws.path(), cache.path(), &["lock", "all"]);
    assert!(second.status.success());
    for (os, first_bytes) in ["guest-os", "host-os", "setup-os"].iter().zip(&bytes) {
        let again = std::fs::read(ws.path().join(os).join("packages.lock")).unwrap();
        assert!(
            &again == first_bytes,
            "{os}: the second lock differs from the first"
        );
    }
    assert!(plinth(ws.path(), cache.path(), &["lock", "all", "--check"])
        .status
        .success());

    // HostOS takes QEMU from backports, and only QEMU's own packages that need it.
    let host = lock_json(ws.path(), "host-os");
    let qemu = host["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "qemu-system-x86")
        .expect("qemu-system-x86 is locked");
    assert_eq!(qemu["suite"], "bookworm-backports");
    assert!(
        qemu["version"].as_str().unwrap().contains("bpo12"),
        "{qemu}"
    );
    let systemd = host["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "systemd")
        .unwrap();
    assert_ne!(systemd["suite"], "bookworm-backports");

    // Fetch every test profile: each cached file re-hashes to its locked sha256.
    let fetch = plinth(
        ws.path(),
        cache.path(),
        &["fetch", "all", "--profile", "test"],
    );
    assert!(fetch.status.success());
    let mut wanted = BTreeSet::new();
    for os in ["guest-os", "host-os", "setup-os"] {
        let lock = lock_json(ws.path(), os);
        let keys: BTreeSet<String> = strings(&lock["profiles"]["test"]["packages"])
            .into_iter()
            .collect();
        for p in lock["packages"].as_array().unwrap() {
            let key = format!(
                "{}={}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap()
            );
            if keys.contains(&key) {
                wanted.insert(p["sha256"].as_str().unwrap().to_string());
            }
        }
    }
    for sha in &wanted {
        let bytes = std::fs::read(cache.path().join("debs").join(format!("{sha}.deb"))).unwrap();
        assert_eq!(
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
            sha
        );
    }
    // Offline, everything is there now.
    let offline = plinth(
        ws.path(),
        cache.path(),
        &["fetch", "all", "--profile", "test", "--offline"],
    );
    assert!(offline.status.success());
}

/// Install the `test` profile of `os` with mmdebstrap from the same mirror and compare the
/// installed packages with the lock.
fn compare_with_mmdebstrap(os: &str) {
    let ws = scratch_workspace();
    let cache = tempfile::tempdir().unwrap();
    assert!(plinth(ws.path(), cache.path(), &["lock", os])
        .status
        .success());
    let lock = lock_json(ws.path(), os);
    let profile = &lock["profiles"]["test"];
    let inputs = &profile["inputs"];
    let release = inputs["release"].as_str().unwrap();
    let mirrors = plinth::packages::mirror::Mirrors::resolve(
        &plinth::spec::load(&ws.path().join(os).join("os.yaml"), "os.yaml")
            .unwrap()
            .base,
        &Default::default(),
    );
    let listing = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--quiet", "--mode=root", "--format=null"])
        .arg(format!("--variant={}", inputs["variant"].as_str().unwrap()))
        .arg(format!(
            "--include={}",
            strings(&inputs["requests"]).join(",")
        ))
        .arg(format!(
            "--customize-hook=chroot \"$1\" dpkg-query -W -f='${{Package}}=${{Version}}\\n' > {}",
            listing.path().display()
        ))
        .arg(release)
        .arg("/dev/null");
    for suite in strings(&inputs["suites"]) {
        cmd.arg(format!(
            "deb {} {suite} {}",
            mirrors.for_suite(&suite),
            strings(&inputs["components"]).join(" ")
        ));
    }
    let out = cmd.output().expect("running mmdebstrap");
    assert!(
        out.status.success(),
        "mmdebstrap failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed: BTreeSet<String> = std::fs::read_to_string(listing.path())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let locked: BTreeSet<String> = strings(&profile["packages"]).into_iter().collect();
    let only_lock: Vec<_> = locked.difference(&installed).collect();
    let only_installed: Vec<_> = installed.difference(&locked).collect();
    assert!(
        only_lock.is_empty() && only_installed.is_empty(),
        "{os}: lock and mmdebstrap differ\n  only in the lock: {only_lock:?}\n  only installed: {only_installed:?}"
    );
    eprintln!(
        "{os}: mmdebstrap installed exactly the {} locked packages",
        locked.len()
    );
}

#[test]
#[ignore = "network tier: needs Debian's mirror "]
fn guest_os_lock_equals_what_mmdebstrap_installs() {
    compare_with_mmdebstrap("guest-os");
}

#[test]
#[ignore = "network tier: needs Debian's mirror "]
fn host_os_lock_equals_what_mmdebstrap_installs() {
    compare_with_mmdebstrap("host-os");
}

#[test]
#[ignore = "network tier: needs Debian's mirror "]
fn setup_os_lock_equals_what_mmdebstrap_installs() {
    compare_with_mmdebstrap("setup-os");
}
