//! GPT disk images from `plinth::pipeline::disk`, laid out from the real os.yaml `test` profiles:
//! checked with `sgdisk` (table, names, type and unique GUIDs), read back at the partition
//! offsets, checked to be sparse, and rebuilt in another directory to the same bytes.
//! Needs gdisk, e2fsprogs, dosfstools and mtools (ci/setup installs them); no loop devices.

use plinth::pipeline::disk::{self, DiskError, DiskLayout, WrittenDisk};
use plinth::pipeline::esp::{self, FatFile, FatOptions};
use plinth::pipeline::ids::IdSource;
use plinth::spec::{self, Profile};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const IDS: IdSource<'static> = IdSource {
    os: "guest-os",
    version: "0.1.0-test",
};

fn profile(os: &str, name: &str) -> Profile {
    let text = match os {
        "guest-os" => include_str!("../../../guest-os/os.yaml"),
        "host-os" => include_str!("../../../host-os/os.yaml"),
        "setup-os" => include_str!("../../../setup-os/os.yaml"),
        _ => unreachable!(),
    };
    spec::parse(text, &format!("{os}/os.yaml"), os)
        .unwrap_or_else(|e| panic!("{os}/os.yaml: {e}"))
        .profile(name)
        .unwrap()
}

/// Small source images in `dir`: a FAT for the ESP, an ext4 for root-a, and a patterned blob
/// with zero runs and an odd length standing in for verity-a.
struct Sources {
    esp: PathBuf,
    root: PathBuf,
    verity: PathBuf,
}

fn make_sources(dir: &Path, esp_size: u64) -> Sources {
    std::fs::create_dir_all(dir).unwrap();
    let boot = dir.join("BOOTX64.EFI");
    std::fs::write(&boot, pattern(150_000, 9)).unwrap();
    let conf = dir.join("loader.conf");
    std::fs::write(&conf, "timeout 0\n").unwrap();
    let esp = dir.join("esp.img");
    esp::write_fat(
        &esp,
        &FatOptions {
            size: esp_size,
            volume_id: esp::volume_id(&IDS, "esp/volume-id"),
            label: "ESP".into(),
            epoch: 1_700_000_000,
        },
        &[
            FatFile::new("EFI/BOOT/BOOTX64.EFI", &boot),
            FatFile::new("EFI/systemd/systemd-bootx64.efi", &boot),
            FatFile::new("loader/loader.conf", &conf),
        ],
    )
    .unwrap();

    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=plinth\n").unwrap();
    std::fs::write(tree.join("etc/big"), pattern(3 * MIB as usize, 4)).unwrap();
    let root = dir.join("root.ext4");
    let out = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&tree)
        .arg(&root)
        .arg("16M")
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success(), "mke2fs: {out:?}");

    let mut v = pattern(MIB as usize + 4096 * 5 + 100, 3);
    v[8192..40960].fill(0); // a zero run inside
    v[MIB as usize..MIB as usize + 4096].fill(0); // and one before the tail
    let verity = dir.join("verity.bin");
    std::fs::write(&verity, v).unwrap();
    Sources { esp, root, verity }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) | 1)
        .collect()
}

fn guest_layout(src: &Sources) -> DiskLayout<'static> {
    DiskLayout::from_profile(IDS, &profile("guest-os", "test"))
        .with_source("esp", &src.esp)
        .unwrap()
        .with_source("root-a", &src.root)
        .unwrap()
        .with_source("verity-a", &src.verity)
        .unwrap()
}

fn run(tool: &str, args: &[&str], image: &Path) -> String {
    let out = Command::new(tool).args(args).arg(image).output().unwrap();
    assert!(out.status.success(), "{tool} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Read `len` bytes at `offset`.
fn read_at(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0; len as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// Whether `len` bytes at `offset` are all zero.
fn is_zero(path: &Path, offset: u64, len: u64) -> bool {
    let f = File::open(path).unwrap();
    let zero = vec![0u8; 4 * MIB as usize];
    let mut buf = vec![0u8; 4 * MIB as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(4 * MIB) as usize;
        f.read_exact_at(&mut buf[..n], offset + at).unwrap();
        // A slice comparison (memcmp), fast even in an unoptimized test build.
        if buf[..n] != zero[..n] {
            return false;
        }
        at += n as u64;
    }
    true
}

/// Compare two files chunk by chunk; the offset of the first difference.
fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let (mut fa, mut fb) = (File::open(a).unwrap(), File::open(b).unwrap());
    assert_eq!(fa.metadata().unwrap().len(), fb.metadata().unwrap().len());
    let (mut ba, mut bb) = (vec![0u8; 4 * MIB as usize], vec![0u8; 4 * MIB as usize]);
    let mut pos = 0u64;
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return None;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            let i = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y);
            return Some(pos + i.unwrap() as u64);
        }
        pos += n as u64;
    }
}

