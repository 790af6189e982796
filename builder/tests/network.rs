//! Network tier (run by `ci/test`, or by hand with
//! `cargo test --test network -- --ignored --test-threads=1`):
//! a real lock of the project's own specs from Debian's mirror, the lock compared with what
//! mmdebstrap really installs, and a real fetch of the `test` profiles into a fresh cache.

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
    let out = Command::new(env!("CARGO_BIN_EXE_plinth"))
        .arg("--root")
        .arg(ws)
        .args(args)
        .arg("--cache")
        .arg(cache)
        .output()
        .unwrap();
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

/// Build the guest-os `test` disk into `work` with the build pipeline (packages → overlay →
/// agent → initrd → normalize → ext4 → verity → UKI → ESP → disk). Returns the root hash.
fn build_guest_disk(ws: &Path, cache_dir: &Path, work: &Path) -> String {
    use plinth::packages::cache::Cache;
    use plinth::packages::lockfile::Lock;
    use plinth::pipeline::build;
    let spec = plinth::spec::load(&ws.join("guest-os/os.yaml"), "guest-os/os.yaml").unwrap();
    let profile = spec.profile("test").unwrap();
    let lock = Lock::read(&ws.join("guest-os/packages.lock"), "lock", "guest-os").unwrap();
    let packages = lock.profile_packages("test").unwrap();
    let cache = Cache::open(cache_dir).unwrap();
    let log = |line: &str| eprintln!("{line}");
    let plan = build::BuildPlan {
        workspace: &source_root(),
        profile: &profile,
        packages: &packages,
        cache: &cache,
        // Each build compiles the agent in its own target directory.
        agent_target: &work.join("agent-target"),
        version: "0.0.0-test",
        epoch: 1_700_000_000,
        work: &work.join("build"),
        log: &log,
    };
    let built = build::build(&plan).unwrap();
    // The release directory of the first build: SHA256SUMS checks, the manifest records
    // every output and the measurements.
    if std::env::var_os("PLINTH_REPRO_CHILD").is_none() {
        let release_dir = work.join("release");
        let manifest = plinth::pipeline::release::assemble(
            &built,
            &plinth::pipeline::release::ReleaseInputs {
                profile: &profile,
                version: "0.0.0-test",
                epoch: 1_700_000_000,
                source_commit: "0000000000000000000000000000000000000000",
                lock_sha256: &"0".repeat(64),
                os_spec_sha256: &"0".repeat(64),
                packages: &packages,
            },
            &release_dir,
        )
        .unwrap();
        let check = Command::new("sha256sum")
            .args(["-c", "SHA256SUMS"])
            .current_dir(&release_dir)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stdout)
        );
        let names: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
        for name in [
            "disk-img.tar.zst",
            "update-img.tar.zst",
            "sbom.spdx.json",
            "vmlinuz",
            "initrd.img",
            "cmdline-guest-os-a.txt",
        ] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
        assert_eq!(manifest.measurements.slots.len(), 2);
        assert_eq!(
            manifest.measurements.slots[0].verity_root_hash,
            built.root_hash
        );
    }
    let sgdisk = Command::new("sgdisk")
        .arg("-v")
        .arg(&built.disk)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&sgdisk.stdout).contains("No problems found"),
        "{}",
        String::from_utf8_lossy(&sgdisk.stdout)
    );
    assert_eq!(built.slots.len(), 2, "guest-os has slots A and B");
    assert!(built.slots[0]
        .cmdline
        .contains(&format!("roothash={}", built.root_hash)));
    built.root_hash
}

/// Boot `disk` under QEMU (TCG) with OVMF until `marker` appears on the serial console (then
/// stop the VM) or `seconds` pass (then fail with the console's last lines).
fn boot_until(disk: &Path, marker: &str, seconds: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
    let log = dir.path().join("console.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-m",
            "1536",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
        ])
        .args([
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        ])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,snapshot=on",
            disk.display()
        ))
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let console = loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let text = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
        let exited = child.try_wait().unwrap().is_some();
        if text.contains(marker) || exited || std::time::Instant::now() > deadline {
            break text;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        console.contains(marker),
        "no `{marker}` on the console within {seconds} s; last lines:\n{}",
        console
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    console
}

/// Two builds of the GuestOS `test` disk, the second in another process with another work
/// directory, umask, TZ, LANG and host name (its own UTS namespace): initrd, UKI, ext4, verity
/// tree, ESP and the whole disk are byte-identical. Then the disk boots under QEMU to a login
/// prompt through the UKI, the dracut initrd and the dm-verity root.
#[test]
#[ignore = "network tier: needs Debian's mirror"]
fn guest_os_disk_is_reproducible_and_boots() {
    if let Ok(dirs) = std::env::var("PLINTH_REPRO_CHILD") {
        // The second build, started by the first.
        let mut it = dirs.split('\n');
        let (ws, cache, work) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        println!(
            "root hash {}",
            build_guest_disk(Path::new(ws), Path::new(cache), Path::new(work))
        );
        return;
    }
    let ws = scratch_workspace();
    let cache = tempfile::tempdir().unwrap();
    assert!(plinth(ws.path(), cache.path(), &["lock", "guest-os"])
        .status
        .success());
    assert!(plinth(
        ws.path(),
        cache.path(),
        &["fetch", "guest-os", "--profile", "test"]
    )
    .status
    .success());
    let first = tempfile::tempdir().unwrap();
    let hash1 = build_guest_disk(ws.path(), cache.path(), first.path());

    let second = tempfile::Builder::new()
        .prefix("other-place-")
        .tempdir()
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args([
            "--uts",
            "sh",
            "-c",
            "hostname plinth-elsewhere && umask 077 && exec \"$@\"",
            "sh",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "guest_os_disk_is_reproducible_and_boots",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "PLINTH_REPRO_CHILD",
            format!(
                "{}\n{}\n{}",
                ws.path().display(),
                cache.path().display(),
                second.path().display()
            ),
        )
        .env("TZ", "Pacific/Chatham")
        .env("LANG", "fr_FR.UTF-8")
        .current_dir(second.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "second build failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("root hash {hash1}")),
        "root hashes differ: first {hash1}\n{stdout}"
    );
    for file in [
        "initrd.img",
        "guest-os-a.efi",
        "guest-os-b.efi",
        "root.img",
        "verity.img",
        "esp.img",
        "disk.img",
    ] {
        let a = std::fs::read(first.path().join("build").join(file)).unwrap();
        let b = std::fs::read(second.path().join("build").join(file)).unwrap();
        assert!(a == b, "{file} differs between the two builds");
    }
    // The agent is in the image.
    assert!(first
        .path()
        .join("build/root/usr/bin/plinth-guest")
        .is_file());
    eprintln!("guest-os test disk: two builds byte-identical, root hash {hash1}");

    // OVMF → systemd-boot → the slot A UKI → dracut initrd → dm-verity root.
    let console = boot_until(&first.path().join("build/disk.img"), "guest-os login:", 300);
    // `quiet` hides kernel messages; systemd's status lines (show_status=1) remain.
    assert!(
        console.contains("Verity Protection Setup for root."),
        "systemd-veritysetup did not open the root"
    );
    eprintln!("guest-os test disk booted to a login prompt on the verity root");
}
