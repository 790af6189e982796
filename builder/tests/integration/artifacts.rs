//! Release artifacts: `.tar.zst` archives (sparse, deterministic, byte-equal to GNU tar's own
//! output for the same members, restored sparse by plinth and by GNU tar), `SHA256SUMS` (also
//! checked by `sha256sum -c`), the SBOM (fields, DEP-5 license mapping, determinism, SPDX 2.3
//! structure, and `pyspdxtools` when it is installed) and `manifest.json`.
//! Offline; needs GNU tar and coreutils only.

use plinth::packages::cache::sha256_file;
use plinth::packages::lockfile::LockedPackage;
use plinth::pipeline::artifacts::{
    self, ArtifactError, Compression, SumFailure, TarEntry, SHA256SUMS,
};
use plinth::pipeline::manifest::{
    self, Inputs, Manifest, ManifestError, Measurements, OutputFile, PartitionImage,
    SlotMeasurements,
};
use plinth::pipeline::sbom::{self, SbomInput};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const EPOCH: i64 = 1_700_000_000;
/// Set in the child process of `archives_do_not_depend_on_the_environment`.
const CHILD_ENV: &str = "PLINTH_TEST_ARTIFACTS_CHILD";

/// Deterministic bytes that contain no zero 512-byte block.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// A sparse file of `size` bytes with `regions` (offset, length) of [`pattern`] data.
fn sparse_file(path: &Path, size: u64, regions: &[(u64, usize)]) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(offset, len)) in regions.iter().enumerate() {
        f.write_all_at(&pattern(len, i as u64 + 1), offset).unwrap();
    }
}

/// The data of the 1 GiB test disk: a few MiB, the last region ending 1000 bytes before the
/// end so that the file ends in a hole.
const DISK_REGIONS: &[(u64, usize)] = &[
    (MIB, 3 * MIB as usize),
    (512 * MIB, MIB as usize),
    (GIB - 8192, 7192),
];

/// The 1 GiB disk and a small file in `dir`; `allocate_zeros` writes explicit zeros over the
/// first 8 MiB (same bytes, other allocation).
fn disk_sources(dir: &Path, allocate_zeros: bool) -> Vec<TarEntry> {
    std::fs::create_dir_all(dir).unwrap();
    let disk = dir.join("disk.img");
    sparse_file(&disk, GIB, &[]);
    if allocate_zeros {
        File::options()
            .write(true)
            .open(&disk)
            .unwrap()
            .write_all_at(&vec![0; 8 * MIB as usize], 0)
            .unwrap();
    }
    let f = File::options().write(true).open(&disk).unwrap();
    for (i, &(offset, len)) in DISK_REGIONS.iter().enumerate() {
        f.write_all_at(&pattern(len, i as u64 + 1), offset).unwrap();
    }
    let notes = dir.join("notes.txt");
    std::fs::write(&notes, "hello\n").unwrap();
    // Given out of order: the archive sorts.
    vec![
        TarEntry::new("notes.txt", notes),
        TarEntry::new("disk.img", disk),
    ]
}