#[test]
fn guest_os_test_disk_is_valid_sparse_and_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let profile = profile("guest-os", "test");
    let esp_size = profile.partitions[0].size.bytes();
    let src = make_sources(&tmp.path().join("src"), esp_size);
    let layout = guest_layout(&src);

    let image = tmp.path().join("one/disk.img");
    std::fs::create_dir_all(image.parent().unwrap()).unwrap();
    let written = disk::write_disk(&layout, &image).unwrap();
    assert_eq!(written.size, profile.disk_size.bytes());
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        profile.disk_size.bytes()
    );

    check_table(&image, &written, &profile);

    // Contents: each source at its partition's offset, then zeros for a while; the B slot and
    // the partitions without a source all zero.
    let sources = [
        ("esp", &src.esp),
        ("root-a", &src.root),
        ("verity-a", &src.verity),
    ];
    for p in &written.partitions {
        match sources.iter().find(|(name, _)| *name == p.name) {
            Some((_, path)) => {
                let data = std::fs::read(path).unwrap();
                assert_eq!(p.source_size, Some(data.len() as u64));
                assert!(
                    read_at(&image, p.offset, data.len() as u64) == data,
                    "{}: content differs from {}",
                    p.name,
                    path.display()
                );
                let rest = (p.size - data.len() as u64).min(8 * MIB);
                assert!(
                    is_zero(&image, p.offset + data.len() as u64, rest),
                    "{}",
                    p.name
                );
            }
            None => {
                assert_eq!(p.source_size, None);
                assert!(is_zero(&image, p.offset, p.size), "{} is not zero", p.name);
            }
        }
    }
    for name in ["root-b", "verity-b", "config", "data"] {
        assert!(written.partitions.iter().any(|p| p.name == name));
    }

    // Sparse: only the GPT and the sources' non-zero blocks take space.
    let allocated = std::fs::metadata(&image).unwrap().blocks() * 512;
    let sources_allocated: u64 = sources
        .iter()
        .map(|(_, p)| std::fs::metadata(p).unwrap().blocks() * 512)
        .sum();
    assert!(
        allocated <= sources_allocated + MIB,
        "{allocated} bytes allocated, sources take {sources_allocated}"
    );
    assert!(allocated < written.size / 50, "{allocated} bytes allocated");

    // The same inputs in another directory: the same bytes and the same report.
    let again = tmp.path().join("two/deeper/other-name.img");
    std::fs::create_dir_all(again.parent().unwrap()).unwrap();
    let written_again = disk::write_disk(&layout, &again).unwrap();
    assert_eq!(written_again, written);
    assert_eq!(first_difference(&image, &again), None);

    // Writing over an existing image gives the same bytes too (no stale data survives).
    std::fs::write(&again, vec![0xffu8; 4 * MIB as usize]).unwrap();
    disk::write_disk(&layout, &again).unwrap();
    assert_eq!(std::fs::metadata(&again).unwrap().len(), written.size);
    assert!(read_at(&again, 0, 8 * MIB) == read_at(&image, 0, 8 * MIB));

    // Another version: other GUIDs, so other bytes.
    let other = DiskLayout {
        ids: IdSource {
            os: "guest-os",
            version: "0.1.1-test",
        },
        ..layout.clone()
    };
    let other_written = disk::write_disk(&other, &again).unwrap();
    assert_ne!(other_written.disk_guid, written.disk_guid);
}

