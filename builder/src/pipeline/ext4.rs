//! The root filesystem image: ext4 made by `mke2fs -d` from the normalized tree, with the UUID
//! and directory hash seed derived (never random), a fixed mke2fs configuration (the host's
//! /etc/mke2fs.conf must not change the bytes), fake time, and then every inode's times
//! clamped with `debugfs` (mke2fs copies ctime from the source tree, which cannot be set).
//! That image holds the package stage's tree and has its own stage cache entry (keyed by the
//! packages, the version and the partition); [`apply`] then writes the
//! overlay's and the agent's [`Change`]s into a copy with `debugfs`, so an overlay change costs
//! a few inodes instead of a new filesystem. `e2fsck -fn` must find nothing after each step.

use super::overlay::{Change, What};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// ext4 settings of plinth images: no journal (the root is read-only under dm-verity), 4 KiB
/// blocks, checksummed metadata, no reserved blocks.
const MKE2FS_CONF: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 0
[fs_types]
\text4 = {
\t\tfeatures = extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// What to make.
#[derive(Debug, Clone, Copy)]
pub struct Ext4Plan<'a> {
    /// The tree to copy in.
    pub root: &'a Path,
    /// The image file to create.
    pub image: &'a Path,
    /// Bytes; the partition's size.
    pub size: u64,
    pub uuid: &'a str,
    pub hash_seed: &'a str,
    /// At most 16 bytes.
    pub label: &'a str,
    /// SOURCE_DATE_EPOCH: every inode time.
    pub epoch: i64,
}

