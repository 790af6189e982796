//! Release artifacts: the images as deterministic `.tar.zst` archives, and `SHA256SUMS`.
//!
//! An archive's bytes depend only on its members' names and contents and on
//! SOURCE_DATE_EPOCH: members are sorted by name, every header says mode 0644, owner 0:0 with
//! no user or group names, mtime = the epoch, and carries no atime, ctime or pax records.
//!
//! The tar stream is written here, not by the host's GNU tar, because GNU tar's output depends
//! on how a file is allocated, not only on what it holds: it stores a member sparse only when
//! `st_blocks` shows holes, and `--hole-detection=seek` stores whatever the file system calls
//! data, zeros included (checked with GNU tar 1.34: the same bytes, allocated or not, gave
//! different archives). plinth writes the same format (GNU, `--format=gnu`: old-GNU sparse
//! members, base-256 numbers past the octal range, 10 KiB records) and decides holes by content:
//! every all-zero 512-byte block is a hole, as `--hole-detection=raw` decides, and a member with
//! none is a plain member. For files that have holes on disk (or no zero block at all) the
//! bytes equal those of `tar --format=gnu --sparse --hole-detection=raw --sort=name
//! --mtime=@EPOCH --owner=0 --group=0 --numeric-owner --mode=0644` (a test compares them byte
//! for byte). `SEEK_DATA`/`SEEK_HOLE` only let the scan skip
//! holes (they read as zeros, so skipping them cannot change the result): a 64 GiB image that
//! is mostly holes is scanned in the time its data takes to read.
//!
//! The tar stream goes through zstd ([`Compression::RELEASE`]: level [`ZSTD_LEVEL`], frame
//! checksum and content size) from the libzstd the `zstd-sys` crate bundles, pinned by
//! Cargo.lock, so the host's zstd plays no part. The stream is cut into independent frames
//! at content positions ([`super::frames`]: before and after each 4 MiB window of member data,
//! windows starting at the member's anchors), compressed on [`ZSTD_WORKERS`] threads; frames
//! already in an earlier archive are copied from it. The level, the window rule and the
//! libzstd version are part of the format; the thread count and reuse are not. Nothing is
//! held in memory whole beyond a batch of frames, and the output is hashed as it is written,
//! into a temporary file renamed into place only when complete.
//!
//! Archives are read back by [`plinth_release::archive`]'s strict reader (re-exported here:
//! [`extract_bounded`], [`for_each_member`]), since they may come from anywhere.
//! [`sha256sums`], [`read_sha256sums`] and
//! [`check`] write and check `SHA256SUMS` in `sha256sum`'s format.

use super::frames::{FrameIndex, FramePool, FrameWriter, FRAME};
use plinth_release::Sha256;
use plinth_release::{FileName, Sha256Writer};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The checksum list of a release directory.
pub const SHA256SUMS: &str = "SHA256SUMS";
/// zstd level of release archives. On a 634 MiB GuestOS root image here (2 threads, one
/// stream): level 3 took 2.9 s for 167 MB, level 6 10.5 s for 154 MB, level 10 18.7 s for
/// 146 MB. Level 6 keeps a full build under half of mkosi's time (ci/bench-images) for 6 %
/// more bytes than level 10.
pub const ZSTD_LEVEL: i32 = 6;
/// Threads compressing frames; any count gives the same bytes.
pub const ZSTD_WORKERS: u32 = 2;
use plinth_release::archive::BLOCK;
pub use plinth_release::archive::{
    extract_bounded, extract_tar_zst, for_each_member, free_bytes, private_dir, ArchiveError,
    Bound, Bounds, DISK_ARCHIVE, MAX_NAME_LEN, MEMBER_MODE, MEMBER_SLACK, UPDATE_ARCHIVE,
};

/// GNU tar's default record: 20 blocks; the archive is padded to a whole record.
const RECORD: u64 = 20 * BLOCK as u64;
/// Read size when scanning and copying files.
const CHUNK: usize = 1 << 20;
/// Sparse map entries in a GNU header, and in each extension block after it.
const SPARSE_IN_HEADER: usize = 4;
const SPARSE_IN_EXTENSION: usize = 21;
static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// One archive member: `name` in the archive, its bytes read from `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub name: String,
    pub source: PathBuf,
    /// Offsets in `source` where frame windows start over (0 always does): a disk image's
    /// partition offsets, so that a partition is framed as its own image is.
    pub anchors: Vec<u64>,
}

impl TarEntry {
    pub fn new(name: impl Into<String>, source: impl Into<PathBuf>) -> TarEntry {
        TarEntry {
            name: name.into(),
            source: source.into(),
            anchors: vec![0],
        }
    }

    /// The same member with frame windows also starting at `anchors`.
    pub fn with_anchors(mut self, anchors: impl IntoIterator<Item = u64>) -> TarEntry {
        self.anchors.extend(anchors);
        self.anchors.sort_unstable();
        self.anchors.dedup();
        self
    }
}

