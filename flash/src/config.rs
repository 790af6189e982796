//! The provider's `config.yaml` into the disk's `config` partition (a FAT file system),
//! without mounting it: `mcopy -o -i DEVICE@@OFFSET`, read back with `mtype`, and the file
//! system checked with `fsck.vfat -n` (through a read-only loop device over the partition's
//! span for a block device, a copy of the span for a file).
//!
//! Here the file is only checked to be a regular file of at most [`MAX_CONFIG`] bytes of
//! UTF-8; what it says is checked elsewhere (`plinth config check`, `plinth-node-config`). The
//! bytes checked are the bytes written: they are copied into a private scratch directory
//! first.

use super::{io_err, scratch_dir, FlashError};
use plinth_release::manifest::PartitionImage;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The largest `config.yaml` written.
pub const MAX_CONFIG: u64 = 64 << 10;
/// Its name in the `config` partition.
pub const CONFIG_NAME: &str = "config.yaml";

/// `path`'s bytes, if it is a regular file (not a link) of at most [`MAX_CONFIG`] bytes of
/// UTF-8; else what is wrong (a caller adds how its user gave the file).
pub fn check_config(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = plinth_release::untrusted::read_untrusted(path, MAX_CONFIG).map_err(|e| {
        format!(
            "{}: {e} (the provider's config.yaml is a regular file of at most {MAX_CONFIG} bytes)",
            path.display()
        )
    })?;
    if let Err(e) = std::str::from_utf8(&bytes) {
        return Err(format!(
            "{}: not UTF-8 text ({e}; the provider's config.yaml is YAML, which is UTF-8)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Run `cmd`; its stdout, or an error with the command to reproduce it.
fn run(cmd: &mut Command) -> Result<Vec<u8>, FlashError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| FlashError::Tool {
            command: shown.clone(),
            message: format!("cannot start it: {e}"),
        })?;
    if !out.status.success() {
        return Err(FlashError::Tool {
            command: shown,
            message: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// mtools' image argument: the device at the partition's offset.
fn at_offset(device: &Path, partition: &PartitionImage) -> std::ffi::OsString {
    let mut arg = device.as_os_str().to_owned();
    arg.push(format!("@@{}", partition.offset));
    arg
}

/// Write `bytes` as `config.yaml` into `partition` of `device`, read it back with `mtype`
/// and compare, then sync the device.
pub fn write_config(
    device: &Path,
    partition: &PartitionImage,
    bytes: &[u8],
) -> Result<(), FlashError> {
    write_files(device, partition, &[(CONFIG_NAME, bytes)])
}

/// Write each `(name, bytes)` into the root of the FAT partition `partition` of `device`
/// (names are plain 8.3-safe file names, checked by the caller), then read each back.
pub fn write_files(
    device: &Path,
    partition: &PartitionImage,
    files: &[(&str, &[u8])],
) -> Result<(), FlashError> {
    let scratch = scratch_dir("plinth-flash-config.")
        .map_err(io_err(Path::new("TMPDIR"), "create a scratch directory in"))?;
    let image = at_offset(device, partition);
    for (name, bytes) in files {
        let file = scratch.path().join(name);
        std::fs::write(&file, bytes).map_err(io_err(&file, "write"))?;
        run(Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(&image)
            .arg(&file)
            .arg(format!("::{name}")))?;
    }
    std::fs::File::open(device)
        .and_then(|f| f.sync_all())
        .map_err(io_err(device, "sync"))?;
    for (name, bytes) in files {
        let back = run(Command::new("mtype")
            .arg("-i")
            .arg(&image)
            .arg(format!("::{name}")))?;
        if back != *bytes {
            return Err(FlashError::Tool {
                command: format!(
                    "mtype -i {}@@{} ::{name}",
                    device.display(),
                    partition.offset
                ),
                message: format!(
                    "read back {} bytes that differ from the {} written",
                    back.len(),
                    bytes.len()
                ),
            });
        }
    }
    Ok(())
}

/// A read-only loop device over a span, detached when dropped.
struct Loop(PathBuf);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// `fsck.vfat -n` over `partition` of `device` (a block device through a read-only loop
/// device over the span; a file through a copy of the span).
pub fn fsck_config(
    device: &Path,
    block: bool,
    partition: &PartitionImage,
) -> Result<(), FlashError> {
    let scratch;
    let _loop;
    let target = if block {
        let out = run(Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(format!("--offset={}", partition.offset))
            .arg(format!("--sizelimit={}", partition.size))
            .arg(device))?;
        let dev = PathBuf::from(String::from_utf8_lossy(&out).trim());
        _loop = Loop(dev.clone());
        dev
    } else {
        scratch = scratch_dir("plinth-flash-fsck.")
            .map_err(io_err(Path::new("TMPDIR"), "create a scratch directory in"))?;
        let copy = scratch.path().join("config.img");
        plinth_release::blocks::copy_span_sparse(device, partition.offset, partition.size, &copy)
            .map_err(io_err(device, "copy the config partition of"))?;
        copy
    };
    run(Command::new("fsck.vfat").arg("-n").arg(&target))?;
    Ok(())
}
