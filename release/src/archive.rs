//! Reading a plinth release archive (`.tar.zst`: `disk-img.tar.zst`, `update-img.tar.zst`)
//! whose every byte may be crafted: auditors run `plinth diff`, `measure` and `run` on
//! downloaded releases (often as root), and a node's upgrade streams an update archive into
//! its inactive slot. The builder writes these archives; this module only reads them.
//!
//! Strict: only the GNU regular and sparse members plinth writes, names as [`check_name`]
//! allows, no execute, setuid, setgid or sticky bit in a header, each name once, and each
//! member's declared real size and stored data checked against its [`Bound`] (a release's
//! come from its manifest's partitions) before any of its data is read. [`extract_bounded`]
//! writes exactly what the header declared, holes as holes, mode [`MEMBER_MODE`] whatever the
//! header says, into a 0700 directory ([`private_dir`]), after checking that the member's data
//! fits in the free space there; [`for_each_member`] streams members without unpacking them.
//! No read allocates more than a bounded buffer (a sparse map at most one entry per 512 bytes
//! of data).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A release's raw disk image, archived (one member, `disk.img`).
pub const DISK_ARCHIVE: &str = "disk-img.tar.zst";
/// What an upgrade writes into a slot (root image, verity tree, UKI), archived.
pub const UPDATE_ARCHIVE: &str = "update-img.tar.zst";
/// What an update archive's member may exceed the partition it is written to by: none does
/// (a root or verity image is the partition's content, a UKI a file on the ESP), so the
/// slack only keeps the bound from being an exact-size check. Release readers bound every
/// member by its partition plus this ([`crate::manifest::Manifest::archive_bounds`]).
pub const MEMBER_SLACK: u64 = 1 << 20;
/// Mode of every archive member.
pub const MEMBER_MODE: u64 = 0o644;
/// Longest member name: GNU tar writes a `././@LongLink` member from 100 bytes on.
pub const MAX_NAME_LEN: usize = 99;
/// tar's block size; also the granularity of holes.
pub const BLOCK: usize = 512;
/// Read size when copying a member's data.
const CHUNK: usize = 1 << 20;
/// Most entries a sparse member's map may have, whatever its size: 4 Mi entries (64 MiB in
/// memory) cover a map of every other 512-byte block of 4 GiB of data.
const MAX_SPARSE_RUNS: usize = 1 << 22;
/// The largest zstd window a reader accepts (2^23 = 8 MiB): plinth's archives are frames of
/// 4 MiB of member data each, so their windows are at most 4 MiB; a frame asking more is
/// refused rather than given the memory (zstd's own default limit is 128 MiB).
pub const MAX_WINDOW_LOG: u32 = 23;
/// Most bytes read after the end-of-archive marker: the writer pads to a 10 KiB record.
const TRAILER_LIMIT: u64 = 1 << 20;

/// Why an archive could not be read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("{}: {message}\n  hint: the archive is corrupt or crafted (plinth archives hold regular files of mode 0644 with plain names); fetch the release again, or list it with `tar --zstd -tvf {}`", archive.display(), archive.display())]
    BadArchive { archive: PathBuf, message: String },
    #[error("{}: member `{name}` declares {what} {declared} bytes; at most {limit} are allowed: {why}\n  hint: the release is corrupt or crafted; fetch it again", archive.display())]
    TooLarge {
        archive: PathBuf,
        name: String,
        /// "a size of" (the real size) or "data of" (the bytes stored).
        what: &'static str,
        declared: u64,
        limit: u64,
        why: String,
    },
    #[error("{}: member `{name}` is not one this archive holds (expected: {expected})\n  hint: the release is corrupt or crafted; fetch it again", archive.display())]
    UnexpectedMember {
        archive: PathBuf,
        name: String,
        expected: String,
    },
    #[error("{}: member `{name}` needs {needed} bytes, but {} has only {available} bytes free\n  hint: free space there, or point TMPDIR at a larger file system", archive.display(), dest.display())]
    NoSpace {
        archive: PathBuf,
        name: String,
        needed: u64,
        dest: PathBuf,
        available: u64,
    },
}

