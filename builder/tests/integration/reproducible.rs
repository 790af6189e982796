//! Release tier (run by `ci/test`, or by hand with
//! `cargo test --test reproducible -- --ignored --test-threads=1`; needs root and Debian's
//! mirror): the `test` profile of every OS built with `plinth build` from a scratch git
//! checkout of this tree, then
//! - fsck and sgdisk on every image of every release, and `systemd-analyze verify` of plinth's
//!   units in each root;
//! - a second `plinth build` with nothing changed is served from the stage cache;
//! - `plinth verify` of each release (beside the next build), in another directory, umask, TZ,
//!   LANG and host name (own UTS namespace), rebuilds everything without the stage cache and
//!   reproduces every artifact byte for byte (the agents in a target directory of their own,
//!   then checked for build paths);
//! - GuestOS's SNP launch digests equal `sev-snp-measure`'s for 6 launches (3 vCPU
//!   count/type pairs, both slots), and its AmdSev OVMF (built at `plinth build`, rebuilt by
//!   `plinth verify`) boots its disk, launched by `plinth-host guest launch` (two guest NUMA
//!   nodes, an extra disk, both reported by the guest agent; QEMU as nobody under seccomp,
//!   its threads pinned as planned; a swtpm as nobody given by `--vtpm`, which keys the
//!   guest's state; `guest stop` powers it down through ACPI);
//! - HostOS is built with a release key that signs its PCR policy, and its verify embeds the
//!   recorded signatures after checking them against its own predictions;
//! - one overlay file changed (HostOS): the rebuild reuses the package stage, `plinth diff`
//!   lists the file, and `plinth verify` of that release fails naming it and the recorded PCR
//!   signature that does not sign the rebuild;
//! - every OS's disk boots with `plinth run` (QEMU, OVMF, TCG, swtpm) through systemd-boot
//!   (GuestOS: OVMF starts its UKI), its UKI and the dm-verity root until its agent prints `PLINTH BOOT OK <os> <version>
//!   slot=<A|none>`; the PCRs the agent read from the TPM equal those of the release's
//!   measurements.json (PCR 4, 7, 9, 11, 12; GuestOS's 12 predicted zero), which
//!   `plinth measure` recomputes from the image;
//! - HostOS's sealed state, one disk and one TPM across boots: created on the first boot,
//!   reopened on the second, reopened after an upgrade to the changed release (other PCR
//!   values, signed by the same key); another TPM and a changed command line are refused and
//!   named in the boot report, the data partition unchanged; then power-loss trials, QEMU
//!   killed at seeded random points of the first boot's creation, each followed by a boot
//!   that ends with the state usable (`ci/power-loss` runs more);
//! - GuestOS's sealed state (its `test` key source, the TPM's HMAC of PCR 11, standing in for
//!   the SEV-SNP derived key): created, reopened on a reboot with the same machine-id, and
//!   refused on another TPM, named in the boot report, the data partition unchanged;
//! - tampering: one flipped byte in GuestOS's verity-protected root stops its boot with a
//!   dm-verity error on the console, and in HostOS's makes its initrd reboot, never offering
//!   a shell; a changed command line in HostOS's UKI makes its agent
//!   report the PCR 11 mismatch against measurements.json (and, the same disk given a node
//!   configuration with a missing GuestOS disk, `plinth-guest.service`'s failure at boot).

