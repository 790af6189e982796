//! Crafted images in releases (hostile input): ext4 images are listed in user space with
//! debugfs, as a read-only mount showed them, without root; a directory loop is a named
//! error, not a hang, and fails `plinth diff` with exit 2; names with newlines or odd bytes
//! cannot forge entries; a file whose bytes are not its size cannot shift another's hash; a
//! PE image whose header claims a huge section is a named error, nothing allocated for it.
//!
//! Building images with owners, devices and setuid files needs root (the tests that do say
//! so and return early otherwise); one test then runs `plinth diff` as `nobody`.

use crate::support;
use crate::support::plinth;

use plinth::compare::contents::{list_ext4, ContentsError, Entry, Listing};
use plinth::packages::cache::{sha256_bytes, sha256_file};
use plinth::pipeline::artifacts::{self, TarEntry};
use plinth::pipeline::manifest::{self, OutputFile};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MIB: u64 = 1 << 20;
const EPOCH: i64 = 1_700_000_000;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ext4 image of `size` bytes holding the tree `src` (owners kept: run as root), with
/// fixed ids and time; `features` are extra `-O` features.
fn mkfs(src: &Path, img: &Path, size: u64, features: &str) {
    std::fs::File::create(img).unwrap().set_len(size).unwrap();
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4"])
        .args(["-U", "00000000-0000-4000-8000-000000000001"])
        .args([
            "-E",
            "hash_seed=00000000-0000-4000-8000-000000000002,root_owner=0:0",
        ]);
    if !features.is_empty() {
        cmd.args(["-O", features]);
    }
    run(cmd
        .arg("-d")
        .arg(src)
        .arg(img)
        .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string()));
}

/// Run one debugfs command on `img`, writable.
fn debugfs_w(img: &Path, command: &str) {
    run(Command::new("debugfs").args(["-w", "-R", command]).arg(img));
}

/// `list_ext4` in a thread: a hang fails the test after a generous bound (not a timing test).
fn list_guarded(img: &Path) -> Result<Listing, ContentsError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let img = img.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(list_ext4(&img));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("list_ext4 did not return within 60 s")
}

/// A tree with a file, a setuid file, a hard link, fast and slow symbolic links, character
/// and block devices, a FIFO, a sticky directory, an empty and a sparse file, other owners.
fn sample_tree(src: &Path) {
    use std::os::unix::fs::symlink;
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("dev")).unwrap();
    std::fs::create_dir_all(src.join("tmp")).unwrap();
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(src.join("etc/motd"), "hello\n").unwrap();
    std::fs::write(src.join("etc/empty"), "").unwrap();
    std::fs::write(src.join("usr/bin/su"), vec![7u8; 70_000]).unwrap();
    std::fs::set_permissions(src.join("usr/bin/su"), PermissionsExt::from_mode(0o4755)).unwrap();
    std::fs::hard_link(src.join("usr/bin/su"), src.join("usr/bin/su2")).unwrap();
    std::fs::set_permissions(src.join("tmp"), PermissionsExt::from_mode(0o1777)).unwrap();
    symlink("motd", src.join("etc/short")).unwrap();
    symlink("l".repeat(300), src.join("etc/long")).unwrap();
    symlink("f".repeat(59), src.join("etc/fast59")).unwrap();
    symlink("s".repeat(60), src.join("etc/slow60")).unwrap();
    // A fast link whose target imitates the end of its line and the next command.
    symlink("a\"\ndebugfs: stat <12>\n#x", src.join("etc/forge")).unwrap();
    let sparse = std::fs::File::create(src.join("etc/sparse")).unwrap();
    sparse.set_len(5 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"end", 5 * MIB - 3).unwrap();
    std::fs::write(src.join("etc/owned"), "x").unwrap();
    std::os::unix::fs::chown(src.join("etc/owned"), Some(1000), Some(1001)).unwrap();
    run(Command::new("mknod")
        .arg(src.join("dev/null"))
        .args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(src.join("dev/big"))
        .args(["b", "259", "70000"]));
    run(Command::new("mkfifo").arg(src.join("dev/fifo")));
}