/// A file of a release directory: its name there, sha256 and size (the manifest's entry).
pub use plinth_release::manifest::OutputFile;

/// The zstd settings of an archive. Releases use [`Compression::RELEASE`]; others exist for
/// measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub level: i32,
    /// Threads compressing frames (0 counts as 1); any count gives the same bytes.
    pub workers: u32,
}

impl Compression {
    pub const RELEASE: Compression = Compression {
        level: ZSTD_LEVEL,
        workers: ZSTD_WORKERS,
    };
}

/// A line of `SHA256SUMS`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SumEntry {
    pub sha256: Sha256,
    pub name: String,
}

/// One file that [`check`] found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SumFailure {
    Missing {
        name: String,
    },
    Different {
        name: String,
        expected: Sha256,
        actual: Sha256,
    },
}

impl std::fmt::Display for SumFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SumFailure::Missing { name } => write!(f, "{name}: missing"),
            SumFailure::Different {
                name,
                expected,
                actual,
            } => write!(f, "{name}: sha256 {actual}, expected {expected}"),
        }
    }
}

/// Why an artifact could not be written, read or checked.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("archive member name `{name}`: {reason}\n  hint: use a relative path of at most {MAX_NAME_LEN} bytes of letters, digits and `._+-/`, without `.` or `..` components")]
    BadName { name: String, reason: &'static str },
    #[error("archive member `{name}` is given twice\n  hint: every member needs its own name")]
    DuplicateName { name: String },
    #[error("{}: not a regular file\n  hint: archives hold image files only", path.display())]
    NotAFile { path: PathBuf },
    #[error("SOURCE_DATE_EPOCH {epoch} is negative\n  hint: use the release commit's time (`git log -1 --format=%ct`)")]
    BadEpoch { epoch: i64 },
    #[error("{}: changed size while it was archived ({before} bytes, then {after})\n  hint: nothing may write an image while its artifacts are made", path.display())]
    Changed {
        path: PathBuf,
        before: u64,
        after: u64,
    },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{}: line {line}: {message}\n  hint: each line is `<sha256>  <name>`, as sha256sum writes it", path.display())]
    BadSums {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{}: {} of {checked} files do not match their SHA256SUMS line:\n{}\n  hint: a file changed after SHA256SUMS was written, or was built from other inputs", dir.display(), failures.len(), failures.iter().map(|f| format!("    {f}")).collect::<Vec<_>>().join("\n"))]
    Mismatch {
        dir: PathBuf,
        checked: usize,
        failures: Vec<SumFailure>,
    },
}

impl ArtifactError {
    /// Whether the archive itself is at fault (crafted or corrupt): bad input, exit code 2.
    pub fn is_crafted(&self) -> bool {
        matches!(self, ArtifactError::Archive(e) if e.is_crafted())
    }
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> ArtifactError + 'a {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Check that `name` is a safe, portable member (and SHA256SUMS) name.
fn check_name(name: &str) -> Result<(), ArtifactError> {
    plinth_release::archive::check_name(name).map_err(|reason| ArtifactError::BadName {
        name: name.to_string(),
        reason,
    })
}

/// The entries sorted by name, after checking names and refusing duplicates.
fn sorted_entries(entries: &[TarEntry]) -> Result<Vec<&TarEntry>, ArtifactError> {
    let mut sorted: Vec<&TarEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    for (i, e) in sorted.iter().enumerate() {
        check_name(&e.name)?;
        if i > 0 && sorted[i - 1].name == e.name {
            return Err(ArtifactError::DuplicateName {
                name: e.name.clone(),
            });
        }
    }
    Ok(sorted)
}

/// Write `entries` as a deterministic `.tar.zst` at `out` with [`Compression::RELEASE`].
pub fn write_tar_zst(
    out: &Path,
    entries: &[TarEntry],
    epoch: i64,
) -> Result<OutputFile, ArtifactError> {
    Ok(write_tar_zst_with(
        out,
        entries,
        epoch,
        Compression::RELEASE,
        &FramePool::default(),
    )?
    .file)
}

/// An archive written by [`write_tar_zst_with`].
#[derive(Debug, Clone)]
pub struct WrittenArchive {
    pub file: OutputFile,
    /// Its frames, for reuse by later archives.
    pub frames: FrameIndex,
    /// Raw bytes whose frames were copied from `pool` instead of compressed.
    pub reused: u64,
}

/// [`write_tar_zst`] with other zstd settings, reusing the frames of `pool` where their
/// content recurs (the bytes are the same either way). The file is not synced: whoever
/// publishes it syncs it first (the release syncs every file before its final rename).
pub fn write_tar_zst_with(
    out: &Path,
    entries: &[TarEntry],
    epoch: i64,
    compression: Compression,
    pool: &FramePool,
) -> Result<WrittenArchive, ArtifactError> {
    let Some(name) = out.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Err(io_err(out, "write an archive to")(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        )));
    };
    let file_name: FileName = name.parse().map_err(|e| {
        io_err(out, "write an archive to")(io::Error::new(io::ErrorKind::InvalidInput, e))
    })?;
    let mtime = u64::try_from(epoch).map_err(|_| ArtifactError::BadEpoch { epoch })?;
    let sorted = sorted_entries(entries)?;
    let tmp = out.with_file_name(format!(".{name}.partial"));
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        let hashing = Sha256Writer::new(BufWriter::with_capacity(CHUNK, file));
        let frames = FrameWriter::new(
            hashing,
            compression.level,
            compression.workers as usize,
            pool,
        );
        let mut tar = TarWriter {
            out: frames,
            out_path: out,
            written: 0,
            window: None,
        };
        for entry in sorted {
            tar.member(entry, mtime)?;
        }
        tar.finish()?;
        let (hashing, index, reused) = tar.out.finish().map_err(io_err(out, "write"))?;
        let (buffered, sha256, size) = hashing.finish();
        let file = buffered
            .into_inner()
            .map_err(|e| io_err(out, "write")(e.into_error()))?;
        drop(file);
        Ok(WrittenArchive {
            file: OutputFile {
                name: file_name,
                sha256,
                size,
            },
            frames: index,
            reused,
        })
    })();
    match result {
        Ok(written) => {
            std::fs::rename(&tmp, out).map_err(io_err(out, "rename into place"))?;
            Ok(written)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Where a member's frame windows end: every [`FRAME`] bytes from each anchor, and at the
/// next anchor.
struct Windows<'a> {
    anchors: &'a [u64],
}

impl Windows<'_> {
    /// The end of the window holding offset `at`.
    fn end(&self, at: u64) -> u64 {
        let i = self.anchors.partition_point(|&a| a <= at).saturating_sub(1);
        let start = self.anchors.get(i).copied().unwrap_or(0).min(at);
        let end = start + (at - start) / FRAME * FRAME + FRAME;
        match self.anchors.get(i + 1) {
            Some(&next) => end.min(next),
            None => end,
        }
    }
}

