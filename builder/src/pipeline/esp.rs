//! FAT images (the ESP, and FAT config partitions), built reproducibly without mounting.
//!
//! This kernel cannot mount vfat, and systemd-boot needs long file names
//! (`EFI/systemd/systemd-bootx64.efi`), so the image is made with Debian's dosfstools and mtools:
//! `mkfs.fat` formats a fresh sparse file, `mlabel` writes the label, `mmd` creates the
//! directories and `mcopy` the files, all in sorted order. What makes the bytes reproducible:
//!
//! - `mkfs.fat`: version 4.2 ignores `SOURCE_DATE_EPOCH`. Its time-based values are the volume
//!   id (from the clock unless `-i`: we derive it with [`volume_id`]) and the label entry's time
//!   (with `-n`: we leave the label to `mlabel`, so that its entry carries the epoch like
//!   everything else). `--invariant` is passed as well, so that no other time- or random-based
//!   value can slip in; it must come before `-i`, because it sets a volume id of its own. The FAT
//!   type, cluster size and geometry are pinned ([`geometry`]) rather than left to defaults.
//! - mtools 4.0.32 takes "now" from `SOURCE_DATE_EPOCH`: the label entry, directories (with their
//!   `.` and `..` entries) and files (`mcopy` without `-m`) all get the epoch, and the sources'
//!   own times never reach the image. FAT times are local times, so `TZ=UTC`.
//! - The tools run with an empty environment but for `PATH`, `HOME` (an empty directory, so no
//!   `~/.mtoolsrc`), `LC_ALL=C`, `TZ=UTC`, `SOURCE_DATE_EPOCH` and `MTOOLSRC` pointing at a
//!   config written here, read last, that pins every mtools flag that changes what is written
//!   (long names on, numeric tails on, no lower-case display).
//! - Paths are checked (ASCII, no case-insensitive clashes, which would make mtools prompt) and
//!   written in byte order, parents first, so short names (`SYSTEM~1.EFI`) and cluster
//!   allocation come out the same every time.
//!
//! [`list_fat`], [`hash_fat_file`] and [`read_fat_file`] read an image back (for tests,
//! `plinth diff` and `plinth measure`). The images read may come from downloaded releases:
//! hostile input. So nothing is held whole that need not be: `mdir`'s listing is parsed as it
//! comes, within [`MAX_LISTING_BYTES`], [`MAX_FAT_ENTRIES`] and [`MAX_FAT_DEPTH`] (a path
//! listed twice is a directory loop, [`EspError::Loop`], and stops `mdir`, which would
//! otherwise recurse until it crashes); `mcopy`'s output is streamed into sha256
//! ([`hash_fat_file`]) or read into memory only up to a cap ([`read_fat_file_capped`]); mtools'
//! own "loop detected" (a cluster chain that loops) is [`EspError::Loop`] too; every reading
//! mtools process is killed after [`MTOOLS_TIMEOUT`] (by a `Watchdog`). Paths holding mtools
//! wildcards (`*?[]`) are not read: `mcopy` would expand them to other files.

use super::ids::IdSource;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Smallest image [`write_fat`] makes.
pub const MIN_SIZE: u64 = 1 << 20;
/// Bytes per sector in every image.
pub const SECTOR: u64 = 512;
/// FAT timestamps run from 1980-01-01 to 2107-12-31 (UTC here).
pub const EPOCH_RANGE: std::ops::RangeInclusive<i64> = 315_532_800..=4_354_819_198;

/// Each mtools process that reads an image may run this long; then it is killed and the read
/// fails ([`EspError::Timeout`]). Hashing the largest file an ESP can hold takes seconds.
pub const MTOOLS_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// [`list_fat`] refuses an image with more entries than this (an ESP has about ten).
pub const MAX_FAT_ENTRIES: usize = 10_000;
/// [`list_fat`] refuses a path with more components than this (a directory loop whose paths
/// grow ends here, if not at [`MAX_LISTING_BYTES`] first).
pub const MAX_FAT_DEPTH: usize = 64;
/// [`list_fat`] reads at most this much of `mdir`'s listing (a line per entry).
pub const MAX_LISTING_BYTES: u64 = 16 << 20;
/// [`read_fat_file`] reads at most this many bytes of a file into memory (an ESP is 128 to
/// 256 MiB); [`read_fat_file_capped`] takes its own cap.
pub const MAX_READ_BYTES: u64 = 256 << 20;
/// The longest line of `mdir`'s listing taken: [`MAX_FAT_DEPTH`] names of 255 characters.
const MAX_LISTING_LINE: usize = 64 << 10;
/// What mtools prints (on standard error) when a cluster chain loops.
const MTOOLS_LOOP: &str = "loop detected";