/// What plinth listed before it used debugfs: the image mounted read-only on a loop device
/// and walked (the code as it was).
fn mount_walk(img: &Path) -> Listing {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "ro,loop,noload,nodev,nosuid,noexec"])
        .arg(img)
        .arg(dir.path()));
    let root = dir.path();
    let mut listing = Listing::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let (kind, sha256) = if ft.is_dir() {
                stack.push(path.clone());
                ("dir", None)
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                (
                    "symlink",
                    Some(sha256_bytes(target.as_os_str().as_encoded_bytes())),
                )
            } else if ft.is_file() {
                ("file", Some(sha256_file(&path).unwrap().0.to_hex()))
            } else {
                let kind = if ft.is_char_device() {
                    "char"
                } else if ft.is_block_device() {
                    "block"
                } else if ft.is_fifo() {
                    "fifo"
                } else {
                    "socket"
                };
                (kind, Some(sha256_bytes(meta.rdev().to_string().as_bytes())))
            };
            let rel = path.strip_prefix(root).unwrap();
            listing.insert(
                format!("/{}", rel.display()),
                Entry {
                    kind,
                    mode: Some(format!("{:04o}", meta.mode() & 0o7777)),
                    owner: Some(format!("{}:{}", meta.uid(), meta.gid())),
                    size: if kind == "dir" { 0 } else { meta.len() },
                    sha256,
                },
            );
        }
    }
    run(Command::new("umount").arg(root));
    listing
}

#[test]
fn debugfs_lists_what_a_mount_showed() {
    if !is_root() {
        eprintln!("skipped: devices, owners and the reference mount need root");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    sample_tree(&d.path().join("src"));
    let img = d.path().join("root.img");
    mkfs(&d.path().join("src"), &img, 32 * MIB, "");
    let listed = list_guarded(&img).unwrap();
    assert_eq!(listed, mount_walk(&img));
    // And what that is, spelled out.
    let e = |p: &str| listed[p].clone();
    assert_eq!(e("/usr/bin/su").mode.as_deref(), Some("4755"));
    assert_eq!(e("/usr/bin/su").sha256, Some(sha256_bytes(&[7u8; 70_000])));
    assert_eq!(e("/usr/bin/su2"), e("/usr/bin/su"));
    assert_eq!(e("/tmp").mode.as_deref(), Some("1777"));
    assert_eq!(e("/tmp").kind, "dir");
    assert_eq!(e("/etc/short").kind, "symlink");
    assert_eq!(e("/etc/short").sha256, Some(sha256_bytes(b"motd")));
    assert_eq!(e("/etc/long").size, 300);
    assert_eq!(
        e("/etc/fast59").sha256,
        Some(sha256_bytes("f".repeat(59).as_bytes()))
    );
    assert_eq!(
        e("/etc/slow60").sha256,
        Some(sha256_bytes("s".repeat(60).as_bytes()))
    );
    assert_eq!(
        e("/etc/forge").sha256,
        Some(sha256_bytes(b"a\"\ndebugfs: stat <12>\n#x"))
    );
    assert_eq!(e("/etc/empty").sha256, Some(sha256_bytes(b"")));
    assert_eq!(e("/etc/sparse").size, 5 * MIB);
    assert_eq!(e("/etc/owned").owner.as_deref(), Some("1000:1001"));
    assert_eq!(e("/dev/null").kind, "char");
    // makedev(1, 3) and makedev(259, 70000) as st_rdev.
    assert_eq!(e("/dev/null").sha256, Some(sha256_bytes(b"259")));
    let big = (259u64 << 8) | (70000 & 0xff) | ((70000 & !0xff) << 12);
    assert_eq!(
        e("/dev/big").sha256,
        Some(sha256_bytes(big.to_string().as_bytes()))
    );
    assert_eq!(e("/dev/fifo").kind, "fifo");
    assert!(listed.contains_key("/lost+found"));
    assert!(listed.keys().is_sorted());
}

#[test]
fn a_directory_loop_is_a_named_error() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/f"), "x").unwrap();
    let img = d.path().join("root.img");
    mkfs(&src, &img, 8 * MIB, "");
    // /a/b/loop: a directory entry pointing back at /a.
    debugfs_w(&img, "ln /a /a/b/loop");
    let err = list_guarded(&img).unwrap_err();
    let a_ino = match &err {
        ContentsError::Loop { path, inode, .. } => {
            assert_eq!(path, "/a/b/loop");
            *inode
        }
        other => panic!("expected a loop, got {other}"),
    };
    let text = err.to_string();
    assert!(
        text.contains(&img.display().to_string())
            && text.contains("/a/b/loop")
            && text.contains(&format!("inode {a_ino}"))
            && text.contains("e2fsck -fn"),
        "{text}"
    );
    // A directory hard-linked elsewhere (not an ancestor) is refused the same way.
    let img2 = d.path().join("root2.img");
    mkfs(&src, &img2, 8 * MIB, "");
    debugfs_w(&img2, "ln /a/b /again");
    assert!(matches!(
        list_guarded(&img2),
        Err(ContentsError::Loop { .. })
    ));
}