use crate::support::Plinth;
use plinth_testkit::procfs::status_field;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const OSES: [&str; 3] = ["guest-os", "host-os", "setup-os"];
const VERSION: &str = "0.0.0-ci";
/// The overlay file the one-file change edits.
const CHANGED: &str = "etc/systemd/journald.conf.d/10-plinth.conf";
/// HostOS: its changed release is also the upgrade the sealed state must survive (signed by
/// the same release key, other PCR values).
const CHANGED_OS: &str = "host-os";
/// The vCPU counts and types compared with `sev-snp-measure`, for each slot.
const SNP_COMPARED: [(u32, &str); 3] = [(4, "EPYC-v4"), (16, "EPYC-Milan"), (64, "EPYC-Genoa")];

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
    run(&mut Plinth::new().root(repo).args(args).cache(cache).command())
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `plinth verify` in another place and environment: its own UTS namespace and host name,
/// umask 077, another TZ and LANG, another working directory. The verifies share one fresh
/// agent target directory (never the builds'), so the agent's dependencies compile once.
fn verify_elsewhere(repo: &Path, cache: &Path, release: &Path) -> Output {
    let agent_target = cache.with_file_name("verify-agent-target");
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
        .arg("--agent-target")
        .arg(&agent_target)
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
            (role, true, _) => {
                let out = run(Command::new("e2fsck").arg("-fn").arg(&img));
                assert!(
                    out.status.success(),
                    "{}: e2fsck -fn {}",
                    release.display(),
                    p.name
                );
                if role == "root" && p.slot.as_deref() != Some("B") {
                    verify_plinth_units(release, &img, &scratch.join("root"));
                }
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

/// plinth's own units in a root image (`plinth-*` and `*plinth*.mount` in
/// /usr/lib/systemd/system, and the units its `10-plinth.conf` drop-ins change) pass
/// `systemd-analyze verify` against the image's own units and binaries: no line of its
/// output names one of them, but for the `man:` documentation links it cannot follow.
fn verify_plinth_units(release: &Path, root_img: &Path, mnt: &Path) {
    std::fs::create_dir_all(mnt).unwrap();
    let mounted = run(Command::new("mount")
        .args(["-o", "ro,noload,loop"])
        .arg(root_img)
        .arg(mnt));
    assert!(
        mounted.status.success(),
        "mount {}: {}",
        root_img.display(),
        text(&mounted)
    );
    let checked = std::panic::catch_unwind(|| {
        let dir = mnt.join("usr/lib/systemd/system");
        let mut units = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            if let Some(unit) = name.strip_suffix(".d") {
                if dir.join(&name).join("10-plinth.conf").is_file() {
                    units.push(unit.to_string());
                }
            } else if name.starts_with("plinth-")
                || (name.contains("plinth") && name.ends_with(".mount"))
            {
                units.push(name);
            }
        }
        units.sort();
        assert!(
            units.iter().any(|u| u == "plinth-boot-report.service"),
            "{}: no plinth units in {}: {units:?}",
            release.display(),
            dir.display()
        );
        let out = run(Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", mnt.display()))
            .args(&units));
        let said = text(&out);
        let bad: Vec<&str> = said
            .lines()
            .filter(|l| units.iter().any(|u| l.starts_with(&format!("{u}:"))))
            .filter(|l| !l.contains("Command 'man "))
            .collect();
        assert!(
            bad.is_empty(),
            "{}: systemd-analyze verify {units:?}:\n{}",
            release.display(),
            bad.join("\n")
        );
        eprintln!(
            "{}: systemd-analyze verify passes {}",
            release.display(),
            units.join(", ")
        );
    });
    run(Command::new("umount").arg(mnt));
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}

#[test]
#[ignore = "release tier: root and Debian's mirror"]
fn every_image_reproduces_verifies_and_diffs() {
    let dir = tempfile::tempdir().unwrap();
    let repo = scratch_repo(dir.path());
    let cache = dir.path().join("cache");
    let out1 = dir.path().join("out1");
    let out1_arg = out1.to_str().unwrap();
    // The release key that signs HostOS's PCR policy (the others ignore it).
    let key = dir.path().join("release.key");
    let genkey = run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key));
    assert!(
        genkey.status.success(),
        "openssl genpkey: {}",
        text(&genkey)
    );
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
                "--release-key",
                key.to_str().unwrap(),
            ],
        )
    };
    // Three stages overlap on the two cores. This thread builds each OS, then the changed
    // release; the verifier rebuilds elsewhere each release as soon as it exists (a build
    // alone leaves a core idle in its single-threaded stretches: dpkg, mke2fs, the verity
    // pass); once the builds are done, the boots start in two lanes beside the verifies
    // still running (run 38: no faster than after them, as the verifies keep both cores busy
    // to their end, but the boots no longer wait on the slowest verify). A verify reads
    // the package cache only (it takes no stage from the stage cache) and compiles the agents
    // in its own target directory, so it never writes a file a build reads (the boots use a
    // copy of the host agent it built).
    let out2 = dir.path().join("out2");
    let tamper = dir.path().join("tamper");
    let verify_target = cache.with_file_name("verify-agent-target");
    let (repo, cache, out1, out2) = (&repo, &cache, &out1, &out2);
    // The host agent the verify built (the build's own is inside the image).
    let host_agent = dir.path().join("plinth-host-reproduced");
    let (tamper, verify_target, host_agent) = (&tamper, &verify_target, &host_agent);
    std::thread::scope(|threads| {
        let (built, to_verify) = std::sync::mpsc::channel::<(String, PathBuf)>();
        // Each OS whose release the verifier reproduced (the second lane boots its agent).
        let (reproduced, verified) = std::sync::mpsc::channel::<String>();
        let verifier = threads.spawn(move || {
            let mut changed = None;
            for (os, release) in to_verify {
                let verify = verify_elsewhere(repo, cache, &release);
                if release.starts_with(out1) {
                    let report = text(&verify);
                    assert!(
                        verify.status.success(),
                        "plinth verify {os} failed:\n{report}"
                    );
                    assert!(report.contains("reproduced"), "{report}");
                    eprintln!(
                        "{os}: built twice (build, verify elsewhere): every artifact identical"
                    );
                    if os == "host-os" {
                        // The agent it reproduced, copied out of the shared target directory
                        // before a later verify (the changed release's) rebuilds it there.
                        std::fs::copy(verify_target.join("release/plinth-host"), host_agent)
                            .expect("copy the reproduced plinth-host");
                    }
                    let _ = reproduced.send(os);
                } else {
                    changed = Some(verify);
                }
            }
            // None only when this chain stopped early (the builds' chain panicked first).
            changed
        });
        // A send fails only when the verifier has panicked: stop building and join it,
        // which raises its panic (not a SendError hiding it).
        let mut verifier_alive = true;
        for os in OSES {
            let first = build(os, out1_arg);
            assert!(first.status.success(), "plinth build {os}");
            let release = out1.join(os).join(VERSION);
            check_filesystems(&release, &dir.path().join("fsck"));
            let sums = std::fs::read(release.join("SHA256SUMS")).unwrap();
            if os == "guest-os" {
                // Its guest firmware, which the verify rebuilds in another directory.
                assert!(
                    String::from_utf8_lossy(&sums).contains("  OVMF-AmdSev.fd\n"),
                    "guest-os: no OVMF-AmdSev.fd in SHA256SUMS"
                );
            }

            // Nothing changed: every stage from the cache, the same bytes.
            let again = build(os, out1_arg);
            assert!(again.status.success());
            assert!(
                text(&again).contains("every stage reused from the stage cache"),
                "{os}: the unchanged rebuild was not served from the cache"
            );
            assert_eq!(std::fs::read(release.join("SHA256SUMS")).unwrap(), sums);
            // An independent rebuild elsewhere must reproduce every artifact.
            if built.send((os.to_owned(), release)).is_err() {
                verifier_alive = false;
                break;
            }
        }

        if verifier_alive {
            // One overlay file changed in the working tree (the verifies rebuild from the
            // commit, `git archive`, so the ones still running do not see it).
            let changed = repo.join(CHANGED_OS).join("rootfs").join(CHANGED);
            let mut conf = std::fs::read_to_string(&changed).unwrap();
            conf.push_str("MaxLevelConsole=info\n");
            std::fs::write(&changed, conf).unwrap();
            let second = build(CHANGED_OS, out2.to_str().unwrap());
            assert!(second.status.success());
            assert!(
                text(&second).contains("packages and initrd reused from the stage cache"),
                "an overlay change must reuse the package stage and its initrd"
            );
            // Should the verifier have panicked meanwhile, its join below raises it.
            let _ = built.send((CHANGED_OS.to_owned(), out2.join(CHANGED_OS).join(VERSION)));
        }
        drop(built);
        if !verifier_alive {
            match verifier.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(_) => unreachable!("the verifier ended before the builds"),
            }
        }

        // The boots, in two lanes: every first release boots with `plinth run` (OVMF →
        // systemd-boot or not → UKI → dracut → dm-verity root) with a swtpm, until its agent
        // reports the boot and the TPM's PCRs (GuestOS: its state's first boot; HostOS: its
        // state's; SetupOS: the install's refusal); then the tampered disks.
        let first = threads.spawn(|| {
            snp_digests_as_sev_snp_measure(&out1.join("guest-os").join(VERSION));
            guest_state_across_boots(
                &out1.join("guest-os").join(VERSION),
                &tamper.join("guest-state"),
            );
            tampered_root(&out1.join("guest-os").join(VERSION), &tamper.join("root"));
            tampered_host_root(
                &out1.join("host-os").join(VERSION),
                &tamper.join("host-root"),
            );
            // SetupOS installs HostOS and GuestOS onto blank NVMe drives; HostOS boots.
            crate::setup_install::setup_installs_a_node(out1, VERSION, &tamper.join("install"));
            power_loss_trials(
                &out1.join("host-os").join(VERSION),
                &tamper.join("power-first-lane"),
                POWER_LOSS_TRIALS_FIRST_LANE,
                trial_seed().wrapping_add(1),
            );
        });
        let second = threads.spawn(move || {
            state_across_boots(
                &out1.join("host-os").join(VERSION),
                &out2.join("host-os").join(VERSION),
                &tamper.join("state"),
            );
            let host_reproduced = verified.iter().any(|os| os == "host-os");
            assert!(
                host_reproduced,
                "the verifier ended before it reproduced host-os"
            );
            guest_launch_boots(
                &out1.join("guest-os").join(VERSION),
                host_agent,
                &tamper.join("launch"),
            );
            power_loss_trials(
                &out1.join("host-os").join(VERSION),
                &tamper.join("power"),
                POWER_LOSS_TRIALS - POWER_LOSS_TRIALS_FIRST_LANE,
                trial_seed(),
            );
        });

        // Beside the boots: the last verifies' end, then the changed release's checks.
        let verify = match verifier.join() {
            Ok(verify) => verify.expect("the changed release was verified"),
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // The agents the verifies built (in their own target directory, never the builds'):
        // reproduced above, and without a build-machine path in them.
        agents_are_path_free(repo, verify_target);
        changed_release_is_explained(out1, out2, &verify);
        // `plinth measure` recomputes every release's measurements.json from its image.
        for os in OSES {
            let release = out1.join(os).join(VERSION);
            let measure = run(Plinth::new().command().arg("measure").arg(&release));
            assert!(
                measure.status.success() && text(&measure).contains("matches the image"),
                "{os}: plinth measure: {}",
                text(&measure)
            );
        }
        for lane in [first.join(), second.join()] {
            if let Err(panic) = lane {
                std::panic::resume_unwind(panic);
            }
        }
    });
}