/// The mtools configuration every call uses; read after `/etc/mtools.conf`, so it wins.
const MTOOLSRC: &str = "\
# written by plinth: fixed settings for reproducible FAT images
MTOOLS_SKIP_CHECK=1
MTOOLS_LOWER_CASE=0
MTOOLS_NO_VFAT=0
MTOOLS_NAME_NUMERIC_TAIL=1
MTOOLS_FAT_COMPATIBILITY=0
";

/// How to build one FAT image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatOptions {
    /// Image size in bytes: a whole number of sectors, at least [`MIN_SIZE`].
    pub size: u64,
    /// The volume id (serial number), e.g. from [`volume_id`].
    pub volume_id: u32,
    /// Up to 11 of `A-Z 0-9 _ -`; empty for no label.
    pub label: String,
    /// Every timestamp in the image (seconds since 1970, in [`EPOCH_RANGE`]).
    pub epoch: i64,
}

/// One file to put into the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FatFile {
    /// Path inside the image, `/`-separated, no leading `/`: `EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    /// The file to copy.
    pub source: PathBuf,
}

impl FatFile {
    pub fn new(path: impl Into<String>, source: impl Into<PathBuf>) -> FatFile {
        FatFile {
            path: path.into(),
            source: source.into(),
        }
    }
}

/// An entry of an image, as [`list_fat`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FatEntry {
    /// Path inside the image with its long name, e.g. `EFI/systemd/systemd-bootx64.efi`.
    pub path: String,
    pub is_dir: bool,
}

/// FAT type and cluster size for an image size: pinned here so that a mkfs.fat with other
/// defaults makes the same layout. FAT32 (what UEFI expects on hard disks) from 64 MiB;
/// smaller images get FAT16 or FAT12, with cluster counts inside each type's legal range.
/// Returns (FAT bits, sectors per cluster).
pub fn geometry(size: u64) -> (u8, u8) {
    const MIB: u64 = 1 << 20;
    if size >= 512 * MIB {
        (32, 8) // 4 KiB clusters: at least 131072 of them
    } else if size >= 64 * MIB {
        (32, 1) // 512-byte clusters: 131072 to 1048576
    } else if size >= 12 * MIB {
        (16, 4) // 2 KiB clusters: about 6000 to 32700
    } else {
        (12, 8) // 4 KiB clusters: at most about 3070
    }
}