/// The GNU-format tar stream, into frames.
struct TarWriter<'a, 'p, W: Write> {
    out: FrameWriter<'p, W>,
    /// The archive, for errors.
    out_path: &'a Path,
    written: u64,
    /// The end of the window the current frame holds data of.
    window: Option<u64>,
}

impl<W: Write> TarWriter<'_, '_, W> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), ArtifactError> {
        self.out
            .put(bytes)
            .map_err(io_err(self.out_path, "write"))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn cut(&mut self) -> Result<(), ArtifactError> {
        self.out.cut().map_err(io_err(self.out_path, "write"))
    }

    /// Zeros up to the next multiple of `unit`.
    fn pad(&mut self, unit: u64) -> Result<(), ArtifactError> {
        let mut missing = (unit - self.written % unit) % unit;
        while missing > 0 {
            let n = missing.min(BLOCK as u64) as usize;
            self.put(&ZEROS[..n])?;
            missing -= n as u64;
        }
        Ok(())
    }

    fn member(&mut self, entry: &TarEntry, mtime: u64) -> Result<(), ArtifactError> {
        let path = entry.source.as_path();
        let file = File::open(path).map_err(io_err(path, "open"))?;
        let meta = file.metadata().map_err(io_err(path, "stat"))?;
        if !meta.is_file() {
            return Err(ArtifactError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let size = meta.len();
        let runs = data_runs(&file, path, size)?;
        if size == 0 || runs == [(0, size)] {
            let mut h = header(&entry.name, size, mtime, b'0');
            finish_header(&mut h);
            self.put(&h)?;
            self.copy(&file, path, &entry.anchors, 0, size)?;
        } else {
            // The map ends with a zero-length entry at the end when the file ends in a hole,
            // so that readers know the real size from the map alone (GNU tar does the same).
            let mut map = runs;
            if map.last().is_none_or(|&(o, l)| o + l < size) {
                map.push((size, 0));
            }
            let stored: u64 = map.iter().map(|&(_, l)| l).sum();
            let mut h = header(&entry.name, stored, mtime, b'S');
            put_num(&mut h[483..495], size);
            let (first, mut rest) = map.split_at(map.len().min(SPARSE_IN_HEADER));
            put_sparse(&mut h[386..482], first);
            h[482] = u8::from(!rest.is_empty());
            finish_header(&mut h);
            self.put(&h)?;
            while !rest.is_empty() {
                let (these, after) = rest.split_at(rest.len().min(SPARSE_IN_EXTENSION));
                let mut ext = [0u8; BLOCK];
                put_sparse(&mut ext[..504], these);
                ext[504] = u8::from(!after.is_empty());
                self.put(&ext)?;
                rest = after;
            }
            for &(offset, len) in &map {
                self.copy(&file, path, &entry.anchors, offset, len)?;
            }
        }
        self.cut()?;
        self.window = None;
        self.pad(BLOCK as u64)?;
        let after = file.metadata().map_err(io_err(path, "stat"))?.len();
        if after != size {
            return Err(ArtifactError::Changed {
                path: path.to_path_buf(),
                before: size,
                after,
            });
        }
        Ok(())
    }

    /// Copy `len` bytes of `file` from `offset`, cutting a frame where a window starts.
    fn copy(
        &mut self,
        file: &File,
        path: &Path,
        anchors: &[u64],
        offset: u64,
        len: u64,
    ) -> Result<(), ArtifactError> {
        let windows = Windows { anchors };
        let mut buf = vec![0u8; CHUNK.min(len as usize)];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            // A frame holds one window's data (all its runs): cut where another begins.
            let window = windows.end(pos);
            if self.window != Some(window) {
                self.cut()?;
                self.window = Some(window);
            }
            let n = ((end - pos) as usize).min(CHUNK);
            let n = n.min((window - pos) as usize);
            file.read_exact_at(&mut buf[..n], pos)
                .map_err(io_err(path, "read"))?;
            self.put(&buf[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// The end-of-archive marker (two zero blocks), then zeros to a whole record.
    fn finish(&mut self) -> Result<(), ArtifactError> {
        self.put(&ZEROS)?;
        self.put(&ZEROS)?;
        self.pad(RECORD)
    }
}

/// A GNU header without its checksum: fixed mode, owner 0:0 without names, `mtime`.
fn header(name: &str, size: u64, mtime: u64, typeflag: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    put_num(&mut h[100..108], MEMBER_MODE);
    put_num(&mut h[108..116], 0); // uid
    put_num(&mut h[116..124], 0); // gid
    put_num(&mut h[124..136], size);
    put_num(&mut h[136..148], mtime);
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar  \0"); // GNU magic and version
    h
}

/// The header checksum: the byte sum with the field read as spaces, as `%06o\0 `.
fn finish_header(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    put_num(&mut h[148..155], sum);
}

/// A number as tar writes it: zero-padded octal and a NUL when it fits, else (GNU) base-256:
/// 0x80, then the value big-endian.
pub fn put_num(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if digits * 3 >= 64 || value < 1u64 << (3 * digits) {
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        field[0] = 0x80;
        let be = value.to_be_bytes();
        let n = field.len();
        field[n - be.len()..].copy_from_slice(&be);
    }
}

/// Sparse map entries (offset, length), 24 bytes each.
fn put_sparse(area: &mut [u8], entries: &[(u64, u64)]) {
    for (i, &(offset, len)) in entries.iter().enumerate() {
        put_num(&mut area[24 * i..24 * i + 12], offset);
        put_num(&mut area[24 * i + 12..24 * i + 24], len);
    }
}

/// The (offset, length) runs of `file` that hold data: maximal runs of 512-byte blocks that
/// are not all zero (the last block may be short). Only the ranges the file system reports as
/// data are read; holes are zeros by definition.
fn data_runs(file: &File, path: &Path, size: u64) -> Result<Vec<(u64, u64)>, ArtifactError> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; CHUNK.min(size as usize)];
    for (start, end) in data_ranges(file, path, size)? {
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..n], pos)
                .map_err(io_err(path, "read"))?;
            for (i, block) in buf[..n].chunks(BLOCK).enumerate() {
                if block == &ZEROS[..block.len()] {
                    continue;
                }
                let at = pos + (i * BLOCK) as u64;
                match runs.last_mut() {
                    Some((o, l)) if *o + *l == at => *l += block.len() as u64,
                    _ => runs.push((at, block.len() as u64)),
                }
            }
            pos += n as u64;
        }
    }
    Ok(runs)
}

