//! Crafted FAT file systems in releases, through the real `plinth` binary: `plinth diff`
//! streams each ESP file into sha256 (a 300 MiB file must not be held in memory), `plinth
//! measure` refuses a boot loader larger than it reads into memory (exit 2, naming it), and a
//! directory loop or a looping cluster chain ends in a named error, not a hang or a crash.
//!
//! Every release here passes `Release::open`; the disk archives are written by the real
//! writer (zeros become holes, so a 300 MiB file of zeros costs nothing to store).

use crate::support;
use crate::support::Plinth;

use plinth::compare::release::Release;
use plinth::pipeline::artifacts::{self, TarEntry};
use plinth::pipeline::esp::{self, FatFile, FatOptions};
use plinth::pipeline::manifest::{self, OutputFile, PartitionImage};
use plinth::pipeline::measure::LOADER_PATH;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const EPOCH: i64 = support::EPOCH;
/// The UKI member of slot A.
const UKI: &str = "guest-os-a.efi";
/// `plinth measure` reads at most this much of one boot file into memory.
const MAX_PE_IN_MEMORY: u64 = 256 * MIB;

/// The disk of a test release: an ESP of `esp_size` at 1 MiB holding `files` (path, content
/// length, fill byte: the first two bytes are `MZ`), then a 2 MiB root and a 1 MiB verity
/// partition; `patch` edits the ESP image before it goes on the disk. The manifest's
/// partitions.
fn disk(
    dir: &Path,
    esp_size: u64,
    files: &[(&str, u64, u8)],
    patch: impl FnOnce(&mut std::fs::File),
) -> (PathBuf, Vec<PartitionImage>) {
    let mut fat_files = Vec::new();
    for (i, &(path, len, fill)) in files.iter().enumerate() {
        let src = dir.join(format!("file-{i}"));
        let f = std::fs::File::create(&src).unwrap();
        // Written in 1 MiB pieces: the test process holds no file whole either.
        let piece = vec![fill; MIB as usize];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(MIB);
            f.write_all_at(&piece[..n as usize], at).unwrap();
            at += n;
        }
        if len >= 2 {
            f.write_all_at(b"MZ", 0).unwrap();
        }
        fat_files.push(FatFile::new(path, src));
    }
    let fat = dir.join("esp.img");
    esp::write_fat(
        &fat,
        &FatOptions {
            size: esp_size,
            volume_id: 0x1234_5678,
            label: "ESP".into(),
            epoch: EPOCH,
        },
        &fat_files,
    )
    .unwrap();
    for f in &fat_files {
        std::fs::remove_file(&f.source).unwrap();
    }
    patch(
        &mut std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fat)
            .unwrap(),
    );
    let layout = [
        ("esp", "esp", MIB, esp_size),
        ("root-a", "root", MIB + esp_size, 2 * MIB),
        ("verity-a", "verity", 3 * MIB + esp_size, MIB),
    ];
    let disk = dir.join("disk.img");
    let d = std::fs::File::create(&disk).unwrap();
    d.set_len(5 * MIB + esp_size).unwrap();
    // Copied in pieces, zeros skipped: the disk stays sparse.
    let src = std::fs::File::open(&fat).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut at = 0;
    while at < esp_size {
        src.read_exact_at(&mut buf, at).unwrap();
        if buf.iter().any(|&b| b != 0) {
            d.write_all_at(&buf, MIB + at).unwrap();
        }
        at += MIB;
    }
    d.write_all_at(&[0x11; 4096], MIB + esp_size).unwrap();
    drop(d);
    std::fs::remove_file(&fat).unwrap();
    let partitions = layout
        .iter()
        .enumerate()
        .map(|(i, &(name, role, offset, size))| PartitionImage {
            number: i as u32 + 1,
            name: name.parse().unwrap(),
            role: serde_json::from_value(serde_json::json!(role)).unwrap(),
            slot: (role != "esp").then_some(plinth_release::Slot::A),
            offset,
            size,
            blocks_sha256: support::hex('e').parse().unwrap(),
        })
        .collect();
    (disk, partitions)
}