/// A volume id derived from `ids` for `role` (e.g. `esp/volume-id`).
pub fn volume_id(ids: &IdSource, role: &str) -> u32 {
    let b = ids.bytes(role);
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Why a FAT image could not be built or read.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    #[error("FAT image size {size} bytes: expected a whole number of {SECTOR}-byte sectors, at least {MIN_SIZE}\n  hint: give the partition a size in MiB")]
    BadSize { size: u64 },
    #[error("FAT label `{label}`: expected up to 11 of A-Z, 0-9, `_` and `-`\n  hint: use an upper-case label like `ESP`")]
    BadLabel { label: String },
    #[error("epoch {epoch}: expected a time FAT can store, between {} and {} (1980-01-01 to 2107-12-31)\n  hint: check SOURCE_DATE_EPOCH", EPOCH_RANGE.start(), EPOCH_RANGE.end())]
    BadEpoch { epoch: i64 },
    #[error("path `{path}` in the FAT image: {problem}\n  hint: use `/`-separated names of letters, digits and `._+~-`, like `EFI/BOOT/BOOTX64.EFI`")]
    BadPath { path: String, problem: &'static str },
    #[error("paths `{first}` and `{second}` clash in the FAT image (FAT names ignore case)\n  hint: give each file its own path")]
    Clash { first: String, second: String },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("source {} for `{path}` is not a regular file\n  hint: give a file, not a directory", file.display())]
    NotAFile { path: String, file: PathBuf },
    #[error("`{tool}` not found: {source}\n  hint: install Debian's `{package}` (ci/setup does)")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
        source: io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}\n  to reproduce: {command}")]
    ToolFailed {
        tool: &'static str,
        status: String,
        stderr: String,
        command: String,
    },
    #[error("`{path}` is not in the FAT image {}", image.display())]
    NotInImage { image: PathBuf, path: String },
    /// A directory loop, or a cluster chain that loops.
    #[error("the FAT image has a loop: {what}")]
    Loop { what: String },
    /// A bound of [`list_fat`] exceeded.
    #[error("the FAT image {what}")]
    Limit { what: String },
    /// A file larger than the caller reads.
    #[error("`{path}` in the FAT image holds {size} bytes or more, more than the {cap} read here")]
    TooLarge { path: String, size: u64, cap: u64 },
    #[error("the FAT image's listing is malformed: {problem}")]
    Malformed { problem: String },
    /// A reading tool ran past [`MTOOLS_TIMEOUT`]; `command` reruns it.
    #[error("{tool} ran longer than {} s and was killed (a crafted image?)", MTOOLS_TIMEOUT.as_secs())]
    Timeout { tool: &'static str, command: String },
}

impl EspError {
    /// The image read is malformed or crafted (bad input), not a failure of this host.
    pub fn is_crafted(&self) -> bool {
        matches!(
            self,
            EspError::Loop { .. }
                | EspError::Limit { .. }
                | EspError::TooLarge { .. }
                | EspError::Malformed { .. }
                | EspError::Timeout { .. }
        )
    }
}

/// Build the FAT image `image` (replacing any file there) of `opts.size` bytes holding `files`.
/// Same options and file contents give the same bytes, whatever the time, directory, umask,
/// time zone or user.
pub fn write_fat(image: &Path, opts: &FatOptions, files: &[FatFile]) -> Result<(), EspError> {
    if opts.size % SECTOR != 0 || opts.size < MIN_SIZE {
        return Err(EspError::BadSize { size: opts.size });
    }
    if opts.label.len() > 11
        || !opts
            .label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(EspError::BadLabel {
            label: opts.label.clone(),
        });
    }
    if !EPOCH_RANGE.contains(&opts.epoch) {
        return Err(EspError::BadEpoch { epoch: opts.epoch });
    }
    let mut files = files.to_vec();
    files.sort();
    let dirs = check_paths(&files)?;
    for f in &files {
        let meta = std::fs::metadata(&f.source).map_err(|e| EspError::Io {
            path: f.source.clone(),
            action: "read the metadata of",
            source: e,
        })?;
        if !meta.is_file() {
            return Err(EspError::NotAFile {
                path: f.path.clone(),
                file: f.source.clone(),
            });
        }
    }

    let tools = Tools::new(opts.epoch)?;
    match std::fs::remove_file(image) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(image, "remove the old", e)),
    }
    let file = std::fs::File::create(image).map_err(|e| io_error(image, "create", e))?;
    file.set_len(opts.size)
        .map_err(|e| io_error(image, "set the size of", e))?;
    drop(file);

    let (fat_bits, cluster_sectors) = geometry(opts.size);
    let mut mkfs: Vec<OsString> = [
        // --invariant first: it sets its own volume id, which -i then replaces.
        "--invariant".to_string(),
        "-i".into(),
        format!("{:08x}", opts.volume_id),
        "-F".into(),
        fat_bits.to_string(),
        "-s".into(),
        cluster_sectors.to_string(),
        "-S".into(),
        SECTOR.to_string(),
        "-f".into(),
        "2".into(),
        "-M".into(),
        "0xF8".into(),
        "-D".into(),
        "0x80".into(),
        "-h".into(),
        "0".into(),
        "-g".into(),
        "255/63".into(),
        "--mbr=n".into(),
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if fat_bits != 32 {
        mkfs.extend(["-r", "512"].map(OsString::from));
    }
    mkfs.push(image.into());
    tools.run("mkfs.fat", "dosfstools", &mkfs)?;

    let img = |args: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["-i".into(), image.into()];
        v.extend(args.iter().map(OsString::from));
        v
    };
    if !opts.label.is_empty() {
        tools.run("mlabel", "mtools", &img(&[&format!("::{}", opts.label)]))?;
    }
    if !dirs.is_empty() {
        let targets: Vec<String> = dirs.iter().map(|d| format!("::{d}")).collect();
        let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
        tools.run("mmd", "mtools", &img(&targets))?;
    }
    for f in &files {
        let mut args: Vec<OsString> = vec!["-i".into(), image.into()];
        args.push(f.source.clone().into());
        args.push(format!("::{}", f.path).into());
        tools.run("mcopy", "mtools", &args)?;
    }
    Ok(())
}