/// The ranges `SEEK_DATA`/`SEEK_HOLE` call data, widened to whole 512-byte blocks, merged.
/// A file system without hole support reports the whole file as data.
fn data_ranges(file: &File, path: &Path, size: u64) -> Result<Vec<(u64, u64)>, ArtifactError> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    let block = BLOCK as u64;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match lseek(file, pos as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(Errno::ENXIO) => break,
            Err(e) => return Err(io_err(path, "find data (SEEK_DATA)")(e.into())),
        };
        let hole = match lseek(file, data as i64, Whence::SeekHole) {
            Ok(h) => (h as u64).min(size),
            Err(Errno::ENXIO) => size,
            Err(e) => return Err(io_err(path, "find holes (SEEK_HOLE)")(e.into())),
        };
        let start = data / block * block;
        let end = hole.div_ceil(block).saturating_mul(block).min(size);
        match ranges.last_mut() {
            Some((_, e)) if *e >= start => *e = (*e).max(end),
            _ => ranges.push((start, end)),
        }
        pos = hole.max(data + 1);
    }
    Ok(ranges)
}

pub use plinth_release::untrusted::{open_untrusted, read_untrusted, MAX_TEXT};

/// A new temporary directory `<TMPDIR>/<prefix>XXXXXX` with mode 0700, removed when dropped.
/// (`tempfile`'s own directories get the default mode, 0755 under umask 022: anyone could
/// reach what is unpacked there.)
pub fn scratch_dir(prefix: &str) -> io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
}

