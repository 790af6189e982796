//! The measurement itself: direct I/O, one request at a time, from 4 KiB-aligned buffers. A
//! sequential write and read-back of a disk's benchmark range with 4 KiB random reads
//! ([`bench`]), a sequential read of a range that is only read ([`read_range`]), and the
//! console line of the figures ([`line`]).

use crate::scratch::Header;
use nix::fcntl::OFlag;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// The start of the disk the benchmark never writes (the header is in it).
pub const RESERVED: u64 = 1 << 20;
/// The sequential block.
pub const BLOCK: usize = 1 << 20;
/// The random read.
const SMALL: usize = 4096;
/// The buffers' alignment: a multiple of every logical block size.
const ALIGN: usize = 4096;

/// Linux's open flags, as `OpenOptionsExt::custom_flags` takes them.
const O_DIRECT: i32 = OFlag::O_DIRECT.bits();
const O_EXCL: i32 = OFlag::O_EXCL.bits();

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

/// The console line of a benchmark of `disk`, with `layer` (`layer=raw`, or nothing) after
/// its name.
pub fn line(disk: &str, layer: &str, f: &Figures) -> String {
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    let mib = f.bytes as f64 / (1u64 << 20) as f64;
    let mut line = format!(
        "PLINTH DISK BENCH disk={disk}{}{layer} bytes={} write_mib_s={:.1} read_mib_s={:.1}",
        if layer.is_empty() { "" } else { " " },
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

/// Read `bytes` (a multiple of 1 MiB) of the device at `path` from `offset` on, in 1 MiB
/// direct reads, and nothing else: for a device something else holds (a mounted state
/// volume, its partition), so neither written nor opened exclusively. How long it took.
pub fn read_range(path: &Path, offset: u64, bytes: u64) -> Result<Duration, String> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(O_DIRECT)
        .open(path)
        .map_err(|e| format!("{}: cannot open for direct reads: {e}", path.display()))?;
    let mut buf = Aligned::new(BLOCK);
    let started = Instant::now();
    for i in 0..bytes / BLOCK as u64 {
        let at = offset + i * BLOCK as u64;
        file.read_exact_at(buf.bytes_mut(), at)
            .map_err(|e| format!("{}: reading at offset {at}: {e}", path.display()))?;
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::fixtures::{image, marked};
    use crate::scratch::read_header;
    use std::fs;

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
            dm_crypt: false,
        };
        assert_eq!(bench(&path, 8 << 20, &rest, false).unwrap().bytes, 7 << 20);
        let too_much = Header {
            bytes: Some(8 << 20),
            random_reads: 0,
            dm_crypt: false,
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
            line("vdb", "", &f),
            "PLINTH DISK BENCH disk=vdb bytes=267386880 write_mib_s=100.0 read_mib_s=200.0 randread_4k_iops=2048 write_s=2.550 read_s=1.275 randread_s=2.000"
        );
        let none = Figures {
            random_reads: 0,
            random: Duration::ZERO,
            ..f
        };
        assert_eq!(
            line("vdc", "layer=raw", &none),
            "PLINTH DISK BENCH disk=vdc layer=raw bytes=267386880 write_mib_s=100.0 read_mib_s=200.0 write_s=2.550 read_s=1.275"
        );
    }
}
