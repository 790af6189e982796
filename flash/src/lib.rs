//! Writing a release's disk image onto a disk or a file, and reading it back: the one job of
//! this crate, used by `plinth flash` (a SetupOS release onto a USB stick) and by
//! `plinth-setup install` (HostOS and GuestOS onto a node's NVMe disks). It draws nothing and
//! asks nothing: callers get progress through callbacks, cancel through a flag, and every
//! failure as a [`FlashError`]; one process may open and write several images onto several
//! disks with it.
//!
//! [`device`] inspects the target and refuses one in use; [`image`] opens the release as the
//! hostile input it is (manifest, archive digest, member bounds); [`write`](mod@write)
//! streams the image onto the target with the first MiB (the primary GPT) written last;
//! [`verify`] reads every partition back from the target; [`config`] puts the provider's
//! `config.yaml` into the `config` partition with mtools. [`Disk`] is the open target they
//! share: `O_DIRECT` where the kernel takes it, a buffered descriptor for the rest.

pub mod config;
pub mod device;
pub mod image;
pub mod verify;
pub mod write;

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment of buffers, offsets and lengths given to an `O_DIRECT` descriptor: the largest
/// logical block size of common disks (a 512-byte one accepts it too).
pub const ALIGN: usize = 4096;
/// A mebibyte: the GPT region, the block of partition digests, the unit of writes.
pub const MIB: u64 = 1 << 20;

/// Why flashing failed (the target's own refusals are [`device::Refusal`]).
#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error(transparent)]
    Refused(#[from] device::Refusal),
    /// The release is not what its manifest says, or not what a plinth build writes: bad
    /// input.
    #[error("{}: {message}\n  hint: the release is corrupt, incomplete or crafted; fetch it again (a release is a directory holding manifest.json and disk-img.tar.zst)", path.display())]
    Release { path: PathBuf, message: String },
    #[error(transparent)]
    Archive(#[from] plinth_release::archive::ArchiveError),
    #[error(transparent)]
    Manifest(#[from] plinth_release::manifest::ManifestError),
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("{command} failed: {message}\n  to reproduce: {command}")]
    Tool { command: String, message: String },
    /// Ctrl-C or SIGTERM while writing.
    #[error("interrupted")]
    Interrupted,
}

impl FlashError {
    /// Bad input (exit 2): a refused target or a crafted release.
    pub fn is_bad_input(&self) -> bool {
        match self {
            FlashError::Refused(r) => r.is_bad_input(),
            FlashError::Release { .. } | FlashError::Manifest(_) => true,
            FlashError::Archive(a) => a.is_crafted(),
            FlashError::Io { .. } | FlashError::Tool { .. } | FlashError::Interrupted => false,
        }
    }
}

pub(crate) fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> FlashError + 'a {
    move |source| FlashError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// A new temporary directory `<TMPDIR>/<prefix>XXXXXX` with mode 0700, removed when dropped
/// (`tempfile`'s own default is 0755 under umask 022).
pub(crate) fn scratch_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
}