/// The decompressed tar stream of a `.tar.zst`.
fn untar_zst(archive: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::Decoder::new(File::open(archive).unwrap())
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn archives_do_not_depend_on_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let entries = disk_sources(&tmp.path().join("a"), false);
    let first = tmp.path().join("first.tar.zst");
    let written = artifacts::write_tar_zst(&first, &entries, EPOCH).unwrap();
    assert_eq!(written.name, "first.tar.zst");
    assert_eq!(sha256_file(&first).unwrap(), (written.sha256, written.size));
    assert!(written.size < 8 * MIB, "{} bytes: not sparse", written.size);
    assert!(!tmp.path().join(".first.tar.zst.partial").exists());

    // Again in a child process: other source directory (same bytes, other allocation and
    // mtimes), working directory, umask, TZ, LANG, and later.
    let b = tmp.path().join("b");
    disk_sources(&b, true);
    for name in ["disk.img", "notes.txt"] {
        let f = File::options().write(true).open(b.join(name)).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = tmp.path().join("second.tar.zst");
    let cwd = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    run(Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec \"$@\"")
        .arg("sh")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "artifacts::child_writes_an_archive",
            "--ignored",
            "--nocapture",
        ])
        .current_dir(&cwd)
        .env(CHILD_ENV, format!("{}\n{}", b.display(), second.display()))
        .env("TZ", "Pacific/Chatham")
        .env("LANG", "de_DE.UTF-8")
        .env("LC_ALL", "de_DE.UTF-8"));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap(),
        "two builds differ"
    );

    // The host's zstd, where installed, accepts the frame and its checksum.
    if Command::new("zstd").arg("--version").output().is_ok() {
        run(Command::new("zstd").arg("-qt").arg(&first));
    }

    // GNU tar reads it: names sorted, sizes, owner, mode, mtime.
    let tar = tmp.path().join("first.tar");
    std::fs::write(&tar, untar_zst(&first)).unwrap();
    let listing = run(Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvf"])
        .arg(&tar)
        .env("TZ", "UTC"));
    let lines: Vec<Vec<&str>> = listing
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        vec![
            vec![
                "-rw-r--r--",
                "0/0",
                "1073741824",
                "2023-11-14",
                "22:13:20",
                "disk.img"
            ],
            vec![
                "-rw-r--r--",
                "0/0",
                "6",
                "2023-11-14",
                "22:13:20",
                "notes.txt"
            ],
        ],
        "{listing}"
    );
    // Extracted by plinth and by GNU tar: the same bytes, sparse again, mtime and mode kept.
    let ours = tmp.path().join("ours");
    let names = artifacts::extract_tar_zst(&first, &ours).unwrap();
    assert_eq!(names, ["disk.img", "notes.txt"]);
    let gnu = tmp.path().join("gnu");
    std::fs::create_dir_all(&gnu).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&gnu));
    for dir in [&ours, &gnu] {
        let disk = dir.join("disk.img");
        // cmp: a debug-build sha256 of 1 GiB takes many seconds.
        run(Command::new("cmp").arg(&entries[1].source).arg(&disk));
        assert!(
            allocated(&disk) < 16 * MIB,
            "{}: {} bytes allocated",
            disk.display(),
            allocated(&disk)
        );
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.mtime(), EPOCH);
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"hello\n");
    }
}

/// The second build of `archives_do_not_depend_on_the_environment`, in its own process.
#[test]
#[ignore = "run by archives_do_not_depend_on_the_environment in a child process"]
fn child_writes_an_archive() {
    let Ok(args) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (sources, out) = args.split_once('\n').unwrap();
    let sources = Path::new(sources);
    // Relative source paths from another working directory.
    std::env::set_current_dir(sources).unwrap();
    let entries = vec![
        TarEntry::new("disk.img", "disk.img"),
        TarEntry::new("notes.txt", "./notes.txt"),
    ];
    artifacts::write_tar_zst(Path::new(out), &entries, EPOCH).unwrap();
}