/// A release in `dir` of the disk `disk` (with `partitions`) and a small update archive.
fn release(dir: &Path, disk: &Path, partitions: Vec<PartitionImage>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    artifacts::write_tar_zst(
        &dir.join("disk-img.tar.zst"),
        &[TarEntry::new("disk.img", disk)],
        EPOCH,
    )
    .unwrap();
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut members = Vec::new();
    for (name, fill) in [(UKI, 0x4d), ("root.img", 0x11), ("verity.img", 0x22)] {
        std::fs::write(work.join(name), vec![fill; 4096]).unwrap();
        members.push(TarEntry::new(name, work.join(name)));
    }
    artifacts::write_tar_zst(&dir.join("update-img.tar.zst"), &members, EPOCH).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    std::fs::write(
        dir.join("sbom.spdx.json"),
        r#"{"spdxVersion": "SPDX-2.3", "packages": [{"SPDXID": "SPDXRef-Package-bash", "name": "bash", "versionInfo": "5.2"}]}"#,
    )
    .unwrap();
    let mut outputs = Vec::new();
    for name in ["disk-img.tar.zst", "sbom.spdx.json", "update-img.tar.zst"] {
        let (sha256, size) = plinth_release::Sha256::of_file(&dir.join(name)).unwrap();
        outputs.push(OutputFile {
            name: name.parse().unwrap(),
            sha256,
            size,
        });
    }
    let m = support::sample_manifest(
        "guest-os",
        outputs,
        partitions,
        support::slot(Some("A"), None, support::hex('c')),
    );
    m.write(&dir.join(manifest::FILE_NAME)).unwrap();
    Release::open(dir).expect("the test release opens");
    dir.to_path_buf()
}

/// A benign release (an 8 MiB ESP holding a small boot loader) and a crafted one (`disk`).
struct Case {
    _dir: tempfile::TempDir,
    benign: PathBuf,
    crafted: PathBuf,
    tmp: PathBuf,
}

fn case(esp_size: u64, files: &[(&str, u64, u8)], patch: impl FnOnce(&mut std::fs::File)) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let (d, parts) = disk(&work, 8 * MIB, &[(LOADER_PATH, 4096, 0x5a)], |_| {});
    let benign = release(&dir.path().join("a"), &d, parts);
    let (d, parts) = disk(&work, esp_size, files, patch);
    let crafted = release(&dir.path().join("b"), &d, parts);
    std::fs::remove_dir_all(&work).unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    Case {
        _dir: dir,
        benign,
        crafted,
        tmp,
    }
}

impl Case {
    /// Run `plinth args` with TMPDIR in the case, killed after `limit`; its output and its
    /// peak resident memory in bytes (`VmHWM`, polled while it runs).
    fn plinth(&self, args: &[&str], limit: Duration) -> (Output, u64) {
        let mut child = Plinth::new()
            .args(args)
            .within(&self.tmp)
            .command()
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let readers: Vec<_> = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|mut r| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                r.read_to_end(&mut v).unwrap();
                v
            })
        })
        .collect();
        let start = std::time::Instant::now();
        let mut peak = 0u64;
        let status = loop {
            // VmHWM only grows: the last reading before the exit is the peak.
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kb) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak = peak.max(kb * 1024);
                }
            }
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                child.kill().unwrap();
                child.wait().unwrap();
                panic!("plinth {args:?} ran longer than {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = readers.into_iter().map(|t| t.join().unwrap());
        let output = Output {
            status,
            stdout: out.next().unwrap(),
            stderr: out.next().unwrap(),
        };
        let leftovers: Vec<_> = std::fs::read_dir(&self.tmp).unwrap().collect();
        assert!(leftovers.is_empty(), "plinth {args:?} left {leftovers:?}");
        (output, peak)
    }

    fn diff(&self) -> (Output, u64) {
        let (a, b) = (
            self.benign.to_str().unwrap(),
            self.crafted.to_str().unwrap(),
        );
        self.plinth(&["diff", a, b], Duration::from_secs(300))
    }

    fn measure(&self) -> (Output, u64) {
        self.plinth(
            &["measure", self.crafted.to_str().unwrap()],
            Duration::from_secs(300),
        )
    }
}

/// Refused as bad input (exit 2), the error naming each of `want`.
fn refused(out: &Output, want: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for w in want {
        assert!(stderr.contains(w), "`{w}` missing from:\n{stderr}");
    }
}

/// A 320 MiB ESP whose boot loader is 300 MiB: `plinth diff` hashes it streaming (its peak
/// memory stays far below the file's size), and `plinth measure` refuses it by name.
const HUGE: u64 = 300 * MIB;

fn huge_loader_case() -> Case {
    case(320 * MIB, &[(LOADER_PATH, HUGE, 0)], |_| {})
}

#[test]
fn diff_streams_a_huge_esp_file() {
    let c = huge_loader_case();
    let (out, peak) = c.diff();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stdout}\n{stderr}", out.status);
    // The loader changed: the diff shows its size after.
    assert!(
        stdout.contains(&format!("/{LOADER_PATH}")) && stdout.contains(&format!("{HUGE} B")),
        "{stdout}"
    );
    eprintln!("plinth diff peak RSS: {} MiB", peak / MIB);
    assert!(
        peak < 100 * MIB,
        "plinth diff peaked at {} MiB for a {} MiB ESP file",
        peak / MIB,
        HUGE / MIB
    );
}

