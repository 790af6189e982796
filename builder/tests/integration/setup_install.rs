//! SetupOS installs a node, end to end under TCG (run by the release tier, on its releases):
//! the SetupOS `test` release flashed onto a stick image with a provider's config.yaml, a
//! VM with three blank emulated NVMe drives with serials and a swtpm whose EK certificate
//! comes from a local CA this test makes; SetupOS certifies the VM as `qemu-test`, installs
//! HostOS and GuestOS, sets the boot entry and reboots; the same VM comes up from the NVMe
//! drive into HostOS, whose boot report checks its measured boot. Then a VM that is not
//! certified (too little memory) gets the refusal banner and every drive stays untouched.

use crate::support::Plinth;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Each emulated NVMe drive (sparse): the test HostOS and GuestOS disks are 3 GiB.
const NVME_BYTES: u64 = 4 << 30;
const SERIALS: [&str; 3] = ["PLINTHHOST0", "PLINTHGUEST1", "PLINTHDATA2"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The provider's files: config.yaml (qemu-test, the three drives by serial), the node
/// operator key, and the test's EK CA beside them.
fn provider_files(dir: &Path, ek_ca: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/node-config.example.yaml"),
    )
    .unwrap();
    let mut config = example
        .replace("generation: gen2-genoa", "generation: qemu-test")
        .replace(
            "acknowledged_warnings: [nvme.models]",
            "acknowledged_warnings: []",
        );
    let cut = config.find("target_disks:").unwrap();
    config.truncate(cut);
    config.push_str("target_disks:\n");
    for serial in SERIALS {
        config.push_str(&format!("  - serial: {serial}\n"));
    }
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let key = dir.join("node_operator_private_key.pem");
    run(Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key));
    let ca = dir.join("test-ek-ca.pem");
    std::fs::copy(ek_ca, &ca).unwrap();
    // The same checks SetupOS applies.
    let check = Plinth::new()
        .args(["config", "check", "--test-generations"])
        .args([&config_path])
        .output();
    assert!(
        check.status.success(),
        "plinth config check: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    vec![config_path, key, ca]
}

/// A SetupOS stick: the release flashed onto a new file with `plinth flash --config` (which
/// writes config.yaml and the key it names), the test's EK CA copied beside them (mtools:
/// nothing mounted).
fn stick(setup: &Path, files: &[PathBuf], scratch: &Path) -> PathBuf {
    let stick = scratch.join("stick.img");
    let flash = Plinth::new()
        .args(["flash", "--yes", "--json", "--config"])
        .args([&files[0]])
        .args([setup, stick.as_path()])
        .output();
    assert!(
        flash.status.success(),
        "plinth flash: {}",
        String::from_utf8_lossy(&flash.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(setup.join("manifest.json")).unwrap()).unwrap();
    let config = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == "config")
        .unwrap();
    let offset = config["offset"].as_u64().unwrap();
    for file in &files[2..] {
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(format!("{}@@{offset}", stick.display()))
            .arg(file)
            .arg(format!("::{}", file.file_name().unwrap().to_str().unwrap())));
    }
    stick
}

