//! Crafted release archives (issue 18, points 3 and 4), each through the real `plinth`
//! binary (`plinth diff` as an auditor runs it, often as root, and `plinth measure`) and
//! through `Release::extract_all`: a setuid member, a member larger than its partition, a
//! sparse member declaring a huge real size, a zstd bomb (declared or hidden after a small
//! member), member names that leave the directory. Each must be refused with a named error
//! and exit code 2, before anything beyond the bound is written, and leave nothing outside
//! plinth's own scratch directory (`TMPDIR` is the test's, and must be empty afterwards).
//!
//! Every release here passes `Release::open` (its manifest lists each file's sha256 and
//! size): a release whose files match its manifest is exactly what an attacker publishes.
//! The tar streams are written by hand, as an attacker would; the benign archives by the
//! real writer.

use crate::support;
use crate::support::Plinth;

use plinth::compare::release::Release;
use plinth::packages::cache::sha256_file;
use plinth::pipeline::artifacts::{self, TarEntry};
use plinth::pipeline::esp::{self, FatFile, FatOptions};
use plinth::pipeline::manifest::{self, OutputFile, PartitionImage};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const EPOCH: i64 = 1_700_000_000;
const BLOCK: usize = 512;
/// The partitions of every test release: (name, role, offset, size). The disk is 21 MiB.
const PARTITIONS: [(&str, &str, u64, u64); 3] = [
    ("esp", "esp", MIB, 8 * MIB),
    ("root-a", "root", 9 * MIB, 10 * MIB),
    ("verity-a", "verity", 19 * MIB, MIB),
];
const DISK_SIZE: u64 = 21 * MIB;
/// The UKI member of slot A.
const UKI: &str = "guest-os-a.efi";

// ---- crafted tar streams -------------------------------------------------------------

use plinth::pipeline::artifacts::put_num;

/// A GNU tar header: `name`, `mode`, `size` (stored bytes), type `typeflag`; `sparse` puts
/// a real size and up to 4 map entries in it.
fn header(
    name: &str,
    mode: u64,
    size: u64,
    typeflag: u8,
    sparse: Option<(u64, &[(u64, u64)])>,
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_num(&mut h[100..108], mode);
    put_num(&mut h[108..116], 0);
    put_num(&mut h[116..124], 0);
    put_num(&mut h[124..136], size);
    put_num(&mut h[136..148], EPOCH as u64);
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar  \0");
    if let Some((real, map)) = sparse {
        for (i, &(offset, len)) in map.iter().enumerate() {
            put_num(&mut h[386 + 24 * i..398 + 24 * i], offset);
            put_num(&mut h[398 + 24 * i..410 + 24 * i], len);
        }
        put_num(&mut h[483..495], real);
    }
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    put_num(&mut h[148..155], sum);
    h
}

/// A plain member: header, data, padding.
fn member(tar: &mut Vec<u8>, name: &str, mode: u64, data: &[u8]) {
    tar.extend_from_slice(&header(name, mode, data.len() as u64, b'0', None));
    tar.extend_from_slice(data);
    tar.resize(tar.len().div_ceil(BLOCK) * BLOCK, 0);
}

/// The end-of-archive marker and padding to a 10 KiB record.
fn end(tar: &mut Vec<u8>) {
    tar.resize(tar.len() + 2 * BLOCK, 0);
    tar.resize(tar.len().div_ceil(20 * BLOCK) * 20 * BLOCK, 0);
}

fn zst(path: &Path, tar: &[u8]) {
    std::fs::write(path, zstd::encode_all(tar, 3).unwrap()).unwrap();
}

/// A small update archive's members other than `except`, as the real writer has them.
fn update_members(tar: &mut Vec<u8>, except: &str) {
    for (name, fill) in [(UKI, 0x4d), ("root.img", 0x11), ("verity.img", 0x22)] {
        if name != except {
            member(tar, name, 0o644, &vec![fill; 4096]);
        }
    }
}

// ---- releases --------------------------------------------------------------------------

