//! The ext4 and dm-verity stages on small trees (no network): e2fsck-clean, byte-identical
//! across builds whatever the source tree's times, refusals that name the problem, and a
//! verity tree that catches a flipped byte.

use plinth::pipeline::ext4::{self, Ext4Error, Ext4Plan};
use plinth::pipeline::ids::IdSource;
use plinth::pipeline::verity::{self, VerityError};
use std::path::Path;

const EPOCH: i64 = 1_700_000_000;
const IDS: IdSource<'static> = IdSource {
    os: "guest-os",
    version: "9.9.9",
};

/// A small tree; `salt` changes nothing but the files' times (written at different moments).
fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/ssl")).unwrap();
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::write(dir.join("etc/hostname"), "guest-os\n").unwrap();
    std::fs::write(dir.join("etc/ssl/name with space.pem"), "cert").unwrap();
    std::fs::write(dir.join("usr/bin/tool"), vec![7u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("usr/bin", dir.join("bin")).unwrap();
    plinth::pipeline::normalize::normalize(dir, "guest-os", EPOCH).unwrap();
}

fn make(root: &Path, image: &Path, size: u64) -> Result<(), Ext4Error> {
    ext4::make(&Ext4Plan {
        root,
        image,
        size,
        uuid: &IDS.uuid_string("root-a/fs-uuid"),
        hash_seed: &IDS.uuid_string("root-a/hash-seed"),
        label: "root-a",
        epoch: EPOCH,
    })
}

#[test]
fn ext4_images_are_identical_across_builds_and_fsck_clean() {
    let a = tempfile::tempdir().unwrap();
    tree(&a.path().join("root"));
    // The second tree is written later, in another directory: other ctimes, other inodes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = tempfile::tempdir().unwrap();
    tree(&b.path().join("root"));
    make(&a.path().join("root"), &a.path().join("root.img"), 32 << 20).unwrap();
    make(&b.path().join("root"), &b.path().join("root.img"), 32 << 20).unwrap();
    let (ia, ib) = (
        std::fs::read(a.path().join("root.img")).unwrap(),
        std::fs::read(b.path().join("root.img")).unwrap(),
    );
    assert!(ia == ib, "two ext4 builds of the same tree differ");
    // The derived UUID, and every inode time at the epoch (ctime included).
    let out = std::process::Command::new("debugfs")
        .args(["-R", "stat \"/etc/ssl/name with space.pem\""])
        .arg(a.path().join("root.img"))
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&out.stdout);
    assert!(stat.contains("ctime: 0x6553f100"), "{stat}");
    assert!(stat.contains("crtime: 0x6553f100"), "{stat}");
    let dumpe2fs = std::process::Command::new("dumpe2fs")
        .arg("-h")
        .arg(a.path().join("root.img"))
        .output()
        .unwrap();
    let header = String::from_utf8_lossy(&dumpe2fs.stdout);
    assert!(
        header.contains(&IDS.uuid_string("root-a/fs-uuid")),
        "{header}"
    );
}

#[test]
fn ext4_too_small_names_sizes_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    std::fs::write(root.join("usr/bin/big"), vec![1u8; 12 << 20]).unwrap();
    let err = make(&root, &dir.path().join("root.img"), 8 << 20).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Ext4Error::TooSmall { .. }), "{text}");
    assert!(
        text.contains("does not fit a 8 MiB ext4 partition"),
        "{text}"
    );
    assert!(text.contains("hint: raise the partition's size"), "{text}");
}

/// The image's own file system filling up (here an 8 MiB tmpfs) is named as such, with the
/// space left: raising the partition, the other refusal's hint, would not help.
#[test]
fn ext4_on_a_full_host_file_system_is_not_blamed_on_the_partition() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting the small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    std::fs::write(root.join("usr/bin/big"), vec![1u8; 12 << 20]).unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mount = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=8m",
            "plinth-test",
            small.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(mount.success(), "mount -t tmpfs");
    let result = make(&root, &small.join("root.img"), 64 << 20);
    let left = small.join("root.img").exists();
    let umount = std::process::Command::new("umount")
        .arg(&small)
        .status()
        .unwrap();
    assert!(umount.success(), "umount");
    let err = result.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Ext4Error::HostFull { .. }), "{text}");
    assert!(
        text.contains("the file system holding it is full"),
        "{text}"
    );
    assert!(text.contains("the partition is not too small"), "{text}");
    assert!(!left, "the partial image is removed");
}

