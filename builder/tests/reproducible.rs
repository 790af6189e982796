//! Release tier (run by `ci/test`, or by hand with
//! `cargo test --test reproducible -- --ignored --test-threads=1`; needs root and Debian's
//! mirror): the `test` profile of every OS built with `plinth build` from a scratch git
//! checkout of this tree, then
//! - fsck and sgdisk on every image of every release;
//! - a second `plinth build` with nothing changed is served from the stage cache;
//! - `plinth verify` of each release, in another directory, umask, TZ, LANG and host name
//!   (own UTS namespace), rebuilds everything without the stage cache and reproduces every
//!   artifact byte for byte;
//! - one overlay file changed: the rebuild reuses the package stage, `plinth diff` lists the
//!   file, and `plinth verify` of that release fails naming it;
//! - every OS's disk boots with `plinth run` (QEMU, OVMF, TCG, swtpm) through systemd-boot,
//!   its UKI and the dm-verity root until its agent prints `PLINTH BOOT OK <os> <version>
//!   slot=<A|none>`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OSES: [&str; 3] = ["guest-os", "host-os", "setup-os"];
const VERSION: &str = "0.0.0-ci";
/// The overlay file the one-file change edits.
const CHANGED: &str = "etc/systemd/journald.conf.d/10-plinth.conf";

fn source_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    eprintln!(
        "$ {cmd:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn git(repo: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(repo)
        .env("GIT_AUTHOR_NAME", "ci")
        .env("GIT_AUTHOR_EMAIL", "ci@plinth.invalid")
        .env("GIT_COMMITTER_NAME", "ci")
        .env("GIT_COMMITTER_EMAIL", "ci@plinth.invalid")
        .env("GIT_AUTHOR_DATE", "@1700000000 +0000")
        .env("GIT_COMMITTER_DATE", "@1700000000 +0000");
    c
}

/// A git repository holding this tree's files as they are now (committed, untracked but not
/// ignored), committed once.
fn scratch_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let files = run(Command::new("git").arg("-C").arg(source_root()).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]));
    for name in files.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::str::from_utf8(name).unwrap());
        let src = source_root().join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&src) else {
            continue; // deleted in the working tree
        };
        let dest = repo.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        if meta.file_type().is_symlink() {
            // Overlay links (e.g. a unit's wants link) point into the image, not the host.
            std::os::unix::fs::symlink(std::fs::read_link(&src).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(&src, &dest).unwrap();
        }
    }
    assert!(run(git(&repo).args(["init", "-q"])).status.success());
    assert!(run(git(&repo).args(["add", "-A"])).status.success());
    assert!(run(git(&repo).args(["commit", "-q", "-m", "scratch"]))
        .status
        .success());
    repo
}