#[test]
fn odd_names_cannot_forge_entries() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // A newline followed by what looks like another `ls -l` line.
    let forged = "x\n     99  100644 (1)      0      0       5  1-Jan-2020 00:00 forged";
    std::fs::write(src.join(forged), "a").unwrap();
    std::fs::write(src.join("back\\slash"), "b").unwrap();
    std::fs::write(src.join(" lead"), "c").unwrap();
    std::fs::write(src.join("café"), "d").unwrap();
    std::fs::write(
        src.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"\xff\x01")),
        "e",
    )
    .unwrap();
    let img = d.path().join("root.img");
    mkfs(&src, &img, 8 * MIB, "");
    let listed = list_guarded(&img).unwrap();
    let names: Vec<&str> = listed.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "/ lead",
            "/\\xff\\x01",
            "/back\\x5cslash",
            "/café",
            "/lost+found",
            "/x\\x0a     99  100644 (1)      0      0       5  1-Jan-2020 00:00 forged",
        ]
    );
    assert_eq!(listed["/ lead"].sha256, Some(sha256_bytes(b"c")));
}

#[test]
fn a_name_with_a_slash_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("evilQpasswd"), "x").unwrap();
    let img = d.path().join("root.img");
    // No metadata checksums, so that the patched directory block is still read.
    mkfs(&src, &img, 8 * MIB, "^metadata_csum");
    let mut bytes = std::fs::read(&img).unwrap();
    let at = bytes
        .windows(11)
        .position(|w| w == b"evilQpasswd")
        .expect("the name in the image");
    bytes[at + 4] = b'/';
    std::fs::write(&img, &bytes).unwrap();
    match list_guarded(&img) {
        Err(ContentsError::Malformed { problem, .. }) => {
            assert!(problem.contains("holds `/`"), "{problem}")
        }
        other => panic!("expected a refused name, got {other:?}"),
    }
}

#[test]
fn a_file_whose_bytes_are_not_its_size_is_an_error() {
    // debugfs 1.47 `cat`s an inline-data file as its whole inline area, not its size: the
    // frame after it does not match, and the listing fails instead of shifting hashes.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("small"), "hi\n").unwrap();
    let img = d.path().join("root.img");
    mkfs(&src, &img, 8 * MIB, "inline_data");
    match list_guarded(&img) {
        Err(ContentsError::Debugfs { message, .. }) => {
            assert!(message.contains("not its size of 3 bytes"), "{message}")
        }
        other => panic!("expected a framing error, got {other:?}"),
    }
}

#[test]
fn a_broken_image_names_itself_and_e2fsck() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("junk.img");
    std::fs::write(&img, vec![0u8; 1 << 16]).unwrap();
    let err = list_guarded(&img).unwrap_err();
    assert!(matches!(err, ContentsError::Debugfs { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("e2fsck -fn {}", img.display())),
        "{text}"
    );
}

use plinth_firmware::pe::testing::image as pe;

/// A release in `dir`: a 12 MiB disk (`esp` at 1 MiB, zeros; ext4 `root-a` at 2 MiB from
/// `root`), an update archive with `root.img` and the slot's UKI `uki`, an SBOM, a manifest.
fn release(dir: &Path, root: &Path, uki: &[u8]) -> PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let disk = work.join("disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(12 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &std::fs::read(root).unwrap(), 2 * MIB).unwrap();
    drop(f);
    let efi = work.join("guest-os-a.efi");
    std::fs::write(&efi, uki).unwrap();
    let rel = dir.join("release");
    std::fs::create_dir_all(&rel).unwrap();
    let outputs = vec![
        artifacts::write_tar_zst(
            &rel.join("disk-img.tar.zst"),
            &[TarEntry::new("disk.img", &disk)],
            EPOCH,
        )
        .unwrap(),
        artifacts::write_tar_zst(
            &rel.join("update-img.tar.zst"),
            &[
                TarEntry::new("root.img", root),
                TarEntry::new("guest-os-a.efi", &efi),
            ],
            EPOCH,
        )
        .unwrap(),
    ];
    let sbom = serde_json::json!({"spdxVersion": "SPDX-2.3", "packages": []});
    std::fs::write(rel.join("sbom.spdx.json"), sbom.to_string()).unwrap();
    let part = |number: u32, name: &str, role: &str, offset: u64, size: u64| {
        support::partition(&disk, number, name, role, offset, size)
    };
    let h = support::hex;
    let mut outputs: Vec<OutputFile> = outputs;
    outputs.push(support::output_file(&rel, "sbom.spdx.json"));
    let m = support::sample_manifest(
        "guest-os",
        outputs,
        vec![
            part(1, "esp", "esp", MIB, MIB),
            part(2, "root-a", "root", 2 * MIB, 8 * MIB),
        ],
        support::slot(Some("A"), None, h('c')),
    );
    m.write(&rel.join(manifest::FILE_NAME)).unwrap();
    rel
}

/// A root image with `/etc/motd` holding `motd`.
fn root_image(dir: &Path, motd: &str) -> PathBuf {
    let src = dir.join("root");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/motd"), motd).unwrap();
    let img = dir.join("root.img");
    mkfs(&src, &img, 8 * MIB, "");
    img
}

