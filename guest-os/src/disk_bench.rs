//! `plinth-guest disk-bench`: direct-I/O throughput of the virtio disks marked as scratch
//! benchmark disks, printed on the consoles, for `ci/bench-launch` (which boots GuestOS with
//! HostOS's chosen virtio-blk settings and with QEMU's defaults, and compares).
//!
//! A disk is a benchmark disk only when its first sector starts with [`MAGIC`]; whatever
//! follows on the sector, up to the first NUL, is `key=value` lines:
//!
//! ```text
//! PLINTH DISK BENCH SCRATCH v1
//! bytes=267386880
//! random_reads=4096
//! ```
//!
//! `bytes` (a multiple of 1 MiB; default: the rest of the disk) is written past the first
//! MiB, which is never written, so the header stays; `random_reads` is the number of 4 KiB
//! random reads (default 4096, 0 for none). Every other disk is only read: its first sector,
//! by an ordinary read, and nothing else. Only virtio disks (`vd*`) are looked at, and not
//! one that is read-only, has partitions or holders (device-mapper, LVM); the benchmark opens
//! the device with `O_EXCL`, which the kernel refuses while anything else holds it. A
//! production disk never starts with the magic (GuestOS's boot disk starts with a GPT's
//! protective MBR; an encrypted volume with its LUKS header), so on those the verb is inert.
//!
//! What is measured, all with `O_DIRECT` from a 4 KiB-aligned buffer, one request at a time:
//! a sequential write of `bytes` in 1 MiB blocks, then `fdatasync` (in the write's time, so
//! that a cache that holds the writes pays for them); a sequential read of the same blocks
//! (each block's first 8 bytes, its offset, checked); `random_reads` reads of 4 KiB at
//! pseudo-random aligned offsets of the same range. The line:
//!
//! ```text
//! PLINTH DISK BENCH disk=vdb bytes=267386880 write_mib_s=97.3 read_mib_s=120.8 randread_4k_iops=812 write_s=2.621 read_s=2.111 randread_s=5.044
//! ```
//!
//! or `PLINTH DISK BENCH disk=vdb FAILED: <why>`. The unit `plinth-disk-bench.service`
//! runs the verb at boot; it waits for the end of startup first (`systemctl
//! is-system-running --wait`), so that the benchmark neither delays the boot report nor
//! competes with the rest of the boot, and its failure never fails the boot.

use nix::fcntl::OFlag;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The first bytes of a benchmark disk's first sector.
pub const MAGIC: &[u8] = b"PLINTH DISK BENCH SCRATCH v1\n";
/// The start of the disk the benchmark never writes (the header is in it).
pub const RESERVED: u64 = 1 << 20;
/// The sequential block.
const BLOCK: usize = 1 << 20;
/// The random read.
const SMALL: usize = 4096;
/// The buffers' alignment: a multiple of every logical block size.
const ALIGN: usize = 4096;
/// The header's sector.
const SECTOR: usize = 512;
const DEFAULT_RANDOM_READS: u64 = 4096;
/// How long the verb waits for the end of startup before benchmarking anyway.
const STARTUP_WAIT: Duration = Duration::from_secs(600);

/// Linux's open flags, as `OpenOptionsExt::custom_flags` takes them.
const O_DIRECT: i32 = OFlag::O_DIRECT.bits();
const O_EXCL: i32 = OFlag::O_EXCL.bits();
const O_NOCTTY: i32 = OFlag::O_NOCTTY.bits();

/// Benchmark the disks marked as benchmark disks (none: nothing is written, nothing printed
/// on the consoles).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "A disk is benchmarked only when its first sector starts with \
\"PLINTH DISK BENCH SCRATCH v1\\n\" (ci/bench-launch writes it); past its first MiB it is \
overwritten.\n\nExit status: 0 no marked disk, or every benchmark ran; 1 one failed."
)]
pub struct DiskBenchArgs {
    /// Start at once instead of waiting for the end of startup.
    #[arg(long)]
    pub no_wait: bool,
}

