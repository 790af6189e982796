//! `plinth flash` on a small honest release built here with the real tools (sgdisk, mkfs.vfat
//! and mcopy, mke2fs -d, the builder's own archive writer and manifest types), written to
//! real loop devices and files: flash and verify, the refusals (mounted, held, the system
//! disk, too small, a character device, a crafted release) with the target byte-identical
//! afterwards, Ctrl-C and SIGKILL in the middle of a write (the disk is left without a
//! primary GPT, and `--verify-only` says so), and `--config` read back with mtype.
//! Loop devices, mounts and mappings are undone by guards, even when a test fails. Tests
//! that need root (loop devices, mounts) print a skip line without it.

use crate::support::{self, Plinth};

use plinth::pipeline::artifacts::{self, TarEntry};
use plinth::pipeline::manifest::{self, Manifest};
use plinth_testkit::swtpm::Loop;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const MIB: u64 = 1 << 20;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn skip(why: &str) -> bool {
    if !is_root() {
        eprintln!("skipped: {why} needs root");
        return true;
    }
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A small release: a GPT disk of `root_mib` + 14 MiB with `esp` (vfat, 8 MiB at 1 MiB, a
/// loader.conf), `config` (vfat, 4 MiB at 9 MiB, empty) and `root` (ext4 from a directory,
/// `root_mib` MiB at 13 MiB).
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    release: PathBuf,
    disk: PathBuf,
}

impl Fixture {
    fn new(root_mib: u64) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let work = dir.join("work");
        std::fs::create_dir_all(work.join("root/etc")).unwrap();
        std::fs::write(work.join("root/etc/motd"), "a plinth flash test\n").unwrap();
        std::fs::write(work.join("root/etc/hostname"), "setup-os\n").unwrap();
        // Some incompressible data, so that the root partition is not all metadata.
        // A quarter of the partition, at most 32 MiB (4-byte words).
        let noise: Vec<u8> = (0..((root_mib * MIB / 4).min(32 * MIB) / 4) as u32)
            .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
            .collect();
        std::fs::write(work.join("root/etc/noise"), noise).unwrap();
        let root = work.join("root.img");
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-d"])
            .arg(work.join("root"))
            .arg(&root)
            .arg(format!("{}M", root_mib)));
        let fat = |name: &str, size: u64, label: &str| {
            let img = work.join(name);
            std::fs::File::create(&img)
                .unwrap()
                .set_len(size * MIB)
                .unwrap();
            run(Command::new("mkfs.vfat")
                .args(["-n", label, "-i", "12345678"])
                .arg(&img));
            img
        };
        let esp = fat("esp.img", 8, "ESP");
        std::fs::write(work.join("loader.conf"), "timeout 0\n").unwrap();
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg(work.join("loader.conf"))
            .arg("::loader.conf"));
        let config = fat("config.img", 4, "CONFIG");
        let disk = work.join("disk.img");
        let size = (root_mib + 14) * MIB;
        std::fs::File::create(&disk).unwrap().set_len(size).unwrap();
        run(Command::new("sgdisk")
            .args(["-o", "-n", "1:2048:+8M", "-c", "1:esp", "-t", "1:ef00"])
            .args(["-n", "2:0:+4M", "-c", "2:config", "-t", "2:0700"])
            .args(["-n"])
            .arg(format!("3:0:+{root_mib}M"))
            .args(["-c", "3:root", "-t", "3:8300"])
            .arg(&disk));
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        for (img, at) in [(&esp, MIB), (&config, 9 * MIB), (&root, 13 * MIB)] {
            f.write_all_at(&std::fs::read(img).unwrap(), at).unwrap();
        }
        drop(f);

        let release = dir.join("release");
        std::fs::create_dir_all(&release).unwrap();
        let outputs = vec![artifacts::write_tar_zst(
            &release.join("disk-img.tar.zst"),
            &[TarEntry::new("disk.img", &disk)],
            support::EPOCH,
        )
        .unwrap()];
        let part = |n, name: &str, role: &str, offset, size| {
            support::partition(&disk, n, name, role, offset, size)
        };
        let m = support::sample_manifest(
            "setup-os",
            outputs,
            vec![
                part(1, "esp", "esp", MIB, 8 * MIB),
                part(2, "config", "config", 9 * MIB, 4 * MIB),
                part(3, "root", "root", 13 * MIB, root_mib * MIB),
            ],
            support::slot(Some("A"), None, support::hex('c')),
        );
        m.write(&release.join(manifest::FILE_NAME)).unwrap();
        Fixture {
            _tmp: tmp,
            dir,
            release,
            disk,
        }
    }

    fn size(&self) -> u64 {
        std::fs::metadata(&self.disk).unwrap().len()
    }

    fn manifest(&self) -> Manifest {
        Manifest::read(&self.release.join(manifest::FILE_NAME)).unwrap()
    }

    /// A file of `size` bytes filled with 0xa5 (old data on a stick), as a loop device.
    fn stick(&self, name: &str, size: u64) -> (PathBuf, Loop) {
        let file = self.dir.join(name);
        let f = std::fs::File::create(&file).unwrap();
        let chunk = vec![0xa5u8; MIB as usize];
        let mut at = 0;
        while at < size {
            let n = (size - at).min(MIB) as usize;
            f.write_all_at(&chunk[..n], at).unwrap();
            at += n as u64;
        }
        drop(f);
        let dev = Loop::attach(&file);
        (file, dev)
    }
}