fn plinth(repo: &Path, cache: &Path, args: &[&str]) -> Output {
    run(Command::new(env!("CARGO_BIN_EXE_plinth"))
        .arg("--root")
        .arg(repo)
        .args(args)
        .arg("--cache")
        .arg(cache))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `plinth verify` in another place and environment: its own UTS namespace and host name,
/// umask 077, another TZ and LANG, another working directory.
fn verify_elsewhere(repo: &Path, cache: &Path, release: &Path) -> Output {
    let elsewhere = tempfile::Builder::new()
        .prefix("other-place-")
        .tempdir()
        .unwrap();
    run(Command::new("unshare")
        .args([
            "--uts",
            "sh",
            "-c",
            "hostname plinth-elsewhere && umask 077 && exec \"$@\"",
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_plinth"))
        .arg("--root")
        .arg(repo)
        .arg("verify")
        .arg(release)
        .arg("--cache")
        .arg(cache)
        .env("TZ", "Pacific/Chatham")
        .env("LANG", "fr_FR.UTF-8")
        .env("TMPDIR", elsewhere.path())
        .current_dir(elsewhere.path()))
}

/// Every partition of the release's disk: GPT checked by sgdisk, ext4 by e2fsck, FAT by
/// fsck.vfat.
fn check_filesystems(release: &Path, scratch: &Path) {
    use plinth::compare::release::{copy_span, Release};
    let r = Release::open(release).unwrap();
    let disk = r
        .extract_member("disk-img.tar.zst", "disk.img", scratch)
        .unwrap();
    let sgdisk = run(Command::new("sgdisk").arg("-v").arg(&disk));
    assert!(
        String::from_utf8_lossy(&sgdisk.stdout).contains("No problems found"),
        "{}: sgdisk -v",
        release.display()
    );
    for p in &r.manifest.partitions {
        let img = copy_span(&disk, p.offset, p.size, &scratch.join("part.img")).unwrap();
        let head = std::fs::read(&img).unwrap_or_default();
        let ext4 = head.get(1080..1082) == Some(&[0x53, 0xef][..]);
        let fat = head.get(510..512) == Some(&[0x55, 0xaa][..]);
        match (p.role.as_str(), ext4, fat) {
            (_, true, _) => {
                let out = run(Command::new("e2fsck").arg("-fn").arg(&img));
                assert!(
                    out.status.success(),
                    "{}: e2fsck -fn {}",
                    release.display(),
                    p.name
                );
            }
            ("esp", _, true) | ("config", _, true) => {
                let out = run(Command::new("fsck.vfat").arg("-n").arg(&img));
                assert!(
                    out.status.success(),
                    "{}: fsck.vfat -n {}",
                    release.display(),
                    p.name
                );
            }
            ("root", false, false) => {
                // The B slot of a fresh disk is empty.
                assert_eq!(
                    p.slot.as_deref(),
                    Some("B"),
                    "{}: {} has no filesystem",
                    release.display(),
                    p.name
                );
                assert!(head.iter().all(|b| *b == 0));
            }
            _ => {}
        }
        std::fs::remove_file(&img).unwrap();
    }
    std::fs::remove_file(&disk).unwrap();
}

#[test]
#[ignore = "release tier: root and Debian's mirror"]
fn every_image_reproduces_verifies_and_diffs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = scratch_repo(dir.path());
    let cache = dir.path().join("cache");
    let out1 = dir.path().join("out1");
    let out1_arg = out1.to_str().unwrap();
    let build = |os: &str, out: &str| {
        plinth(
            &repo,
            &cache,
            &[
                "build",
                os,
                "--profile",
                "test",
                "--out",
                out,
                "--release-version",
                VERSION,
            ],
        )
    };
    for os in OSES {
        let first = build(os, out1_arg);
        assert!(first.status.success(), "plinth build {os}");
        let release = out1.join(os).join(VERSION);
        check_filesystems(&release, &dir.path().join("fsck"));
        let sums = std::fs::read(release.join("SHA256SUMS")).unwrap();

        // Nothing changed: every stage from the cache, the same bytes.
        let again = build(os, out1_arg);
        assert!(again.status.success());
        assert!(
            text(&again).contains("every stage reused from the stage cache"),
            "{os}: the unchanged rebuild was not served from the cache"
        );
        assert_eq!(std::fs::read(release.join("SHA256SUMS")).unwrap(), sums);

        // An independent rebuild elsewhere reproduces every artifact.
        let verify = verify_elsewhere(&repo, &cache, &release);
        let report = text(&verify);
        assert!(verify.status.success(), "plinth verify {os} failed");
        assert!(report.contains("reproduced"), "{report}");
        eprintln!("{os}: built twice (build, verify elsewhere): every artifact identical");
    }

    // One overlay file changed in the working tree.
    let changed = repo.join("guest-os/rootfs").join(CHANGED);
    let mut conf = std::fs::read_to_string(&changed).unwrap();
    conf.push_str("MaxLevelConsole=info\n");
    std::fs::write(&changed, conf).unwrap();
    let out2 = dir.path().join("out2");
    let second = build("guest-os", out2.to_str().unwrap());
    assert!(second.status.success());
    assert!(
        text(&second).contains("packages and initrd reused from the stage cache"),
        "an overlay change must reuse the package stage and its initrd"
    );
    let (a, b) = (
        out1.join("guest-os").join(VERSION),
        out2.join("guest-os").join(VERSION),
    );
    let diff = run(Command::new(env!("CARGO_BIN_EXE_plinth"))
        .arg("diff")
        .args([&a, &b]));
    assert!(diff.status.success());
    let diff_text = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert!(
        diff_text.contains(&format!("changed /{CHANGED} (content)")),
        "diff does not list the changed file:\n{diff_text}"
    );
    assert!(diff_text.contains("packages: 0 added, 0 removed, 0 changed"));
    assert!(diff_text.contains("verity root hash"), "{diff_text}");

    let verify = verify_elsewhere(&repo, &cache, &b);
    assert_eq!(
        verify.status.code(),
        Some(1),
        "verify of the changed release must fail"
    );
    let report = String::from_utf8_lossy(&verify.stdout).into_owned();
    assert!(
        report.contains(&format!("/{CHANGED}")) && report.contains("partition root-a (ext4)"),
        "verify does not name the changed file:\n{report}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["inputs"]["source_dirty"], true);

    // Every first release boots with `plinth run` (OVMF → systemd-boot → UKI → dracut →
    // dm-verity root) until its agent reports the boot. HostOS with a swtpm: the other two
    // images lack the tpm2-tss libraries, so systemd-pcrphase fails when a TPM is there.
    for os in OSES {
        boot(&out1.join(os).join(VERSION), os, os == "host-os");
    }
}

/// `plinth run` the release `release` of `os` (with a TPM if `tpm`) until the boot report; assert it is
/// `PLINTH BOOT OK` with the right identity (the agent says OK only if the root is mounted
/// from a dm-verity device and no unit failed). The console log is kept in the target
/// directory (its path is in any failure message).
fn boot(release: &Path, os: &str, tpm: bool) {
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("boot-{os}.log"));
    let out = Command::new(env!("CARGO_BIN_EXE_plinth"))
        .arg("run")
        .arg(release)
        .args(["--profile", "test", "--accel", "tcg"])
        .args(tpm.then_some("--tpm"))
        .args(["--expect", "PLINTH BOOT ", "--timeout", "400", "--json"])
        .arg("--console-log")
        .arg(&log)
        .output()
        .unwrap();
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = console.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    assert!(
        out.status.success(),
        "{os}: no boot report ({}); console log {}:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log.display(),
        tail.join("\n")
    );
    let slot = if os == "setup-os" { "none" } else { "A" };
    let wanted = format!("PLINTH BOOT OK {os} {VERSION} slot={slot}");
    assert!(
        console.contains(&wanted),
        "{os}: `{wanted}` not on the console (log {}):\n{}",
        log.display(),
        tail.join("\n")
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "{os}: booted to `{wanted}` in {:.1} s under {}",
        report["seconds"].as_f64().unwrap_or(0.0),
        report["accel"]
    );
}