/// Every entry of `image` (directories and files, with long names), sorted by path. At most
/// [`MAX_FAT_ENTRIES`], [`MAX_FAT_DEPTH`] deep, in [`MAX_LISTING_BYTES`] of `mdir` output; a
/// path listed twice is [`EspError::Loop`].
pub fn list_fat(image: &Path) -> Result<Vec<FatEntry>, EspError> {
    let tools = Tools::new(*EPOCH_RANGE.start())?;
    let args: Vec<OsString> = vec![
        "-/".into(),
        "-b".into(),
        "-i".into(),
        image.into(),
        "::".into(),
    ];
    let mut listed = Listed::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut total = 0u64;
    let ran = tools.stream("mdir", "mtools", &args, &mut |chunk| {
        total += chunk.len() as u64;
        if total > MAX_LISTING_BYTES {
            return Err(EspError::Limit {
                what: format!("has a listing longer than {MAX_LISTING_BYTES} bytes"),
            });
        }
        pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(i) = pending[start..].iter().position(|&b| b == b'\n') {
            listed.line(&pending[start..start + i])?;
            start += i + 1;
        }
        pending.drain(..start);
        if pending.len() > MAX_LISTING_LINE {
            return Err(EspError::Malformed {
                problem: format!("mdir printed a line longer than {MAX_LISTING_LINE} bytes"),
            });
        }
        Ok(())
    })?;
    if ran.stderr.contains(MTOOLS_LOOP) {
        return Err(EspError::Loop {
            what: format!("mdir: {}", ran.stderr),
        });
    }
    if !ran.status.success() {
        // mdir fails on an empty root directory ("File "::" not found").
        if ran.stderr.contains("not found") && listed.entries.is_empty() && image.is_file() {
            return Ok(Vec::new());
        }
        return Err(tools.failed("mdir", &args, &ran));
    }
    if !pending.is_empty() {
        listed.line(&pending)?;
    }
    let mut entries = listed.entries;
    entries.sort();
    Ok(entries)
}

/// What [`list_fat`] has read of `mdir`'s listing.
#[derive(Default)]
struct Listed {
    seen: BTreeSet<String>,
    entries: Vec<FatEntry>,
}

impl Listed {
    /// One line of `mdir -/ -b`: `::/EFI/BOOT/BOOTX64.EFI`, or `::/EFI/` for a directory.
    fn line(&mut self, line: &[u8]) -> Result<(), EspError> {
        let line = String::from_utf8_lossy(line);
        let Some(p) = line.strip_prefix("::/") else {
            return Err(EspError::Malformed {
                problem: format!("mdir printed {:?}, not a path", truncated(&line)),
            });
        };
        let (path, is_dir) = match p.strip_suffix('/') {
            Some(dir) => (dir, true),
            None => (p, false),
        };
        if !self.seen.insert(path.to_string()) {
            return Err(EspError::Loop {
                what: format!(
                    "`{}` is listed twice (an entry points back at an ancestor, or two entries share a name)",
                    truncated(path)
                ),
            });
        }
        if path.split('/').count() > MAX_FAT_DEPTH {
            return Err(EspError::Limit {
                what: format!(
                    "has a path more than {MAX_FAT_DEPTH} levels deep (a directory loop?): `{}`",
                    truncated(path)
                ),
            });
        }
        if self.entries.len() >= MAX_FAT_ENTRIES {
            return Err(EspError::Limit {
                what: format!("has more than {MAX_FAT_ENTRIES} entries"),
            });
        }
        self.entries.push(FatEntry {
            path: path.to_string(),
            is_dir,
        });
        Ok(())
    }
}