/// The release built with one overlay file changed: `plinth diff` against the first lists
/// the file and nothing else of the packages, and its `plinth verify` (`verify`) fails naming
/// the file and the recorded PCR signature that does not sign the rebuild.
fn changed_release_is_explained(out1: &Path, out2: &Path, verify: &Output) {
    let (a, b) = (
        out1.join(CHANGED_OS).join(VERSION),
        out2.join(CHANGED_OS).join(VERSION),
    );
    let diff = run(Plinth::new().command().arg("diff").args([&a, &b]));
    assert!(diff.status.success());
    let diff_text = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert!(
        diff_text.contains(&format!("changed /{CHANGED} (content)")),
        "diff does not list the changed file:\n{diff_text}"
    );
    assert!(diff_text.contains("packages: 0 added, 0 removed, 0 changed"));
    assert!(diff_text.contains("verity root hash"), "{diff_text}");

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
    // Its recorded PCR signatures sign the changed build's values, not the rebuild's.
    assert!(
        text(verify).contains("the signed values are not the predicted ones"),
        "verify does not name the PCR signature that fails its rebuild:\n{}",
        text(verify)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["inputs"]["source_dirty"], true);
}

/// Each OS's agent binary in `target` names neither the source tree nor the target directory
/// (the build remaps both), and runs.
fn agents_are_path_free(repo: &Path, target: &Path) {
    for package in ["plinth-guest", "plinth-host", "plinth-setup"] {
        let bin = target.join("release").join(package);
        let bytes = std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        for needle in [repo.to_str().unwrap(), target.to_str().unwrap()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{package} contains the build path {needle}"
            );
        }
        let out = run(Command::new(&bin).arg("--version"));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("{package} ")),
            "{package} --version: {}",
            text(&out)
        );
    }
    eprintln!("agents: no build path in plinth-guest, plinth-host, plinth-setup");
}

/// The SNP launch digests of GuestOS's measurements.json (and manifest) equal what
/// `sev-snp-measure` (PyPI, AMD's reference calculator) computes from the release's own
/// OVMF-AmdSev.fd, vmlinuz, initrd.img and slot command lines: 3 vCPU count/type pairs for
/// each slot.
fn snp_digests_as_sev_snp_measure(guest: &Path) {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(guest.join("measurements.json")).unwrap()).unwrap();
    let snp = &m["snp"];
    let digests = snp["launch_digests"]
        .as_array()
        .expect("measurements.json: no snp");
    // guest-os/os.yaml: 3 vCPU counts × 3 types × 2 slots.
    assert_eq!(digests.len(), 18, "{snp}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(guest.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(&manifest["measurements"]["snp"], &snp["launch_digests"]);
    assert_eq!(snp["firmware"]["file"], "OVMF-AmdSev.fd");
    let features = snp["guest_features"].as_str().unwrap();
    let mut compared = 0;
    for slot in ["A", "B"] {
        let cmdline = std::fs::read_to_string(
            guest.join(format!("cmdline-guest-os-{}.txt", slot.to_lowercase())),
        )
        .unwrap();
        let cmdline = cmdline.trim_end_matches('\n');
        assert!(cmdline.contains("roothash="), "{cmdline}");
        for (vcpus, vcpu_type) in SNP_COMPARED {
            let ours = digests
                .iter()
                .find(|d| d["slot"] == slot && d["vcpus"] == vcpus && d["vcpu_type"] == vcpu_type)
                .unwrap_or_else(|| panic!("no digest for slot {slot}, {vcpus} × {vcpu_type}"));
            let out = run(Command::new("sev-snp-measure")
                .args(["--mode", "snp", "--vmm-type", "QEMU"])
                .arg(format!("--vcpus={vcpus}"))
                .arg(format!("--vcpu-type={vcpu_type}"))
                .arg(format!("--guest-features={features}"))
                .arg("--ovmf")
                .arg(guest.join("OVMF-AmdSev.fd"))
                .arg("--kernel")
                .arg(guest.join("vmlinuz"))
                .arg("--initrd")
                .arg(guest.join("initrd.img"))
                .arg(format!("--append={cmdline}")));
            assert!(out.status.success(), "sev-snp-measure: {}", text(&out));
            let theirs = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(
                ours["measurement"].as_str().unwrap(),
                theirs,
                "slot {slot}, {vcpus} × {vcpu_type}: ours vs sev-snp-measure"
            );
            compared += 1;
        }
    }
    eprintln!("guest-os: {compared} SNP launch digests equal sev-snp-measure's (of 18)");
}