fn flash(args: &[&str]) -> Output {
    Plinth::new()
        .args(["flash"])
        .args(args)
        .command()
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn sha(path: &Path) -> String {
    let f = std::fs::File::open(path).unwrap();
    plinth_release::Sha256::of_reader(f).unwrap().0.to_string()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The first `len` bytes of `path` (a device or file).
fn head(path: &Path, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, 0)
        .unwrap();
    buf
}

#[test]
fn flash_to_a_loop_device_and_verify() {
    if skip("a loop device") {
        return;
    }
    let fx = Fixture::new(16);
    let size = fx.size();
    let (backing, dev) = fx.stick("stick.img", size + 3 * MIB);
    // No terminal and no --yes: refused before anything is written.
    let before = sha(&backing);
    let out = flash(&[s(&fx.release), &dev.0]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no terminal to confirm on"));
    assert_eq!(sha(&backing), before);

    let out = flash(&["--json", s(&fx.release), &dev.0, "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["device"], dev.0.as_str());
    assert_eq!(v["kind"], "block");
    assert_eq!(v["size"], size + 3 * MIB);
    assert_eq!(v["image_bytes"], size);
    assert_eq!(v["gpt"], "ok");
    assert_eq!(v["ok"], true);
    assert_eq!(v["config_written"], false);
    assert!(v["write_seconds"].as_f64().unwrap() > 0.0);
    assert!(v["verify_seconds"].as_f64().unwrap() > 0.0);
    let parts = v["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 3);
    assert!(parts.iter().all(|p| p["result"] == "ok"), "{v}");
    // Byte for byte the image, holes written as zeros; the old data past it (where an old
    // backup GPT would be) zeroed in the device's last MiB.
    let written = std::fs::read(&backing).unwrap();
    assert_eq!(
        &written[..size as usize],
        &std::fs::read(&fx.disk).unwrap()[..]
    );
    let tail = &written[written.len() - MIB as usize..];
    assert!(tail.iter().all(|&b| b == 0), "the last MiB is not zeroed");
    assert!(written[size as usize..written.len() - MIB as usize]
        .iter()
        .all(|&b| b == 0xa5));

    let out = flash(&[s(&fx.release), &dev.0, "--verify-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("GPT region ok"));
    // The disk-img.tar.zst path works as IMAGE too.
    let archive = fx.release.join("disk-img.tar.zst");
    let out = flash(&[s(&archive), &dev.0, "--verify-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn flash_to_a_file_and_verify_then_find_a_changed_partition() {
    let fx = Fixture::new(16);
    let target = fx.dir.join("out.img");
    let out = flash(&[s(&fx.release), s(&target)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        std::fs::read(&fx.disk).unwrap()
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&target).unwrap();
    assert!(
        meta.blocks() * 512 < meta.len(),
        "a new file is written sparse: {} of {} bytes allocated",
        meta.blocks() * 512,
        meta.len()
    );
    let out = flash(&[s(&fx.release), s(&target), "--verify-only"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // One byte of the root partition changed: named.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap();
    f.write_all_at(b"X", 20 * MIB + 17).unwrap();
    drop(f);
    let out = flash(&[s(&fx.release), s(&target), "--verify-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("partition 3 `root` (root) differs"),
        "{}",
        text(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("MISMATCH"));

    // Flashed again over it, with a config: written through the partition's offset in the
    // file, read back, checked by fsck.vfat on a copy of the span.
    let config = provider_config(&fx.dir);
    let out = flash(&[s(&fx.release), s(&target), "--config", s(&config)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("config.yaml written and read back"));
    let back = run(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", target.display(), 9 * MIB))
        .arg("::config.yaml"));
    assert_eq!(back.stdout, std::fs::read(&config).unwrap());
}

#[test]
fn a_mounted_loop_device_is_refused_and_left_alone() {
    if skip("mounting a loop device") {
        return;
    }
    let fx = Fixture::new(16);
    let (backing, dev) = fx.stick("mounted.img", fx.size() + MIB);
    run(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", &dev.0]));
    let mnt = fx.dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", "ro,noload", &dev.0])
        .arg(&mnt));
    let _mounted = Mounted(mnt.clone());
    let before = sha(&backing);
    let out = flash(&[s(&fx.release), &dev.0, "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("is mounted on {}", mnt.display())),
        "{err}"
    );
    assert!(
        err.contains("umount") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(sha(&backing), before, "the mounted device was changed");
}

/// A mount point, unmounted on drop.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A device-mapper device, removed on drop.
struct Mapping(String);

impl Drop for Mapping {
    fn drop(&mut self) {
        let _ = Command::new("dmsetup").args(["remove", &self.0]).status();
    }
}

#[test]
fn a_held_loop_device_is_refused() {
    if skip("a loop device") {
        return;
    }
    let fx = Fixture::new(16);
    let (backing, dev) = fx.stick("held.img", fx.size() + MIB);
    let sectors = (fx.size() + MIB) / 512;
    let name = format!("plinth-flash-test-{}", std::process::id());
    let made = Command::new("dmsetup")
        .args(["create", &name, "--table"])
        .arg(format!("0 {sectors} linear {} 0", dev.0))
        .output()
        .unwrap();
    if !made.status.success() {
        eprintln!(
            "skipped: dmsetup cannot create a mapping here (no device-mapper in the kernel?): {}",
            String::from_utf8_lossy(&made.stderr).trim()
        );
        return;
    }
    let _mapping = Mapping(name.clone());
    let before = sha(&backing);
    let out = flash(&[s(&fx.release), &dev.0, "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is held by dm-"), "{err}");
    assert_eq!(sha(&backing), before);
}

/// The block device behind `/`, if it has a node in /dev.
fn root_device() -> Option<PathBuf> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let devno = info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&"/")).then(|| f[2].to_string())
    })?;
    let (major, minor) = devno.split_once(':')?;
    let (major, minor): (u64, u64) = (major.parse().ok()?, minor.parse().ok()?);
    std::fs::read_dir("/dev").ok()?.flatten().find_map(|e| {
        let m = std::fs::metadata(e.path()).ok()?;
        let rdev = m.rdev();
        (m.file_type().is_block_device()
            && nix::sys::stat::major(rdev) == major
            && nix::sys::stat::minor(rdev) == minor)
            .then(|| e.path())
    })
}

#[test]
fn the_system_disk_is_refused() {
    let Some(root) = root_device() else {
        eprintln!("skipped: `/` is not on a block device with a node in /dev (a container?)");
        return;
    };
    // No release at all: should the refusal ever fail, flashing still stops at the image.
    let out = flash(&["/nonexistent/release", s(&root), "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is the running system's disk"), "{err}");
    assert!(err.contains("holds /"), "{err}");
}

#[test]
fn a_too_small_device_and_a_character_device_are_refused() {
    if skip("a loop device") {
        return;
    }
    let fx = Fixture::new(16);
    let (backing, dev) = fx.stick("small.img", fx.size() - MIB);
    let before = sha(&backing);
    let out = flash(&[s(&fx.release), &dev.0, "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}: holds", dev.0)) && err.contains("the image needs"),
        "{err}"
    );
    assert_eq!(sha(&backing), before);

    let out = flash(&[s(&fx.release), "/dev/null", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a character device"));
    assert_eq!(sha(&backing), before);
}

#[test]
fn a_crafted_release_is_refused_with_nothing_written() {
    let fx = Fixture::new(16);
    let target = fx.dir.join("victim.img");
    std::fs::write(&target, vec![0x5au8; 3 * MIB as usize]).unwrap();
    let before = sha(&target);
    let write_manifest = |m: &Manifest| m.write(&fx.release.join(manifest::FILE_NAME)).unwrap();
    let honest = fx.manifest();

    // The archive's digest is not the manifest's.
    let mut m = honest.clone();
    m.outputs[0].sha256 = support::hex('d').parse().unwrap();
    write_manifest(&m);
    let out = flash(&[s(&fx.release), s(&target)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("disk-img.tar.zst: sha256"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(sha(&target), before);

    // The archive's size is not the manifest's.
    let mut m = honest.clone();
    m.outputs[0].size += 1;
    write_manifest(&m);
    let out = flash(&[s(&fx.release), s(&target)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("outputs entry says"));
    assert_eq!(sha(&target), before);

    // A manifest whose partitions end early (one of 1 MiB): `disk.img` stores more data
    // (4 MiB in the root file system alone) than they allow.
    let mut m = honest.clone();
    m.partitions.truncate(1);
    m.partitions[0].size = MIB;
    write_manifest(&m);
    let out = flash(&[s(&fx.release), s(&target)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("member `disk.img` declares data of"), "{err}");
    assert_eq!(sha(&target), before);
    // --verify-only refuses it too.
    let out = flash(&[s(&fx.release), s(&target), "--verify-only"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    write_manifest(&honest);
}

/// Spawn a flash of a 256 MiB image to a loop device, stop it once the first progress line
/// shows bytes written, send `signal`, let it go on, and return its exit status and
/// stderr.
fn interrupt_flash(
    fx: &Fixture,
    dev: &str,
    signal: nix::sys::signal::Signal,
) -> (Option<i32>, String) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut child = Plinth::new()
        .args(["flash", s(&fx.release), dev, "--yes"])
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("flash: writing") {
            kill(pid, Signal::SIGSTOP).unwrap();
            assert!(
                !line.contains("(100%)"),
                "the write ended before the signal:\n{seen}"
            );
            break;
        }
    }
    kill(pid, signal).unwrap();
    kill(pid, Signal::SIGCONT).unwrap();
    for line in lines {
        seen.push_str(&line.unwrap_or_default());
        seen.push('\n');
    }
    let status = child.wait().unwrap();
    (status.code(), seen)
}

#[test]
fn ctrl_c_mid_write_leaves_no_gpt_and_verify_only_says_so() {
    if skip("a loop device") {
        return;
    }
    let fx = Fixture::new(242);
    assert_eq!(fx.size(), 256 * MIB);
    let (_backing, dev) = fx.stick("sigint.img", fx.size());
    let (code, err) = interrupt_flash(&fx, &dev.0, nix::sys::signal::Signal::SIGINT);
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("is NOT usable"), "{err}");
    assert!(
        head(Path::new(&dev.0), MIB).iter().all(|&b| b == 0),
        "the first MiB is not zeroed"
    );
    let out = flash(&[s(&fx.release), &dev.0, "--verify-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the GPT region (first MiB) differs"),
        "{}",
        text(&out)
    );
}

#[test]
fn sigkill_mid_write_leaves_no_gpt_and_verify_only_says_so() {
    if skip("a loop device") {
        return;
    }
    let fx = Fixture::new(242);
    let (_backing, dev) = fx.stick("sigkill.img", fx.size());
    let (code, err) = interrupt_flash(&fx, &dev.0, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(code, None, "killed by a signal: {err}");
    assert!(
        head(Path::new(&dev.0), MIB).iter().all(|&b| b == 0),
        "the first MiB is not zeroed"
    );
    let out = flash(&[s(&fx.release), &dev.0, "--verify-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the GPT region (first MiB) differs"),
        "{}",
        text(&out)
    );
}

#[test]
fn config_is_written_into_the_config_partition_and_read_back() {
    if skip("a loop device") {
        return;
    }
    let fx = Fixture::new(16);
    let (_backing, dev) = fx.stick("config.img", fx.size());
    let config = provider_config(&fx.dir);
    let yaml = std::fs::read_to_string(&config).unwrap();
    let out = flash(&[
        "--json",
        s(&fx.release),
        &dev.0,
        "--yes",
        "--config",
        s(&config),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["config_written"], true);
    // Read back independently, through the partition's offset.
    let back = run(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", dev.0, 9 * MIB))
        .arg("::config.yaml"));
    assert_eq!(String::from_utf8_lossy(&back.stdout), yaml);
    // The node operator key it names went beside it.
    let key = run(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{}", dev.0, 9 * MIB))
        .arg("::node_operator_private_key.pem"));
    assert_eq!(
        key.stdout,
        std::fs::read(fx.dir.join("node_operator_private_key.pem")).unwrap()
    );
    // The config partition now differs from the release; the others do not.
    let out = flash(&[s(&fx.release), &dev.0, "--verify-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("partition 2 `config` (config) differs"),
        "{}",
        text(&out)
    );

    // A config that is not UTF-8, or too large: refused before anything is written.
    let bad = fx.dir.join("bad.yaml");
    std::fs::write(&bad, [0xffu8, 0xfe, b'\n']).unwrap();
    let out = flash(&[s(&fx.release), &dev.0, "--yes", "--config", s(&bad)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not UTF-8"), "{}", text(&out));
    std::fs::write(&bad, vec![b'#'; 65 * 1024]).unwrap();
    let out = flash(&[s(&fx.release), &dev.0, "--yes", "--config", s(&bad)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A config SetupOS would refuse (a /48): refused with its field and line, nothing
    // written (the device still verifies as before: only `config` differs).
    let bad = fx.dir.join("config.yaml");
    std::fs::write(&bad, yaml.replace("::/64", "::/48")).unwrap();
    let out = flash(&[s(&fx.release), &dev.0, "--yes", "--config", s(&bad)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("network.ipv6.prefix: expected"),
        "{}",
        text(&out)
    );
}

/// The documented example config.yaml and the node operator key it names, in `dir`.
fn provider_config(dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/node-config.example.yaml"),
    )
    .unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, example).unwrap();
    std::fs::write(
        dir.join("node_operator_private_key.pem"),
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    config
}

/// A release opened against a pin (SetupOS's verity root pins the releases it carries): the
/// manifest's bytes must hash to it, read once.
#[test]
fn a_pinned_release_opens_only_with_its_own_manifest() {
    let fx = Fixture::new(16);
    let manifest = fx.release.join(manifest::FILE_NAME);
    let (pin, _) = plinth_release::Sha256::of_file(&manifest).unwrap();
    plinth_flash::image::Image::open_pinned(&fx.release, Some(pin)).unwrap();
    let other = plinth_release::Sha256::of(b"another release");
    let err = match plinth_flash::image::Image::open_pinned(&fx.release, Some(other)) {
        Ok(_) => panic!("a release that is not the pinned one opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("but the release pinned here is"), "{err}");
    assert!(err.contains(&other.to_hex()), "{err}");
}

/// A write that defers its first MiB (the install writes both disks so) leaves a disk
/// without a partition table whose partitions already read back as the release's; the
/// commit writes, syncs and reads back the first MiB, and the whole disk then verifies.
#[test]
fn a_deferred_first_mib_is_zero_until_committed() {
    use plinth_flash::{device, verify, write, Disk};
    let fx = Fixture::new(16);
    let image = plinth_flash::image::Image::open(&fx.release).unwrap();
    let out = fx.dir.join("target.img");
    let target = device::inspect(&out, &device::Roots::system()).unwrap();
    let mut disk = Disk::open_write(&target).unwrap();
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let written = write::write(
        &image,
        &mut disk,
        &write::WriteOptions {
            cancel: &cancel,
            progress: &|_| {},
            defer_first_mib: true,
        },
    )
    .unwrap();
    assert_eq!(written.bytes, image.size);
    assert!(
        head(&out, MIB).iter().all(|b| *b == 0),
        "the first MiB was written"
    );
    let target = device::inspect(&out, &device::Roots::system()).unwrap();
    let checked = verify::verify(
        &Disk::open_read(&target).unwrap(),
        &image,
        &cancel,
        &mut |_| {},
    )
    .unwrap();
    assert!(!checked.gpt_ok && !checked.ok());
    assert!(checked.partitions.iter().all(|p| p.ok), "{checked:?}");

    write::commit_first_mib(&image, &disk).unwrap();
    assert_eq!(head(&out, MIB), head(&fx.disk, MIB));
    let checked = verify::verify(
        &Disk::open_read(&target).unwrap(),
        &image,
        &cancel,
        &mut |_| {},
    )
    .unwrap();
    assert!(checked.ok(), "{checked:?}");
}
