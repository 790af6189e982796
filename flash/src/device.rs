//! The target of a write: what it is (a whole-disk block device or a regular file),
//! its size and identity, and every reason not to write to it (mounted, swap, held by a
//! mapping, the running system's disk, read-only, too small). Everything is read through a
//! sysfs and a procfs root ([`Roots`]), so tests point them at generated trees.
//!
//! A block device is found in sysfs by its major:minor (`<sys>/class/block/*/dev`), never
//! by the name the caller gave (a `/dev/disk/by-id/...` link is fine). Its partitions are
//! the entries of its directory holding a `partition` file. Mounts are matched by
//! major:minor in `<proc>/self/mountinfo`, swap by name or device number in `<proc>/swaps`,
//! holders (dm-crypt, LVM, md) by `holders/` of the disk and of each partition. The system
//! disks are those under the mounts of `/`, `/boot`, `/boot/efi` and `/efi`, followed down
//! through `slaves/` (dm, md) and from a partition to its disk.

use std::fmt;
use std::path::{Path, PathBuf};

/// Sectors as sysfs counts them (`size`), whatever the device's logical block size.
const SYSFS_SECTOR: u64 = 512;
/// The most read of a sysfs or procfs text file (mountinfo of a busy host is some KiB).
const MAX_PROC_TEXT: u64 = 4 << 20;
/// The most kept of a device's model, vendor or serial string (they come from the device).
const MAX_IDENT: usize = 64;
/// Mount points whose disk is the running system's.
const SYSTEM_MOUNTS: [&str; 4] = ["/", "/boot", "/boot/efi", "/efi"];

/// Where sysfs and procfs are: `/sys` and `/proc`, or generated trees in tests.
#[derive(Debug, Clone)]
pub struct Roots {
    pub sys: PathBuf,
    pub proc: PathBuf,
}

impl Roots {
    /// The running system's.
    pub fn system() -> Roots {
        Roots {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
        }
    }
}

/// A block device's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevNo {
    pub major: u64,
    pub minor: u64,
}

impl DevNo {
    /// `8:16`, as sysfs `dev` files and mountinfo write it.
    pub fn parse(text: &str) -> Option<DevNo> {
        let (major, minor) = text.trim().split_once(':')?;
        Some(DevNo {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    fn of_rdev(rdev: u64) -> DevNo {
        DevNo {
            major: nix::sys::stat::major(rdev as nix::libc::dev_t) as u64,
            minor: nix::sys::stat::minor(rdev as nix::libc::dev_t) as u64,
        }
    }
}

impl fmt::Display for DevNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// What the target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A whole-disk block device: its kernel name (`sdb`, `loop3`) and number.
    Block { name: String, devno: DevNo },
    /// A regular file; `existing` false when it does not exist yet (or is empty).
    File { existing: bool },
}

/// The target, inspected.
#[derive(Debug, Clone)]
pub struct Target {
    /// As the caller gave it.
    pub path: PathBuf,
    pub kind: Kind,
    /// Bytes: the device's capacity, or the file's current length.
    pub size: u64,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// A loop device's backing file.
    pub backing_file: Option<String>,
    /// The device's logical block size (512 for a file).
    pub logical_block: u64,
    pub read_only: bool,
}

impl Target {
    pub fn is_block(&self) -> bool {
        matches!(self.kind, Kind::Block { .. })
    }

    /// One line saying what it is: `/dev/sdb (sdb, SanDisk Ultra, serial 4C53..., 32.0 GB)`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Block { name, devno } => {
                let mut parts = vec![format!("{name} {devno}")];
                let model = [self.vendor.as_deref(), self.model.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                parts.push(if model.is_empty() {
                    "model unknown".into()
                } else {
                    model
                });
                parts.push(match &self.serial {
                    Some(s) => format!("serial {s}"),
                    None => "no serial".into(),
                });
                if let Some(b) = &self.backing_file {
                    parts.push(format!("backed by {b}"));
                }
                parts.push(human(self.size));
                format!("{} ({})", self.path.display(), parts.join(", "))
            }
            Kind::File { existing: true } => {
                format!(
                    "{} (a regular file of {})",
                    self.path.display(),
                    human(self.size)
                )
            }
            Kind::File { existing: false } => {
                format!("{} (a new regular file)", self.path.display())
            }
        }
    }
}