/// A zeroed buffer of `len` bytes starting on an [`ALIGN`] boundary, as `O_DIRECT` needs
/// (a `Vec` over-allocated by one alignment and sliced: no unsafe code).
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        assert!(
            start < ALIGN,
            "an address can be aligned within ALIGN bytes"
        );
        AlignedBuf { raw, start, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Whether `bytes` are all zero (16 at a time).
pub fn all_zero(bytes: &[u8]) -> bool {
    let chunks = bytes.chunks_exact(16);
    let rest = chunks.remainder();
    chunks
        .map(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")))
        .all(|v| v == 0)
        && rest.iter().all(|&b| b == 0)
}

/// The open target: `O_DIRECT` (when the kernel accepts it) for aligned transfers, a
/// buffered descriptor for the rest. A block device is opened `O_EXCL` for writing: the
/// kernel refuses that while anything mounts or holds it, which closes the window between
/// [`device::check_unused`] and the first write.
pub struct Disk {
    pub path: PathBuf,
    direct: Option<File>,
    buffered: File,
    pub block: bool,
    /// Bytes: the device's capacity or the file's length.
    pub capacity: u64,
    /// A new or empty regular file: zero blocks may be left as holes.
    pub fresh: bool,
    /// Why `O_DIRECT` is not used, when it is not.
    pub buffered_because: Option<String>,
}

impl Disk {
    /// Open `target` to write it (a missing file is created, mode 0644, never through a link).
    pub fn open_write(target: &device::Target) -> Result<Disk, FlashError> {
        Self::open(target, true)
    }

    /// Open `target` to read it back only (verifying what an earlier write left).
    pub fn open_read(target: &device::Target) -> Result<Disk, FlashError> {
        Self::open(target, false)
    }

    fn open(target: &device::Target, write: bool) -> Result<Disk, FlashError> {
        let path = &target.path;
        let block = target.is_block();
        let mut base = std::fs::OpenOptions::new();
        base.read(true).write(write);
        let mut flags = 0;
        if block && write {
            flags |= nix::libc::O_EXCL;
        } else if !block {
            flags |= nix::libc::O_NOFOLLOW;
            if write {
                base.create(true).mode(0o644);
            }
        }
        let mut with_direct = base.clone();
        with_direct.custom_flags(flags | nix::libc::O_DIRECT);
        let (direct, buffered_because) = match with_direct.open(path) {
            Ok(f) => (Some(f), None),
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                (None, Some(format!("the kernel refused O_DIRECT ({e})")))
            }
            Err(e) if block && e.raw_os_error() == Some(nix::libc::EBUSY) => {
                return Err(device::Refusal::Busy {
                    path: path.clone(),
                    source: e,
                }
                .into())
            }
            Err(e) => return Err(io_err(path, "open")(e)),
        };
        // The buffered descriptor: not exclusive (the direct one, or this one when O_DIRECT
        // was refused, holds the claim).
        let mut plain = base.clone();
        let claim = if direct.is_none() {
            flags
        } else {
            flags & !nix::libc::O_EXCL
        };
        plain.custom_flags(claim);
        let buffered = plain.open(path).map_err(|e| {
            if block && e.raw_os_error() == Some(nix::libc::EBUSY) {
                FlashError::from(device::Refusal::Busy {
                    path: path.clone(),
                    source: e,
                })
            } else {
                io_err(path, "open")(e)
            }
        })?;
        let capacity = if block {
            target.size
        } else {
            buffered.metadata().map_err(io_err(path, "stat"))?.len()
        };
        Ok(Disk {
            path: path.clone(),
            direct,
            buffered,
            block,
            capacity,
            fresh: !block && capacity == 0,
            buffered_because,
        })
    }

    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn aligned(buf: &[u8], pos: u64) -> bool {
        pos % ALIGN as u64 == 0 && buf.len() % ALIGN == 0 && buf.as_ptr().align_offset(ALIGN) == 0
    }

    /// A regular file grown (as a hole) to at least `len` bytes.
    pub fn grow(&mut self, len: u64) -> Result<(), FlashError> {
        if !self.block && self.capacity < len {
            self.buffered
                .set_len(len)
                .map_err(io_err(&self.path, "grow"))?;
            self.capacity = len;
        }
        Ok(())
    }

    /// Write all of `buf` at `pos`: `O_DIRECT` when aligned, else (or when the kernel
    /// refuses it) buffered.
    pub fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            if Self::aligned(buf, pos) {
                match direct.write_all_at(buf, pos) {
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {}
                    other => return other,
                }
            }
        }
        self.buffered.write_all_at(buf, pos)
    }

    /// Read exactly `buf.len()` bytes at `pos` from the medium, not the page cache:
    /// `O_DIRECT` when aligned, else buffered after dropping the range from the cache.
    pub fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            if Self::aligned(buf, pos) {
                match direct.read_exact_at(buf, pos) {
                    Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {}
                    other => return other,
                }
            }
        }
        self.drop_cache(pos, buf.len() as u64)?;
        self.buffered.read_exact_at(buf, pos)
    }

    /// Drop `len` bytes from `pos` from the page cache (written back first).
    pub fn drop_cache(&self, pos: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        self.buffered.sync_data()?;
        posix_fadvise(
            &self.buffered,
            pos as i64,
            len as i64,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(io::Error::from)
    }

    /// Everything written so far on the medium (both descriptors; for a block device a
    /// cache flush).
    pub fn sync(&self) -> io::Result<()> {
        self.buffered.sync_all()?;
        if let Some(d) = &self.direct {
            d.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zero_checks_agree() {
        for len in [0, 1, ALIGN, 3 * ALIGN + 17] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().as_ptr().align_offset(ALIGN), 0);
            assert_eq!(b.as_slice().len(), len);
            assert!(all_zero(b.as_slice()));
            if len > 0 {
                b.as_mut_slice()[len - 1] = 1;
                assert!(!all_zero(b.as_slice()), "last byte of {len}");
                b.as_mut_slice()[len - 1] = 0;
                b.as_mut_slice()[0] = 1;
                assert!(!all_zero(b.as_slice()), "first byte of {len}");
            }
        }
    }
}