/// Three blank sparse drives.
fn blank_drives(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (0..3)
        .map(|i| {
            let p = dir.join(format!("nvme{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(NVME_BYTES)
                .unwrap();
            p
        })
        .collect()
}

/// Whether a sparse file holds any data (QEMU allocates what the guest writes, zeros too).
fn untouched(file: &Path) -> bool {
    use nix::unistd::{lseek, Whence};
    let f = std::fs::File::open(file).unwrap();
    matches!(
        lseek(&f, 0, Whence::SeekData),
        Err(nix::errno::Errno::ENXIO)
    )
}

fn boot(
    stick: &Path,
    drives: &[PathBuf],
    tpm: &Path,
    memory_mib: u64,
    expect: &str,
    extra: &[&str],
    log: &Path,
) -> (bool, String) {
    let mut cmd = Plinth::new().command();
    cmd.arg("run")
        .arg(stick)
        .args(["--accel", "tcg", "--timeout", "1500", "--json", "--tpm"])
        .arg("--tpm-state")
        .arg(tpm)
        .args(["--cpu", "EPYC", "--cpus", "2"])
        .args(["--memory", &memory_mib.to_string()])
        .args(["--expect", expect]);
    for (drive, serial) in drives.iter().zip(SERIALS) {
        cmd.arg("--nvme")
            .arg(format!("{},serial={serial}", drive.display()));
    }
    let out = cmd
        .args(extra)
        .arg("--console-log")
        .arg(log)
        .output()
        .unwrap();
    let mut console = std::fs::read_to_string(log).unwrap_or_default();
    if !out.status.success() {
        console.push_str(&format!(
            "\n[plinth run: {}]",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    (out.status.success(), console)
}

fn tail(console: &str, n: usize) -> String {
    let lines: Vec<&str> = console.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A debugfs `cat` of `name` in the ext4 filesystem at `offset` of `disk`.
fn ext4_cat(disk: &Path, offset: u64, name: &str) -> String {
    let out = run(Command::new("debugfs")
        .args(["-R", &format!("cat {name}")])
        .arg(format!("{}?offset={offset}", disk.display())));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn partition(release: &Path, role: &str) -> (u64, u64) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release.join("manifest.json")).unwrap()).unwrap();
    let p = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == role)
        .unwrap_or_else(|| panic!("no {role} partition"));
    (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

/// The install, the reboot into HostOS, and the refusal.
pub fn setup_installs_a_node(out: &Path, version: &str, scratch: &Path) {
    let (setup, host, guest) = (
        out.join("setup-os").join(version),
        out.join("host-os").join(version),
        out.join("guest-os").join(version),
    );
    std::fs::create_dir_all(scratch).unwrap();
    let tpm = scratch.join("tpm");
    let ek_ca = plinth_testkit::swtpm::manufacture_with_ek(&tpm, &scratch.join("ek-ca"));
    let files = provider_files(&scratch.join("provider"), &ek_ca);
    let stick = stick(&setup, &files, scratch);
    let drives = blank_drives(&scratch.join("drives"));
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-setup-install.log");
    let started = std::time::Instant::now();
    let measurements = host.join("measurements.json");
    let (ok, console) = boot(
        &stick,
        &drives,
        &tpm,
        5120,
        "PLINTH BOOT OK host-os",
        // The stick boots last, as an installer does: the reboot boots the installed disk.
        &[
            "--boot-last",
            "--measurements",
            measurements.to_str().unwrap(),
        ],
        &log,
    );
    assert!(
        ok,
        "SetupOS did not install a HostOS that boots (console log {}):\n{}",
        log.display(),
        tail(&console, 60)
    );
    eprintln!(
        "setup-os: certified, installed and rebooted into HostOS in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // The order on the console: certified, written, read back, configured, then HostOS.
    let at = |text: &str| {
        console
            .find(text)
            .unwrap_or_else(|| panic!("no `{text}` on the console:\n{}", tail(&console, 60)))
    };
    let certified = at("CERTIFIED");
    assert!(console.contains("against generation qemu-test"));
    assert!(
        console.contains("pass  tpm.ek_certificate"),
        "the swtpm's EK chain was checked"
    );
    let written = at("PLINTH SETUP OK generation=qemu-test");
    let host_ok = at("PLINTH BOOT OK host-os");
    assert!(certified < written && written < host_ok);
    for line in console
        .lines()
        .filter(|l| l.contains("read back and compared"))
    {
        eprintln!("  {}", line.trim());
    }
    assert_eq!(
        console.matches("read back and compared").count(),
        2,
        "HostOS and GuestOS each read back"
    );

    // HostOS's config partition holds what SetupOS planned.
    let (offset, _) = partition(&host, "config");
    let env = ext4_cat(&drives[0], offset, "guest-os.env");
    for line in [
        "PLINTH_GUEST_VCPUS=1\n",
        "PLINTH_GUEST_MEMORY_GIB=1\n",
        "PLINTH_GUEST_DEVELOPMENT=true\n",
        "PLINTH_GUEST_SEV=false\n",
    ] {
        assert!(env.contains(line), "guest-os.env lacks {line:?}:\n{env}");
    }
    let disks = env
        .lines()
        .find_map(|l| l.strip_prefix("PLINTH_GUEST_DISKS="))
        .unwrap();
    assert_eq!(
        disks.split(',').count(),
        2,
        "GuestOS's disk and the data disk: {env}"
    );
    let network = ext4_cat(&drives[0], offset, "network.env");
    assert!(
        network.contains("PLINTH_IPV6_PREFIX=2001:db8:1:2::/64"),
        "{network}"
    );
    let report = ext4_cat(&drives[0], offset, "setup-report.json");
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["certified"], true);
    // HostOS planned the VM guest-os.env asks for (its test profile plans, launches nothing).
    assert!(
        !console.contains("Failed to start plinth-guest.service"),
        "{}",
        tail(&console, 40)
    );

    // GuestOS's drive holds the GuestOS release, every partition as its manifest says.
    let verify = Plinth::new()
        .args(["flash", "--verify-only", "--json"])
        .args([guest.as_path(), drives[1].as_path()])
        .output();
    assert!(
        verify.status.success(),
        "GuestOS's drive: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        untouched(&drives[2]),
        "the data drive is GuestOS's, never written by SetupOS"
    );

    // Not certified (too little memory): the banner, and every drive untouched. SetupOS's own
    // boot comes first: its report's line, and its PCRs as its measurements.json predicts.
    let blank = blank_drives(&scratch.join("refused"));
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-setup-refusal.log");
    let setup_measurements = setup.join("measurements.json");
    let wanted = format!("PLINTH BOOT OK setup-os {version} slot=none");
    let (ok, console) = boot(
        &stick,
        &blank,
        &tpm,
        1536,
        "PLINTH SETUP FAILED",
        // Both lines, whichever comes first (the refusal can be printed before the report).
        // The stick boots first (the firmware tries no blank drive before it, which PCR 4
        // would record), as its measurements.json predicts.
        &[
            "--expect",
            "PLINTH BOOT ",
            "--measurements",
            setup_measurements.to_str().unwrap(),
        ],
        &log,
    );
    assert!(
        ok,
        "no refusal banner (console log {}):\n{}",
        log.display(),
        tail(&console, 60)
    );
    assert!(
        console.contains(&wanted),
        "no `{wanted}` before the refusal:\n{}",
        tail(&console, 60)
    );
    crate::reproducible::assert_pcrs_as_predicted(&setup, "setup-os", &console);
    assert!(
        console.contains("FAIL  memory.total"),
        "{}",
        tail(&console, 40)
    );
    assert!(
        console.contains("nothing was written to any disk"),
        "{}",
        tail(&console, 20)
    );
    for d in &blank {
        assert!(untouched(d), "{} was written", d.display());
    }
    let _ = std::fs::remove_dir_all(scratch);
}

/// The same against releases already built (`plinth build all --profile test --out DIR`),
/// for working on the installer without the whole release tier:
/// `PLINTH_RELEASES=DIR PLINTH_RELEASE_VERSION=V cargo test -p plinth-builder --test
/// integration -- --ignored setup_install::`.
#[test]
#[ignore = "needs built releases (PLINTH_RELEASES) and root"]
fn installs_from_built_releases() {
    let (Ok(out), Ok(version)) = (
        std::env::var("PLINTH_RELEASES"),
        std::env::var("PLINTH_RELEASE_VERSION"),
    ) else {
        eprintln!("skipped: PLINTH_RELEASES and PLINTH_RELEASE_VERSION are not set");
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    setup_installs_a_node(Path::new(&out), &version, &scratch.path().join("install"));
}