impl DiskBenchArgs {
    pub fn run(self) -> ExitCode {
        let disks = marked_disks(Path::new("/sys"), Path::new("/dev"));
        if disks.is_empty() {
            println!("plinth-guest: no benchmark disk");
            return ExitCode::SUCCESS;
        }
        if !self.no_wait {
            wait_for_startup(STARTUP_WAIT);
        }
        let mut ok = true;
        for disk in disks {
            let result = disk
                .header
                .clone()
                .and_then(|header| bench(&disk.path, disk.capacity, &header, true));
            let line = match result {
                Ok(figures) => line(&disk.name, &figures),
                Err(why) => {
                    ok = false;
                    format!("PLINTH DISK BENCH disk={} FAILED: {why}", disk.name)
                }
            };
            say(&line);
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// What a benchmark disk's header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The bytes to write and read past [`RESERVED`]; `None`: the rest of the disk.
    pub bytes: Option<u64>,
    pub random_reads: u64,
}

/// The header on a disk's first sector: `None` when the sector does not start with
/// [`MAGIC`] (not a benchmark disk), `Some(Err)` when it does but the rest is not valid.
pub fn parse_header(sector: &[u8]) -> Option<Result<Header, String>> {
    let rest = sector.strip_prefix(MAGIC)?;
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let Ok(text) = std::str::from_utf8(&rest[..end]) else {
        return Some(Err("the header is not UTF-8".into()));
    };
    let mut header = Header {
        bytes: None,
        random_reads: DEFAULT_RANDOM_READS,
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let parsed = line
            .split_once('=')
            .and_then(|(key, value)| Some((key, value.parse::<u64>().ok()?)));
        match parsed {
            Some(("bytes", n)) if n > 0 && n % BLOCK as u64 == 0 => header.bytes = Some(n),
            Some(("random_reads", n)) => header.random_reads = n,
            _ => {
                return Some(Err(format!(
                    "header line {line:?}: expected bytes=<a multiple of 1 MiB> or random_reads=<count>"
                )))
            }
        }
    }
    Some(Ok(header))
}

/// The header of the disk or file at `path` (see [`parse_header`]); `None` as well when its
/// first sector cannot be read.
pub fn read_header(path: &Path) -> Option<Result<Header, String>> {
    let mut sector = [0u8; SECTOR];
    File::open(path).ok()?.read_exact(&mut sector).ok()?;
    parse_header(&sector)
}

/// A marked disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedDisk {
    /// `vdb`.
    pub name: String,
    /// `/dev/vdb`.
    pub path: PathBuf,
    /// Its size in bytes.
    pub capacity: u64,
    pub header: Result<Header, String>,
}

/// The marked virtio disks of the machine whose sysfs is at `sys` and devices at `dev`, by
/// name. A disk that is read-only, has partitions or holders is not even read.
pub fn marked_disks(sys: &Path, dev: &Path) -> Vec<MarkedDisk> {
    let block = sys.join("block");
    let names = crate::machine::block_devices(sys, |name| name.starts_with("vd"));
    let mut disks = Vec::new();
    for name in names {
        let dir = block.join(&name);
        let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if read("ro").trim() != "0" || has_partitions(&dir) || has_holders(&dir) {
            continue;
        }
        let Ok(sectors) = read("size").trim().parse::<u64>() else {
            continue;
        };
        let path = dev.join(&name);
        if let Some(header) = read_header(&path) {
            disks.push(MarkedDisk {
                name,
                path,
                capacity: sectors * 512,
                header,
            });
        }
    }
    disks
}

/// Whether the disk at sysfs `dir` has a partition (a subdirectory with a `partition` file).
fn has_partitions(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.path().join("partition").exists())
    })
}

/// Whether anything (device-mapper, md) is stacked on the disk at sysfs `dir`.
fn has_holders(dir: &Path) -> bool {
    std::fs::read_dir(dir.join("holders")).is_ok_and(|mut entries| entries.next().is_some())
}

/// One benchmark's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub bytes: u64,
    /// The sequential write, `fdatasync` included.
    pub write: Duration,
    pub read: Duration,
    pub random_reads: u64,
    pub random: Duration,
}