/// Why an ext4 image could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("{image}: the tree {root} ({tree_mib} MiB in files) does not fit a {size_mib} MiB ext4 partition:\n{output}\n  hint: raise the partition's size in os.yaml (partition_sizes in the profile)")]
    TooSmall {
        image: String,
        root: String,
        tree_mib: u64,
        size_mib: u64,
        output: String,
    },
    #[error("{image}: the file system holding it is full ({free_mib} MiB left) while mke2fs wrote the {size_mib} MiB image of {root} ({tree_mib} MiB in files):\n{output}\n  hint: the partition is not too small: free space on that file system, or build on another one (the work directory: TMPDIR or --work; the stage cache: --cache); a build needs a few GiB")]
    HostFull {
        image: String,
        root: String,
        tree_mib: u64,
        size_mib: u64,
        free_mib: u64,
        output: String,
    },
    #[error(transparent)]
    Tool(#[from] super::tool::ToolError),
    #[error("debugfs failed on {image}: {line}")]
    Debugfs { image: String, line: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: a file name with a double quote, a line break, a carriage return or bytes that are not UTF-8 cannot be given to debugfs\n  hint: rename it in the overlay or the package set")]
    BadName { path: String },
}

/// Make the image and check it.
pub fn make(plan: &Ext4Plan<'_>) -> Result<(), Ext4Error> {
    let io = |path: &Path, e: std::io::Error| Ext4Error::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let dir = plan.image.parent().unwrap_or(Path::new("."));
    let conf = dir.join(".mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).map_err(|e| io(&conf, e))?;
    let _ = std::fs::remove_file(plan.image);
    let file = std::fs::File::create(plan.image).map_err(|e| io(plan.image, e))?;
    file.set_len(plan.size).map_err(|e| io(plan.image, e))?;
    drop(file);
    let free_before = super::artifacts::free_bytes(dir).ok();

    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(plan.root)
        .args(["-U", plan.uuid, "-L", plan.label])
        .arg("-E")
        .arg(format!("hash_seed={},root_owner=0:0", plan.hash_seed))
        .arg(plan.image)
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", plan.epoch.to_string())
        .env("TZ", "UTC")
        .env("LC_ALL", "C");
    let out = run("mke2fs", super::tool::scratch(&mut mke2fs));
    let _ = std::fs::remove_file(&conf);
    if let Err(Ext4Error::Tool(super::tool::ToolError::Failed { output, .. })) = &out {
        if output.contains("Could not allocate") || output.contains("No space left") {
            let (image, root) = (
                plan.image.display().to_string(),
                plan.root.display().to_string(),
            );
            let (tree_mib, size_mib, output) =
                (tree_bytes(plan.root) >> 20, plan.size >> 20, output.clone());
            // The image is sparse: mke2fs also runs out of space when the file system the
            // image lives on fills up, which no partition size would cure.
            if let Some(free) = host_ran_out(dir, free_before, plan.size) {
                let _ = std::fs::remove_file(plan.image);
                return Err(Ext4Error::HostFull {
                    image,
                    root,
                    tree_mib,
                    size_mib,
                    free_mib: free >> 20,
                    output,
                });
            }
            return Err(Ext4Error::TooSmall {
                image,
                root,
                tree_mib,
                size_mib,
                output,
            });
        }
    }
    out?;
    clamp_inode_times(plan)?;
    check(plan.image)
}

/// Write `changes` (parents before children) into the ext4 image `image` made by [`make`]:
/// directories made, files and links replaced, owner root, group root (or a file's own gid),
/// the given modes, and every time of each changed inode and of its parent directories set to
/// `epoch`. Then `e2fsck -fn`.
pub fn apply(image: &Path, changes: &[Change], epoch: i64) -> Result<(), Ext4Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let stamp = debugfs_time(epoch);
    let mut script = String::new();
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    for change in changes {
        let abs = Path::new("/").join(&change.path);
        let parent = abs.parent().unwrap_or(Path::new("/"));
        let name = quoted(Path::new(abs.file_name().unwrap_or_default()))?;
        let (path, parent_q) = (quoted(&abs)?, quoted(parent)?);
        if change.replaces {
            // debugfs unlinks the name from its current directory.
            script.push_str(&format!("cd {parent_q}\nrm {name}\n"));
        }
        let mut gid = 0;
        let mode = match &change.what {
            What::Dir => {
                if !change.exists {
                    script.push_str(&format!("cd {parent_q}\nmkdir {name}\n"));
                }
                Some(0o040755)
            }
            What::File {
                source,
                mode,
                gid: group,
            } => {
                gid = *group;
                let source = quoted(source)?;
                script.push_str(&format!("cd {parent_q}\nwrite {source} {name}\n"));
                Some(0o100000 | mode)
            }
            What::Symlink { target } => {
                let target = quoted(target)?;
                script.push_str(&format!("cd {parent_q}\nsymlink {name} {target}\n"));
                None
            }
        };
        if let Some(mode) = mode {
            script.push_str(&format!("sif {path} mode 0{mode:o}\n"));
        }
        script.push_str(&format!("sif {path} uid 0\nsif {path} gid {gid}\n"));
        touched.extend(abs.ancestors().map(Path::to_path_buf));
    }
    for t in &touched {
        let t = quoted(t)?;
        for field in ["atime", "mtime", "ctime", "crtime"] {
            script.push_str(&format!(
                "sif {t} {field} {stamp}\nsif {t} {field}_extra 0\n"
            ));
        }
    }
    debugfs(image, &script, epoch)?;
    check(image)
}

/// `e2fsck -fn`: any finding fails the build. Read-only, so its closing fsync is skipped
/// (it waited seconds for the image's own unwritten pages).
fn check(image: &Path) -> Result<(), Ext4Error> {
    let mut fsck = Command::new("e2fsck");
    fsck.arg("-fn").arg(image);
    run("e2fsck", super::tool::scratch(&mut fsck))?;
    Ok(())
}

/// `path` in double quotes for a debugfs script; names debugfs cannot take are refused.
fn quoted(path: &Path) -> Result<String, Ext4Error> {
    let Some(text) = path.to_str() else {
        return Err(Ext4Error::BadName {
            path: path.display().to_string(),
        });
    };
    if text.contains(['"', '\n', '\r']) {
        return Err(Ext4Error::BadName { path: text.into() });
    }
    Ok(format!("\"{text}\""))
}

/// Run a debugfs script on `image` (writable, fake time `epoch`); a failed command is an error.
fn debugfs(image: &Path, script: &str, epoch: i64) -> Result<(), Ext4Error> {
    let script_path = image.with_extension("debugfs");
    std::fs::write(&script_path, script).map_err(|e| Ext4Error::Io {
        path: script_path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut debugfs = Command::new("debugfs");
    debugfs
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string());
    let out = run("debugfs", super::tool::scratch(&mut debugfs));
    let _ = std::fs::remove_file(&script_path);
    let stderr = out?;
    // debugfs reports a failed command on stderr and still exits 0.
    if let Some(line) = stderr.lines().find(|l| !l.starts_with("debugfs ")) {
        return Err(Ext4Error::Debugfs {
            image: image.display().to_string(),
            line: line.to_string(),
        });
    }
    Ok(())
}

/// Set ctime, atime, mtime (when later) and crtime of every inode to at most `epoch`.
fn clamp_inode_times(plan: &Ext4Plan<'_>) -> Result<(), Ext4Error> {
    let paths = super::normalize::walk(plan.root).map_err(|e| Ext4Error::Io {
        path: e.path,
        message: e.message,
    })?;
    let mut script = String::new();
    let stamp = debugfs_time(plan.epoch);
    let mut targets = vec![quoted(Path::new("/"))?];
    for path in &paths {
        let rel = path.strip_prefix(plan.root).unwrap_or(path);
        targets.push(quoted(&Path::new("/").join(rel))?);
    }
    for t in &targets {
        for field in ["ctime", "crtime", "atime"] {
            script.push_str(&format!("sif {t} {field} {stamp}\n"));
        }
    }
    debugfs(plan.image, &script, plan.epoch)
}

/// debugfs's time format: `YYYYMMDDHHMMSS` in UTC.
fn debugfs_time(t: i64) -> String {
    let text = crate::packages::release::format_unix(t);
    text.chars().filter(|c| c.is_ascii_digit()).collect()
}

/// Below this much free space on the image's file system, a failed mke2fs may have run out of
/// host space rather than partition space (it stops within a few blocks of full).
const HOST_FULL_BELOW: u64 = 64 << 20;

/// Whether mke2fs ran out of space on the file system holding the image (`dir`), not in the
/// partition: there was less room than the partition's `size` before it started, and next to
/// none is left. A partition that really is too small on a host that had room for it is not
/// this. The free bytes left, when it is.
fn host_ran_out(dir: &Path, free_before: Option<u64>, size: u64) -> Option<u64> {
    let after = super::artifacts::free_bytes(dir).ok()?;
    (free_before? < size && after < HOST_FULL_BELOW).then_some(after)
}

fn tree_bytes(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    super::normalize::walk(root)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .filter(|m| m.is_file())
        .map(|m| m.size())
        .sum()
}

/// Run an e2fsprogs tool; its stderr (debugfs reports failed commands there).
fn run(tool: &'static str, cmd: &mut Command) -> Result<String, Ext4Error> {
    Ok(super::tool::run(tool, "e2fsprogs", cmd)?.stderr)
}

#[cfg(test)]
mod tests {
    #[test]
    fn debugfs_time_format() {
        assert_eq!(super::debugfs_time(1_700_000_000), "20231114221320");
    }
}