#[test]
fn tar_stream_equals_gnu_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 30 data runs (the map spills into two extension blocks), one of them with a zero
    // 512-byte block inside a written 4 KiB block, and an unaligned tail at the end.
    let mut regions: Vec<(u64, usize)> = (0..30).map(|i| (i * MIB + 4096, 8192)).collect();
    regions.push((64 * MIB, 1000));
    sparse_file(&src.join("many.img"), 64 * MIB + 1000, &regions);
    File::options()
        .write(true)
        .open(src.join("many.img"))
        .unwrap()
        .write_all_at(&[0; 512], 5 * MIB + 4096 + 1024)
        .unwrap();
    sparse_file(&src.join("empty-sparse.img"), 4 * MIB, &[]);
    std::fs::write(src.join("empty"), b"").unwrap();
    std::fs::write(src.join("small.txt"), pattern(700, 3)).unwrap();
    let names = ["empty", "empty-sparse.img", "many.img", "small.txt"];
    let entries: Vec<TarEntry> = names
        .iter()
        .rev()
        .map(|n| TarEntry::new(*n, src.join(n)))
        .collect();
    let ours = tmp.path().join("ours.tar.zst");
    artifacts::write_tar_zst(&ours, &entries, EPOCH).unwrap();
    let gnu = tmp.path().join("gnu.tar");
    run(Command::new("tar")
        .args([
            "--format=gnu",
            "--sparse",
            "--hole-detection=raw",
            "--sort=name",
            "--mtime=@1700000000",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "--mode=0644",
            "-cf",
        ])
        .arg(&gnu)
        .arg("-C")
        .arg(&src)
        .args(names));
    let stream = untar_zst(&ours);
    let gnu = std::fs::read(&gnu).unwrap();
    assert_eq!(stream.len(), gnu.len());
    let first_difference = stream.iter().zip(&gnu).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "the tar streams differ");

    // The long sparse map (extension blocks) reads back through plinth's extraction too.
    let dest = tmp.path().join("dest");
    assert_eq!(artifacts::extract_tar_zst(&ours, &dest).unwrap(), names);
    for name in names {
        run(Command::new("cmp").arg(src.join(name)).arg(dest.join(name)));
    }
    assert!(allocated(&dest.join("many.img")) < 2 * MIB);
}

#[test]
fn sizes_past_8_gib_use_base256_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let size = 9 * GIB + 512;
    let regions = [(4096, 4096), (8 * GIB + 4096, 4096)];
    let big = tmp.path().join("big.img");
    sparse_file(&big, size, &regions);
    let archive = tmp.path().join("big.tar.zst");
    let written = artifacts::write_tar_zst(&archive, &[TarEntry::new("big.img", &big)], 0).unwrap();
    assert!(written.size < MIB);
    let tar = tmp.path().join("big.tar");
    std::fs::write(&tar, untar_zst(&archive)).unwrap();
    let listing = run(Command::new("tar")
        .args(["--numeric-owner", "-tvf"])
        .arg(&tar));
    assert!(listing.contains(&format!(" {size} ")), "{listing}");
    let gnu = tmp.path().join("gnu");
    std::fs::create_dir_all(&gnu).unwrap();
    run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&gnu));
    let ours = tmp.path().join("ours");
    artifacts::extract_tar_zst(&archive, &ours).unwrap();
    for dir in [&gnu, &ours] {
        let out = dir.join("big.img");
        assert_eq!(std::fs::metadata(&out).unwrap().len(), size);
        assert!(allocated(&out) < 4 * MIB);
        for (i, &(offset, len)) in regions.iter().enumerate() {
            let mut buf = vec![0; len];
            File::open(&out)
                .unwrap()
                .read_exact_at(&mut buf, offset)
                .unwrap();
            assert_eq!(
                buf,
                pattern(len, i as u64 + 1),
                "{} at {offset}",
                out.display()
            );
        }
    }
    assert_eq!(
        artifacts::sha256_range(&big, 8 * GIB, 2 * MIB).unwrap(),
        artifacts::sha256_range(&gnu.join("big.img"), 8 * GIB, 2 * MIB).unwrap()
    );
}

#[test]
fn bad_members_are_refused_without_leaving_files() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let out = tmp.path().join("out.tar.zst");
    let write = |entries: &[TarEntry], epoch| artifacts::write_tar_zst(&out, entries, epoch);
    let err = write(&[TarEntry::new("a", &file), TarEntry::new("a", &file)], 0).unwrap_err();
    assert!(matches!(err, ArtifactError::DuplicateName { .. }), "{err}");
    for name in ["../x", "/abs", "a b", ""] {
        let err = write(&[TarEntry::new(name, &file)], 0).unwrap_err();
        assert!(
            matches!(err, ArtifactError::BadName { .. }),
            "{name}: {err}"
        );
    }
    let err = write(&[TarEntry::new("d", tmp.path())], 0).unwrap_err();
    assert!(matches!(err, ArtifactError::NotAFile { .. }), "{err}");
    let err = write(&[TarEntry::new("m", tmp.path().join("missing"))], 0).unwrap_err();
    assert!(err.to_string().contains("missing: cannot open"), "{err}");
    let err = write(&[TarEntry::new("f", &file)], -1).unwrap_err();
    assert!(
        matches!(err, ArtifactError::BadEpoch { epoch: -1 }),
        "{err}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["f"]);
}