/// The console line of a benchmark of `disk`.
pub fn line(disk: &str, f: &Figures) -> String {
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    let mib = f.bytes as f64 / (1u64 << 20) as f64;
    let mut line = format!(
        "PLINTH DISK BENCH disk={disk} bytes={} write_mib_s={:.1} read_mib_s={:.1}",
        f.bytes,
        mib / secs(f.write),
        mib / secs(f.read)
    );
    if f.random_reads > 0 {
        line.push_str(&format!(
            " randread_4k_iops={:.0}",
            f.random_reads as f64 / secs(f.random)
        ));
    }
    line.push_str(&format!(
        " write_s={:.3} read_s={:.3}",
        f.write.as_secs_f64(),
        f.read.as_secs_f64()
    ));
    if f.random_reads > 0 {
        line.push_str(&format!(" randread_s={:.3}", f.random.as_secs_f64()));
    }
    line
}

/// A buffer of `len` bytes at an [`ALIGN`]ed address, as `O_DIRECT` needs (the slack of an
/// ordinary vector, so no unsafe allocation).
struct Aligned {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let storage = vec![0u8; len + ALIGN];
        let start = (ALIGN - storage.as_ptr() as usize % ALIGN) % ALIGN;
        Aligned {
            storage,
            start,
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// A small deterministic generator (xorshift64) for the data and the random offsets.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Write, read back and randomly read the benchmark range of the disk (or file) at `path`,
/// `capacity` bytes long, as `header` says; `direct`: with `O_DIRECT` (on the machine always;
/// tests on file systems without it may not).
pub fn bench(path: &Path, capacity: u64, header: &Header, direct: bool) -> Result<Figures, String> {
    let room = capacity.saturating_sub(RESERVED) / BLOCK as u64 * BLOCK as u64;
    let bytes = header.bytes.unwrap_or(room);
    if bytes == 0 || bytes > room {
        return Err(format!(
            "{} has {room} bytes past its first MiB for the benchmark; the header asks for {bytes}",
            path.display()
        ));
    }
    let mut flags = if direct { O_DIRECT } else { 0 };
    if path.starts_with("/dev") {
        // For a block device: refused while anything else has it open exclusively (mounted,
        // device-mapper, LVM).
        flags |= O_EXCL;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| format!("{}: cannot open for direct I/O: {e}", path.display()))?;
    let io = |what: &str, offset: u64, e: std::io::Error| {
        format!("{}: {what} at offset {offset}: {e}", path.display())
    };
    let blocks = bytes / BLOCK as u64;
    let mut buf = Aligned::new(BLOCK);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for chunk in buf.bytes_mut().chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
    }
    let started = Instant::now();
    for i in 0..blocks {
        let offset = RESERVED + i * BLOCK as u64;
        buf.bytes_mut()[..8].copy_from_slice(&offset.to_le_bytes());
        file.write_all_at(buf.bytes(), offset)
            .map_err(|e| io("writing", offset, e))?;
    }
    file.sync_data()
        .map_err(|e| format!("{}: fdatasync: {e}", path.display()))?;
    let write = started.elapsed();
    let started = Instant::now();
    for i in 0..blocks {
        let offset = RESERVED + i * BLOCK as u64;
        file.read_exact_at(buf.bytes_mut(), offset)
            .map_err(|e| io("reading", offset, e))?;
        check_stamp(buf.bytes(), offset).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let read = started.elapsed();
    let mut small = Aligned::new(SMALL);
    let slots = bytes / SMALL as u64;
    let started = Instant::now();
    for _ in 0..header.random_reads {
        let offset = RESERVED + rng.next() % slots * SMALL as u64;
        file.read_exact_at(small.bytes_mut(), offset)
            .map_err(|e| io("reading", offset, e))?;
    }
    let random = started.elapsed();
    Ok(Figures {
        bytes,
        write,
        read,
        random_reads: header.random_reads,
        random,
    })
}

/// Whether `block`, read at `offset`, is the block written there (its first 8 bytes are the
/// offset it was written at).
fn check_stamp(block: &[u8], offset: u64) -> Result<(), String> {
    let stamp = block
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match stamp {
        Some(s) if s == offset => Ok(()),
        Some(s) => Err(format!(
            "the block read at offset {offset} is the one written at {s}"
        )),
        None => Err(format!("the block read at offset {offset} is short")),
    }
}

/// Wait until systemd has no start job left, at most `limit` (then go on).
fn wait_for_startup(limit: Duration) {
    let Ok(mut child) = std::process::Command::new("systemctl")
        .args(["is-system-running", "--wait"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return;
    };
    let started = Instant::now();
    while started.elapsed() < limit {
        match child.try_wait() {
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            _ => return,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Print `line` on stdout and on every active console (as the boot report does).
fn say(line: &str) {
    use std::io::Write;
    println!("{line}");
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    for console in active.split_whitespace() {
        // Not as the controlling terminal: the service is a session leader.
        let tty = OpenOptions::new()
            .write(true)
            .custom_flags(O_NOCTTY)
            .open(format!("/dev/{console}"));
        if let Ok(mut tty) = tty {
            let _ = tty.write_all(format!("\r\n{line}\r\n").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A disk image of `mib` MiB whose first sector is `first`.
    fn image(path: &Path, mib: u64, first: &[u8]) {
        let f = File::create(path).unwrap();
        f.set_len(mib << 20).unwrap();
        f.write_all_at(first, 0).unwrap();
    }

    fn marked(extra: &str) -> Vec<u8> {
        [MAGIC, extra.as_bytes()].concat()
    }

    #[test]
    fn the_header_needs_the_magic_at_the_start() {
        assert_eq!(
            parse_header(&marked("bytes=2097152\nrandom_reads=8\n\0garbage=1")),
            Some(Ok(Header {
                bytes: Some(2 << 20),
                random_reads: 8
            }))
        );
        assert_eq!(
            parse_header(&marked("")),
            Some(Ok(Header {
                bytes: None,
                random_reads: DEFAULT_RANDOM_READS
            }))
        );
        // Not at the start, a zeroed sector, a protective MBR, a LUKS header: not marked.
        assert_eq!(parse_header(&[b"\0", MAGIC].concat()), None);
        assert_eq!(parse_header(&[0u8; SECTOR]), None);
        let mut mbr = [0u8; SECTOR];
        mbr[450] = 0xee;
        mbr[510..].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(parse_header(&mbr), None);
        assert_eq!(parse_header(b"LUKS\xba\xbe\0\x02"), None);
        assert_eq!(parse_header(&MAGIC[..MAGIC.len() - 1]), None);
        // Marked, but wrong: an error to print, and nothing written.
        for bad in ["bytes=1000\n", "bytes=0\n", "size=1\n", "random_reads=-1\n"] {
            assert!(
                matches!(parse_header(&marked(bad)), Some(Err(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn only_marked_whole_virtio_disks_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        fs::create_dir_all(&dev).unwrap();
        let disk = |name: &str, mib: u64, first: &[u8], ro: &str| {
            let d = sys.join("block").join(name);
            fs::create_dir_all(d.join("holders")).unwrap();
            fs::write(d.join("size"), format!("{}\n", mib * 2048)).unwrap();
            fs::write(d.join("ro"), format!("{ro}\n")).unwrap();
            image(&dev.join(name), mib, first);
        };
        let header = marked("bytes=1048576\n");
        let mut gpt = vec![0u8; SECTOR];
        gpt[450] = 0xee;
        disk("vda", 4, &gpt, "0");
        disk("vdb", 4, &header, "0");
        disk("vdc", 4, &header, "1");
        disk("vdd", 4, &header, "0");
        fs::create_dir_all(sys.join("block/vdd/vdd1")).unwrap();
        fs::write(sys.join("block/vdd/vdd1/partition"), "1\n").unwrap();
        disk("vde", 4, &header, "0");
        fs::write(sys.join("block/vde/holders/dm-0"), "").unwrap();
        disk("sda", 4, &header, "0");
        disk("vdf", 4, &marked("bytes=3\n"), "0");
        let found = marked_disks(&sys, &dev);
        let names: Vec<&str> = found.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vdb", "vdf"]);
        assert_eq!(found[0].capacity, 4 << 20);
        assert_eq!(found[0].path, dev.join("vdb"));
        assert!(found[0].header.is_ok());
        assert!(found[1].header.is_err());
        assert!(marked_disks(&dir.path().join("none"), &dev).is_empty());
    }

    #[test]
    fn the_benchmark_writes_past_the_first_mib_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.img");
        let first = marked("bytes=3145728\nrandom_reads=16\n");
        image(&path, 8, &first);
        let header = read_header(&path).unwrap().unwrap();
        let f = bench(&path, 8 << 20, &header, false).unwrap();
        assert_eq!((f.bytes, f.random_reads), (3 << 20, 16));
        let bytes = fs::read(&path).unwrap();
        // The header's MiB untouched, three stamped blocks, the rest not written.
        assert_eq!(&bytes[..first.len()], &first[..]);
        assert!(bytes[first.len()..RESERVED as usize]
            .iter()
            .all(|b| *b == 0));
        for i in 0..3u64 {
            let at = (RESERVED + i * BLOCK as u64) as usize;
            assert_eq!(bytes[at..at + 8], (at as u64).to_le_bytes());
            assert!(bytes[at + 8..at + BLOCK].iter().any(|b| *b != 0));
        }
        assert!(bytes[4 << 20..].iter().all(|b| *b == 0));
        // The rest of the disk by default; more than there is, refused before writing.
        let rest = Header {
            bytes: None,
            random_reads: 0,
        };
        assert_eq!(bench(&path, 8 << 20, &rest, false).unwrap().bytes, 7 << 20);
        let too_much = Header {
            bytes: Some(8 << 20),
            random_reads: 0,
        };
        let e = bench(&path, 8 << 20, &too_much, false).unwrap_err();
        assert!(e.contains("7340032 bytes past its first MiB"), "{e}");
    }

    #[test]
    fn a_block_read_back_from_elsewhere_is_an_error() {
        let mut block = vec![7u8; 64];
        block[..8].copy_from_slice(&(3u64 << 20).to_le_bytes());
        assert_eq!(check_stamp(&block, 3 << 20), Ok(()));
        assert_eq!(
            check_stamp(&block, 4 << 20),
            Err("the block read at offset 4194304 is the one written at 3145728".into())
        );
        assert!(check_stamp(&block[..4], 3 << 20).is_err());
    }

    #[test]
    fn direct_io_works_where_the_file_system_has_it() {
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let path = dir.path().join("bench.img");
        image(&path, 4, &marked("random_reads=4\n"));
        let header = read_header(&path).unwrap().unwrap();
        match bench(&path, 4 << 20, &header, true) {
            Ok(f) => assert_eq!(f.bytes, 3 << 20),
            // tmpfs has no O_DIRECT.
            Err(e) => assert!(e.contains("Invalid argument"), "{e}"),
        }
    }

    #[test]
    fn the_line_has_throughput_and_times() {
        let f = Figures {
            bytes: 255 << 20,
            write: Duration::from_millis(2550),
            read: Duration::from_millis(1275),
            random_reads: 4096,
            random: Duration::from_secs(2),
        };
        assert_eq!(
            line("vdb", &f),
            "PLINTH DISK BENCH disk=vdb bytes=267386880 write_mib_s=100.0 read_mib_s=200.0 randread_4k_iops=2048 write_s=2.550 read_s=1.275 randread_s=2.000"
        );
        let none = Figures {
            random_reads: 0,
            random: Duration::ZERO,
            ..f
        };
        assert_eq!(
            line("vdc", &none),
            "PLINTH DISK BENCH disk=vdc bytes=267386880 write_mib_s=100.0 read_mib_s=200.0 write_s=2.550 read_s=1.275"
        );
    }
}