#[test]
fn verity_tree_is_deterministic_and_catches_a_flipped_byte() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    let image = dir.path().join("root.img");
    make(&root, &image, 32 << 20).unwrap();
    let salt = IDS.hex("verity-a/salt");
    let uuid = IDS.uuid_string("verity-a/uuid");
    let t1 = verity::format(&image, &dir.path().join("h1"), &salt, &uuid, 1 << 20).unwrap();
    let t2 = verity::format(&image, &dir.path().join("h2"), &salt, &uuid, 1 << 20).unwrap();
    assert_eq!(t1, t2);
    assert_eq!(
        std::fs::read(dir.path().join("h1")).unwrap(),
        std::fs::read(dir.path().join("h2")).unwrap()
    );
    verity::verify(&image, &dir.path().join("h1"), &t1.root_hash).unwrap();
    // Flip one byte of a file's data block: verification fails.
    let mut bytes = std::fs::read(&image).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == [7u8; 8])
        .expect("the tool's data is in the image");
    bytes[at] ^= 0xff;
    std::fs::write(&image, bytes).unwrap();
    let err = verity::verify(&image, &dir.path().join("h1"), &t1.root_hash).unwrap_err();
    assert!(err.to_string().contains("veritysetup failed"), "{err}");
    // A tree larger than its partition is refused.
    let err = verity::format(&image, &dir.path().join("h3"), &salt, &uuid, 4096).unwrap_err();
    assert!(matches!(err, VerityError::TooSmall { .. }), "{err}");
    assert!(
        !dir.path().join("h3").exists(),
        "a refused tree is not written"
    );
}

/// The Rust tree equals `veritysetup format`'s byte for byte, on sizes that give one, two and
/// three levels, with data, written zeros and holes.
#[test]
fn verity_tree_equals_veritysetup() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let salt = IDS.hex("root/verity-salt");
    let uuid = IDS.uuid_string("root/verity-uuid");
    for blocks in [1u64, 2, 129, 300, 16_385 + 77] {
        let data = dir.path().join(format!("data-{blocks}"));
        let f = std::fs::File::create(&data).unwrap();
        f.set_len(blocks * 4096).unwrap();
        for i in (0..blocks).step_by(3) {
            f.write_all_at(&(i as u32).to_le_bytes().repeat(7), i * 4096 + 100)
                .unwrap();
        }
        f.write_all_at(&[0u8; 4096], (blocks / 2) * 4096).unwrap();
        drop(f);
        let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
        let tree = verity::format(&data, &ours, &salt, &uuid, 1 << 30).unwrap();
        let root_hash = verity::format_with_veritysetup(&data, &theirs, &salt, &uuid).unwrap();
        assert_eq!(tree.root_hash, root_hash, "{blocks} blocks: root hash");
        assert!(
            std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
            "{blocks} blocks: hash file differs from veritysetup's"
        );
        assert_eq!(tree.hash_size, std::fs::metadata(&theirs).unwrap().len());
        verity::verify(&data, &ours, &tree.root_hash).unwrap();
    }
    let odd = dir.path().join("odd");
    std::fs::write(&odd, [1u8; 5000]).unwrap();
    let err = verity::format(&odd, &dir.path().join("h"), &salt, &uuid, 1 << 20).unwrap_err();
    assert!(
        matches!(err, VerityError::BadSize { size: 5000, .. }),
        "{err}"
    );
}

#[test]
fn applied_files_get_their_mode_and_group() {
    use plinth::pipeline::overlay;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    tree(&root);
    let image = dir.path().join("root.img");
    make(&root, &image, 32 << 20).unwrap();
    let shadow = dir.path().join("shadow");
    std::fs::write(&shadow, "root:*:19000:0:99999:7:::\n").unwrap();
    let mut changes = Vec::new();
    overlay::put_file(&mut changes, &root, "etc/hostname", &shadow, 0o644);
    overlay::put_file_group(&mut changes, &root, "etc/shadow", &shadow, 0o640, 42);
    ext4::apply(&image, &changes, EPOCH).unwrap();
    let stat = |path: &str| {
        let out = std::process::Command::new("debugfs")
            .args(["-R", &format!("stat {path}")])
            .arg(&image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (hostname, shadow) = (stat("/etc/hostname"), stat("/etc/shadow"));
    assert!(hostname.contains("Mode:  0644"), "{hostname}");
    assert!(hostname.contains("Group:     0"), "{hostname}");
    assert!(shadow.contains("Mode:  0640"), "{shadow}");
    assert!(shadow.contains("Group:    42"), "{shadow}");
}