/// The benign disk image: a FAT ESP holding the boot loader at 1 MiB, 21 MiB in all.
fn disk_image(dir: &Path) -> PathBuf {
    let loader = dir.join("loader.efi");
    std::fs::write(&loader, b"MZ not really a loader\n").unwrap();
    let fat = dir.join("esp.img");
    esp::write_fat(
        &fat,
        &FatOptions {
            size: 8 * MIB,
            volume_id: 0x1234_5678,
            label: "ESP".into(),
            epoch: EPOCH,
        },
        &[FatFile::new(
            plinth::pipeline::measure::LOADER_PATH,
            &loader,
        )],
    )
    .unwrap();
    let disk = dir.join("disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(DISK_SIZE).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&std::fs::read(&fat).unwrap(), MIB).unwrap();
    f.write_all_at(&[0x11; 4096], 9 * MIB).unwrap();
    disk
}

/// A release in `dir/release` whose disk and update archives are `disk` and `update`
/// (written by the caller into `dir`), with a manifest listing them.
fn release(dir: &Path, disk: &Path, update: &Path) -> PathBuf {
    let rel = dir.join("release");
    std::fs::create_dir_all(&rel).unwrap();
    std::fs::copy(disk, rel.join("disk-img.tar.zst")).unwrap();
    std::fs::copy(update, rel.join("update-img.tar.zst")).unwrap();
    std::fs::write(
        rel.join("sbom.spdx.json"),
        r#"{"spdxVersion": "SPDX-2.3", "packages": [{"SPDXID": "SPDXRef-Package-bash", "name": "bash", "versionInfo": "5.2"}]}"#,
    )
    .unwrap();
    let mut outputs = Vec::new();
    for name in ["disk-img.tar.zst", "sbom.spdx.json", "update-img.tar.zst"] {
        let (sha256, size) = sha256_file(&rel.join(name)).unwrap();
        outputs.push(OutputFile {
            name: name.parse().unwrap(),
            sha256,
            size,
        });
    }
    let h = support::hex;
    let partitions = PARTITIONS
        .iter()
        .enumerate()
        .map(|(i, &(name, role, offset, size))| PartitionImage {
            number: i as u32 + 1,
            name: name.parse().unwrap(),
            role: serde_json::from_value(serde_json::json!(role)).unwrap(),
            slot: (role != "esp").then_some(plinth_release::Slot::A),
            offset,
            size,
            blocks_sha256: h('e').parse().unwrap(),
        })
        .collect();
    let m = support::sample_manifest(
        "guest-os",
        outputs,
        partitions,
        support::slot(Some("A"), None, h('c')),
    );
    m.write(&rel.join(manifest::FILE_NAME)).unwrap();
    Release::open(&rel).expect("the test release opens");
    rel
}

/// A test's two releases: `benign` (real writer) and `crafted` (its `disk` or `update`
/// archive replaced by the given one), plus a `TMPDIR` for plinth.
struct Case {
    _dir: tempfile::TempDir,
    benign: PathBuf,
    crafted: PathBuf,
    tmp: PathBuf,
    root: PathBuf,
}

enum Crafted {
    Disk(Vec<u8>),
    Update(Vec<u8>),
    /// An update archive already compressed (a zstd bomb is written streaming).
    UpdateFile(PathBuf),
}

fn case(crafted: Crafted) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let disk = disk_image(&work);
    let disk_zst = work.join("disk-img.tar.zst");
    artifacts::write_tar_zst(&disk_zst, &[TarEntry::new("disk.img", &disk)], EPOCH).unwrap();
    let mut update = Vec::new();
    update_members(&mut update, "");
    end(&mut update);
    let update_zst = work.join("update-img.tar.zst");
    zst(&update_zst, &update);
    let benign = release(&root.join("a"), &disk_zst, &update_zst);
    let (crafted_disk, crafted_update) = match crafted {
        Crafted::Disk(tar) => {
            let path = work.join("crafted-disk.tar.zst");
            zst(&path, &tar);
            (path, update_zst.clone())
        }
        Crafted::Update(tar) => {
            let path = work.join("crafted-update.tar.zst");
            zst(&path, &tar);
            (disk_zst.clone(), path)
        }
        Crafted::UpdateFile(path) => (disk_zst.clone(), path),
    };
    let crafted = release(&root.join("b"), &crafted_disk, &crafted_update);
    std::fs::remove_dir_all(&work).unwrap();
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    Case {
        _dir: dir,
        benign,
        crafted,
        tmp,
        root,
    }
}

/// Every path below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

