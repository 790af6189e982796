//! FAT images from `plinth::pipeline::esp`: checked by dosfstools and read back with mtools,
//! and rebuilt in another process (other time, directory, umask, time zone, HOME with its own
//! `.mtoolsrc`, MTOOLS_* variables, source mtimes) to the same bytes.
//! Needs dosfstools and mtools (ci/setup installs them); no mounts, no loop devices.

use plinth::pipeline::esp::{self, FatFile, FatOptions};
use plinth::pipeline::ids::IdSource;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

const MIB: u64 = 1 << 20;
const EPOCH: i64 = 1_700_000_000; // 2023-11-14 22:13:20 UTC
const IDS: IdSource<'static> = IdSource {
    os: "host-os",
    version: "0.1.0",
};
/// Set in the child process that builds the second image.
const CHILD_OUT: &str = "PLINTH_TEST_ESP_OUT";

/// An ESP's worth of files: (path in the image, content). Long names, mixed case, nested.
fn contents() -> Vec<(&'static str, Vec<u8>)> {
    let pattern = |n: usize, seed: u8| -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
            .collect()
    };
    // A UKI-sized file with a zero gap in the middle.
    let mut uki = pattern(900_000, 7);
    uki[100_000..300_000].fill(0);
    vec![
        ("EFI/BOOT/BOOTX64.EFI", pattern(120_000, 1)),
        ("EFI/systemd/systemd-bootx64.efi", pattern(120_000, 1)),
        ("EFI/Linux/plinth-a.efi", uki),
        ("EFI/Linux/plinth-b.efi", pattern(70_001, 3)),
        (
            "loader/loader.conf",
            b"timeout 3\ndefault plinth-a.efi\n".to_vec(),
        ),
        ("loader/entries/README.txt", Vec::new()),
    ]
}

/// Write the sources under `dir`, with the given mtime, and return the file list.
fn sources(dir: &Path, mtime: SystemTime) -> Vec<FatFile> {
    let src = dir.join("src");
    contents()
        .into_iter()
        .enumerate()
        .map(|(i, (path, data))| {
            let file = src.join(format!("{i}-{}", path.rsplit('/').next().unwrap()));
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(&file, data).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&file)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
            FatFile::new(path, file)
        })
        .collect()
}

fn options() -> FatOptions {
    FatOptions {
        size: 64 * MIB,
        volume_id: esp::volume_id(&IDS, "esp/volume-id"),
        label: "ESP".into(),
        epoch: EPOCH,
    }
}

/// Build an image in `dir` (sources in reverse order, to show the order given does not matter).
fn build(dir: &Path, opts: &FatOptions, mtime: SystemTime) -> PathBuf {
    let mut files = sources(dir, mtime);
    files.reverse();
    let image = dir.join("esp.img");
    esp::write_fat(&image, opts, &files).unwrap();
    image
}