/// `32.0 GB (29.8 GiB, 32010928128 bytes)`.
pub fn human(bytes: u64) -> String {
    format!(
        "{:.1} GB ({:.1} GiB, {bytes} bytes)",
        bytes as f64 / 1e9,
        bytes as f64 / (1u64 << 30) as f64
    )
}

/// Why the target is refused. Each message names the device, what was found and what to
/// do; nothing has been written when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{}: no such device or file\n  hint: give the whole disk (e.g. /dev/sdb, see `lsblk -d -o NAME,MODEL,SERIAL,SIZE`) or a file path whose directory exists", path.display())]
    Missing { path: PathBuf },
    #[error("{}: is a character device, not a disk\n  hint: give the block device of the whole disk (e.g. /dev/sdb; see `lsblk -d`)", path.display())]
    CharDevice { path: PathBuf },
    #[error("{}: is a directory\n  hint: give the block device of the whole disk (e.g. /dev/sdb) or the path of an image file", path.display())]
    Directory { path: PathBuf },
    #[error("{}: is a {what}, neither a block device nor a regular file\n  hint: give the block device of the whole disk (e.g. /dev/sdb) or the path of an image file", path.display())]
    Other { path: PathBuf, what: &'static str },
    #[error("{}: is a symbolic link to a file\n  hint: give the file itself ({}); links are followed only to block devices", path.display(), target.display())]
    FileLink { path: PathBuf, target: PathBuf },
    #[error("{}: block device {devno} has no entry in {}\n  hint: the device went away, or sysfs is not mounted", path.display(), sys.display())]
    NotInSysfs {
        path: PathBuf,
        devno: DevNo,
        sys: PathBuf,
    },
    #[error("{}: is partition {name} of disk {disk}; only whole disks are written\n  hint: give the disk, /dev/{disk}, after checking it holds nothing you need", path.display())]
    Partition {
        path: PathBuf,
        name: String,
        disk: String,
    },
    #[error("{}: {what} is mounted on {mountpoint} (device {devno})\n  hint: unmount it (`umount {mountpoint}`) if this is the right disk; otherwise check the device name with `lsblk -o NAME,MODEL,SERIAL,SIZE,MOUNTPOINTS`", path.display())]
    Mounted {
        path: PathBuf,
        what: String,
        mountpoint: String,
        devno: DevNo,
    },
    #[error("{}: {what} is in use as swap ({swap} in {})\n  hint: `swapoff {swap}` if this is the right disk; otherwise check the device name with `lsblk`", path.display(), swaps.display())]
    Swap {
        path: PathBuf,
        what: String,
        swap: String,
        swaps: PathBuf,
    },
    #[error("{}: {what} is held by {} (a device-mapper, LVM, dm-crypt or md device uses it)\n  hint: close what holds it (`dmsetup remove`, `vgchange -an`, `cryptsetup close`, `mdadm --stop`) if this is the right disk; otherwise check the device name with `lsblk`", path.display(), holders.join(", "))]
    Held {
        path: PathBuf,
        what: String,
        holders: Vec<String>,
    },
    #[error("{}: is the running system's disk ({disk} holds {mountpoint}, through {chain})\n  hint: this would overwrite the system you are running; give another disk instead (`lsblk -o NAME,MODEL,SERIAL,SIZE,MOUNTPOINTS`)", path.display())]
    SystemDisk {
        path: PathBuf,
        disk: String,
        mountpoint: String,
        chain: String,
    },
    #[error("{}: is read-only (its `ro` flag in sysfs is set)\n  hint: check the disk's write-protect switch, if it has one, or `blockdev --setrw {}`", path.display(), path.display())]
    ReadOnly { path: PathBuf },
    #[error("{}: holds {}, the image needs {}\n  hint: use a disk of at least {needed} bytes", path.display(), human(*size), human(*needed))]
    TooSmall {
        path: PathBuf,
        size: u64,
        needed: u64,
    },
    #[error("{}: is in use by the kernel (opening it exclusively failed: {source})\n  hint: something mounts, maps or holds it; check `lsblk -o NAME,MOUNTPOINTS` and `dmsetup ls`", path.display())]
    Busy {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

impl Refusal {
    /// Whether the target, not the machine, is at fault: bad input (exit 2). An I/O error
    /// reading sysfs is not.
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, Refusal::Io { .. })
    }
}

fn io_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> Refusal + 'a {
    move |source| Refusal::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// A small text file of sysfs or procfs, trimmed; `None` when missing.