/// The size and sha256 (lower-case hex) of the file at `path` in `image`, its content
/// streamed from `mcopy`, never held whole; [`EspError::TooLarge`] (`mcopy` stopped) once it
/// gives more than `max` bytes.
pub fn hash_fat_file(image: &Path, path: &str, max: u64) -> Result<(u64, String), EspError> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    copy_out(image, path, &mut |chunk| {
        size += chunk.len() as u64;
        if size > max {
            return Err(EspError::TooLarge {
                path: path.to_string(),
                size,
                cap: max,
            });
        }
        hasher.update(chunk);
        Ok(())
    })?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// The content of the file at `path` (e.g. `EFI/BOOT/BOOTX64.EFI`) in `image`, if at most
/// [`MAX_READ_BYTES`]; see [`read_fat_file_capped`].
pub fn read_fat_file(image: &Path, path: &str) -> Result<Vec<u8>, EspError> {
    read_fat_file_capped(image, path, MAX_READ_BYTES)
}

/// The content of the file at `path` in `image`, read into memory as it comes (nothing is
/// allocated ahead); a file of more than `cap` bytes is [`EspError::TooLarge`] with its size
/// (the rest is counted, not kept, up to the image's own size).
pub fn read_fat_file_capped(image: &Path, path: &str, cap: u64) -> Result<Vec<u8>, EspError> {
    // A file's clusters are the image's: more than that is a crafted chain.
    let image_len = std::fs::metadata(image)
        .map_err(|e| io_error(image, "read the metadata of", e))?
        .len();
    let mut bytes = Vec::new();
    let mut size = 0u64;
    let result = copy_out(image, path, &mut |chunk| {
        size += chunk.len() as u64;
        if size <= cap {
            bytes.extend_from_slice(chunk);
        } else if size > image_len.max(cap) {
            return Err(EspError::TooLarge {
                path: path.to_string(),
                size,
                cap,
            });
        }
        Ok(())
    });
    match result {
        Ok(()) if size > cap => Err(EspError::TooLarge {
            path: path.to_string(),
            size,
            cap,
        }),
        Ok(()) => Ok(bytes),
        Err(e) => Err(e),
    }
}

/// `mcopy` the file at `path` in `image` to `sink`, chunk by chunk.
fn copy_out(
    image: &Path,
    path: &str,
    sink: &mut dyn FnMut(&[u8]) -> Result<(), EspError>,
) -> Result<(), EspError> {
    if path.contains(['*', '?', '[', ']']) {
        return Err(EspError::Malformed {
            problem: format!(
                "`{}` holds an mtools wildcard (`*?[]`): reading it would read other files",
                truncated(path)
            ),
        });
    }
    let tools = Tools::new(*EPOCH_RANGE.start())?;
    let args: Vec<OsString> = vec![
        "-i".into(),
        image.into(),
        format!("::{path}").into(),
        "-".into(),
    ];
    let ran = tools.stream("mcopy", "mtools", &args, sink)?;
    if ran.stderr.contains(MTOOLS_LOOP) {
        return Err(EspError::Loop {
            what: format!("mcopy of `{}`: {}", truncated(path), ran.stderr),
        });
    }
    if !ran.status.success() {
        if ran.stderr.contains("not found") {
            return Err(EspError::NotInImage {
                image: image.to_path_buf(),
                path: path.to_string(),
            });
        }
        return Err(tools.failed("mcopy", &args, &ran));
    }
    Ok(())
}

/// At most 200 characters of `s`, for messages about hostile names.
fn truncated(s: &str) -> String {
    if s.chars().count() <= 200 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(200).collect::<String>())
    }
}