#[test]
fn measure_refuses_a_huge_boot_loader() {
    let c = huge_loader_case();
    let (out, peak) = c.measure();
    refused(
        &out,
        &[
            LOADER_PATH,
            "disk-img.tar.zst",
            &format!("is {HUGE} bytes"),
            &format!("the {MAX_PE_IN_MEMORY} bytes plinth measure reads into memory"),
        ],
    );
    eprintln!("plinth measure peak RSS: {} MiB", peak / MIB);
    // What it read, at most the cap, and no more.
    assert!(peak < MAX_PE_IN_MEMORY + 100 * MIB, "{} MiB", peak / MIB);
}

// ---- loops ------------------------------------------------------------------------------

/// The FAT12/16 layout of an image: (bytes per cluster, root directory offset, data offset,
/// FAT offset, FAT size in bytes, number of FATs).
fn layout(f: &std::fs::File) -> (u64, u64, u64, u64, u64, u64) {
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 0).unwrap();
    let u16_at = |i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
    let (bps, spc, reserved, fats, root_entries, fat_sectors) = (
        u16_at(11),
        u64::from(b[13]),
        u16_at(14),
        u64::from(b[16]),
        u16_at(17),
        u16_at(22),
    );
    assert!(fat_sectors > 0, "a FAT12/16 image");
    let fat = reserved * bps;
    let root = fat + fats * fat_sectors * bps;
    let data = root + root_entries * 32;
    (bps * spc, root, data, fat, fat_sectors * bps, fats)
}

/// The offset of the 8.3 entry `name` (11 bytes, padded) among the `count` at `dir`.
fn find_entry(f: &std::fs::File, dir: u64, count: u64, name: &[u8; 11]) -> u64 {
    let mut e = [0u8; 32];
    for i in 0..count {
        f.read_exact_at(&mut e, dir + 32 * i).unwrap();
        if &e[..11] == name {
            return dir + 32 * i;
        }
    }
    panic!("no entry {}", String::from_utf8_lossy(name));
}

fn cluster_of(f: &std::fs::File, entry: u64) -> u16 {
    let mut c = [0u8; 2];
    f.read_exact_at(&mut c, entry + 26).unwrap();
    u16::from_le_bytes(c)
}

/// Directory `LOOP/DOWN` made to point back at `LOOP`: `DOWN` holds itself.
fn point_down_at_parent(f: &mut std::fs::File) {
    let (cluster, root, data, ..) = layout(f);
    let top = find_entry(f, root, 512, b"LOOP       ");
    let top_cluster = cluster_of(f, top);
    let top_dir = data + (u64::from(top_cluster) - 2) * cluster;
    let down = find_entry(f, top_dir, cluster / 32, b"DOWN       ");
    f.write_all_at(&top_cluster.to_le_bytes(), down + 26)
        .unwrap();
}

/// The files of the loop tests: in a 16 MiB (FAT16) ESP, `LOOP/DOWN/F` and the loader.
const LOOP_FILES: &[(&str, u64, u8)] = &[("LOOP/DOWN/F", 100, 0x41), (LOADER_PATH, 4096, 0x5a)];

#[test]
fn fat_directory_loop_is_named() {
    let c = case(16 * MIB, LOOP_FILES, point_down_at_parent);
    let (out, _) = c.diff();
    refused(
        &out,
        &[
            "the FAT image has a loop",
            "`LOOP/DOWN` is listed twice",
            "refusing to list it",
        ],
    );
}

#[test]
fn fat_cluster_chain_loop_is_named() {
    // The directory LOOP's cluster chain points back at itself.
    let c = case(16 * MIB, LOOP_FILES, |f| {
        let (_, root, _, fat, fat_len, fats) = layout(f);
        let top = cluster_of(f, find_entry(f, root, 512, b"LOOP       "));
        for i in 0..fats {
            f.write_all_at(&top.to_le_bytes(), fat + i * fat_len + 2 * u64::from(top))
                .unwrap();
        }
    });
    let (out, _) = c.diff();
    refused(&out, &["the FAT image has a loop", "loop detected"]);
}

/// The same, read directly: `list_fat` names the loop.
#[test]
fn list_fat_names_a_directory_loop() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("f");
    std::fs::write(&src, b"x").unwrap();
    let img = dir.path().join("esp.img");
    esp::write_fat(
        &img,
        &FatOptions {
            size: 16 * MIB,
            volume_id: 1,
            label: String::new(),
            epoch: EPOCH,
        },
        &[FatFile::new("LOOP/DOWN/F", &src)],
    )
    .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    point_down_at_parent(&mut f);
    drop(f);
    let err = esp::list_fat(&img).unwrap_err();
    assert!(
        matches!(&err, esp::EspError::Loop { what } if what.contains("`LOOP/DOWN` is listed twice")),
        "{err}"
    );
    assert!(err.is_crafted());
}