/// `plinth-host guest launch` boots GuestOS's disk with our AmdSev OVMF (it starts the
/// slot's UKI from the ESP; without SEV it would refuse a `-kernel` direct boot, and it has
/// no TPM) under TCG, planned in the development layout on this machine: two guest NUMA
/// nodes and an extra disk, which the guest agent reports on the console; QEMU runs as
/// nobody under seccomp, each of its threads pinned as the plan says (read from /proc).
fn guest_launch_boots(guest: &Path, host_agent: &Path, scratch: &Path) {
    use plinth::compare::release::Release;
    let disk = Release::open(guest)
        .unwrap()
        .extract_member("disk-img.tar.zst", "disk.img", scratch)
        .unwrap();
    // Unpacked into a private (0700) directory; QEMU, as nobody, opens the disks by name
    // (the supervisor gives it the files, and warns when a directory above is closed).
    for d in [scratch, scratch.parent().unwrap()] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let extra = scratch.join("extra.img");
    std::fs::File::create(&extra)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    let state = scratch.join("state");
    // The test GuestOS keys its sealed state with a TPM (its `test` key source; under
    // SEV-SNP, the chip's derived key): a swtpm that runs as nobody, as QEMU does, gives
    // the guest one through the launch's development-only --vtpm.
    let vtpm = Vtpm::start(&scratch.join("vtpm"));
    let vm: Vec<String> = [
        "--vcpus",
        "2",
        "--memory",
        "2",
        "--development",
        "--guest-nodes",
        "2",
        "--disk",
        disk.to_str().unwrap(),
        "--disk",
        extra.to_str().unwrap(),
    ]
    .map(String::from)
    .into();
    let plan = run(Command::new(host_agent)
        .args(["guest", "plan", "--json"])
        .args(&vm));
    assert!(plan.status.success(), "guest plan: {}", text(&plan));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let firmware = guest.join("OVMF-AmdSev.fd");
    let mut launch = Command::new(host_agent)
        .args(["guest", "launch"])
        .args(&vm)
        .arg("--firmware")
        .arg(&firmware)
        .args(["--accel", "tcg", "--user", "nobody", "--restart", "never"])
        // The default stop timeout (60 s), as nodes run it: under TCG on a loaded CI machine
        // the guest's shutdown has taken over 20 s (chrony's stop alone 15 s and more).
        .arg("--state-dir")
        .arg(&state)
        .arg("--vtpm")
        .arg(&vtpm.socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = || {
        let out = run(Command::new(host_agent)
            .args(["guest", "status", "--json", "--state-dir"])
            .arg(&state));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let console_log = state.join("console.log");
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let started = std::time::Instant::now();
        let booted = loop {
            let s = status();
            if !s["boot_line"].is_null() {
                break s;
            }
            if let Ok(Some(code)) = launch.try_wait() {
                panic!("guest launch ended ({code}) before the boot report: {s}");
            }
            assert!(
                started.elapsed().as_secs() < 400,
                "no boot report in 400 s: {s}"
            );
            std::thread::sleep(std::time::Duration::from_secs(1));
        };
        let console = std::fs::read_to_string(&console_log).unwrap();
        let wanted = format!("PLINTH BOOT OK guest-os {VERSION} slot=A");
        assert!(console.contains(&wanted), "no `{wanted}`: {booted}");
        assert!(
            console.contains(" created (tpm2-hmac) boots=1 "),
            "the launched guest must create its state with the vTPM's key"
        );
        // What the guest got: the plan's two nodes, a vCPU each, and both disks by serial.
        let lines: Vec<&str> = console
            .lines()
            .filter_map(|l| l.trim().strip_prefix("PLINTH GUEST "))
            .collect();
        assert!(lines.contains(&"NUMA nodes=2"), "{lines:?}");
        for (node, cpu) in [(0, 0), (1, 1)] {
            let prefix = format!("NUMA node={node} cpus={cpu} ");
            assert!(lines.iter().any(|l| l.starts_with(&prefix)), "{lines:?}");
        }
        let disks: Vec<&&str> = lines.iter().filter(|l| l.starts_with("DISK ")).collect();
        assert_eq!(disks.len(), 2, "{lines:?}");
        for (name, serial) in [("vda", "plinth-disk0"), ("vdb", "plinth-disk1")] {
            let d = disks
                .iter()
                .find(|l| l.contains(&format!("name={name} ")))
                .unwrap_or_else(|| panic!("no disk {name}: {lines:?}"));
            assert!(d.contains(&format!("serial={serial} ")), "{d}");
        }
        assert!(
            disks.iter().any(|d| d.contains("size_mib=96 ")),
            "{disks:?}"
        );
        // Each pinned thread's affinity, from /proc, is the plan's; QEMU is unprivileged
        // (nobody) with its seccomp filter on.
        let pid = booted["qemu_pid"].as_i64().unwrap();
        let threads = booted["threads"].as_array().unwrap();
        let affinity = |tid: i64| status_field(tid, "Cpus_allowed_list:");
        for pin in plan["vcpu_pins"].as_array().unwrap() {
            let role = format!("vcpu {}", pin["vcpu"]);
            let t = threads.iter().find(|t| t["role"] == role.as_str()).unwrap();
            assert_eq!(
                affinity(t["thread_id"].as_i64().unwrap()),
                pin["host_cpu"].to_string(),
                "{role}"
            );
        }
        assert_eq!(affinity(pid), plan["emulator_cpus"][0].to_string());
        assert_eq!(status_field(pid, "Uid:"), "65534 65534 65534 65534");
        assert_eq!(status_field(pid, "Seccomp:"), "2");
        eprintln!(
            "guest-os by plinth-host guest launch: booted in {:.1} s, 2 guest NUMA nodes, \
             vda and vdb by serial, QEMU pid {pid} as nobody under seccomp, {} threads pinned",
            started.elapsed().as_secs_f64(),
            threads.len()
        );
        let stop = run(Command::new(host_agent)
            .args(["guest", "stop", "--state-dir"])
            .arg(&state));
        // GuestOS honours the ACPI power button (acpid): a clean power-off, not a quit.
        assert!(
            stop.status.success() && text(&stop).contains("the guest powered down"),
            "guest stop: {}",
            text(&stop)
        );
        assert!(launch.wait().unwrap().success());
    }));
    if let Err(panic) = checked {
        let _ = launch.kill();
        let _ = launch.wait();
        let console = std::fs::read_to_string(&console_log).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(40).collect();
        eprintln!(
            "guest launch console (last lines):\n{}\nqemu.log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            std::fs::read_to_string(state.join("qemu.log")).unwrap_or_default()
        );
        std::panic::resume_unwind(panic);
    }
    drop(vtpm);
    std::fs::remove_dir_all(scratch).unwrap();
}

/// A swtpm for a guest that `plinth-host guest launch --vtpm` starts: run as nobody (what
/// QEMU runs as, and what QEMU can reach), its control socket in `dir`; killed on drop.
struct Vtpm {
    child: std::process::Child,
    socket: PathBuf,
}

impl Vtpm {
    fn start(dir: &Path) -> Vtpm {
        use std::os::unix::process::CommandExt;
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        nix::unistd::chown(dir, Some(nobody.uid), Some(nobody.gid)).unwrap();
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let socket = dir.join("ctrl.sock");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .uid(nobody.uid.as_raw())
            .gid(nobody.gid.as_raw())
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("swtpm (ci/setup installs it)");
        let vtpm = Vtpm { child, socket };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !vtpm.socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "swtpm opened no socket"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        vtpm
    }
}

impl Drop for Vtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boot `disk` itself (written, not copy-on-write) on the TPM kept in `tpm`, the agent
/// checking the PCRs against `measurements`: one more boot of the same machine.
fn boot_kept(disk: &Path, name: &str, tpm: &Path, measurements: &Path) -> String {
    boot(
        disk,
        name,
        &[
            "--tpm-state",
            tpm.to_str().unwrap(),
            "--write-boot-disk",
            "--measurements",
            measurements.to_str().unwrap(),
        ],
    )
}

/// The state's summary line on a boot's console (`PLINTH STATE ok ... boots=N ...`; the
/// initrd's own short `PLINTH STATE ok /dev/vda7 created` comes before it).
fn state_line(console: &str, name: &str) -> String {
    console
        .lines()
        .find(|l| l.contains("PLINTH STATE ok") && l.contains(" boots="))
        .unwrap_or_else(|| panic!("{name}: no state summary on the console"))
        .trim()
        .to_string()
}