fn mtools(args: &[&str], image: &Path) -> String {
    let out = Command::new("mdir")
        .args(args)
        .arg("-i")
        .arg(image)
        .arg("::")
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn fat_image_is_clean_and_holds_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let image = build(tmp.path(), &options(), SystemTime::now());
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 * MIB);

    let fsck = Command::new("fsck.vfat")
        .arg("-n")
        .arg(&image)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&fsck.stdout);
    assert!(fsck.status.success(), "fsck.vfat -n: {fsck:?}");
    // 6 files, 6 directories and the volume label entry.
    assert!(report.contains(" 13 files, "), "fsck.vfat -n: {report}");
    assert!(!report.to_lowercase().contains("dirty"), "{report}");

    // Every file and directory, by long name.
    let mut expected: Vec<String> = Vec::new();
    for (path, _) in contents() {
        let parts: Vec<&str> = path.split('/').collect();
        for i in 1..parts.len() {
            expected.push(format!("{}/", parts[..i].join("/")));
        }
        expected.push(path.to_string());
    }
    expected.sort();
    expected.dedup();
    let listed: Vec<String> = esp::list_fat(&image)
        .unwrap()
        .into_iter()
        .map(|e| {
            if e.is_dir {
                format!("{}/", e.path)
            } else {
                e.path
            }
        })
        .collect();
    assert_eq!(listed, expected);
    // The same through mdir directly.
    let mut bare: Vec<String> = mtools(&["-/", "-b"], &image)
        .lines()
        .map(|l| l.trim_start_matches("::/").to_string())
        .collect();
    bare.sort();
    assert_eq!(bare, expected);

    for (path, data) in contents() {
        assert_eq!(esp::read_fat_file(&image, path).unwrap(), data, "{path}");
    }
    assert!(matches!(
        esp::read_fat_file(&image, "EFI/missing.efi"),
        Err(esp::EspError::NotInImage { .. })
    ));

    // Volume id, label, and every timestamp at the epoch.
    let listing = mtools(&["-/", "-a"], &image);
    let serial = format!("{:08X}", options().volume_id);
    assert!(
        listing.contains(&format!(
            "Serial Number is {}-{}",
            &serial[..4],
            &serial[4..]
        )),
        "{listing}"
    );
    assert!(listing.contains("Volume in drive : is ESP"), "{listing}");
    let dated: Vec<&str> = listing.lines().filter(|l| has_date(l)).collect();
    // 6 files, 6 directories, and the `.` and `..` of each directory.
    assert_eq!(dated.len(), 6 + 6 + 6 * 2, "{listing}");
    for line in dated {
        assert!(
            line.contains("2023-11-14  22:13"),
            "not at the epoch: {line}"
        );
    }
    // The label's own directory entry (first in the root, FAT32 root at cluster 2).
    let raw = std::fs::read(&image).unwrap();
    let label_entry = raw
        .windows(12)
        .position(|w| w == b"ESP        \x08")
        .expect("a volume label entry");
    let mtime = u16::from_le_bytes([raw[label_entry + 22], raw[label_entry + 23]]);
    let mdate = u16::from_le_bytes([raw[label_entry + 24], raw[label_entry + 25]]);
    assert_eq!((mdate >> 9) + 1980, 2023);
    assert_eq!(((mdate >> 5) & 0xf, mdate & 0x1f), (11, 14));
    assert_eq!((mtime >> 11, (mtime >> 5) & 0x3f), (22, 13));
}

/// Whether a listing line carries a `yyyy-mm-dd` date.
fn has_date(line: &str) -> bool {
    line.as_bytes().windows(10).any(|w| {
        w.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        })
    })
}

#[test]
fn two_builds_in_different_environments_are_identical() {
    let first_dir = tempfile::tempdir().unwrap();
    let first = build(first_dir.path(), &options(), SystemTime::now());
    // FAT times have two-second resolution: make sure the clock has moved on.
    std::thread::sleep(Duration::from_millis(2100));

    let second_dir = tempfile::tempdir().unwrap();
    let home = second_dir.path().join("home");
    let cwd = second_dir.path().join("elsewhere");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::write(
        home.join(".mtoolsrc"),
        "MTOOLS_NO_VFAT=1\nMTOOLS_NAME_NUMERIC_TAIL=0\nMTOOLS_LOWER_CASE=1\n",
    )
    .unwrap();
    let second = second_dir.path().join("out");
    std::fs::create_dir_all(&second).unwrap();
    // The second build runs in a child process (this test binary, the ignored test below),
    // so that its umask, working directory and environment differ from this one's.
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(r#"umask 077 && cd "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg(&cwd)
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            "esp::child_builds_an_esp",
            "--test-threads=1",
        ])
        .env(CHILD_OUT, &second)
        .env("HOME", &home)
        .env("TZ", "Pacific/Kiritimati")
        .env("LC_ALL", "C.UTF-8")
        .env("SOURCE_DATE_EPOCH", "1")
        .env("MTOOLS_LOWER_CASE", "1")
        .env("MTOOLS_NO_VFAT", "1")
        .env("MTOOLSRC", home.join(".mtoolsrc"))
        .status()
        .unwrap();
    assert!(status.success());
    let second = second.join("esp.img");

    let a = std::fs::read(&first).unwrap();
    let b = std::fs::read(&second).unwrap();
    assert_eq!(a.len(), b.len());
    if let Some(at) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("images differ first at byte {at}");
    }
    // And the epoch does reach the image.
    let other_dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.epoch += 86_400;
    let other = build(other_dir.path(), &opts, SystemTime::now());
    assert_ne!(std::fs::read(other).unwrap(), a);
}