#[test]
fn diff_of_a_release_whose_root_has_a_loop_exits_2_naming_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let uki = pe(&[(".linux", 0x200, 0x400, 0x200)], 0x800);
    let a = release(da.path(), &root_image(da.path(), "one\n"), &uki);
    let root_b = root_image(db.path(), "two\n");
    debugfs_w(&root_b, "ln /etc /etc/loop");
    let b = release(db.path(), &root_b, &uki);
    let out = plinth(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("directory /etc/loop is inode") && err.contains("directory loop"),
        "{err}"
    );
}

#[test]
fn diff_of_a_crafted_pe_is_a_named_error() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sane = pe(&[(".linux", 0x200, 0x400, 0x200)], 0x800);
    // 4 GiB of section data claimed in a 2 KiB file.
    let crafted = pe(&[(".linux", 0xffff_fe00, 0x400, 0xffff_fe00)], 0x800);
    let a = release(da.path(), &root_image(da.path(), "same\n"), &sane);
    let b = release(db.path(), &root_image(db.path(), "same\n"), &crafted);
    let out = plinth(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("guest-os-a.efi: not a PE image plinth can compare")
            && err.contains("section \".linux\"")
            && err.contains("outside the file of 2048 bytes"),
        "{err}"
    );

    // A VirtualSize far beyond the section's data (zero fill) is refused as well.
    let zero_fill = pe(&[(".linux", 0xffff_0000, 0x400, 0x200)], 0x800);
    let dc = tempfile::tempdir().unwrap();
    let c = release(dc.path(), &root_image(dc.path(), "same\n"), &zero_fill);
    let out = plinth(&["diff", a.to_str().unwrap(), c.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("exceeds its 512 bytes of data"), "{err}");

    // Sane PE images that differ: the section is named.
    let other = pe(&[(".linux", 0x1f0, 0x400, 0x200)], 0x800);
    let de = tempfile::tempdir().unwrap();
    let e = release(de.path(), &root_image(de.path(), "same\n"), &other);
    let out = plinth(&["diff", a.to_str().unwrap(), e.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sections .linux differ"), "{text}");
}

#[test]
fn diff_lists_paths_without_root() {
    if !is_root() {
        eprintln!("skipped: switching to nobody needs root");
        return;
    }
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let uki = pe(&[(".linux", 0x200, 0x400, 0x200)], 0x800);
    let a = release(da.path(), &root_image(da.path(), "one\n"), &uki);
    let b = release(db.path(), &root_image(db.path(), "two\n"), &uki);
    for dir in [da.path(), db.path()] {
        std::fs::set_permissions(dir, PermissionsExt::from_mode(0o755)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_plinth"))
        .args(["diff", a.to_str().unwrap(), b.to_str().unwrap()])
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    assert!(
        text.contains("partition root-a (ext4): 1 path differs")
            && text.contains("changed /etc/motd (content): file 4 B"),
        "{text}"
    );
    assert!(!err.contains("root"), "{err}");
}

/// Compare the debugfs listing with the mount walk on a real image and time both:
/// `PLINTH_LIST_IMAGE=/path/to/root.img cargo test --test hostile_image -- --ignored`.
#[test]
#[ignore]
fn real_image_lists_as_mounted() {
    let Ok(img) = std::env::var("PLINTH_LIST_IMAGE") else {
        eprintln!("skipped: set PLINTH_LIST_IMAGE");
        return;
    };
    let img = Path::new(&img);
    let t = std::time::Instant::now();
    let mounted = mount_walk(img);
    let mount_time = t.elapsed();
    let t = std::time::Instant::now();
    let listed = list_ext4(img).unwrap();
    let debugfs_time = t.elapsed();
    eprintln!(
        "{} entries: mount walk {mount_time:?}, debugfs {debugfs_time:?}",
        listed.len()
    );
    assert_eq!(listed, mounted);
}

#[test]
fn a_partition_past_the_end_of_the_disk_image_is_bad_input() {
    // The manifest places root-a at 11 MiB of a 12 MiB disk image: the span cannot be read,
    // and that is the release's fault (exit 2, named), not a read error here.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let uki = pe(&[(".linux", 0x200, 0x400, 0x200)], 0x800);
    let a = release(da.path(), &root_image(da.path(), "one\n"), &uki);
    let b = release(db.path(), &root_image(db.path(), "two\n"), &uki);
    let path = b.join(manifest::FILE_NAME);
    let mut m = manifest::Manifest::read(&path).unwrap();
    m.partitions[1].offset = 11 * MIB;
    m.write(&path).unwrap();
    let out = plinth(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("partition `root-a`") && err.contains("lies past the end of disk.img"),
        "{err}"
    );
}