/// Kills a child process still running at a deadline: a thread waits for [`Watchdog::stop`]
/// until then. Stop it before reaping the child, so that the pid it may kill is still the
/// child's. (The pattern of `compare::contents`'s debugfs runner.)
pub(crate) struct Watchdog {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    pub(crate) fn start(child: &Child, deadline: Instant) -> Watchdog {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let thread = std::thread::spawn(move || {
            let late = matches!(
                stopped.recv_timeout(deadline.saturating_duration_since(Instant::now())),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            );
            if late {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            late
        });
        Watchdog { stop, thread }
    }

    /// Stop watching: whether the child was killed for running late.
    pub(crate) fn stop(self) -> bool {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or(false)
    }
}

/// How a reading tool ended.
struct Ran {
    status: ExitStatus,
    /// Its standard error (the first [`MAX_STDERR`](super::tool::MAX_STDERR) bytes), trimmed.
    stderr: String,
}

/// Check every path and return the directories to create, parents first.
fn check_paths(files: &[FatFile]) -> Result<Vec<String>, EspError> {
    let bad = |path: &str, problem| EspError::BadPath {
        path: path.to_string(),
        problem,
    };
    let mut dirs = BTreeSet::new();
    // Lower-cased path → the path as given, for every file and directory.
    let mut seen: std::collections::BTreeMap<String, (String, bool)> = Default::default();
    let mut note = |path: &str, is_dir: bool| -> Result<(), EspError> {
        match seen.get(&path.to_ascii_lowercase()) {
            Some((other, other_is_dir)) if *other_is_dir && is_dir && other == path => Ok(()),
            Some((other, _)) => Err(EspError::Clash {
                first: other.clone(),
                second: path.to_string(),
            }),
            None => {
                seen.insert(path.to_ascii_lowercase(), (path.to_string(), is_dir));
                Ok(())
            }
        }
    };
    for f in files {
        let path = f.path.as_str();
        if path.is_empty() {
            return Err(bad(path, "it is empty"));
        }
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts {
            if part.is_empty() {
                return Err(bad(
                    path,
                    "it has an empty component (a leading, trailing or double `/`)",
                ));
            }
            if *part == "." || *part == ".." || part.ends_with('.') {
                return Err(bad(path, "a component is `.`, `..` or ends with `.`"));
            }
            if part.len() > 255 {
                return Err(bad(path, "a component is longer than 255 characters"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+~-".contains(&b))
            {
                return Err(bad(
                    path,
                    "a component has a character other than letters, digits and `._+~-`",
                ));
            }
        }
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            note(&dir, true)?;
            dirs.insert(dir);
        }
        note(path, false)?;
    }
    // Byte order puts every parent before its children.
    Ok(dirs.into_iter().collect())
}

/// The fixed environment the tools run in.
struct Tools {
    /// Holds `mtoolsrc` and serves as an empty `HOME`.
    dir: tempfile::TempDir,
    path: OsString,
    epoch: i64,
}

impl Tools {
    fn new(epoch: i64) -> Result<Tools, EspError> {
        let dir = super::artifacts::scratch_dir("plinth-mtools")
            .map_err(|e| io_error(&std::env::temp_dir(), "create a directory in", e))?;
        let rc = dir.path().join("mtoolsrc");
        std::fs::write(&rc, MTOOLSRC).map_err(|e| io_error(&rc, "write", e))?;
        // mkfs.fat lives in /usr/sbin, which a user's PATH may lack.
        let mut path = std::env::var_os("PATH").unwrap_or_default();
        if !path.is_empty() {
            path.push(":");
        }
        path.push("/usr/sbin:/sbin:/usr/bin:/bin");
        Ok(Tools { dir, path, epoch })
    }

    fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![
            ("PATH", self.path.clone()),
            ("HOME", self.dir.path().into()),
            ("LC_ALL", "C".into()),
            ("TZ", "UTC".into()),
            ("SOURCE_DATE_EPOCH", self.epoch.to_string().into()),
            ("MTOOLSRC", self.dir.path().join("mtoolsrc").into()),
        ]
    }

    /// Run `tool` with `args` in the fixed environment; its stdout on success.
    fn run(
        &self,
        tool: &'static str,
        package: &'static str,
        args: &[OsString],
    ) -> Result<Vec<u8>, EspError> {
        let env = self.env();
        let mut cmd = Command::new(tool);
        cmd.args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)));
        let out = super::tool::scratch(&mut cmd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| not_started(e, &env, tool, package, args))?;
        if !out.status.success() {
            return Err(EspError::ToolFailed {
                tool,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                command: command_line(&env, tool, args),
            });
        }
        Ok(out.stdout)
    }

    /// Run the reading tool `tool` with `args` in the fixed environment, its standard output
    /// given to `sink` as it comes; an error from `sink` kills it (and is returned), and so
    /// does [`MTOOLS_TIMEOUT`] ([`EspError::Timeout`]). How it ended, for the caller to judge.
    fn stream(
        &self,
        tool: &'static str,
        package: &'static str,
        args: &[OsString],
        sink: &mut dyn FnMut(&[u8]) -> Result<(), EspError>,
    ) -> Result<Ran, EspError> {
        use std::io::Read;
        let env = self.env();
        let mut child = Command::new(tool)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| not_started(e, &env, tool, package, args))?;
        let watchdog = Watchdog::start(&child, Instant::now() + MTOOLS_TIMEOUT);
        let mut stdout = child.stdout.take().expect("piped");
        let errors = crate::pipeline::tool::keep_stderr(child.stderr.take().expect("piped"));
        let mut buf = vec![0u8; 64 << 10];
        let fed = loop {
            match stdout.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    if let Err(e) = sink(&buf[..n]) {
                        break Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    break Err(EspError::ToolFailed {
                        tool,
                        status: "its output could not be read".into(),
                        stderr: e.to_string(),
                        command: command_line(&env, tool, args),
                    })
                }
            }
        };
        if fed.is_err() {
            let _ = child.kill();
        }
        drop(stdout);
        let timed_out = watchdog.stop();
        let status = child.wait();
        let stderr = errors.join().unwrap_or_default();
        if timed_out {
            return Err(EspError::Timeout {
                tool,
                command: command_line(&env, tool, args),
            });
        }
        fed?;
        let status = status.map_err(|e| EspError::ToolFailed {
            tool,
            status: "could not be waited for".into(),
            stderr: e.to_string(),
            command: command_line(&env, tool, args),
        })?;
        Ok(Ran {
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        })
    }

    /// The error for a reading tool that failed.
    fn failed(&self, tool: &'static str, args: &[OsString], ran: &Ran) -> EspError {
        EspError::ToolFailed {
            tool,
            status: ran.status.to_string(),
            stderr: ran.stderr.clone(),
            command: command_line(&self.env(), tool, args),
        }
    }
}