/// sgdisk agrees with what `write_disk` reported and with os.yaml.
fn check_table(image: &Path, written: &WrittenDisk, profile: &Profile) {
    let verify = run("sgdisk", &["-v"], image);
    assert!(verify.contains("No problems found"), "sgdisk -v: {verify}");
    assert!(
        !verify.to_lowercase().contains("warning"),
        "sgdisk -v: {verify}"
    );

    let print = run("sgdisk", &["-p"], image);
    assert!(
        print.contains(&format!(
            "Disk identifier (GUID): {}",
            IDS.uuid_string("disk-guid").to_uppercase()
        )),
        "sgdisk -p: {print}"
    );
    assert!(
        print.contains("Sector size (logical): 512 bytes"),
        "{print}"
    );
    assert_eq!(written.partitions.len(), profile.partitions.len());

    for (i, (w, p)) in written
        .partitions
        .iter()
        .zip(&profile.partitions)
        .enumerate()
    {
        assert_eq!(w.number, i as u32 + 1);
        assert_eq!(w.name, p.name);
        assert_eq!(w.first_lba % 2048, 0, "{} is not 1 MiB aligned", w.name);
        assert_eq!(w.size, p.size.bytes());
        if i == 0 {
            assert_eq!(w.first_lba, 2048, "the first partition starts at 1 MiB");
        } else {
            let prev = &written.partitions[i - 1];
            assert!(w.first_lba > prev.last_lba);
        }
        let info = run("sgdisk", &["-i", &w.number.to_string()], image);
        let expect_guid = IDS.uuid_string(&format!("{}/part-guid", p.name));
        assert_eq!(w.part_guid, expect_guid);
        for line in [
            format!(
                "Partition GUID code: {} (",
                disk::type_guid(p.role, p.filesystem)
            ),
            format!("Partition unique GUID: {}", expect_guid.to_uppercase()),
            format!("First sector: {} ", w.first_lba),
            format!("Last sector: {} ", w.last_lba),
            format!("Partition name: '{}'", p.name),
        ] {
            assert!(
                info.contains(&line),
                "sgdisk -i {}: no `{line}` in\n{info}",
                w.number
            );
        }
        let listed = print.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(&w.number.to_string().as_str())
                && cols.last() == Some(&p.name.as_str())
        });
        assert!(listed, "partition {} not in sgdisk -p:\n{print}", p.name);
    }
    let types: Vec<&str> = written
        .partitions
        .iter()
        .map(|p| p.type_guid.as_str())
        .collect();
    assert_eq!(
        types,
        [
            disk::TYPE_ESP,
            disk::TYPE_ROOT_X86_64,
            disk::TYPE_ROOT_VERITY_X86_64,
            disk::TYPE_ROOT_X86_64,
            disk::TYPE_ROOT_VERITY_X86_64,
            disk::TYPE_LINUX_DATA,
            disk::TYPE_LVM,
        ]
    );

    // On disk, the GUID's first three fields are little-endian (UEFI spec, EFI_GUID): check the
    // raw bytes of partition entry 1's unique GUID (LBA 2, offset 16) by hand too.
    let raw = read_at(image, 2 * 512 + 16, 16);
    let text = IDS.uuid("esp/part-guid");
    let mut expect = text;
    expect[0..4].reverse();
    expect[4..6].reverse();
    expect[6..8].reverse();
    assert_eq!(raw, expect);
    // The protective MBR: one 0xEE partition from LBA 1.
    let mbr = read_at(image, 0, 512);
    assert_eq!(mbr[446 + 4], 0xee);
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);
}

#[test]
fn every_os_test_layout_makes_a_clean_table() {
    let tmp = tempfile::tempdir().unwrap();
    for os in ["guest-os", "host-os", "setup-os"] {
        let profile = profile(os, "test");
        let ids = IdSource {
            os,
            version: "0.1.0",
        };
        let image = tmp.path().join(format!("{os}.img"));
        let written = disk::write_disk(&DiskLayout::from_profile(ids, &profile), &image).unwrap();
        let verify = run("sgdisk", &["-v"], &image);
        assert!(verify.contains("No problems found"), "{os}: {verify}");
        assert_eq!(written.partitions.len(), profile.partitions.len());
        // Nothing but the GPT was written.
        assert!(
            std::fs::metadata(&image).unwrap().blocks() * 512 <= MIB,
            "{os}"
        );
    }
}

#[test]
fn a_source_larger_than_its_partition_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("verity.bin");
    File::create(&big).unwrap().set_len(17 * MIB).unwrap();
    let layout = DiskLayout::from_profile(IDS, &profile("guest-os", "test"))
        .with_source("verity-a", &big)
        .unwrap();
    let out = tmp.path().join("disk.img");
    let err = disk::write_disk(&layout, &out).unwrap_err();
    let text = err.to_string();
    match err {
        DiskError::SourceTooBig {
            name,
            source_size,
            partition_size,
            ..
        } => {
            assert_eq!(name, "verity-a");
            assert_eq!((source_size, partition_size), (17 * MIB, 16 * MIB));
        }
        other => panic!("expected SourceTooBig, got {other:?}"),
    }
    for needle in ["verity-a", "17825792", "16777216", "hint:"] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(!out.exists(), "nothing is written when a size is wrong");

    // The output may not overwrite one of its own sources.
    File::create(&out).unwrap().set_len(MIB).unwrap();
    let layout = DiskLayout::from_profile(IDS, &profile("guest-os", "test"))
        .with_source("verity-a", &out)
        .unwrap();
    assert!(matches!(
        disk::write_disk(&layout, &out),
        Err(DiskError::SourceIsOutput { .. })
    ));
    assert_eq!(std::fs::metadata(&out).unwrap().len(), MIB);
}

#[test]
fn partitions_that_do_not_fit_and_unknown_names_are_refused() {
    let prod = profile("guest-os", "prod");
    let mut layout = DiskLayout::from_profile(IDS, &prod);
    layout.size = profile("guest-os", "test").disk_size.bytes();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("disk.img");
    match disk::write_disk(&layout, &out).unwrap_err() {
        e @ DiskError::DoesNotFit { .. } => {
            let text = e.to_string();
            assert!(
                text.contains("`root-a`") && text.contains("hint:"),
                "{text}"
            );
        }
        other => panic!("expected DoesNotFit, got {other:?}"),
    }
    assert!(!out.exists());

    match DiskLayout::from_profile(IDS, &prod).with_source("root-c", "/dev/null") {
        Err(e @ DiskError::UnknownPartition { .. }) => {
            assert!(e.to_string().contains("root-a, verity-a"), "{e}");
        }
        other => panic!("expected UnknownPartition, got {other:?}"),
    }
}
