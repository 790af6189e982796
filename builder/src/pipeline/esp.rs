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
//! [`list_fat`] and [`read_fat_file`] read an image back (for tests and `plinth diff`).

use super::ids::IdSource;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Smallest image [`write_fat`] makes.
pub const MIN_SIZE: u64 = 1 << 20;
/// Bytes per sector in every image.
pub const SECTOR: u64 = 512;
/// FAT timestamps run from 1980-01-01 to 2107-12-31 (UTC here).
pub const EPOCH_RANGE: std::ops::RangeInclusive<i64> = 315_532_800..=4_354_819_198;

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

/// Every entry of `image` (directories and files, with long names), sorted by path.
pub fn list_fat(image: &Path) -> Result<Vec<FatEntry>, EspError> {
    let tools = Tools::new(*EPOCH_RANGE.start())?;
    let args: Vec<OsString> = vec![
        "-/".into(),
        "-b".into(),
        "-i".into(),
        image.into(),
        "::".into(),
    ];
    let out = match tools.run("mdir", "mtools", &args) {
        Ok(out) => out,
        // mdir fails on an empty root directory ("File "::" not found").
        Err(EspError::ToolFailed { stderr, .. })
            if stderr.contains("not found") && image.is_file() =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut entries: Vec<FatEntry> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.strip_prefix("::/"))
        .map(|p| match p.strip_suffix('/') {
            Some(dir) => FatEntry {
                path: dir.to_string(),
                is_dir: true,
            },
            None => FatEntry {
                path: p.to_string(),
                is_dir: false,
            },
        })
        .collect();
    entries.sort();
    Ok(entries)
}

/// The content of the file at `path` (e.g. `EFI/BOOT/BOOTX64.EFI`) in `image`.
pub fn read_fat_file(image: &Path, path: &str) -> Result<Vec<u8>, EspError> {
    let tools = Tools::new(*EPOCH_RANGE.start())?;
    let args: Vec<OsString> = vec![
        "-i".into(),
        image.into(),
        format!("::{path}").into(),
        "-".into(),
    ];
    match tools.run("mcopy", "mtools", &args) {
        Err(EspError::ToolFailed { stderr, .. }) if stderr.contains("not found") => {
            Err(EspError::NotInImage {
                image: image.to_path_buf(),
                path: path.to_string(),
            })
        }
        other => other,
    }
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
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => EspError::ToolMissing {
                    tool,
                    package,
                    source: e,
                },
                _ => EspError::ToolFailed {
                    tool,
                    status: "could not start".into(),
                    stderr: e.to_string(),
                    command: command_line(&env, tool, args),
                },
            })?;
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
    fn command_lines_are_quoted() {
        let env = vec![("TZ", OsString::from("UTC"))];
        let line = command_line(&env, "mcopy", &["a b".into(), "::x".into()]);
        assert_eq!(line, "env -i TZ=UTC mcopy 'a b' ::x");
    }
}