/// Why `tool` could not be started: missing (with the package that has it), or another error.
fn not_started(
    e: io::Error,
    env: &[(&str, OsString)],
    tool: &'static str,
    package: &'static str,
    args: &[OsString],
) -> EspError {
    match e.kind() {
        io::ErrorKind::NotFound => EspError::ToolMissing {
            tool,
            package,
            source: e,
        },
        _ => EspError::ToolFailed {
            tool,
            status: "could not start".into(),
            stderr: e.to_string(),
            command: command_line(env, tool, args),
        },
    }
}

/// A shell line that reruns a tool the way [`Tools::run`] did.
fn command_line(env: &[(&str, OsString)], tool: &str, args: &[OsString]) -> String {
    let mut words = vec!["env".to_string(), "-i".to_string()];
    words.extend(
        env.iter()
            .map(|(k, v)| shell_quote(&format!("{k}={}", v.to_string_lossy()))),
    );
    words.push(tool.to_string());
    words.extend(args.iter().map(|a| shell_quote(&a.to_string_lossy())));
    words.join(" ")
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:=+,@%".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> EspError {
    EspError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(paths: &[&str]) -> Vec<FatFile> {
        paths
            .iter()
            .map(|p| FatFile::new(*p, "/dev/null"))
            .collect()
    }

    #[test]
    fn directories_come_parents_first() {
        let mut f = files(&[
            "loader/entries/a.conf",
            "EFI/systemd/systemd-bootx64.efi",
            "EFI/BOOT/BOOTX64.EFI",
            "loader/loader.conf",
        ]);
        f.sort();
        assert_eq!(
            check_paths(&f).unwrap(),
            ["EFI", "EFI/BOOT", "EFI/systemd", "loader", "loader/entries"]
        );
    }

    #[test]
    fn bad_paths_and_clashes_are_refused() {
        for p in [
            "", "/EFI/x", "EFI//x", "EFI/x/", "a/../b", "a b", "EFI/é", "x.",
        ] {
            assert!(
                matches!(check_paths(&files(&[p])), Err(EspError::BadPath { .. })),
                "{p:?}"
            );
        }
        assert!(matches!(
            check_paths(&files(&["EFI/BOOT/x", "efi/boot/y"])),
            Err(EspError::Clash { .. })
        ));
        assert!(matches!(
            check_paths(&files(&["a/B.EFI", "a/b.efi"])),
            Err(EspError::Clash { .. })
        ));
        assert!(matches!(
            check_paths(&files(&["a", "a/b"])),
            Err(EspError::Clash { .. })
        ));
    }

    #[test]
    fn geometry_keeps_cluster_counts_legal() {
        const MIB: u64 = 1 << 20;
        for mib in [1, 8, 11, 12, 16, 63, 64, 128, 256, 511, 512, 1024] {
            let (bits, spc) = geometry(mib * MIB);
            let clusters = mib * MIB / (spc as u64 * SECTOR);
            match bits {
                12 => assert!(clusters <= 4084, "{mib} MiB: {clusters}"),
                // Upper bounds only here: mkfs.fat subtracts FAT and root space first.
                16 => assert!((4200..65525).contains(&clusters), "{mib} MiB: {clusters}"),
                32 => assert!(clusters >= 66000, "{mib} MiB: {clusters}"),
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn volume_ids_are_derived() {
        let ids = IdSource {
            os: "host-os",
            version: "1",
        };
        assert_eq!(
            volume_id(&ids, "esp/volume-id"),
            volume_id(&ids, "esp/volume-id")
        );
        assert_ne!(
            volume_id(&ids, "esp/volume-id"),
            volume_id(&ids, "config/volume-id")
        );
    }

    #[test]
    fn listings_refuse_loops_depth_and_stray_lines() {
        let mut l = Listed::default();
        l.line(b"::/EFI/").unwrap();
        l.line(b"::/EFI/BOOT/BOOTX64.EFI").unwrap();
        assert_eq!(
            l.entries,
            [
                FatEntry {
                    path: "EFI".into(),
                    is_dir: true
                },
                FatEntry {
                    path: "EFI/BOOT/BOOTX64.EFI".into(),
                    is_dir: false
                }
            ]
        );
        assert!(matches!(l.line(b"::/EFI/"), Err(EspError::Loop { .. })));
        assert!(matches!(l.line(b"EFI/x"), Err(EspError::Malformed { .. })));
        let deep = format!("::/{}", ["d"; MAX_FAT_DEPTH + 1].join("/"));
        assert!(matches!(
            l.line(deep.as_bytes()),
            Err(EspError::Limit { .. })
        ));
        let err = copy_out(Path::new("/nonexistent"), "EFI/*", &mut |_| Ok(())).unwrap_err();
        assert!(
            matches!(err, EspError::Malformed { .. }) && err.is_crafted(),
            "{err}"
        );
    }

    #[test]
    fn watchdog_kills_a_late_child() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let start = Instant::now();
        let dog = Watchdog::start(&child, start + Duration::from_millis(200));
        let status = child.wait().unwrap();
        assert!(dog.stop(), "the watchdog says it killed the child");
        assert!(!status.success());
        assert!(start.elapsed() < Duration::from_secs(10));
        // Stopped in time, it kills nothing.
        let mut child = Command::new("true").spawn().unwrap();
        let dog = Watchdog::start(&child, Instant::now() + Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!dog.stop());
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn command_lines_are_quoted() {
        let env = vec![("TZ", OsString::from("UTC"))];
        let line = command_line(&env, "mcopy", &["a b".into(), "::x".into()]);
        assert_eq!(line, "env -i TZ=UTC mcopy 'a b' ::x");
    }
}
