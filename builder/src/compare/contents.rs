//! What a filesystem image holds, file by file, and how two such listings differ.
//!
//! ext4 images are mounted read-only (loop, `noload`: the journal is never replayed) in a
//! temporary directory and walked in sorted order; every entry records its kind, mode
//! (setuid and sticky bits included), owner, size and content hash, link target or device
//! number. FAT images are read with mtools (no mount: this kernel may lack vfat). Mounting
//! needs root; callers say so when they are not.

use crate::packages::cache::{sha256_bytes, sha256_file};
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One entry of a filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// `file`, `dir`, `symlink`, `char`, `block`, `fifo` or `socket`.
    pub kind: &'static str,
    /// Permission bits with setuid, setgid and sticky (octal text); FAT has none.
    pub mode: Option<String>,
    /// `uid:gid`; FAT has none.
    pub owner: Option<String>,
    pub size: u64,
    /// sha256 of a file's content, of a link's target text, or of a device's number.
    pub sha256: Option<String>,
}

/// Path (absolute, from the filesystem's root) → entry, sorted.
pub type Listing = BTreeMap<String, Entry>;

/// How one path differs between two listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// What differs for `changed`: `content`, `mode`, `owner`, `kind`.
    pub what: Vec<&'static str>,
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

/// A filesystem that could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    #[error("{}: {action}: {message}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        message: String,
    },
    #[error("listing the files of {} needs root (it is mounted read-only on a loop device)\n  hint: run as root, or compare partitions only", image.display())]
    NotRoot { image: PathBuf },
    #[error("cannot mount {} read-only as ext4: {message}\n  hint: is it an ext4 image? `e2fsck -fn {}` says more", image.display(), image.display())]
    Mount { image: PathBuf, message: String },
    #[error(transparent)]
    Fat(#[from] crate::pipeline::esp::EspError),
}

fn io<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> ContentsError + 'a {
    move |e| ContentsError::Io {
        path: path.to_path_buf(),
        action,
        message: e.to_string(),
    }
}