impl ArchiveError {
    /// Whether the archive itself is at fault (crafted or corrupt): bad input, exit code 2.
    pub fn is_crafted(&self) -> bool {
        matches!(
            self,
            ArchiveError::BadArchive { .. }
                | ArchiveError::TooLarge { .. }
                | ArchiveError::UnexpectedMember { .. }
        )
    }
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Whether `name` is a safe, portable member name: a relative path of at most
/// [`MAX_NAME_LEN`] bytes of letters, digits and `._+-/`, without empty, `.` or `..`
/// components. The error says what is wrong.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("too long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._+-/".contains(&b))
    {
        return Err("has a character outside letters, digits and `._+-/`");
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("has an empty, `.` or `..` component, or starts or ends with `/`");
    }
    Ok(())
}

/// Create `dir` (and any missing parent) with mode 0700, and make `dir` itself 0700 if it
/// existed: nobody but its owner can reach what is unpacked or built inside. Every scratch
/// and work directory plinth reads a release into is made with this (or, in the builder, its
/// `scratch_dir`).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Bytes free for an unprivileged writer on the file system of `dir` (statvfs).
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir)?;
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// The most one archive member may declare, checked on its header before any of it is read
/// or written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// Its real size (a sparse member's size with its holes).
    pub size: u64,
    /// The bytes of data the archive stores for it: what unpacking writes (a plain member's
    /// size; a sparse member's data runs).
    pub data: u64,
    /// Where the bound comes from, for errors: "the ESP partition's 268435456 bytes plus ...".
    pub why: String,
}

impl Bound {
    /// `size` for both the real size and the data.
    pub fn new(size: u64, why: impl Into<String>) -> Bound {
        Bound {
            size,
            data: size,
            why: why.into(),
        }
    }
}

/// What the members of one archive may be: a [`Bound`] per expected name and optionally one
/// for any other name (without it, other names are refused).
#[derive(Debug, Clone, Default)]
pub struct Bounds {
    members: Vec<(String, Bound)>,
    others: Option<Bound>,
}

impl Bounds {
    /// Any member, any size: for archives whose sizes the caller trusts (its own).
    pub fn unlimited() -> Bounds {
        Bounds::default().others(Bound::new(u64::MAX, "no bound"))
    }

    /// Member `name` may be there, within `bound` (replacing an earlier bound of that name).
    pub fn member(mut self, name: impl Into<String>, bound: Bound) -> Bounds {
        let name = name.into();
        self.members.retain(|(n, _)| *n != name);
        self.members.push((name, bound));
        self
    }

    /// Members of other names may be there, within `bound`.
    pub fn others(mut self, bound: Bound) -> Bounds {
        self.others = Some(bound);
        self
    }

    /// The bound of member `name`; `None` if it may not be there.
    pub fn get(&self, name: &str) -> Option<&Bound> {
        self.members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b)
            .or(self.others.as_ref())
    }

    /// The names expected, for errors.
    fn expected(&self) -> String {
        let mut names: Vec<String> = self.members.iter().map(|(n, _)| format!("`{n}`")).collect();
        if names.is_empty() {
            names.push("no member".into());
        }
        names.join(", ")
    }
}

/// A member's header, checked against its [`Bound`].
struct Member {
    name: String,
    mtime: u64,
    /// Real size.
    size: u64,
    /// Bytes of data stored in the archive (the sum of `runs`' lengths).
    data: u64,
    /// (offset, length) of each run of stored data in the member, in order; a plain member
    /// has one run (none when empty).
    runs: Vec<(u64, u64)>,
}

/// The tar stream of a plinth archive, read strictly: GNU headers with a valid checksum,
/// regular (`0`) and old-GNU sparse (`S`) members only, names as [`check_name`] allows, modes
/// without execute, setuid, setgid or sticky bits, each name once, each member within its
/// [`Bound`] before any of its data is read. Every read is bounded: a header is 512 bytes, a
/// sparse map at most one entry per 512 bytes of data (and [`MAX_SPARSE_RUNS`]), and the data
/// read is exactly what the (checked) header declares.
struct TarStream<'a, R> {
    inner: R,
    archive: &'a Path,
    bounds: &'a Bounds,
    /// Bytes of the tar stream read, for errors.
    offset: u64,
    seen: Vec<String>,
}