/// The value of `key` (`machine-id=`) among the words of `line`.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in `{line}`"))
        .to_string()
}

/// sha256 of `len` bytes of `disk` from `offset` (a partition's bytes).
fn span_sha256(disk: &Path, (offset, len): (u64, u64)) -> String {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(disk).unwrap();
    let mut span = vec![0u8; len as usize];
    f.read_exact_at(&mut span, offset).unwrap();
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&span))
}

/// GuestOS's sealed state, keyed by its `test` key source (the TPM's HMAC of PCR 11, where
/// prod uses the SEV-SNP derived key): created on the first boot of a disk, opened with the
/// same count and machine-id on the reboot, and on another machine's TPM not opened, named
/// in the boot report, the data partition's bytes unchanged.
fn guest_state_across_boots(guest: &Path, scratch: &Path) {
    let mut data = (0, 0);
    let disk = tampered_disk(guest, scratch, |_, m| {
        let part = m.partitions.iter().find(|p| p.name == "data").unwrap();
        data = (part.offset, part.size);
    });
    let measurements = guest.join("measurements.json");
    let boot_on = |name: &str, tpm: &Path| boot_kept(&disk, name, tpm, &measurements);
    let line = |console: &str, needle: &str, name: &str| -> String {
        console
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{name}: no `{needle}` on the console"))
            .trim()
            .to_string()
    };
    let data_sha = || span_sha256(&disk, data);
    let tpm = scratch.join("tpm");
    // The first boot of GuestOS's release (its disk copied, a fresh TPM): the boot report's
    // exact line, and the PCRs as predicted.
    let first = boot_on("guest-os-state-1", &tpm);
    line(
        &first,
        &format!(
            "PLINTH BOOT OK guest-os {VERSION} slot={}",
            slot_of("guest-os")
        ),
        "first boot",
    );
    let created = state_line(&first, "first boot");
    assert!(
        created.contains(" created (tpm2-hmac) boots=1 "),
        "{created}"
    );
    assert_pcrs_as_predicted(guest, "guest-os", &first);
    let second = boot_on("guest-os-state-2", &tpm);
    line(&second, "PLINTH BOOT OK guest-os", "reboot");
    let opened = state_line(&second, "reboot");
    assert!(
        opened.contains(" opened (tpm2-hmac) boots=2 "),
        "the reboot must open the state and read its count back: {opened}"
    );
    assert_eq!(
        field(&opened, "machine-id="),
        field(&created, "machine-id=")
    );
    eprintln!("guest-os state, created: {created}\nguest-os state, after a reboot: {opened}");
    let sealed = data_sha();
    let other = boot_on("guest-os-state-other-tpm", &scratch.join("other-tpm"));
    let failed = line(&other, "PLINTH BOOT FAILED guest-os", "another TPM");
    assert!(
        failed.contains(
            "state: /dev/vda7 could not be unlocked with the tpm2-hmac key: the key derived on this boot does not open it"
        ),
        "another machine's TPM must not open the state: {failed}"
    );
    assert_eq!(
        data_sha(),
        sealed,
        "another TPM's boot changed the data partition"
    );
    eprintln!("guest-os state, another TPM: {failed}");
    std::fs::remove_dir_all(scratch).unwrap();
}

/// A flipped byte in GuestOS's root (in its ext4 superblock, which every boot reads):
/// dm-verity refuses the block and the boot goes no further.
fn tampered_root(guest: &Path, scratch: &Path) {
    let tampered = tampered_disk(guest, scratch, |disk, m| {
        let root = m.partitions.iter().find(|p| p.name == "root-a").unwrap();
        flip_byte(disk, root.offset + 1024 + 100);
    });
    let console = boot(
        &tampered,
        "guest-os-tampered-root",
        &["--expect", "is corrupted"],
    );
    assert!(
        console.contains("device-mapper: verity") && !console.contains("PLINTH BOOT OK"),
        "a flipped root byte must stop the boot with a verity error"
    );
    eprintln!(
        "guest-os, one root byte flipped: {}",
        console
            .lines()
            .find(|l| l.contains("is corrupted"))
            .unwrap_or_default()
            .trim()
    );
    std::fs::remove_dir_all(scratch).unwrap();
}