#[test]
fn workers_do_not_change_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("data.img");
    let mut data = pattern(3 * MIB as usize, 7);
    data.extend(std::iter::repeat_n(b'a', 2 * MIB as usize));
    std::fs::write(&src, &data).unwrap();
    let entries = [TarEntry::new("data.img", &src)];
    let mut digests = BTreeSet::new();
    for workers in [1, 2, 3] {
        let out = tmp.path().join(format!("w{workers}.tar.zst"));
        let c = Compression {
            workers,
            ..Compression::RELEASE
        };
        digests.insert(
            artifacts::write_tar_zst_with(&out, &entries, EPOCH, c, &Default::default())
                .unwrap()
                .file
                .sha256,
        );
    }
    assert_eq!(digests.len(), 1, "{digests:?}");
}

#[test]
fn sha256sums_round_trip_and_report_every_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("b.img"), b"bee").unwrap();
    std::fs::write(dir.join("a.json"), b"{}\n").unwrap();
    std::fs::write(dir.join("c"), b"sea").unwrap();
    let text = artifacts::sha256sums(dir, &["c", "b.img", "a.json"]).unwrap();
    let names: Vec<&str> = text.lines().map(|l| &l[66..]).collect();
    assert_eq!(names, ["a.json", "b.img", "c"]);
    assert!(
        text.lines().all(|l| l.len() > 66 && &l[64..66] == "  "),
        "{text}"
    );
    std::fs::write(dir.join(SHA256SUMS), &text).unwrap();
    run(Command::new("sha256sum")
        .args(["--strict", "-c", SHA256SUMS])
        .current_dir(dir));
    let sums = artifacts::read_sha256sums(&dir.join(SHA256SUMS)).unwrap();
    assert_eq!(sums.len(), 3);
    artifacts::check(dir, &sums).unwrap();

    std::fs::write(dir.join("b.img"), b"wasp").unwrap();
    std::fs::remove_file(dir.join("c")).unwrap();
    let err = artifacts::check(dir, &sums).unwrap_err();
    let ArtifactError::Mismatch {
        failures, checked, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*checked, 3);
    assert!(matches!(&failures[0], SumFailure::Different { name, .. } if name == "b.img"));
    assert_eq!(failures[1], SumFailure::Missing { name: "c".into() });
    let text = err.to_string();
    assert!(
        text.contains("2 of 3 files do not match") && text.contains("c: missing"),
        "{text}"
    );
}

fn deb(name: &str, version: &str, arch: &str, seed: u8) -> LockedPackage {
    LockedPackage {
        name: name.into(),
        version: version.into(),
        architecture: arch.into(),
        suite: "bookworm".into(),
        filename: format!("pool/main/x/{name}/{name}_{version}_{arch}.deb"),
        size: 1000 + u64::from(seed),
        sha256: format!("{seed:02x}").repeat(32).parse().unwrap(),
    }
}