impl<'a, R: Read> TarStream<'a, R> {
    fn new(inner: R, archive: &'a Path, bounds: &'a Bounds) -> Self {
        TarStream {
            inner,
            archive,
            bounds,
            offset: 0,
            seen: Vec::new(),
        }
    }

    fn bad(&self, message: String) -> ArchiveError {
        ArchiveError::BadArchive {
            archive: self.archive.to_path_buf(),
            message,
        }
    }

    /// Exactly `buf.len()` bytes of the stream.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ArchiveError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.bad(format!(
                "the tar stream ends inside a member or header (after byte {})",
                self.offset
            ))),
            Err(e) => Err(io_err(self.archive, "read")(e)),
        }
    }

    /// Read and drop `n` bytes.
    fn skip(&mut self, mut n: u64) -> Result<(), ArchiveError> {
        let mut buf = [0u8; 8 * BLOCK];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// The next member's header, checked; `None` at the end-of-archive marker.
    fn next(&mut self) -> Result<Option<Member>, ArchiveError> {
        let at = self.offset;
        let mut h = [0u8; BLOCK];
        match self.inner.read(&mut h[..1]) {
            Ok(0) => {
                return Err(self.bad(format!(
                    "the tar stream ends after byte {at} without the end-of-archive marker"
                )))
            }
            Ok(_) => self.offset += 1,
            Err(e) => return Err(io_err(self.archive, "read")(e)),
        }
        self.read_exact(&mut h[1..])?;
        if h.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let bad = |this: &Self, what: String| this.bad(format!("header at byte {at}: {what}"));
        let mut sum_block = h;
        sum_block[148..156].copy_from_slice(b"        ");
        let sum: u64 = sum_block.iter().map(|&b| u64::from(b)).sum();
        if parse_num(&h[148..156]) != Some(sum) {
            return Err(bad(self, "bad checksum: not a tar header".into()));
        }
        if &h[257..262] != b"ustar" {
            return Err(bad(self, "not a GNU tar header (no `ustar` magic)".into()));
        }
        let raw = &h[..100];
        let raw = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        let shown = String::from_utf8_lossy(raw).escape_debug().to_string();
        let name = match std::str::from_utf8(raw) {
            Ok(name) => name.to_string(),
            Err(_) => return Err(bad(self, format!("member name `{shown}` is not UTF-8"))),
        };
        if let Err(reason) = check_name(&name) {
            return Err(self.bad(format!("member `{shown}`: its name {reason}")));
        }
        let sparse = match h[156] {
            b'0' | 0 => false,
            b'S' => true,
            t => {
                return Err(self.bad(format!(
                    "member `{name}` is of type `{}`: plinth archives hold regular files only",
                    (t as char).escape_debug()
                )))
            }
        };
        let num = |this: &Self, field: &[u8], what: &str| {
            parse_num(field).ok_or_else(|| this.bad(format!("member `{name}`: bad {what} field")))
        };
        let mode = num(self, &h[100..108], "mode")?;
        if mode & !0o666 != 0 {
            return Err(self.bad(format!(
                "member `{name}` has mode {mode:04o}: execute, setuid, setgid and sticky bits are refused (plinth writes every member {MEMBER_MODE:04o})"
            )));
        }
        if self.seen.contains(&name) {
            return Err(self.bad(format!("member `{name}` is given twice")));
        }
        let Some(bound) = self.bounds.get(&name) else {
            return Err(ArchiveError::UnexpectedMember {
                archive: self.archive.to_path_buf(),
                name,
                expected: self.bounds.expected(),
            });
        };
        let data = num(self, &h[124..136], "size")?;
        let mtime = num(self, &h[136..148], "mtime")?;
        let size = if sparse {
            num(self, &h[483..495], "real size")?
        } else {
            data
        };
        let too_large = |declared: u64, limit: u64, what: &'static str| ArchiveError::TooLarge {
            archive: self.archive.to_path_buf(),
            name: name.clone(),
            what,
            declared,
            limit,
            why: bound.why.clone(),
        };
        if size > bound.size {
            return Err(too_large(size, bound.size, "a size of"));
        }
        if data > bound.data {
            return Err(too_large(data, bound.data, "data of"));
        }
        let runs = if sparse {
            self.sparse_map(&h, &name, size, data)?
        } else if size > 0 {
            vec![(0, size)]
        } else {
            Vec::new()
        };
        self.seen.push(name.clone());
        Ok(Some(Member {
            name,
            mtime,
            size,
            data,
            runs,
        }))
    }

    /// The data runs of a sparse member: the map in its header and extension blocks.
    fn sparse_map(
        &mut self,
        h: &[u8; BLOCK],
        name: &str,
        size: u64,
        data: u64,
    ) -> Result<Vec<(u64, u64)>, ArchiveError> {
        // Runs other than the last are whole 512-byte blocks (GNU tar and plinth alike), so a
        // true map has at most one entry per block of data, plus a short tail and the
        // zero-length entry at the end.
        let most = usize::try_from(data / BLOCK as u64 + 2)
            .unwrap_or(usize::MAX)
            .min(MAX_SPARSE_RUNS);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let (mut entries, mut end, mut stored) = (0usize, 0u64, 0u64);
        let mut area: Vec<u8> = h[386..482].to_vec();
        let mut extended = h[482] != 0;
        loop {
            for entry in area.chunks(24) {
                if entry.iter().all(|&b| b == 0) {
                    break;
                }
                entries += 1;
                if entries > most {
                    return Err(self.bad(format!(
                        "member `{name}`: its sparse map has more than {most} entries for {data} bytes of data"
                    )));
                }
                let (Some(offset), Some(len)) = (parse_num(&entry[..12]), parse_num(&entry[12..]))
                else {
                    return Err(self.bad(format!("member `{name}`: bad sparse map entry")));
                };
                let run_end = offset.checked_add(len).filter(|&e| e <= size);
                let Some(run_end) = run_end.filter(|_| offset >= end) else {
                    return Err(self.bad(format!(
                        "member `{name}`: sparse map entry ({offset}, {len}) overlaps, is out of order or ends past the real size {size}"
                    )));
                };
                stored += len;
                if stored > data {
                    return Err(self.bad(format!(
                        "member `{name}`: its sparse map holds more than the {data} bytes of data its header declares"
                    )));
                }
                if len > 0 {
                    runs.push((offset, len));
                }
                end = run_end;
            }
            if !extended {
                break;
            }
            let mut ext = [0u8; BLOCK];
            self.read_exact(&mut ext)?;
            if ext[..24].iter().all(|&b| b == 0) {
                return Err(self.bad(format!(
                    "member `{name}`: an empty sparse map extension block"
                )));
            }
            area = ext[..504].to_vec();
            extended = ext[504] != 0;
        }
        if stored != data {
            return Err(self.bad(format!(
                "member `{name}`: its sparse map holds {stored} bytes of data, its header declares {data}"
            )));
        }
        Ok(runs)
    }

    /// The zeros that pad a member's data to whole blocks.
    fn skip_padding(&mut self, data: u64) -> Result<(), ArchiveError> {
        self.skip((BLOCK as u64 - data % BLOCK as u64) % BLOCK as u64)
    }

    /// After the end-of-archive marker: the rest of the stream (read, so that zstd checks
    /// the last frame's checksum), at most [`TRAILER_LIMIT`] bytes.
    fn finish(mut self) -> Result<(), ArchiveError> {
        let mut rest = (&mut self.inner).take(TRAILER_LIMIT + 1);
        let n = io::copy(&mut rest, &mut io::sink()).map_err(io_err(self.archive, "read"))?;
        if n > TRAILER_LIMIT {
            return Err(self.bad(format!(
                "more than {TRAILER_LIMIT} bytes follow the end-of-archive marker (at byte {})",
                self.offset
            )));
        }
        Ok(())
    }
}