/// A flipped byte in HostOS's verity-protected root: the initrd cannot mount it and, its
/// command line saying `rd.shell=0 rd.emergency=reboot`, reboots instead of opening a shell
/// (which would hold the PCR values the sealed state opens with). Watched until the firmware
/// starts the disk a second time, then stopped.
fn tampered_host_root(host: &Path, scratch: &Path) {
    let tampered = tampered_disk(host, scratch, |disk, m| {
        let root = m.partitions.iter().find(|p| p.name == "root-a").unwrap();
        flip_byte(disk, root.offset + 1024 + 100);
    });
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-host-os-tampered-root.log");
    let _ = std::fs::remove_file(&log);
    let mut child = Plinth::new()
        .command()
        .arg("run")
        .arg(&tampered)
        .args(["--accel", "tcg", "--tpm", "--timeout", "400", "--json"])
        .arg("--console-log")
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(400);
    let starts = |console: &str| console.matches("BdsDxe: starting").count();
    let console = loop {
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        let ended = child.try_wait().unwrap().is_some();
        if starts(&console) >= 2 || ended || std::time::Instant::now() > deadline {
            break console;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    // SIGTERM: plinth stops QEMU and swtpm and removes their files.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    assert!(
        console.contains("is corrupted") && !console.contains("PLINTH BOOT OK"),
        "a flipped root byte must stop HostOS's boot with a verity error (console log {})",
        log.display()
    );
    for shell in [
        "Give root password",
        "emergency mode",
        "Press Enter for maintenance",
    ] {
        assert!(
            !console.contains(shell),
            "HostOS's initrd offered a shell (`{shell}`; console log {})",
            log.display()
        );
    }
    assert!(
        starts(&console) >= 2,
        "HostOS's initrd did not reboot after the failed root (console log {})",
        log.display()
    );
    eprintln!("host-os, one root byte flipped: the initrd rebooted without a shell");
    std::fs::remove_dir_all(scratch).unwrap();
}

/// HostOS's sealed state over the boots of one disk, written in place (`--write-boot-disk`),
/// each boot on a TPM whose state is kept (`--tpm-state`); its PCR policy signed by the
/// release key:
/// 1. the first boot creates the LUKS2 volume on the `data` partition, sealed to that TPM,
///    and counts itself in it (`boots=1`, a new machine id);
/// 2. a reboot opens it, reads the count back and writes 2, with the same machine id
///    (nothing reformatted); then an upgrade: `upgrade`'s ESP, root and verity written over
///    the disk's (another release, other PCR 11 and 12 values, signed by the same key): the
///    state opens, `boots=3`;
/// 3. another machine's TPM (a fresh swtpm) cannot unlock it: the boot report names the
///    state failure and the partition's bytes are unchanged;
/// 4. a changed kernel command line in the UKI (on the ESP, same length) with the first TPM:
///    the key stays sealed (no signature covers its PCR 11 and 12), the partition is unchanged, and the agent finds
///    PCR 11 off its release's measurements.json and names the `.cmdline` event. The disk
///    also carries a node configuration on its config partition (what SetupOS writes) whose
///    GuestOS disk is missing: `plinth-guest.service` starts, cannot plan the VM (exit 2, not
///    restarted) and fails its start job, which the report names too (the `test` image has no
///    QEMU: the service cannot get further);
/// 5. the command line restored and the volume's ciphertext overwritten: it unlocks to no
///    file system, e2fsck fails, the boot report names it (and the volume's UUID) and the
///    partition is not reformatted;
/// 6. the node's configuration asks to wipe that volume by its UUID: the next boot wipes it
///    and creates the state anew; the request left in place does not wipe the new volume.
fn state_across_boots(host: &Path, upgrade: &Path, scratch: &Path) {
    let (mut esp, mut data, mut config_offset) = ((0, 0), (0, 0), 0);
    let disk = tampered_disk(host, scratch, |_, m| {
        let part = |name: &str| m.partitions.iter().find(|p| p.name == name).unwrap();
        esp = (part("esp").offset, part("esp").size);
        data = (part("data").offset, part("data").size);
        config_offset = part("config").offset;
    });
    // What the disk runs: the first release, then the upgrade.
    let running = std::cell::RefCell::new(host.join("measurements.json"));
    let (tpm, other_tpm) = (scratch.join("tpm"), scratch.join("other-tpm"));
    let boot_on = |name: &str, tpm: &Path| {
        let measurements = running.borrow().clone();
        boot_kept(&disk, name, tpm, &measurements)
    };
    let data_sha = || span_sha256(&disk, data);
    let boot_ok = |console: &str, name: &str| {
        let report = console
            .lines()
            .find(|l| l.contains("PLINTH BOOT "))
            .unwrap_or_default();
        assert!(
            report.contains("PLINTH BOOT OK host-os"),
            "{name}: `{}`, not OK (console log target/tmp/boot-host-os-state-*.log)",
            report.trim()
        );
    };
    let failed_line = |console: &str, name: &str| -> String {
        console
            .lines()
            .find(|l| l.contains("PLINTH BOOT FAILED host-os"))
            .unwrap_or_else(|| panic!("{name}: no failed boot report"))
            .trim()
            .to_string()
    };

    let first = boot_on("host-os-state-1", &tpm);
    boot_ok(&first, "first boot");
    let created = state_line(&first, "first boot");
    assert!(
        created.contains(" created (tpm2-signed) boots=1 "),
        "{created}"
    );
    let machine_id = field(&created, "machine-id=");
    assert_pcrs_as_predicted(host, "host-os", &first);

    let second = boot_on("host-os-state-2", &tpm);
    boot_ok(&second, "reboot");
    let opened = state_line(&second, "reboot");
    assert!(
        opened.contains(" opened (tpm2-signed) boots=2 "),
        "the reboot must open the state and read its count back: {opened}"
    );
    assert_eq!(field(&opened, "machine-id="), machine_id);
    eprintln!("host-os state, created: {created}\nhost-os state, after a reboot: {opened}");

    // The upgrade: the other release's ESP, root and verity written over this disk's (the
    // same layout), the data partition kept. Its PCR 11 and 12 differ; the release key
    // signed them, so the state opens without re-enrolment.
    let upgraded = upgrade_disk(&disk, host, upgrade, &scratch.join("upgrade"));
    assert_ne!(
        predicted_pcr(host, 11),
        predicted_pcr(upgrade, 11),
        "the upgrade must boot other PCR values"
    );
    *running.borrow_mut() = upgrade.join("measurements.json");
    let third = boot_on("host-os-state-upgraded", &tpm);
    boot_ok(&third, "upgraded");
    let reopened = state_line(&third, "upgraded");
    assert!(
        reopened.contains(" opened (tpm2-signed) boots=3 "),
        "the upgrade signed by the release key must open the state: {reopened}"
    );
    assert_eq!(field(&reopened, "machine-id="), machine_id);
    assert_pcrs_as_predicted(upgrade, "host-os", &third);
    eprintln!("host-os state, after an upgrade ({upgraded} partitions written): {reopened}");
    let sealed = data_sha();

    let other = boot_on("host-os-state-other-tpm", &other_tpm);
    let failed = failed_line(&other, "another TPM");
    assert!(
        failed.contains(
            "state: /dev/vda7 could not be unlocked with the tpm2-signed key: this TPM did not seal it"
        ),
        "another machine's TPM must not unlock the state: {failed}"
    );
    assert_eq!(
        data_sha(),
        sealed,
        "another TPM's boot changed the data partition"
    );
    eprintln!("host-os state, another TPM: {failed}");

    {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        replace_once(&mut f, esp.0, esp.1, b" panic=10 ", b" panic=11 ");
    }
    let env = scratch.join("guest-os.env");
    std::fs::write(
        &env,
        "PLINTH_GUEST_VCPUS=2\nPLINTH_GUEST_MEMORY_GIB=1\nPLINTH_GUEST_DISKS=nvme9n1\n",
    )
    .unwrap();
    let write = run(Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} guest-os.env", env.display()))
        .arg(format!("{}?offset={config_offset}", disk.display())));
    assert!(write.status.success(), "debugfs: {}", text(&write));
    let tampered = boot_on("host-os-tampered-cmdline", &tpm);
    let failed = failed_line(&tampered, "changed command line");
    assert!(
        failed.contains("state: /dev/vda7 could not be unlocked with the tpm2-signed key: the PCRs it is sealed to differ"),
        "a changed command line must not unlock the state: {failed}"
    );
    assert!(
        failed.contains("measured boot: PCR 11 is ") && failed.contains(".cmdline"),
        "the agent must name the PCR 11 mismatch and the .cmdline event: {failed}"
    );
    assert!(
        failed.contains("failed units: plinth-guest.service"),
        "plinth-guest.service must have run and failed on the missing disk: {failed}"
    );
    assert_eq!(
        data_sha(),
        sealed,
        "the tampered boot changed the data partition"
    );
    eprintln!("host-os, command line changed, a node configuration with a missing disk: {failed}");

    // The command line back as signed, and the volume's ciphertext overwritten past the
    // LUKS2 header (16 MiB): it unlocks, but decrypts to no file system. The boot names it,
    // and nothing reformats the partition.
    {
        use std::os::unix::fs::FileExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        replace_once(&mut f, esp.0, esp.1, b" panic=11 ", b" panic=10 ");
        let header = 16 << 20;
        let junk: Vec<u8> = (0..data.1 - header).map(|i| (i % 251) as u8).collect();
        f.write_all_at(&junk, data.0 + header).unwrap();
        f.sync_all().unwrap();
    }
    let garbled = data_sha();
    let corrupt = boot_on("host-os-state-corrupt", &tpm);
    let failed = failed_line(&corrupt, "corrupt file system");
    assert!(
        failed.contains("state: the file system on /dev/vda7 is corrupt (e2fsck exit"),
        "a volume that decrypts to no file system must be named: {failed}"
    );
    assert_eq!(
        data_sha(),
        garbled,
        "the boot with a corrupt state changed the data partition"
    );
    eprintln!("host-os state, its file system destroyed: {failed}");

    // The node's configuration asks, by the volume's UUID (which the report names), to wipe
    // it: the next boot wipes and creates the state anew. The request, left in place, names
    // a volume that no longer exists: the boot after opens the new one.
    let uuid = failed
        .split("(volume ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("the report names no volume UUID: {failed}"))
        .to_string();
    let request = scratch.join("wipe-state");
    std::fs::write(&request, format!("{uuid}\n")).unwrap();
    let write = run(Command::new("debugfs")
        .args(["-w", "-R"])
        .arg(format!("write {} wipe-state", request.display()))
        .arg(format!("{}?offset={config_offset}", disk.display())));
    assert!(write.status.success(), "debugfs: {}", text(&write));
    // The node configuration whose GuestOS disk is missing goes, so that these boots are OK.
    let remove = run(Command::new("debugfs")
        .args(["-w", "-R", "rm guest-os.env"])
        .arg(format!("{}?offset={config_offset}", disk.display())));
    assert!(remove.status.success(), "debugfs: {}", text(&remove));
    let wiped = boot_on("host-os-state-wiped", &tpm);
    boot_ok(&wiped, "wiped on request");
    let fresh = state_line(&wiped, "wiped on request");
    assert!(
        fresh.contains(" created (tpm2-signed) boots=1 ") && fresh.contains(" wipe="),
        "the requested wipe must create the state anew: {fresh}"
    );
    assert_ne!(field(&fresh, "volume="), uuid);
    assert_ne!(field(&fresh, "machine-id="), machine_id);
    let after = boot_on("host-os-state-after-wipe", &tpm);
    boot_ok(&after, "after the wipe");
    let kept = state_line(&after, "after the wipe");
    assert!(
        kept.contains(" opened (tpm2-signed) boots=2 ") && !kept.contains(" wipe="),
        "a request naming the old volume must not wipe the new one: {kept}"
    );
    eprintln!("host-os state, wiped on request: {fresh}\nhost-os state, the request left in place: {kept}");
    std::fs::remove_dir_all(scratch).unwrap();
}

/// Write `release`'s ESP, slot A root and verity (from its disk image) over `disk` (of the
/// release `installed`), as an upgrade would, after checking that both lay the partitions
/// out alike; how many written.
fn upgrade_disk(disk: &Path, installed: &Path, release: &Path, scratch: &Path) -> usize {
    use std::os::unix::fs::FileExt;
    let mut layout = Vec::new();
    let new_disk = tampered_disk(release, scratch, |_, m| {
        layout = m.partitions.clone();
    });
    let old = plinth::compare::release::Release::open(installed)
        .unwrap()
        .manifest
        .partitions;
    assert_eq!(old.len(), layout.len());
    for (a, b) in old.iter().zip(&layout) {
        assert_eq!(
            (&a.name, a.offset, a.size),
            (&b.name, b.offset, b.size),
            "the releases lay their partitions out differently"
        );
    }
    let (from, to) = (
        std::fs::File::open(&new_disk).unwrap(),
        std::fs::OpenOptions::new().write(true).open(disk).unwrap(),
    );
    let mut written = 0;
    for p in layout
        .iter()
        .filter(|p| ["esp", "root-a", "verity-a"].contains(&p.name.as_str()))
    {
        let mut chunk = vec![0u8; 4 << 20];
        let mut done = 0;
        while done < p.size {
            let n = chunk.len().min((p.size - done) as usize);
            from.read_exact_at(&mut chunk[..n], p.offset + done)
                .unwrap();
            to.write_all_at(&chunk[..n], p.offset + done).unwrap();
            done += n as u64;
        }
        written += 1;
    }
    to.sync_all().unwrap();
    std::fs::remove_file(&new_disk).unwrap();
    assert_eq!(written, 3, "the release has no esp, root-a and verity-a");
    written
}

/// The PCR `n` measurements.json of `release` predicts for slot A once the system is up.
fn predicted_pcr(release: &Path, n: u32) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release.join("measurements.json")).unwrap()).unwrap();
    m["slots"][0]["pcrs"][n.to_string()]
        .as_str()
        .unwrap_or_else(|| panic!("{}: no PCR {n} for slot A", release.display()))
        .to_string()
}