fn read_text(path: &Path) -> Option<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(MAX_PROC_TEXT).read_to_string(&mut text).ok()?;
    Some(text.trim().to_string())
}

/// A device's identity string, printable and bounded (USB sticks report what they like).
fn ident(path: &Path) -> Option<String> {
    let text = read_text(path)?;
    let clean: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_IDENT)
        .collect();
    let clean = clean.trim().to_string();
    (!clean.is_empty()).then_some(clean)
}

/// One block device of sysfs.
#[derive(Debug, Clone)]
struct SysBlock {
    name: String,
    devno: DevNo,
    /// Its directory (`<sys>/class/block/<name>`, or below its disk's for a partition).
    dir: PathBuf,
}

/// The view of sysfs a write needs.
struct Sysfs {
    class: PathBuf,
}

impl Sysfs {
    fn new(roots: &Roots) -> Sysfs {
        Sysfs {
            class: roots.sys.join("class/block"),
        }
    }

    /// Every entry of `class/block`: its name and number.
    fn all(&self) -> Vec<SysBlock> {
        let Ok(entries) = std::fs::read_dir(&self.class) else {
            return Vec::new();
        };
        let mut out: Vec<SysBlock> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let dir = self.class.join(&name);
                let devno = DevNo::parse(&read_text(&dir.join("dev"))?)?;
                Some(SysBlock { name, devno, dir })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn by_devno(&self, devno: DevNo) -> Option<SysBlock> {
        self.all().into_iter().find(|b| b.devno == devno)
    }

    fn by_name(&self, name: &str) -> Option<SysBlock> {
        if !valid_kernel_name(name) {
            return None;
        }
        self.all().into_iter().find(|b| b.name == name)
    }

    fn is_partition(&self, b: &SysBlock) -> bool {
        b.dir.join("partition").exists()
    }

    /// The disk a partition belongs to: the entry whose directory has the partition's.
    fn disk_of(&self, partition: &str) -> Option<SysBlock> {
        self.all()
            .into_iter()
            .find(|d| d.name != partition && d.dir.join(partition).join("partition").exists())
    }

    /// The partitions of a disk: directories below it with a `partition` file.
    fn partitions(&self, disk: &SysBlock) -> Vec<SysBlock> {
        let Ok(entries) = std::fs::read_dir(&disk.dir) else {
            return Vec::new();
        };
        let mut out: Vec<SysBlock> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let dir = disk.dir.join(&name);
                if !dir.join("partition").is_file() {
                    return None;
                }
                let devno = DevNo::parse(&read_text(&dir.join("dev"))?)?;
                Some(SysBlock { name, devno, dir })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The whole disks under `b`: itself if a disk, its disk if a partition, and those
    /// under each of its slaves (dm, md), as (disk name, the chain from `b` to it).
    fn disks_under(
        &self,
        b: &SysBlock,
        chain: String,
        depth: u32,
        out: &mut Vec<(String, String)>,
    ) {
        if depth > 16 {
            return;
        }
        let slaves = Self::names_in(&b.dir.join("slaves"));
        if !slaves.is_empty() {
            for s in slaves {
                if let Some(sb) = self.by_name(&s) {
                    self.disks_under(&sb, format!("{chain} → {s}"), depth + 1, out);
                }
            }
            return;
        }
        if self.is_partition(b) {
            if let Some(disk) = self.disk_of(&b.name) {
                let chain = format!("{chain} → {}", disk.name);
                self.disks_under(&disk, chain, depth + 1, out);
            }
            return;
        }
        out.push((b.name.clone(), chain));
    }
}

/// A kernel block device name: letters, digits, `-`, `_`, `.`, `!` (sysfs writes `/` as
/// `!`), never `.` or `..`.
fn valid_kernel_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!:".contains(&b))
}

/// Inspect `path`: a block device (links followed: `/dev/disk/by-id/...`) must be a whole
/// disk known to sysfs; a regular file may exist or not (its directory must). Character
/// devices, directories, FIFOs and sockets are refused, and so is a link to a regular file
/// (it could have been planted).
pub fn inspect(path: &Path, roots: &Roots) -> Result<Target, Refusal> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let link = match std::fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path, "stat")(e)),
    };
    let Some(link) = link else {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.is_dir() || path.file_name().is_none() {
            return Err(Refusal::Missing {
                path: path.to_path_buf(),
            });
        }
        return Ok(file_target(path, 0, false));
    };
    let meta = if link.file_type().is_symlink() {
        std::fs::metadata(path).map_err(|_| Refusal::Missing {
            path: path.to_path_buf(),
        })?
    } else {
        link.clone()
    };
    let ft = meta.file_type();
    if ft.is_file() {
        if link.file_type().is_symlink() {
            let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
            return Err(Refusal::FileLink {
                path: path.to_path_buf(),
                target,
            });
        }
        return Ok(file_target(path, meta.len(), meta.len() > 0));
    }
    if ft.is_char_device() {
        return Err(Refusal::CharDevice {
            path: path.to_path_buf(),
        });
    }
    if ft.is_dir() {
        return Err(Refusal::Directory {
            path: path.to_path_buf(),
        });
    }
    if !ft.is_block_device() {
        let what = if ft.is_fifo() { "FIFO" } else { "socket" };
        return Err(Refusal::Other {
            path: path.to_path_buf(),
            what,
        });
    }
    let devno = DevNo::of_rdev(meta.rdev());
    block_target(path, devno, roots)
}