impl Case {
    /// Run `plinth args` with TMPDIR in the case; check that nothing outside plinth's
    /// scratch directory changed (the releases as made, TMPDIR empty again).
    fn plinth(&self, args: &[&str]) -> Output {
        let before = tree(&self.root);
        let out = Plinth::new().args(args).within(&self.tmp).output();
        assert_eq!(
            tree(&self.root),
            before,
            "plinth {args:?} left files behind\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(tree(&self.tmp), Vec::<String>::new());
        out
    }

    fn diff(&self) -> Output {
        let (a, b) = (
            self.benign.to_str().unwrap(),
            self.crafted.to_str().unwrap(),
        );
        self.plinth(&["diff", a, b])
    }

    fn measure(&self) -> Output {
        self.plinth(&["measure", self.crafted.to_str().unwrap()])
    }

    /// `Release::extract_all` of the crafted release's `archive` into a fresh directory:
    /// the error, and what was unpacked (path → size).
    fn extract(&self, archive: &str) -> (String, Vec<(String, u64)>) {
        let dest = self.root.join("extract");
        let release = Release::open(&self.crafted).unwrap();
        let err = release
            .extract_all(archive, &dest)
            .expect_err("a crafted archive unpacks");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{} is {mode:04o}", dest.display());
        let mut unpacked = Vec::new();
        for name in tree(&dest) {
            let meta = std::fs::metadata(dest.join(&name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o7777, 0o644, "{name}");
            unpacked.push((name, meta.len()));
        }
        std::fs::remove_dir_all(&dest).unwrap();
        (err.to_string(), unpacked)
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

// ---- the attacks -----------------------------------------------------------------------

/// A setuid-root executable member: in a 0755 scratch directory with its mode kept, any
/// local user could run it with euid 0 while root's `plinth diff` ran.
#[test]
fn setuid_member_is_refused() {
    let mut tar = Vec::new();
    member(&mut tar, UKI, 0o644, &[0x4d; 4096]);
    member(&mut tar, "root.img", 0o4755, b"#!/bin/sh\nid\n");
    member(&mut tar, "verity.img", 0o644, &[0x22; 4096]);
    end(&mut tar);
    let c = case(Crafted::Update(tar));
    let want = [
        "update-img.tar.zst",
        "member `root.img` has mode 4755",
        "setuid",
    ];
    refused(&c.diff(), &want);
    let (err, unpacked) = c.extract("update-img.tar.zst");
    assert!(err.contains(want[1]), "{err}");
    // What came before it is there, 0644 (checked by `extract`); root.img is not.
    assert_eq!(unpacked, [(UKI.to_string(), 4096)]);
    // The benign release unpacks into a private directory, every member 0644.
    let dest = c.root.join("benign");
    let names = Release::open(&c.benign)
        .unwrap()
        .extract_all("update-img.tar.zst", &dest)
        .unwrap();
    assert_eq!(names, [UKI, "root.img", "verity.img"]);
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    for n in &names {
        let mode = std::fs::metadata(dest.join(n))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o644, "{n}");
    }
}

/// A root image declared larger than the root partition (10 MiB) plus the slack (1 MiB),
/// and a UKI larger than the ESP (8 MiB) for `plinth measure`, which reads UKIs into memory.
#[test]
fn member_larger_than_its_partition_is_refused() {
    let mut tar = Vec::new();
    member(&mut tar, UKI, 0o644, &vec![0x4d; (9 * MIB) as usize]);
    member(
        &mut tar,
        "root.img",
        0o644,
        &vec![0x11; (12 * MIB) as usize],
    );
    member(&mut tar, "verity.img", 0o644, &[0x22; 4096]);
    end(&mut tar);
    let c = case(Crafted::Update(tar));
    let limit = (11 * MIB).to_string();
    let declared = (12 * MIB).to_string();
    refused(
        &c.diff(),
        &[
            "update-img.tar.zst",
            "member `root.img` declares a size of",
            &declared,
            &format!("at most {limit} are allowed"),
            "the root partition `root-a`",
            "fetch it again",
        ],
    );
    let (err, unpacked) = c.extract("update-img.tar.zst");
    assert!(
        err.contains("member `root.img` declares a size of"),
        "{err}"
    );
    assert!(
        !unpacked.iter().any(|(n, _)| n == "root.img"),
        "{unpacked:?}"
    );
    // measure: the UKI must fit on the ESP, with no slack.
    refused(
        &c.measure(),
        &[
            "update-img.tar.zst",
            &format!("member `{UKI}` declares a size of {} bytes", 9 * MIB),
            &format!("at most {} are allowed", 8 * MIB),
            "a UKI must fit on it",
        ],
    );
}

/// A sparse disk image of 4 KiB of data declaring a real size of 8 TiB: unpacked, its
/// holes would make every later read of the disk (hashing, copying) run for hours.
#[test]
fn sparse_member_with_a_huge_real_size_is_refused() {
    let real = 8u64 << 40;
    let mut tar = Vec::new();
    let map = [(MIB, 4096), (real, 0)];
    tar.extend_from_slice(&header("disk.img", 0o644, 4096, b'S', Some((real, &map))));
    tar.extend_from_slice(&[0x5a; 4096]);
    end(&mut tar);
    let c = case(Crafted::Disk(tar));
    let want = [
        "disk-img.tar.zst".to_string(),
        format!("member `disk.img` declares a size of {real} bytes"),
        "the disk's partitions and backup GPT end at byte".into(),
        "fetch it again".into(),
    ];
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    refused(&c.diff(), &want);
    refused(&c.measure(), &want);
    let (err, unpacked) = c.extract("disk-img.tar.zst");
    assert!(err.contains(want[1]), "{err}");
    assert_eq!(unpacked, []);
}

/// zstd bombs: a 1 GiB root image of zeros (tens of KiB compressed) declared as such, and
/// a small member followed by 256 MiB of zeros that a reader trusting the end marker would
/// decompress without bound (and a tar reader without the check would take for members).
#[test]
fn zstd_bomb_is_refused_before_writing_past_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.tar.zst");
    let mut enc = zstd::Encoder::new(std::fs::File::create(&bomb).unwrap(), 3).unwrap();
    let mut head = Vec::new();
    member(&mut head, UKI, 0o644, &[0x4d; 4096]);
    head.extend_from_slice(&header("root.img", 0o644, GIB, b'0', None));
    enc.write_all(&head).unwrap();
    let zeros = vec![0u8; MIB as usize];
    for _ in 0..1024 + 1 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap();
    assert!(std::fs::metadata(&bomb).unwrap().len() < MIB);
    let c = case(Crafted::UpdateFile(bomb));
    refused(
        &c.diff(),
        &[
            "update-img.tar.zst",
            &format!("member `root.img` declares a size of {GIB} bytes"),
            &format!("at most {} are allowed", 11 * MIB),
        ],
    );
    let (err, unpacked) = c.extract("update-img.tar.zst");
    assert!(err.contains("declares a size of"), "{err}");
    assert_eq!(unpacked, [(UKI.to_string(), 4096)]);

    // Hidden: a header that says 512 bytes, then 256 MiB of zeros after the member.
    let mut tar = Vec::new();
    member(&mut tar, UKI, 0o644, &[0x4d; 512]);
    tar.resize(256 * MIB as usize, 0);
    let c = case(Crafted::Update(tar));
    refused(
        &c.diff(),
        &[
            "update-img.tar.zst",
            "bytes follow the end-of-archive marker",
        ],
    );
    let (err, unpacked) = c.extract("update-img.tar.zst");
    assert!(err.contains("follow the end-of-archive marker"), "{err}");
    assert_eq!(unpacked, [(UKI.to_string(), 512)]);
}

/// Member names that leave the directory: `../x` and an absolute path.
#[test]
fn member_names_leaving_the_directory_are_refused() {
    for name in ["../x", "/tmp/plinth-hostile-x", "a/../../x"] {
        let mut tar = Vec::new();
        member(&mut tar, name, 0o644, b"owned\n");
        update_members(&mut tar, "");
        end(&mut tar);
        let c = case(Crafted::Update(tar));
        let want = format!("member `{name}`: its name has an empty, `.` or `..` component");
        refused(
            &c.diff(),
            &["update-img.tar.zst", &want, "corrupt or crafted"],
        );
        let (err, unpacked) = c.extract("update-img.tar.zst");
        assert!(err.contains(&want), "{err}");
        assert_eq!(unpacked, []);
        assert!(!Path::new("/tmp/plinth-hostile-x").exists());
        assert!(!c.root.join("x").exists());
    }
}

/// Writes the fuzz seeds of release/fuzz/seeds (see its README):
/// `PLINTH_FUZZ_SEEDS=$PWD/release/fuzz/seeds cargo test -p plinth-builder --test integration -- --ignored hostile_archive::write_fuzz_seeds`
#[test]
#[ignore = "writes release/fuzz/seeds when PLINTH_FUZZ_SEEDS is set"]
fn write_fuzz_seeds() {
    let Some(out) = std::env::var_os("PLINTH_FUZZ_SEEDS") else {
        return;
    };
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A small sparse image and a plain file, archived by the real writer.
    let img = dir.path().join("disk.img");
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(64 * 1024).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0x5a; 1000], 4096).unwrap();
    f.write_all_at(b"tail", 60 * 1024).unwrap();
    std::fs::write(dir.path().join("root.img"), b"root image\n").unwrap();
    let archive = dir.path().join("a.tar.zst");
    artifacts::write_tar_zst(
        &archive,
        &[
            TarEntry::new("disk.img", &img),
            TarEntry::new("root.img", dir.path().join("root.img")),
        ],
        EPOCH,
    )
    .unwrap();
    let compressed = std::fs::read(&archive).unwrap();
    let stream = zstd::decode_all(&compressed[..]).unwrap();
    // The first byte picks the reader (see fuzz_targets/release_reader.rs).
    let seed = |name: &str, mode: u8, bytes: &[u8]| {
        let mut data = vec![mode];
        data.extend_from_slice(bytes);
        std::fs::write(out.join(name), data).unwrap();
    };
    seed("archive-zst", 1, &compressed);
    seed("archive-tar", 2, &stream);
    let c = case(Crafted::Update({
        let mut tar = Vec::new();
        update_members(&mut tar, "");
        end(&mut tar);
        tar
    }));
    let manifest = std::fs::read(c.crafted.join(manifest::FILE_NAME)).unwrap();
    seed("manifest", 0, &manifest);
}