/// Power-loss trials in the release tier (`ci/power-loss` runs more), split over the two
/// lanes so that they end together (run 38: the first lane, whose install shares the CPU
/// with the last verifies, reached its trials about 1.5 minutes after the second; with three
/// of them it ended 3 minutes after it).
const POWER_LOSS_TRIALS: usize = 5;
/// Of them, the trials the first lane runs.
const POWER_LOSS_TRIALS_FIRST_LANE: usize = 2;

/// The steps of the first boot's creation, as the state prints them when each begins, and
/// about how long each takes under TCG (ms): a trial cuts the power inside one.
const CREATION_STEPS: [(&str, u64); 9] = [
    ("mark", 50),
    ("luks", 1000),
    ("enroll", 1000),
    ("unlock", 1300),
    ("mkfs", 150),
    ("mount", 100),
    ("seed", 100),
    ("count", 50),
    ("commit", 150),
];

/// The trials' seed: `PLINTH_POWER_SEED`, else the time (printed, so a failure reruns).
pub(crate) fn trial_seed() -> u64 {
    std::env::var("PLINTH_POWER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        })
}

/// The step every trial cuts in: `PLINTH_POWER_STEP` (one of [`CREATION_STEPS`]), else each
/// trial's own random one.
fn forced_step() -> Option<(&'static str, u64)> {
    let wanted = std::env::var("PLINTH_POWER_STEP").ok()?;
    let found = CREATION_STEPS.iter().find(|(s, _)| *s == wanted);
    Some(*found.unwrap_or_else(|| {
        panic!("PLINTH_POWER_STEP={wanted}: expected one of {CREATION_STEPS:?}")
    }))
}

/// splitmix64: the trials' random points, the same for the same seed.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49eb_133f_ce11);
    z ^ (z >> 31)
}