fn file_target(path: &Path, size: u64, existing: bool) -> Target {
    Target {
        path: path.to_path_buf(),
        kind: Kind::File { existing },
        size,
        vendor: None,
        model: None,
        serial: None,
        backing_file: None,
        logical_block: 512,
        read_only: false,
    }
}

/// The block device `devno` (at `path`) as sysfs describes it; a partition is refused.
pub fn block_target(path: &Path, devno: DevNo, roots: &Roots) -> Result<Target, Refusal> {
    let sysfs = Sysfs::new(roots);
    let Some(b) = sysfs.by_devno(devno) else {
        return Err(Refusal::NotInSysfs {
            path: path.to_path_buf(),
            devno,
            sys: roots.sys.clone(),
        });
    };
    if sysfs.is_partition(&b) {
        let disk = sysfs
            .disk_of(&b.name)
            .map_or_else(|| "(unknown)".to_string(), |d| d.name);
        return Err(Refusal::Partition {
            path: path.to_path_buf(),
            name: b.name,
            disk,
        });
    }
    let sectors: u64 = read_text(&b.dir.join("size"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io_err(path, "read its size from sysfs")(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} is missing or not a number",
                    b.dir.join("size").display()
                ),
            ))
        })?;
    let logical_block = read_text(&b.dir.join("queue/logical_block_size"))
        .and_then(|s| s.parse().ok())
        .filter(|&n: &u64| n.is_power_of_two() && (512..=65536).contains(&n))
        .unwrap_or(512);
    let dev = b.dir.join("device");
    Ok(Target {
        path: path.to_path_buf(),
        size: sectors.saturating_mul(SYSFS_SECTOR),
        vendor: ident(&dev.join("vendor")),
        model: ident(&dev.join("model")),
        serial: ident(&dev.join("serial")).or_else(|| ident(&b.dir.join("serial"))),
        backing_file: ident(&b.dir.join("loop/backing_file")),
        logical_block,
        read_only: read_text(&b.dir.join("ro")).as_deref() == Some("1"),
        kind: Kind::Block {
            name: b.name,
            devno,
        },
    })
}

/// mountinfo's escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let oct = bytes
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(oct)) = (bytes[i], oct) {
            let v = oct.iter().fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of mountinfo: the device number, the mount point and the mount source.
#[derive(Debug, Clone)]
struct Mount {
    devno: DevNo,
    mountpoint: String,
    source: String,
}

impl Mount {
    /// The number of the block device its source names (`/dev/sdb1`, `/dev/mapper/x`).
    fn source_devno(&self) -> Option<DevNo> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        self.source.strip_prefix("/dev/")?;
        let meta = std::fs::metadata(&self.source).ok()?;
        meta.file_type()
            .is_block_device()
            .then(|| DevNo::of_rdev(meta.rdev()))
    }

    /// The kernel name its source names (`/dev/sdb1` → `sdb1`), for file systems whose
    /// mountinfo number is not their device's (btrfs).
    fn source_name(&self) -> Option<&str> {
        let name = self.source.strip_prefix("/dev/")?;
        Some(name.rsplit('/').next().unwrap_or(name))
    }
}