/// The sha256 (lower-case hex) of `len` bytes of `path` from `offset` (e.g. a partition of a
/// disk image). Fails if the file ends first.
pub fn sha256_range(path: &Path, offset: u64, len: u64) -> Result<Sha256, ArtifactError> {
    let mut f = File::open(path).map_err(io_err(path, "open"))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(io_err(path, "seek"))?;
    let (sha256, n) = Sha256::of_reader(f.take(len)).map_err(io_err(path, "read"))?;
    if n != len {
        return Err(io_err(path, "read")(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{len} bytes from offset {offset} wanted, the file ends after {n}"),
        )));
    }
    Ok(sha256)
}

/// `SHA256SUMS` for the files `names` of `dir`, hashed now.
pub fn sha256sums(dir: &Path, names: &[&str]) -> Result<String, ArtifactError> {
    let mut files = Vec::new();
    for name in names {
        check_name(name)?;
        let path = dir.join(name);
        let (sha256, size) = Sha256::of_file(&path).map_err(io_err(&path, "hash"))?;
        let name = name.parse().map_err(|_| ArtifactError::BadName {
            name: name.to_string(),
            reason: "is not one release file name (letters, digits and . _ + -)",
        })?;
        files.push(OutputFile { name, sha256, size });
    }
    Ok(format_sha256sums(&files))
}

/// `SHA256SUMS` text for files already hashed: `<sha256>  <name>\n`, sorted by name.
pub fn format_sha256sums(files: &[OutputFile]) -> String {
    let mut lines: Vec<(&str, String)> = files
        .iter()
        .map(|f| (f.name.as_str(), f.sha256.to_hex()))
        .collect();
    lines.sort();
    lines
        .iter()
        .map(|(name, sha256)| format!("{sha256}  {name}\n"))
        .collect()
}

/// Read a `SHA256SUMS` file (text or binary markers, as `sha256sum` writes them).
pub fn read_sha256sums(path: &Path) -> Result<Vec<SumEntry>, ArtifactError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path, "read"))?;
    parse_sha256sums(&text, path)
}

/// Parse `SHA256SUMS` text; `path` names it in errors.
pub fn parse_sha256sums(text: &str, path: &Path) -> Result<Vec<SumEntry>, ArtifactError> {
    let mut out: Vec<SumEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |message: String| ArtifactError::BadSums {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        if line.is_empty() {
            continue;
        }
        let (sha256, rest) = line
            .split_once(' ')
            .ok_or_else(|| bad("no space after the sha256".to_string()))?;
        let sha256: Sha256 = sha256.parse().map_err(|_| {
            bad(format!(
                "`{sha256}` is not a sha256: expected 64 lower-case hex digits"
            ))
        })?;
        let name = rest
            .strip_prefix(' ')
            .or_else(|| rest.strip_prefix('*'))
            .ok_or_else(|| bad("expected two spaces, or ` *`, between sha256 and name".into()))?;
        check_name(name).map_err(|e| bad(e.to_string()))?;
        if out.iter().any(|e| e.name == name) {
            return Err(bad(format!("`{name}` is listed twice")));
        }
        out.push(SumEntry {
            sha256,
            name: name.to_string(),
        });
    }
    Ok(out)
}