/// A number of a tar header field: octal digits (leading spaces, then a NUL or space ends
/// them) or GNU base-256 (first byte 0x80); `None` for anything else or past `u64`.
fn parse_num(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        if field[0] != 0x80 {
            return None; // negative, or more than u64 can hold
        }
        return field[1..]
            .iter()
            .try_fold(0u64, |v, &b| v.checked_mul(256).map(|v| v | u64::from(b)));
    }
    let digits = field.iter().skip_while(|&&b| b == b' ');
    let mut value = 0u64;
    let mut ended = false;
    for &b in digits {
        match b {
            b'0'..=b'7' if !ended => {
                value = value.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
            }
            0 | b' ' => ended = true,
            _ => return None,
        }
    }
    Some(value)
}

/// Unpack a plinth `.tar.zst` into `dest` with no bound on member sizes (free space is still
/// checked): for archives the caller trusts the sizes of. See [`extract_bounded`].
pub fn extract_tar_zst(archive: &Path, dest: &Path) -> Result<Vec<String>, ArchiveError> {
    extract_bounded(archive, dest, &Bounds::unlimited())
}

/// Unpack a `.tar.zst` into `dest` (created if missing, made 0700): regular and sparse
/// members only, read as [`TarStream`] does (each member's header checked against `bounds`
/// before any of its data is read), holes restored as holes, mtimes kept. Every member is
/// written mode [`MEMBER_MODE`] and owned by the caller, whatever its header says. Before a
/// member is written its data must fit in the space free in `dest`. Returns the member
/// names in archive order. The whole zstd stream is read, so its checksum is verified.
/// On error, members already unpacked stay in `dest`.
pub fn extract_bounded(
    archive: &Path,
    dest: &Path,
    bounds: &Bounds,
) -> Result<Vec<String>, ArchiveError> {
    let file = File::open(archive).map_err(io_err(archive, "open"))?;
    let mut decoder = zstd::Decoder::new(file).map_err(io_err(archive, "start zstd"))?;
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(io_err(archive, "start zstd"))?;
    private_dir(dest).map_err(io_err(dest, "create a private (0700) directory"))?;
    let mut tar = TarStream::new(decoder, archive, bounds);
    let mut buf = Vec::new();
    let mut names = Vec::new();
    while let Some(m) = tar.next()? {
        let available =
            free_bytes(dest).map_err(io_err(dest, "find the free space (statvfs) of"))?;
        if m.data > available {
            return Err(ArchiveError::NoSpace {
                archive: archive.to_path_buf(),
                name: m.name,
                needed: m.data,
                dest: dest.to_path_buf(),
                available,
            });
        }
        let path = dest.join(&m.name);
        let out = create_member(dest, &path)?;
        if buf.is_empty() && m.data > 0 {
            buf = vec![0u8; CHUNK];
        }
        for &(offset, len) in &m.runs {
            let mut pos = offset;
            while pos < offset + len {
                let n = ((offset + len - pos) as usize).min(CHUNK);
                tar.read_exact(&mut buf[..n])?;
                out.write_all_at(&buf[..n], pos)
                    .map_err(io_err(&path, "write"))?;
                pos += n as u64;
            }
        }
        tar.skip_padding(m.data)?;
        out.set_len(m.size)
            .map_err(io_err(&path, "set the size of"))?;
        let mtime = std::time::UNIX_EPOCH
            .checked_add(std::time::Duration::from_secs(m.mtime))
            .ok_or_else(|| {
                tar.bad(format!(
                    "member `{}`: mtime {} out of range",
                    m.name, m.mtime
                ))
            })?;
        out.set_times(
            std::fs::FileTimes::new()
                .set_accessed(mtime)
                .set_modified(mtime),
        )
        .map_err(io_err(&path, "set the times of"))?;
        names.push(m.name);
    }
    tar.finish()?;
    Ok(names)
}