fn mounts(roots: &Roots) -> Result<Vec<Mount>, Refusal> {
    let path = roots.proc.join("self/mountinfo");
    let text = read_text(&path).ok_or_else(|| {
        io_err(&path, "read")(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "missing or unreadable (is /proc mounted?)",
        ))
    })?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let devno = DevNo::parse(fields.get(2)?)?;
            let mountpoint = unescape(fields.get(4)?);
            let dash = fields.iter().position(|f| *f == "-")?;
            let source = unescape(fields.get(dash + 2).copied().unwrap_or(""));
            Some(Mount {
                devno,
                mountpoint,
                source,
            })
        })
        .collect())
}

/// Refuse a block device that anything uses: a mount, swap or holder on the disk or any of
/// its partitions, or the running system's disk; and a read-only one. Regular files pass.
pub fn check_unused(target: &Target, roots: &Roots) -> Result<(), Refusal> {
    let Kind::Block { name, devno } = &target.kind else {
        return Ok(());
    };
    let path = &target.path;
    let sysfs = Sysfs::new(roots);
    let disk = sysfs.by_devno(*devno).ok_or_else(|| Refusal::NotInSysfs {
        path: path.clone(),
        devno: *devno,
        sys: roots.sys.clone(),
    })?;
    let mut members = vec![(format!("the disk {name}"), disk.clone())];
    for p in sysfs.partitions(&disk) {
        members.push((format!("its partition {}", p.name), p));
    }
    let mounts = mounts(roots)?;

    // The running system's disk first: the most important refusal to name.
    for m in mounts
        .iter()
        .filter(|m| SYSTEM_MOUNTS.contains(&m.mountpoint.as_str()))
    {
        let mut under = Vec::new();
        // A file system without a block device number of its own (btrfs): its source.
        let backing = sysfs.by_devno(m.devno).or_else(|| {
            m.source_devno()
                .and_then(|d| sysfs.by_devno(d))
                .or_else(|| sysfs.by_name(m.source_name()?))
        });
        if let Some(b) = backing {
            sysfs.disks_under(&b, b.name.clone(), 0, &mut under);
        }
        if let Some((d, chain)) = under.into_iter().find(|(d, _)| d == name) {
            return Err(Refusal::SystemDisk {
                path: path.clone(),
                disk: d,
                mountpoint: m.mountpoint.clone(),
                chain,
            });
        }
    }
    for (what, b) in &members {
        let on = |m: &&Mount| {
            m.devno == b.devno
                || m.source_devno() == Some(b.devno)
                || m.source_name() == Some(b.name.as_str())
        };
        if let Some(m) = mounts.iter().find(on) {
            return Err(Refusal::Mounted {
                path: path.clone(),
                what: what.clone(),
                mountpoint: m.mountpoint.clone(),
                devno: b.devno,
            });
        }
    }
    let swaps_path = roots.proc.join("swaps");
    if let Some(text) = read_text(&swaps_path) {
        for line in text.lines().skip(1) {
            let Some(file) = line.split_whitespace().next().map(unescape) else {
                continue;
            };
            let base = file.rsplit('/').next().unwrap_or(&file).to_string();
            let rdev = std::fs::metadata(&file).ok().and_then(|m| {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                m.file_type()
                    .is_block_device()
                    .then(|| DevNo::of_rdev(m.rdev()))
            });
            let hit = members.iter().find(|(_, b)| {
                (file.starts_with("/dev/") && base == b.name) || rdev == Some(b.devno)
            });
            if let Some((what, _)) = hit {
                return Err(Refusal::Swap {
                    path: path.clone(),
                    what: what.clone(),
                    swap: file,
                    swaps: swaps_path,
                });
            }
        }
    }
    for (what, b) in &members {
        let holders = Sysfs::names_in(&b.dir.join("holders"));
        if !holders.is_empty() {
            return Err(Refusal::Held {
                path: path.clone(),
                what: what.clone(),
                holders,
            });
        }
    }
    if target.read_only {
        return Err(Refusal::ReadOnly { path: path.clone() });
    }
    Ok(())
}