/// An image root with DEP-5, free-form, symlinked and missing copyright files.
fn fake_root(root: &Path) {
    let doc = root.join("usr/share/doc");
    for d in ["bash", "libfoo-common", "zlib1g"] {
        std::fs::create_dir_all(doc.join(d)).unwrap();
    }
    std::fs::write(
        doc.join("bash/copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: bash\n\n\
         Files: *\nCopyright: 1987-2022 Free Software Foundation, Inc.\nLicense: GPL-3+\n\n\
         Files: debian/*\nCopyright: 2023 Someone\nLicense: GPL-3+\n\n\
         License: GPL-3+\n This program is free software ...\n .\n On Debian systems ...\n\n\
         License: Unused-Standalone\n Text that no Files paragraph names.\n",
    )
    .unwrap();
    std::fs::write(
        doc.join("libfoo-common/copyright"),
        "Format: http://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
         Files: *\nCopyright: 2001 A\nLicense: LGPL-2.1+\n\n\
         Files: src/bsd/*\nCopyright: 2002 B\nLicense: BSD-3-clause or Expat\n\n\
         Files: src/pd.c\nCopyright: none\nLicense: public-domain\n The author disclaims copyright.\n\n\
         Files: build/*\nCopyright: 1984 C\nLicense: GPL-3+ with Bison exception\n",
    )
    .unwrap();
    std::fs::write(
        doc.join("zlib1g/copyright"),
        "This is the Debian prepackaged version of zlib.\n\nCopyright (C) 1995-2022 Jean-loup Gailly and Mark Adler\n",
    )
    .unwrap();
    // Relative link to another doc directory, and an absolute one that must stay in the root.
    std::os::unix::fs::symlink("libfoo-common", doc.join("libfoo1")).unwrap();
    std::os::unix::fs::symlink("/usr/share/doc/bash", doc.join("bash-builtins")).unwrap();
    std::os::unix::fs::symlink("/etc", doc.join("escape")).unwrap();
}

fn sbom_input<'a>(packages: &'a [&'a LockedPackage], root: Option<&'a Path>) -> SbomInput<'a> {
    SbomInput {
        os: "guest-os",
        version: "1.2.3",
        profile: "test",
        source_date_epoch: EPOCH,
        lock_sha256: "ab",
        release: "bookworm",
        packages,
        root,
    }
}

#[test]
fn sbom_states_packages_licenses_and_relationships() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fake_root(&root);
    let debs = [
        deb("zlib1g", "1:1.2.13.dfsg-1", "amd64", 1),
        deb("bash", "5.2.15-2+b7", "amd64", 2),
        deb("libfoo1", "2.0~rc1-3", "amd64", 3),
        deb("bash-builtins", "5.2.15-2+b7", "amd64", 4),
        deb("escape", "1", "all", 5),
        deb("nodoc", "1", "amd64", 6),
    ];
    let refs: Vec<&LockedPackage> = debs.iter().collect();
    let doc = sbom::sbom(&sbom_input(&refs, Some(&root))).unwrap();
    let bytes = sbom::to_bytes(&doc);
    let mut reversed = refs.clone();
    reversed.reverse();
    assert_eq!(
        sbom::to_bytes(&sbom::sbom(&sbom_input(&reversed, Some(&root))).unwrap()),
        bytes,
        "package order changed the SBOM"
    );
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["spdxVersion"], "SPDX-2.3");
    assert_eq!(json["dataLicense"], "CC0-1.0");
    assert_eq!(json["SPDXID"], "SPDXRef-DOCUMENT");
    assert_eq!(json["name"], "guest-os-1.2.3-test");
    assert_eq!(
        json["documentNamespace"],
        "https://spdx.org/spdxdocs/plinth/guest-os/1.2.3/test-ab"
    );
    assert_eq!(json["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        json["creationInfo"]["creators"][0],
        format!("Tool: plinth-{}", env!("CARGO_PKG_VERSION"))
    );

    let packages = json["packages"].as_array().unwrap();
    assert_eq!(packages.len(), 7);
    assert_eq!(packages[0]["SPDXID"], "SPDXRef-Image");
    assert_eq!(packages[0]["primaryPackagePurpose"], "OPERATING-SYSTEM");
    let names: Vec<&str> = packages[1..]
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "bash",
            "bash-builtins",
            "escape",
            "libfoo1",
            "nodoc",
            "zlib1g"
        ]
    );
    let by_name = |n: &str| packages.iter().find(|p| p["name"] == n).unwrap();
    let bash = by_name("bash");
    assert_eq!(bash["SPDXID"], "SPDXRef-Package-deb-bash-5.2.15-2-b7-amd64");
    assert_eq!(bash["versionInfo"], "5.2.15-2+b7");
    assert_eq!(bash["packageFileName"], "bash_5.2.15-2+b7_amd64.deb");
    assert_eq!(bash["downloadLocation"], "NOASSERTION");
    assert_eq!(bash["filesAnalyzed"], false);
    assert_eq!(bash["checksums"][0]["algorithm"], "SHA256");
    assert_eq!(bash["checksums"][0]["checksumValue"], "02".repeat(32));
    assert_eq!(bash["licenseDeclared"], "GPL-3.0-or-later");
    assert_eq!(
        by_name("zlib1g")["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-1?arch=amd64&distro=debian-12"
    );
    assert_eq!(
        by_name("bash-builtins")["licenseDeclared"],
        "GPL-3.0-or-later"
    );
    assert_eq!(
        by_name("libfoo1")["licenseDeclared"],
        "(BSD-3-Clause OR MIT) AND GPL-3.0-or-later WITH Bison-exception-2.2 AND LGPL-2.1-or-later \
         AND LicenseRef-public-domain"
    );
    for free_form_or_missing in ["zlib1g", "escape", "nodoc"] {
        assert_eq!(
            by_name(free_form_or_missing)["licenseDeclared"],
            "NOASSERTION"
        );
    }
    let extracted = json["hasExtractedLicensingInfos"].as_array().unwrap();
    assert_eq!(extracted.len(), 1);
    assert_eq!(extracted[0]["licenseId"], "LicenseRef-public-domain");

    let relationships = json["relationships"].as_array().unwrap();
    assert_eq!(relationships.len(), 7);
    assert_eq!(relationships[0]["relationshipType"], "DESCRIBES");
    assert!(relationships[1..]
        .iter()
        .all(|r| r["relationshipType"] == "CONTAINS" && r["spdxElementId"] == "SPDXRef-Image"));

    check_spdx_structure(&json);
    let no_root = sbom::sbom(&sbom_input(&refs, None)).unwrap();
    assert!(no_root
        .packages
        .iter()
        .all(|p| p.license_declared == "NOASSERTION"));

    // The official validator, when installed (`pip install spdx-tools`).
    let file = tmp.path().join(sbom::FILE_NAME);
    sbom::write_sbom(&sbom_input(&refs, Some(&root)), &file).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    match Command::new("pyspdxtools").arg("-i").arg(&file).output() {
        Ok(out) => assert!(
            out.status.success(),
            "pyspdxtools: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!("pyspdxtools not installed: SPDX validator skipped"),
    }
}

/// The SPDX 2.3 rules for what plinth writes: required fields present, ids well formed and
/// unique, every relationship and LicenseRef resolves.
fn check_spdx_structure(json: &serde_json::Value) {
    for field in [
        "spdxVersion",
        "dataLicense",
        "SPDXID",
        "name",
        "documentNamespace",
    ] {
        assert!(json[field].is_string(), "document field {field}");
    }
    assert!(!json["documentNamespace"].as_str().unwrap().contains('#'));
    assert!(json["creationInfo"]["created"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(!json["creationInfo"]["creators"]
        .as_array()
        .unwrap()
        .is_empty());
    let id_ok = |id: &str| {
        id.strip_prefix("SPDXRef-").is_some_and(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        })
    };
    let mut ids = BTreeSet::from(["SPDXRef-DOCUMENT".to_string()]);
    let mut used_refs = BTreeSet::new();
    for p in json["packages"].as_array().unwrap() {
        for field in ["SPDXID", "name", "downloadLocation"] {
            assert!(p[field].is_string(), "package field {field}: {p}");
        }
        let id = p["SPDXID"].as_str().unwrap();
        assert!(id_ok(id), "{id}");
        assert!(ids.insert(id.to_string()), "duplicate {id}");
        assert_eq!(
            p["filesAnalyzed"], false,
            "no files, so no verification code"
        );
        for token in p["licenseDeclared"]
            .as_str()
            .unwrap()
            .split([' ', '(', ')'])
        {
            if token.starts_with("LicenseRef-") {
                used_refs.insert(token.to_string());
            }
        }
    }
    let declared: BTreeSet<String> = json["hasExtractedLicensingInfos"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| l["licenseId"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(used_refs, declared);
    for r in json["relationships"].as_array().unwrap() {
        assert!(ids.contains(r["spdxElementId"].as_str().unwrap()), "{r}");
        assert!(
            ids.contains(r["relatedSpdxElement"].as_str().unwrap()),
            "{r}"
        );
    }
}

fn sample_manifest() -> Manifest {
    let h = |c: char| c.to_string().repeat(64).parse().unwrap();
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        os: plinth_release::Os::GuestOs,
        version: "1.2.3".parse().unwrap(),
        profile: "test".parse().unwrap(),
        inputs: Inputs {
            source_commit: "c".repeat(40).parse().unwrap(),
            source_dirty: false,
            source_date_epoch: EPOCH,
            lock_sha256: h('1'),
            os_spec_sha256: h('2'),
            builder_version: "0.1.0".into(),
            pcr_public_key: None,
            carried: Vec::new(),
        },
        // Unsorted on purpose: the file is sorted.
        outputs: vec![
            OutputFile {
                name: "update-img.tar.zst".parse().unwrap(),
                sha256: h('3'),
                size: 30,
            },
            OutputFile {
                name: "disk-img.tar.zst".parse().unwrap(),
                sha256: h('4'),
                size: 40,
            },
        ],
        partitions: vec![
            PartitionImage {
                number: 2,
                name: "root-a".parse().unwrap(),
                role: plinth_release::Role::Root,
                slot: Some(plinth_release::Slot::A),
                offset: 129 * MIB,
                size: GIB,
                blocks_sha256: h('5'),
            },
            PartitionImage {
                number: 1,
                name: "esp".parse().unwrap(),
                role: plinth_release::Role::Esp,
                slot: None,
                offset: MIB,
                size: 128 * MIB,
                blocks_sha256: h('6'),
            },
        ],
        measurements: Measurements {
            snp: Vec::new(),
            slots: vec![
                SlotMeasurements {
                    slot: Some(plinth_release::Slot::B),
                    verity_root_hash: h('7'),
                    uki_sha256: h('8'),
                    pcr4: Some(h('4')),
                    pcr7: Some(h('5')),
                    pcr11: h('9'),
                    pcr_signature: None,
                },
                SlotMeasurements {
                    slot: Some(plinth_release::Slot::A),
                    verity_root_hash: h('a'),
                    uki_sha256: h('b'),
                    pcr4: None,
                    pcr7: None,
                    pcr11: h('c'),
                    pcr_signature: None,
                },
            ],
        },
    }
}

#[test]
fn manifest_round_trips_sorted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(manifest::FILE_NAME);
    let m = sample_manifest();
    m.write(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.ends_with(b"}\n"));
    let back = Manifest::read(&path).unwrap();
    assert_eq!(back.outputs[0].name, "disk-img.tar.zst");
    assert_eq!(back.partitions[0].name, "esp");
    assert_eq!(back.measurements.slots[0].slot.as_deref(), Some("A"));
    assert_eq!(back.to_bytes(), bytes, "not stable");
    let text = String::from_utf8(bytes).unwrap();
    let order: Vec<usize> = [
        "\"format_version\"",
        "\"os\"",
        "\"inputs\"",
        "\"outputs\"",
        "\"partitions\"",
        "\"measurements\"",
    ]
    .iter()
    .map(|k| text.find(k).unwrap())
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(text.contains("\"slot\": null"), "{text}");
}

#[test]
fn manifest_errors_name_file_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(manifest::FILE_NAME);
    let good = String::from_utf8(sample_manifest().to_bytes()).unwrap();

    // A missing comma after the version (line 4); serde_json stops at the next key, line 5.
    let broken = good.replacen("\"1.2.3\",", "\"1.2.3\"", 1);
    std::fs::write(&path, &broken).unwrap();
    let err = Manifest::read(&path).unwrap_err();
    let ManifestError::Malformed { line, column, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!((*line, *column), (5, 3), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: line 5, column 3:", path.display())),
        "{err}"
    );

    std::fs::write(
        &path,
        good.replacen(
            &format!("\"format_version\": {}", manifest::FORMAT_VERSION),
            "\"format_version\": 9",
            1,
        ),
    )
    .unwrap();
    let err = Manifest::read(&path).unwrap_err();
    assert!(
        matches!(err, ManifestError::Version { found: 9, .. }),
        "{err}"
    );

    std::fs::write(&path, good.replacen(&"5".repeat(64), "XYZ", 1)).unwrap();
    let err = Manifest::read(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("partitions[1].blocks_sha256: `XYZ`: expected 64 lower-case hex digits"),
        "{err}"
    );

    let unknown = good.replacen("\"os\":", "\"colour\": \"red\",\n  \"os\":", 1);
    std::fs::write(&path, unknown).unwrap();
    let err = Manifest::read(&path).unwrap_err();
    assert!(err.to_string().contains("unknown field `colour`"), "{err}");

    let err = Manifest::read(&tmp.path().join("absent.json")).unwrap_err();
    assert!(
        err.to_string().contains("absent.json: cannot read"),
        "{err}"
    );
}

#[test]
fn a_partition_is_framed_as_its_own_image_and_reused() {
    use plinth::pipeline::frames::FramePool;
    use std::os::unix::fs::FileExt;
    let tmp = tempfile::tempdir().unwrap();
    // A "root image" with data, holes and a zero run, and a disk holding it at 3 MiB.
    let root = tmp.path().join("root.img");
    let mut image = pattern(6 * MIB as usize, 3);
    image[MIB as usize..2 * MIB as usize].fill(0);
    image.truncate(5 * MIB as usize + 4096);
    std::fs::write(&root, &image).unwrap();
    let disk = tmp.path().join("disk.img");
    let f = File::create(&disk).unwrap();
    f.set_len(16 * MIB).unwrap();
    f.write_all_at(&pattern(4096, 9), 0).unwrap();
    f.write_all_at(&image, 3 * MIB).unwrap();
    drop(f);

    let mut pool = FramePool::for_level(Compression::RELEASE.level);
    let disk_archive = tmp.path().join("disk.tar.zst");
    let d = artifacts::write_tar_zst_with(
        &disk_archive,
        &[TarEntry::new("disk.img", &disk).with_anchors([3 * MIB])],
        EPOCH,
        Compression::RELEASE,
        &pool,
    )
    .unwrap();
    assert_eq!(d.reused, 0);
    assert!(pool.add(&disk_archive, &d.frames));
    let update = tmp.path().join("update.tar.zst");
    let u = artifacts::write_tar_zst_with(
        &update,
        &[TarEntry::new("root.img", &root)],
        EPOCH,
        Compression::RELEASE,
        &pool,
    )
    .unwrap();
    // Every window of the root image's data came from the disk archive.
    let nonzero = image.len() as u64 - MIB;
    assert_eq!(u.reused, nonzero);
    // And the archive is the one written without reuse, readable by GNU tar.
    let fresh = tmp.path().join("fresh.tar.zst");
    let alone =
        artifacts::write_tar_zst(&fresh, &[TarEntry::new("root.img", &root)], EPOCH).unwrap();
    assert_eq!(alone.sha256, u.file.sha256);
    let out = tmp.path().join("x");
    std::fs::create_dir(&out).unwrap();
    run(Command::new("tar")
        .args(["--zstd", "-xf"])
        .arg(&update)
        .arg("-C")
        .arg(&out));
    assert_eq!(std::fs::read(out.join("root.img")).unwrap(), image);
}