/// Run by `two_builds_in_different_environments_are_identical` in a child process.
#[test]
#[ignore = "helper: run by two_builds_in_different_environments_are_identical"]
fn child_builds_an_esp() {
    let Some(out) = std::env::var_os(CHILD_OUT) else {
        return;
    };
    // Sources with an old mtime, unlike the first build's.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    build(Path::new(&out), &options(), old);
}

#[test]
fn small_images_use_fat16_and_fat12_and_are_clean() {
    let tmp = tempfile::tempdir().unwrap();
    for (mib, fat) in [(16, "FAT16   "), (4, "FAT12   ")] {
        let opts = FatOptions {
            size: mib * MIB,
            volume_id: 0x0102_0304,
            label: String::new(),
            epoch: EPOCH,
        };
        let files = sources(tmp.path(), SystemTime::now());
        let image = tmp.path().join(format!("{mib}.img"));
        esp::write_fat(&image, &opts, &files[..2]).unwrap();
        let raw = std::fs::read(&image).unwrap();
        assert_eq!(&raw[54..62], fat.as_bytes());
        let fsck = Command::new("fsck.vfat")
            .arg("-n")
            .arg(&image)
            .output()
            .unwrap();
        assert!(fsck.status.success(), "{mib} MiB: {fsck:?}");
        assert_eq!(
            esp::read_fat_file(&image, "EFI/systemd/systemd-bootx64.efi").unwrap(),
            contents()[1].1
        );
    }
}

#[test]
fn bad_inputs_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("x.img");
    let files = sources(tmp.path(), SystemTime::now());
    let with = |f: &dyn Fn(&mut FatOptions)| {
        let mut o = options();
        f(&mut o);
        o
    };
    let cases: Vec<(FatOptions, Vec<FatFile>, &str)> = vec![
        (with(&|o| o.label = "esp".into()), files.clone(), "label"),
        (with(&|o| o.size = 1000), files.clone(), "sectors"),
        (with(&|o| o.epoch = 0), files.clone(), "1980"),
        (
            options(),
            vec![FatFile::new("EFI/BOOT/x.efi", tmp.path())],
            "not a regular file",
        ),
        (
            options(),
            vec![
                FatFile::new("EFI/a.efi", &files[0].source),
                FatFile::new("efi/A.EFI", &files[0].source),
            ],
            "clash",
        ),
        (
            options(),
            vec![FatFile::new("EFI/BOOT/x.efi", tmp.path().join("missing"))],
            "missing",
        ),
    ];
    for (opts, files, needle) in cases {
        let err = esp::write_fat(&image, &opts, &files)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(err.contains("hint") || needle == "missing", "{err}");
        assert!(!image.exists());
    }
}

#[test]
fn too_many_files_fail_with_the_command_to_reproduce() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    std::fs::write(&big, vec![0x5a; 3 * MIB as usize]).unwrap();
    let opts = FatOptions {
        size: 2 * MIB,
        ..options()
    };
    let err = esp::write_fat(
        &tmp.path().join("x.img"),
        &opts,
        &[FatFile::new("BIG", &big)],
    )
    .unwrap_err();
    match &err {
        esp::EspError::ToolFailed { tool, command, .. } => {
            assert_eq!(*tool, "mcopy");
            assert!(
                command.contains("SOURCE_DATE_EPOCH=1700000000"),
                "{command}"
            );
            assert!(command.contains("::BIG"), "{command}");
        }
        other => panic!("expected ToolFailed, got {other:?}"),
    }
}