/// Refuse a block device smaller than `needed` bytes (a file grows).
pub fn check_size(target: &Target, needed: u64) -> Result<(), Refusal> {
    if target.is_block() && target.size < needed {
        return Err(Refusal::TooSmall {
            path: target.path.clone(),
            size: target.size,
            needed,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A generated sysfs and procfs: `sda` (8:0) with partitions `sda1` (8:1) and `sda2`
    /// (8:2), `sdb` (8:16, the stick) with `sdb1` (8:17), and `dm-0` (253:0) over `sda2`,
    /// mounted on `/`.
    struct Tree {
        _tmp: tempfile::TempDir,
        roots: Roots,
    }

    impl Tree {
        fn new() -> Tree {
            let tmp = tempfile::tempdir().unwrap();
            let roots = Roots {
                sys: tmp.path().join("sys"),
                proc: tmp.path().join("proc"),
            };
            let t = Tree { _tmp: tmp, roots };
            t.disk("sda", "8:0", &[("sda1", "8:1"), ("sda2", "8:2")]);
            t.disk("sdb", "8:16", &[("sdb1", "8:17")]);
            t.disk("dm-0", "253:0", &[]);
            t.link("sda/sda2/holders/dm-0");
            t.link("dm-0/slaves/sda2");
            std::fs::create_dir_all(t.roots.proc.join("self")).unwrap();
            t.mountinfo(&["22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw"]);
            t.swaps(&[]);
            let dev = t.class().join("sdb/device");
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("vendor"), "SanDisk \n").unwrap();
            std::fs::write(dev.join("model"), "Ultra\x07 Fit\n").unwrap();
            std::fs::write(dev.join("serial"), "4C530001\n").unwrap();
            t
        }

        fn class(&self) -> PathBuf {
            self.roots.sys.join("class/block")
        }

        fn disk(&self, name: &str, dev: &str, parts: &[(&str, &str)]) {
            let dir = self.class().join(name);
            for sub in ["holders", "slaves"] {
                std::fs::create_dir_all(dir.join(sub)).unwrap();
            }
            std::fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
            std::fs::write(dir.join("size"), "62521344\n").unwrap();
            std::fs::write(dir.join("ro"), "0\n").unwrap();
            for (p, pdev) in parts {
                let pdir = dir.join(p);
                std::fs::create_dir_all(pdir.join("holders")).unwrap();
                std::fs::write(pdir.join("dev"), format!("{pdev}\n")).unwrap();
                std::fs::write(pdir.join("partition"), "1\n").unwrap();
                // class/block/<partition> is a link into its disk's directory, as in sysfs.
                std::os::unix::fs::symlink(&pdir, self.class().join(p)).unwrap();
            }
        }

        /// An empty entry standing for a holder or slave link.
        fn link(&self, rel: &str) {
            std::fs::create_dir_all(self.class().join(rel)).unwrap();
        }

        fn mountinfo(&self, lines: &[&str]) {
            std::fs::write(
                self.roots.proc.join("self/mountinfo"),
                lines.join("\n") + "\n",
            )
            .unwrap();
        }

        fn swaps(&self, lines: &[&str]) {
            let mut text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n".to_string();
            for l in lines {
                text.push_str(l);
                text.push('\n');
            }
            std::fs::write(self.roots.proc.join("swaps"), text).unwrap();
        }

        fn target(&self, dev: &str) -> Result<Target, Refusal> {
            block_target(
                Path::new("/dev/stick"),
                DevNo::parse(dev).unwrap(),
                &self.roots,
            )
        }

        fn check(&self, dev: &str) -> Result<(), Refusal> {
            check_unused(&self.target(dev)?, &self.roots)
        }
    }

    #[test]
    fn an_unused_stick_passes_with_its_identity() {
        let t = Tree::new();
        let target = t.target("8:16").unwrap();
        assert_eq!(target.size, 62521344 * 512);
        assert_eq!(target.vendor.as_deref(), Some("SanDisk"));
        assert_eq!(
            target.model.as_deref(),
            Some("Ultra Fit"),
            "control chars dropped"
        );
        assert_eq!(target.serial.as_deref(), Some("4C530001"));
        assert!(target
            .describe()
            .contains("sdb 8:16, SanDisk Ultra Fit, serial 4C530001"));
        t.check("8:16").unwrap();
        check_size(&target, target.size).unwrap();
        let err = check_size(&target, target.size + 1).unwrap_err();
        assert!(matches!(err, Refusal::TooSmall { .. }), "{err}");
    }

    #[test]
    fn the_system_disk_is_refused_through_its_mapping() {
        let t = Tree::new();
        let err = t.check("8:0").unwrap_err();
        let Refusal::SystemDisk {
            disk,
            mountpoint,
            chain,
            ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!((disk.as_str(), mountpoint.as_str()), ("sda", "/"));
        assert_eq!(chain, "dm-0 → sda2 → sda");
        assert!(err.to_string().contains("running system's disk"), "{err}");
    }

    #[test]
    fn a_mounted_partition_is_refused() {
        let t = Tree::new();
        t.mountinfo(&[
            "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw",
            "40 22 8:17 / /media/my\\040stick rw - vfat /dev/sdb1 rw",
        ]);
        let err = t.check("8:16").unwrap_err();
        let Refusal::Mounted {
            what, mountpoint, ..
        } = &err
        else {
            panic!("{err}");
        };
        assert_eq!(what, "its partition sdb1");
        assert_eq!(mountpoint, "/media/my stick");
        assert!(err.to_string().contains("umount"), "{err}");
    }

    #[test]
    fn a_btrfs_on_a_partition_is_refused_by_its_source() {
        let t = Tree::new();
        t.mountinfo(&[
            "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw",
            "41 22 0:52 /@data /srv rw - btrfs /dev/sdb1 rw,subvolid=256",
        ]);
        let err = t.check("8:16").unwrap_err();
        assert!(
            matches!(&err, Refusal::Mounted { what, mountpoint, .. } if what == "its partition sdb1" && mountpoint == "/srv"),
            "{err}"
        );
    }

    #[test]
    fn a_disk_used_as_swap_is_refused() {
        let t = Tree::new();
        t.swaps(&["/dev/sdb1                               partition\t1048572\t\t0\t\t-2"]);
        let err = t.check("8:16").unwrap_err();
        assert!(
            matches!(&err, Refusal::Swap { swap, .. } if swap == "/dev/sdb1"),
            "{err}"
        );
        // A swap file elsewhere is not the stick's.
        t.swaps(&["/var/swapfile file 1048572 0 -2"]);
        t.check("8:16").unwrap();
    }

    #[test]
    fn a_held_disk_or_partition_is_refused() {
        let t = Tree::new();
        t.link("sdb/sdb1/holders/dm-3");
        let err = t.check("8:16").unwrap_err();
        assert!(
            matches!(&err, Refusal::Held { what, holders, .. } if what == "its partition sdb1" && holders == &["dm-3"]),
            "{err}"
        );
        std::fs::remove_dir(t.class().join("sdb/sdb1/holders/dm-3")).unwrap();
        t.link("sdb/holders/md0");
        let err = t.check("8:16").unwrap_err();
        assert!(
            matches!(&err, Refusal::Held { what, .. } if what == "the disk sdb"),
            "{err}"
        );
    }

    #[test]
    fn a_partition_or_read_only_disk_is_refused() {
        let t = Tree::new();
        let err = t.target("8:17").unwrap_err();
        assert!(
            matches!(&err, Refusal::Partition { name, disk, .. } if name == "sdb1" && disk == "sdb"),
            "{err}"
        );
        std::fs::write(t.class().join("sdb/ro"), "1\n").unwrap();
        let err = t.check("8:16").unwrap_err();
        assert!(matches!(err, Refusal::ReadOnly { .. }), "{err}");
        let err = t.target("9:9").unwrap_err();
        assert!(matches!(err, Refusal::NotInSysfs { .. }), "{err}");
    }

    #[test]
    fn files_directories_and_character_devices() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::system();
        let new = dir.path().join("disk.img");
        let t = inspect(&new, &roots).unwrap();
        assert_eq!(t.kind, Kind::File { existing: false });
        std::fs::write(&new, b"x").unwrap();
        assert_eq!(
            inspect(&new, &roots).unwrap().kind,
            Kind::File { existing: true }
        );
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&new, &link).unwrap();
        assert!(matches!(
            inspect(&link, &roots),
            Err(Refusal::FileLink { .. })
        ));
        assert!(matches!(
            inspect(dir.path(), &roots),
            Err(Refusal::Directory { .. })
        ));
        assert!(matches!(
            inspect(Path::new("/dev/null"), &roots),
            Err(Refusal::CharDevice { .. })
        ));
        assert!(matches!(
            inspect(&dir.path().join("no/such/dir/x"), &roots),
            Err(Refusal::Missing { .. })
        ));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/media/a\\040b"), "/media/a b");
        assert_eq!(unescape("/x\\"), "/x\\");
        assert_eq!(unescape("/x\\04"), "/x\\04");
    }
}