/// `trials` power cuts during the first boot's creation of HostOS's state, each on a fresh
/// copy of `host`'s disk and a fresh TPM: the VM is killed a random time after a random
/// creation step began, then the same disk and TPM boot again, and that boot must end with
/// the state usable (created anew, or opened when the cut came after the commit) and the
/// boot report OK.
pub(crate) fn power_loss_trials(host: &Path, scratch: &Path, trials: usize, seed: u64) {
    eprintln!(
        "host-os power-loss trials: {trials}, seed {seed} (PLINTH_POWER_SEED={seed} repeats them)"
    );
    let pristine = tampered_disk(host, &scratch.join("pristine"), |_, _| {});
    let measurements = host.join("measurements.json");
    let mut rng = seed;
    let mut outcomes = Vec::new();
    let forced = forced_step();
    for trial in 1..=trials {
        let drawn = CREATION_STEPS[(next_random(&mut rng) % CREATION_STEPS.len() as u64) as usize];
        let (step, length) = forced.unwrap_or(drawn);
        let after = next_random(&mut rng) % (length + length / 5);
        let dir = scratch.join(format!("trial-{trial}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (disk, tpm) = (dir.join("disk.img"), dir.join("tpm"));
        let copy = run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&pristine)
            .arg(&disk));
        assert!(copy.status.success(), "cp: {}", text(&copy));
        let marker = format!("PLINTH STATE step={step}");
        let after_ms = after.to_string();
        // Named by the scratch directory, so that two lanes' trials keep their own logs.
        let name = format!(
            "host-os-{}-{trial}",
            scratch.file_name().unwrap().to_string_lossy()
        );
        boot(
            &disk,
            &name,
            &[
                "--tpm-state",
                tpm.to_str().unwrap(),
                "--write-boot-disk",
                "--expect",
                &marker,
                "--power-off-after",
                &after_ms,
            ],
        );
        let next = boot(
            &disk,
            &format!("{name}-after"),
            &[
                "--tpm-state",
                tpm.to_str().unwrap(),
                "--write-boot-disk",
                "--measurements",
                measurements.to_str().unwrap(),
            ],
        );
        let report = next
            .lines()
            .find(|l| l.contains("PLINTH BOOT "))
            .unwrap_or_default()
            .trim()
            .to_string();
        let state = next
            .lines()
            .find(|l| l.contains("PLINTH STATE ") && l.contains(" boots="))
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(
            report.contains("PLINTH BOOT OK host-os")
                && state.contains("PLINTH STATE ok ")
                && (state.contains(" created (") || state.contains(" opened (")),
            "trial {trial} (seed {seed}): power cut {after} ms after `{marker}`; the next boot: `{report}`, `{state}` (console log target/tmp/boot-{name}-after.log)"
        );
        // What the state found on the partition the cut left: blank, torn (a format cut short),
        // creating (an uncommitted volume) or state (committed).
        let found = next
            .lines()
            .find_map(|l| l.trim().strip_prefix("PLINTH STATE found="))
            .unwrap_or("?")
            .to_string();
        let how = if state.contains(" created (") {
            "created anew"
        } else {
            "opened"
        };
        eprintln!(
            "trial {trial}: power cut {after} ms into `{step}`; next boot found {found}: state {how}, boot OK"
        );
        outcomes.push((how, found));
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::remove_dir_all(scratch).unwrap();
    let count = |word: &str| outcomes.iter().filter(|(_, f)| f == word).count();
    eprintln!(
        "host-os power-loss trials: {} of {trials} passed ({} created anew, {} opened); the cuts left {} blank, {} torn, {} creating, {} committed",
        outcomes.len(),
        outcomes.iter().filter(|(h, _)| *h == "created anew").count(),
        outcomes.iter().filter(|(h, _)| *h == "opened").count(),
        count("blank"),
        count("torn"),
        count("creating"),
        count("state")
    );
}

pub(crate) fn slot_of(os: &str) -> &'static str {
    if os == "setup-os" {
        "none"
    } else {
        "A"
    }
}

/// The PCRs the agent printed (`PLINTH TPM PCR <n> <hex> ...`) equal every PCR the release's
/// measurements.json predicts for slot A (or the only slot), PCR 4, 7 and 11 among them.
pub(crate) fn assert_pcrs_as_predicted(release: &Path, os: &str, console: &str) {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release.join("measurements.json")).unwrap()).unwrap();
    let slot = m["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"].as_str().unwrap_or("none") == slot_of(os))
        .unwrap();
    let live: std::collections::BTreeMap<String, String> = console
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("PLINTH TPM PCR")?;
            let mut w = rest.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect();
    let predicted = slot["pcrs"].as_object().unwrap();
    for n in ["4", "7", "11"] {
        assert!(predicted.contains_key(n), "{os}: PCR {n} is not predicted");
    }
    for (n, value) in predicted {
        assert_eq!(
            live.get(n).map(String::as_str),
            value.as_str(),
            "{os}: PCR {n} as booted vs measurements.json"
        );
    }
    assert!(
        console.contains("PLINTH TPM measurements.json matches"),
        "{os}: the agent did not confirm its measurements"
    );
    let names: Vec<&String> = predicted.keys().collect();
    eprintln!("{os}: PCR {names:?} as booted equal measurements.json");
}

/// The disk image of `release`, unpacked into `scratch` and changed by `change`.
fn tampered_disk(
    release: &Path,
    scratch: &Path,
    change: impl FnOnce(&mut std::fs::File, &plinth::pipeline::manifest::Manifest),
) -> PathBuf {
    use plinth::compare::release::Release;
    let r = Release::open(release).unwrap();
    let disk = r
        .extract_member("disk-img.tar.zst", "disk.img", scratch)
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .unwrap();
    change(&mut f, &r.manifest);
    disk
}

fn flip_byte(f: &mut std::fs::File, at: u64) {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xff;
    f.write_all_at(&b, at).unwrap();
}

/// Replace the one occurrence of `from` (in `len` bytes from `offset`) with `to`, same length.
fn replace_once(f: &mut std::fs::File, offset: u64, len: u64, from: &[u8], to: &[u8]) {
    use std::os::unix::fs::FileExt;
    assert_eq!(from.len(), to.len());
    let mut span = vec![0u8; len as usize];
    f.read_exact_at(&mut span, offset).unwrap();
    let hits: Vec<usize> = span
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "`{}` occurs {} times",
        String::from_utf8_lossy(from),
        hits.len()
    );
    f.write_all_at(to, offset + hits[0] as u64).unwrap();
}

/// `plinth run` `image` (a release or a disk) with a swtpm and `extra` arguments (by default
/// until the boot report, `PLINTH BOOT `), and return its console. `name` names the console
/// log, kept in the target directory (its path is in any failure message).
fn boot(image: &Path, name: &str, extra: &[&str]) -> String {
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("boot-{name}.log"));
    let mut cmd = Plinth::new().command();
    cmd.arg("run")
        .arg(image)
        .args(["--accel", "tcg", "--timeout", "400", "--json"]);
    // The AmdSev firmware has no TPM support (plinth run refuses the pair).
    if !extra.contains(&"--firmware") {
        cmd.arg("--tpm");
    }
    if !extra.contains(&"--expect") {
        cmd.args(["--expect", "PLINTH BOOT "]);
    }
    let out = cmd
        .args(extra)
        .arg("--console-log")
        .arg(&log)
        .output()
        .unwrap();
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = console.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    assert!(
        out.status.success(),
        "{name}: the expected text did not appear ({}); console log {}:\n{}",
        String::from_utf8_lossy(&out.stderr),
        log.display(),
        tail.join("\n")
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!(
        "{name}: booted to the expected text in {:.1} s under {}",
        report["seconds"].as_f64().unwrap_or(0.0),
        report["accel"]
    );
    console
}