/// Hash every listed file of `dir` and compare; every missing or different file is reported.
pub fn check(dir: &Path, sums: &[SumEntry]) -> Result<(), ArtifactError> {
    let mut failures = Vec::new();
    for entry in sums {
        let path = dir.join(&entry.name);
        match Sha256::of_file(&path) {
            Ok((actual, _)) if actual == entry.sha256 => {}
            Ok((actual, _)) => failures.push(SumFailure::Different {
                name: entry.name.clone(),
                expected: entry.sha256,
                actual,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => failures.push(SumFailure::Missing {
                name: entry.name.clone(),
            }),
            Err(e) => return Err(io_err(&path, "hash")(e)),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ArtifactError::Mismatch {
            dir: dir.to_path_buf(),
            checked: sums.len(),
            failures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_octal_then_base256() {
        let mut f = [0u8; 12];
        put_num(&mut f, 0o27000);
        assert_eq!(&f, b"00000027000\0");
        put_num(&mut f, (1 << 33) - 1);
        assert_eq!(&f, b"77777777777\0");
        put_num(&mut f, 1 << 33);
        assert_eq!(f, [0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]);
        let mut mode = [0u8; 8];
        put_num(&mut mode, MEMBER_MODE);
        assert_eq!(&mode, b"0000644\0");
    }

    #[test]
    fn libzstd_is_the_bundled_one() {
        // The libzstd version is part of the archive format: a new one may change archive
        // bytes. Update this deliberately, with the zstd-sys bump in Cargo.lock.
        assert_eq!(zstd::zstd_safe::version_string(), "1.5.7");
    }

    #[test]
    fn names_are_checked() {
        for good in ["disk.img", "a/b-1.2+x_y"] {
            check_name(good).unwrap();
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "../x",
            "a/./b",
            "dir/",
            "sp ace",
            "back\\slash",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"x".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    const MIB: u64 = 1 << 20;

    /// A `.tar.zst` of `stream` (a tar stream), one zstd frame.
    fn zst(dir: &Path, name: &str, stream: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, zstd::encode_all(stream, 1).unwrap()).unwrap();
        path
    }

    /// A GNU header as the writer makes it, with `mode` instead of 0644.
    fn crafted_header(name: &str, size: u64, typeflag: u8, mode: u64) -> [u8; BLOCK] {
        let mut h = header(name, size, 0, typeflag);
        put_num(&mut h[100..108], mode);
        h
    }

    /// A tar stream of plain members (name, contents), end marker and record padding.
    fn stream(members: &[(&str, &[u8], u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(name, data, mode) in members {
            let mut h = crafted_header(name, data.len() as u64, b'0', mode);
            finish_header(&mut h);
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        }
        out.resize(out.len() + 2 * BLOCK, 0);
        out.resize(out.len().div_ceil(RECORD as usize) * RECORD as usize, 0);
        out
    }

    /// The archive the real writer makes of a sparse file: `size` bytes, data at `regions`.
    fn sparse_archive(dir: &Path, size: u64, regions: &[(u64, usize)]) -> PathBuf {
        let src = dir.join("src.img");
        let f = File::create(&src).unwrap();
        f.set_len(size).unwrap();
        for &(offset, len) in regions {
            f.write_all_at(&vec![0x5a; len], offset).unwrap();
        }
        let archive = dir.join("sparse.tar.zst");
        write_tar_zst(&archive, &[TarEntry::new("disk.img", &src)], 0).unwrap();
        archive
    }

    fn only(name: &str, size: u64, data: u64) -> Bounds {
        Bounds::default().member(
            name,
            Bound {
                size,
                data,
                why: "the test's bound".into(),
            },
        )
    }

    #[test]
    fn a_member_larger_than_its_bound_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let archive = zst(
            dir.path(),
            "a.tar.zst",
            &stream(&[("root.img", &[7; 3000], 0o644)]),
        );
        let dest = dir.path().join("out");
        let err = extract_bounded(&archive, &dest, &only("root.img", 2048, 2048)).unwrap_err();
        let text = err.to_string();
        assert!(err.is_crafted(), "{text}");
        assert!(
            text.contains("member `root.img` declares a size of 3000 bytes; at most 2048 are allowed: the test's bound")
                && text.contains("fetch it again"),
            "{text}"
        );
        assert!(!dest.join("root.img").exists());
        // Within the bound it unpacks, mode 0644 in a 0700 directory.
        let names = extract_bounded(&archive, &dest, &only("root.img", 3000, 3000)).unwrap();
        assert_eq!(names, ["root.img"]);
        assert_eq!(std::fs::read(dest.join("root.img")).unwrap(), [7; 3000]);
    }

    #[test]
    fn a_sparse_member_is_bounded_by_its_real_size_and_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let archive = sparse_archive(dir.path(), 64 * MIB, &[(MIB, 4096), (32 * MIB, 512)]);
        let dest = dir.path().join("out");
        let err = extract_bounded(&archive, &dest, &only("disk.img", 63 * MIB, MIB)).unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "declares a size of {} bytes; at most {}",
                64 * MIB,
                63 * MIB
            )),
            "{err}"
        );
        let err = extract_bounded(&archive, &dest, &only("disk.img", 64 * MIB, 4096)).unwrap_err();
        assert!(
            err.to_string()
                .contains("declares data of 4608 bytes; at most 4096 are allowed"),
            "{err}"
        );
        assert!(!dest.join("disk.img").exists());
        extract_bounded(&archive, &dest, &only("disk.img", 64 * MIB, 4608)).unwrap();
        let out = dest.join("disk.img");
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!(meta.len(), 64 * MIB);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < MIB, "holes were written");
        // Streamed: the same bytes, holes as zeros, never more than the real size.
        let mut seen = Vec::new();
        for_each_member(
            &archive,
            &only("disk.img", 64 * MIB, 4608),
            |name, size, data| {
                assert_eq!((name, size), ("disk.img", 64 * MIB));
                let mut bytes = Vec::new();
                data.read_to_end(&mut bytes)?;
                seen = bytes;
                Ok(true)
            },
        )
        .unwrap();
        assert_eq!(seen, std::fs::read(&out).unwrap());
        let err = for_each_member(&archive, &only("disk.img", MIB, MIB), |_, _, _| {
            panic!("visited a member past its bound")
        })
        .unwrap_err();
        assert!(err.is_crafted(), "{err}");
    }

    #[test]
    fn members_must_be_expected_plain_files_once() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (stream(&[("evil", b"x", 0o644)]), "member `evil` is not one this archive holds (expected: `root.img`)"),
            (stream(&[("root.img", b"x", 0o4755)]), "member `root.img` has mode 4755: execute, setuid, setgid and sticky bits are refused"),
            (stream(&[("root.img", b"x", 0o2644)]), "has mode 2644"),
            (stream(&[("root.img", b"x", 0o1644)]), "has mode 1644"),
            (stream(&[("root.img", b"x", 0o755)]), "has mode 0755"),
            (stream(&[("root.img", b"x", 0o644), ("root.img", b"y", 0o644)]), "member `root.img` is given twice"),
            (stream(&[("../root.img", b"x", 0o644)]), "member `../root.img`: its name has an empty, `.` or `..` component"),
            (stream(&[("/tmp/root.img", b"x", 0o644)]), "member `/tmp/root.img`: its name has an empty"),
        ];
        for (tar, want) in cases {
            let archive = zst(dir.path(), "a.tar.zst", &tar);
            let err = extract_bounded(&archive, &dest, &only("root.img", MIB, MIB)).unwrap_err();
            assert!(
                err.is_crafted() && err.to_string().contains(want),
                "{want}: {err}"
            );
            // Only the first of the two `root.img` was unpacked.
            let unpacked = std::fs::read_dir(&dest).unwrap().count();
            assert!(unpacked <= usize::from(want.contains("twice")), "{want}");
            std::fs::remove_dir_all(&dest).unwrap();
        }
        // A symbolic link, and a header with a bad checksum.
        let mut link = crafted_header("root.img", 0, b'2', 0o644);
        link[157..163].copy_from_slice(b"/etc/x");
        finish_header(&mut link);
        let mut tar = link.to_vec();
        tar.resize(RECORD as usize, 0);
        let archive = zst(dir.path(), "a.tar.zst", &tar);
        let err = extract_bounded(&archive, &dest, &Bounds::unlimited()).unwrap_err();
        assert!(err.to_string().contains("is of type `2`"), "{err}");
        let mut tar = stream(&[("root.img", b"x", 0o644)]);
        tar[0] = b'R';
        let archive = zst(dir.path(), "a.tar.zst", &tar);
        let err = extract_bounded(&archive, &dest, &Bounds::unlimited()).unwrap_err();
        assert!(err.to_string().contains("bad checksum"), "{err}");
        assert_eq!(
            std::fs::read_dir(&dest).unwrap().count(),
            0,
            "something was unpacked"
        );
    }

    #[test]
    fn members_are_0644_in_a_private_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let archive = zst(
            dir.path(),
            "a.tar.zst",
            &stream(&[("a/b.img", b"x", 0o600)]),
        );
        let dest = dir.path().join("out");
        std::fs::create_dir(&dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
        extract_tar_zst(&archive, &dest).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dest), 0o700);
        assert_eq!(mode(&dest.join("a")), 0o700);
        assert_eq!(mode(&dest.join("a/b.img")), 0o644);
        // Unpacking again replaces the file.
        extract_tar_zst(&archive, &dest).unwrap();
        let scratch = scratch_dir("plinth-test-").unwrap();
        assert_eq!(mode(scratch.path()), 0o700);
        let deep = scratch.path().join("x/y");
        private_dir(&deep).unwrap();
        assert_eq!(
            (mode(&deep), mode(&scratch.path().join("x"))),
            (0o700, 0o700)
        );
    }

    #[test]
    fn data_past_the_declared_size_is_refused_not_written() {
        let dir = tempfile::tempdir().unwrap();
        // A header that says 512 bytes, then 64 MiB of zeros (they read as the end marker
        // and a trailer far longer than any record padding).
        let mut tar = stream(&[("root.img", &[1; 512], 0o644)]);
        tar.truncate(2 * BLOCK);
        tar.resize(64 * MIB as usize, 0);
        let archive = zst(dir.path(), "a.tar.zst", &tar);
        assert!(std::fs::metadata(&archive).unwrap().len() < 64 * 1024);
        let dest = dir.path().join("out");
        let err = extract_bounded(&archive, &dest, &only("root.img", MIB, MIB)).unwrap_err();
        assert!(
            err.to_string()
                .contains("bytes follow the end-of-archive marker"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(dest.join("root.img")).unwrap().len(), 512);
        // A stream that ends inside a member, or without the end marker.
        for cut in [BLOCK + 100, 2 * BLOCK] {
            let archive = zst(dir.path(), "b.tar.zst", &tar[..cut]);
            let err = extract_bounded(&archive, &dest, &only("root.img", MIB, MIB)).unwrap_err();
            assert!(err.to_string().contains("the tar stream ends"), "{err}");
        }
    }

    #[test]
    fn free_space_is_checked_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        // A header declaring 1 PiB of data, and nothing after it.
        let mut h = header("big.img", 1 << 50, 0, b'0');
        finish_header(&mut h);
        let archive = zst(dir.path(), "a.tar.zst", &h);
        let dest = dir.path().join("out");
        let err = extract_tar_zst(&archive, &dest).unwrap_err();
        assert!(!err.is_crafted());
        assert!(
            err.to_string().contains(&format!(
                "member `big.img` needs {} bytes, but {} has only",
                1u64 << 50,
                dest.display()
            )),
            "{err}"
        );
        assert!(!dest.join("big.img").exists());
    }

    #[test]
    fn a_sparse_map_is_checked_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        // (offset, length) entries in the header and `extensions` blocks of 21 each.
        let count = std::cell::Cell::new(0);
        let sparse = |real: u64, data: u64, map: &[(u64, u64)], extensions: usize| {
            count.set(count.get() + 1);
            let mut h = header("disk.img", data, 0, b'S');
            put_num(&mut h[483..495], real);
            let (first, rest) = map.split_at(map.len().min(4));
            put_sparse(&mut h[386..482], first);
            h[482] = u8::from(extensions > 0);
            finish_header(&mut h);
            let mut tar = h.to_vec();
            let mut chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
            chunks.resize(extensions, &[]);
            for (i, c) in chunks.iter().enumerate() {
                let mut ext = [0u8; BLOCK];
                put_sparse(&mut ext[..504], c);
                ext[504] = u8::from(i + 1 < extensions);
                tar.extend_from_slice(&ext);
            }
            tar.resize(tar.len() + data as usize, 0x11);
            tar.resize(tar.len().div_ceil(BLOCK) * BLOCK + 2 * BLOCK, 0);
            zst(dir.path(), &format!("s{}.tar.zst", count.get()), &tar)
        };
        let bounds = only("disk.img", 1 << 40, MIB);
        for (archive, want) in [
            (
                sparse(4096, 512, &[(1024, 512), (0, 512)], 0),
                "overlaps, is out of order",
            ),
            (
                sparse(4096, 512, &[(4000, 512)], 0),
                "ends past the real size 4096",
            ),
            (
                sparse(4096, 1024, &[(0, 512)], 0),
                "holds 512 bytes of data, its header declares 1024",
            ),
            (
                sparse(4096, 512, &[(0, 512), (1024, 512)], 0),
                "holds more than the 512 bytes",
            ),
            // A map of 1000 zero-length entries for 512 bytes of data.
            (
                sparse(4096, 512, &[(512, 0); 1000], 48),
                "more than 3 entries for 512 bytes",
            ),
            // Extension blocks with nothing in them.
            (
                sparse(4096, 512, &[(0, 512)], 3),
                "an empty sparse map extension block",
            ),
        ] {
            let err = extract_bounded(&archive, &dest, &bounds).unwrap_err();
            assert!(
                err.is_crafted() && err.to_string().contains(want),
                "{want}: {err}"
            );
        }
        // A good one with extension blocks: 30 runs.
        let map: Vec<(u64, u64)> = (0..30).map(|i| (i * 4096, 512)).collect();
        let archive = sparse(30 * 4096, 30 * 512, &map, 2);
        extract_bounded(&archive, &dest, &bounds).unwrap();
        let bytes = std::fs::read(dest.join("disk.img")).unwrap();
        assert_eq!(bytes.len(), 30 * 4096);
        assert!(bytes
            .chunks(4096)
            .all(|c| c[..512] == [0x11; 512] && c[512..] == [0; 3584]));
    }

    #[test]
    fn sums_parse_and_reject() {
        let sha = "a".repeat(64);
        let text = format!("{sha}  b.img\n{sha} *a.img\n");
        let sums = parse_sha256sums(&text, Path::new("S")).unwrap();
        assert_eq!(sums[1].name, "a.img");
        let err = parse_sha256sums(&format!("{sha}  b\n{sha}  b\n"), Path::new("S")).unwrap_err();
        assert!(
            err.to_string().contains("S: line 2: `b` is listed twice"),
            "{err}"
        );
        let err = parse_sha256sums("xyz  b\n", Path::new("S")).unwrap_err();
        assert!(
            err.to_string().contains("line 1: `xyz` is not a sha256"),
            "{err}"
        );
    }
}