/// A new file `path` for a member, mode [`MEMBER_MODE`], replacing a file of that name (a
/// previous unpacking's); its directories below `dest` are made private.
fn create_member(dest: &Path, path: &Path) -> Result<File, ArchiveError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(parent) = path.parent().filter(|p| *p != dest) {
        private_dir(parent).map_err(io_err(parent, "create a private (0700) directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => {
            std::fs::remove_file(path).map_err(io_err(path, "replace"))?;
        }
        Ok(_) => {
            return Err(io_err(path, "unpack into")(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "something other than a regular file is there",
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, "stat")(e)),
    }
    let file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(path, "create"))?;
    file.set_permissions(std::fs::Permissions::from_mode(MEMBER_MODE as u32))
        .map_err(io_err(path, "set the mode of"))?;
    Ok(file)
}

/// One member's contents as [`for_each_member`] hands them out: the stored runs from the
/// stream, holes as zeros, exactly the member's real size.
struct MemberReader<'s, 'a, R> {
    tar: &'s mut TarStream<'a, R>,
    runs: &'s [(u64, u64)],
    size: u64,
    /// Position in the member.
    pos: u64,
    /// Runs wholly read.
    done: usize,
    /// Bytes of data read from the stream.
    consumed: u64,
}

impl<R: Read> Read for MemberReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let next = self.runs.get(self.done).copied();
        let n = match next {
            Some((offset, len)) if self.pos >= offset => {
                let n = ((offset + len - self.pos).min(buf.len() as u64)) as usize;
                self.tar
                    .read_exact(&mut buf[..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                self.consumed += n as u64;
                if self.pos + n as u64 == offset + len {
                    self.done += 1;
                }
                n
            }
            _ => {
                let hole_end = next.map_or(self.size, |(offset, _)| offset);
                let n = ((hole_end - self.pos).min(buf.len() as u64)) as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// Stream the members of a `.tar.zst` in archive order, each to `visit` (its name, its real
/// size and its contents, holes read as zeros, never more than that size), without unpacking
/// anything; `visit` returns false to stop. Headers are read and checked against `bounds`
/// as [`extract_bounded`] does, before `visit` sees the member.
pub fn for_each_member(
    archive: &Path,
    bounds: &Bounds,
    visit: impl FnMut(&str, u64, &mut dyn io::Read) -> io::Result<bool>,
) -> Result<(), ArchiveError> {
    let file = File::open(archive).map_err(io_err(archive, "open"))?;
    for_each_member_of(file, archive, bounds, visit)
}

/// [`for_each_member`] over the compressed bytes `compressed` of the archive `archive` (named
/// in errors), for a caller that reads them itself: `plinth flash` hashes them as they pass.
pub fn for_each_member_of(
    compressed: impl Read,
    archive: &Path,
    bounds: &Bounds,
    mut visit: impl FnMut(&str, u64, &mut dyn io::Read) -> io::Result<bool>,
) -> Result<(), ArchiveError> {
    let mut decoder = zstd::Decoder::new(compressed).map_err(io_err(archive, "start zstd"))?;
    decoder
        .window_log_max(MAX_WINDOW_LOG)
        .map_err(io_err(archive, "start zstd"))?;
    let mut tar = TarStream::new(decoder, archive, bounds);
    while let Some(m) = tar.next()? {
        let mut reader = MemberReader {
            tar: &mut tar,
            runs: &m.runs,
            size: m.size,
            pos: 0,
            done: 0,
            consumed: 0,
        };
        let more = visit(&m.name, m.size, &mut reader).map_err(io_err(archive, "read"))?;
        if !more {
            return Ok(());
        }
        let left = m.data - reader.consumed;
        tar.skip(left)?;
        tar.skip_padding(m.data)?;
    }
    tar.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_asking_for_a_window_past_the_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.tar.zst");
        let stream = |window_log: u32| {
            let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
            enc.window_log(window_log).unwrap();
            std::io::Write::write_all(&mut enc, &[0u8; 4096]).unwrap();
            enc.finish().unwrap()
        };
        let read =
            |bytes: &[u8]| for_each_member_of(bytes, &path, &Bounds::default(), |_, _, _| Ok(true));
        // 2^23 is read (an empty tar stream of zeros ends cleanly), 2^24 is not.
        read(&stream(MAX_WINDOW_LOG)).unwrap();
        let e = read(&stream(MAX_WINDOW_LOG + 1)).unwrap_err().to_string();
        assert!(e.contains("wide.tar.zst"), "{e}");
    }

    #[test]
    fn header_numbers_parse_strictly() {
        assert_eq!(parse_num(b"0000644\0"), Some(0o644));
        assert_eq!(parse_num(b"  644 \0"), Some(0o644));
        assert_eq!(parse_num(b"\0\0\0"), Some(0));
        assert_eq!(
            parse_num(&[0x80, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0]),
            Some(1 << 33)
        );
        assert_eq!(parse_num(b"0008"), None);
        assert_eq!(parse_num(b"12\0 3"), None);
        assert_eq!(parse_num(&[0xff; 12]), None, "negative base-256");
        assert_eq!(
            parse_num(&[0x80, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None,
            "past u64"
        );
        assert_eq!(parse_num(b"7777777777777777777777777"), None, "past u64");
    }
}