/// The files of an ext4 image.
pub fn list_ext4(image: &Path) -> Result<Listing, ContentsError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(ContentsError::NotRoot {
            image: image.to_path_buf(),
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("plinth-mount-")
        .tempdir()
        .map_err(io(image, "create a mount point for"))?;
    let out = Command::new("mount")
        .args(["-t", "ext4", "-o", "ro,loop,noload,nodev,nosuid,noexec"])
        .arg(image)
        .arg(dir.path())
        .output()
        .map_err(io(image, "run mount for"))?;
    if !out.status.success() {
        return Err(ContentsError::Mount {
            image: image.to_path_buf(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let mounted = Unmount(dir.path().to_path_buf());
    let listing = walk(&mounted.0);
    drop(mounted);
    listing
}

/// Unmounts when dropped, whatever happened while it was mounted.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Walk a mounted tree.
fn walk(root: &Path) -> Result<Listing, ContentsError> {
    use std::os::unix::fs::FileTypeExt;
    let mut listing = Listing::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io(&dir, "read directory"))? {
            let path = entry.map_err(io(&dir, "read directory"))?.path();
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path, "stat"))?;
            let ft = meta.file_type();
            let (kind, sha256) = if ft.is_dir() {
                stack.push(path.clone());
                ("dir", None)
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(io(&path, "read link"))?;
                (
                    "symlink",
                    Some(sha256_bytes(target.as_os_str().as_encoded_bytes())),
                )
            } else if ft.is_file() {
                let (sha, _) = sha256_file(&path).map_err(io(&path, "read"))?;
                ("file", Some(sha))
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
            let rel = path.strip_prefix(root).unwrap_or(&path);
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
    Ok(listing)
}

/// The files of a FAT image.
pub fn list_fat(image: &Path) -> Result<Listing, ContentsError> {
    use crate::pipeline::esp;
    let mut listing = Listing::new();
    for e in esp::list_fat(image)? {
        let entry = if e.is_dir {
            Entry {
                kind: "dir",
                mode: None,
                owner: None,
                size: 0,
                sha256: None,
            }
        } else {
            let bytes = esp::read_fat_file(image, &e.path)?;
            Entry {
                kind: "file",
                mode: None,
                owner: None,
                size: bytes.len() as u64,
                sha256: Some(sha256_bytes(&bytes)),
            }
        };
        listing.insert(format!("/{}", e.path), entry);
    }
    Ok(listing)
}

/// Every path that differs between `before` and `after`, sorted by path.
pub fn changes(before: &Listing, after: &Listing) -> Vec<Change> {
    let mut out = Vec::new();
    for (path, a) in before {
        match after.get(path) {
            None => out.push(Change {
                path: path.clone(),
                change: "removed",
                what: Vec::new(),
                before: Some(a.clone()),
                after: None,
            }),
            Some(b) if a != b => {
                let mut what = Vec::new();
                if a.kind != b.kind {
                    what.push("kind");
                }
                if a.sha256 != b.sha256 || a.size != b.size {
                    what.push("content");
                }
                if a.mode != b.mode {
                    what.push("mode");
                }
                if a.owner != b.owner {
                    what.push("owner");
                }
                out.push(Change {
                    path: path.clone(),
                    change: "changed",
                    what,
                    before: Some(a.clone()),
                    after: Some(b.clone()),
                });
            }
            Some(_) => {}
        }
    }
    for (path, b) in after {
        if !before.contains_key(path) {
            out.push(Change {
                path: path.clone(),
                change: "added",
                what: Vec::new(),
                before: None,
                after: Some(b.clone()),
            });
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}

impl Change {
    /// One line: `changed /etc/hostname (content): 10 B sha256 0a1b2c3d4e5f → 12 B sha256 …`.
    pub fn line(&self) -> String {
        let side = |e: &Option<Entry>| match e {
            None => "absent".to_string(),
            Some(e) => {
                let mut s = format!("{} {} B", e.kind, e.size);
                if let Some(m) = &e.mode {
                    s.push_str(&format!(" mode {m}"));
                }
                if let Some(o) = &e.owner {
                    s.push_str(&format!(" owner {o}"));
                }
                if let Some(h) = &e.sha256 {
                    s.push_str(&format!(" sha256 {}", &h[..12]));
                }
                s
            }
        };
        let what = if self.what.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.what.join(", "))
        };
        format!(
            "{} {}{what}: {} → {}",
            self.change,
            self.path,
            side(&self.before),
            side(&self.after)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sha: &str, mode: &str) -> Entry {
        Entry {
            kind: "file",
            mode: Some(mode.into()),
            owner: Some("0:0".into()),
            size: 1,
            sha256: Some(sha.repeat(64)),
        }
    }

    #[test]
    fn changes_name_added_removed_and_what_changed() {
        let before: Listing = [
            ("/a".to_string(), file("a", "0644")),
            ("/b".to_string(), file("b", "0644")),
            ("/c".to_string(), file("c", "0644")),
        ]
        .into();
        let after: Listing = [
            ("/a".to_string(), file("a", "0644")),
            ("/b".to_string(), file("x", "4755")),
            ("/d".to_string(), file("d", "0644")),
        ]
        .into();
        let c = changes(&before, &after);
        let summary: Vec<(&str, &str, Vec<&str>)> = c
            .iter()
            .map(|c| (c.path.as_str(), c.change, c.what.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/b", "changed", vec!["content", "mode"]),
                ("/c", "removed", vec![]),
                ("/d", "added", vec![]),
            ]
        );
        assert!(c[0]
            .line()
            .starts_with("changed /b (content, mode): file 1 B mode 0644"));
        assert!(changes(&before, &before).is_empty());
    }

    #[test]
    fn ext4_listing_sees_modes_links_and_devices() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root to mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/a"), "hi\n").unwrap();
        std::os::unix::fs::symlink("a", src.join("etc/l")).unwrap();
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let ok = Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-d"])
            .arg(&src)
            .arg(&img)
            .status()
            .unwrap();
        assert!(ok.success());
        let listing = list_ext4(&img).unwrap();
        assert_eq!(
            listing["/etc/a"].sha256.as_deref(),
            Some(sha256_bytes(b"hi\n").as_str())
        );
        assert_eq!(listing["/etc/l"].kind, "symlink");
        assert!(listing.contains_key("/lost+found"));
        // Unmounted again.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains("plinth-mount-"), "{mounts}");
    }
}
