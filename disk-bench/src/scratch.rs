//! Which disks are scratch benchmark disks: the mark on a disk's first sector and the header
//! after it ([`parse_header`], in the form of [`crate::mark`]), and the marked whole virtio
//! disks of a machine ([`marked_disks`]).

use crate::mark;
use std::path::Path;

/// The first bytes of a benchmark disk's first sector.
pub const MAGIC: &[u8] = b"PLINTH DISK BENCH SCRATCH v1\n";
#[cfg(test)]
const SECTOR: usize = mark::SECTOR;
const DEFAULT_RANDOM_READS: u64 = 4096;
/// The sequential block, which `bytes` must be a multiple of.
const BLOCK: u64 = crate::direct::BLOCK as u64;

/// What a benchmark disk's header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The bytes to write and read past [`RESERVED`]; `None`: the rest of the disk.
    pub bytes: Option<u64>,
    pub random_reads: u64,
    /// Benchmark it a second time through dm-crypt with the state volume's parameters.
    pub dm_crypt: bool,
}

/// A marked scratch disk.
pub type MarkedDisk = mark::MarkedDisk<Header>;

/// The header on a disk's first sector: `None` when the sector does not start with
/// [`MAGIC`] (not a benchmark disk), `Some(Err)` when it does but the rest is not valid.
pub fn parse_header(sector: &[u8]) -> Option<Result<Header, String>> {
    let fields = match mark::fields(sector, MAGIC)? {
        Ok(fields) => fields,
        Err(e) => return Some(Err(e)),
    };
    let mut header = Header {
        bytes: None,
        random_reads: DEFAULT_RANDOM_READS,
        dm_crypt: false,
    };
    for (key, value) in fields {
        match (key, value.parse::<u64>().ok()) {
            ("bytes", Some(n)) if n > 0 && n % BLOCK == 0 => header.bytes = Some(n),
            ("random_reads", Some(n)) => header.random_reads = n,
            ("dm_crypt", Some(n)) if n <= 1 => header.dm_crypt = n == 1,
            _ => {
                return Some(Err(format!(
                    "header line \"{key}={value}\": expected bytes=<a multiple of 1 MiB>, random_reads=<count> or dm_crypt=<0 or 1>"
                )))
            }
        }
    }
    Some(Ok(header))
}

/// The header of the disk or file at `path` (see [`parse_header`]); `None` as well when its
/// first sector cannot be read.
pub fn read_header(path: &Path) -> Option<Result<Header, String>> {
    parse_header(&mark::first_sector(path)?)
}

/// The marked virtio disks of the machine whose sysfs is at `sys` and devices at `dev`, by
/// name ([`mark::marked_disks`]).
pub fn marked_disks(sys: &Path, dev: &Path) -> Vec<MarkedDisk> {
    mark::marked_disks(sys, dev, parse_header)
}

/// Benchmark disks for the crate's tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::MAGIC;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    /// A disk image of `mib` MiB whose first sector is `first`.
    pub fn image(path: &Path, mib: u64, first: &[u8]) {
        let f = File::create(path).unwrap();
        f.set_len(mib << 20).unwrap();
        f.write_all_at(first, 0).unwrap();
    }

    /// A first sector with the mark and `extra` after it.
    pub fn marked(extra: &str) -> Vec<u8> {
        [MAGIC, extra.as_bytes()].concat()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{image, marked};
    use super::*;
    use std::fs;

    #[test]
    fn the_header_needs_the_magic_at_the_start() {
        assert_eq!(
            parse_header(&marked("bytes=2097152\nrandom_reads=8\n\0garbage=1")),
            Some(Ok(Header {
                bytes: Some(2 << 20),
                random_reads: 8,
                dm_crypt: false,
            }))
        );
        assert_eq!(
            parse_header(&marked("")),
            Some(Ok(Header {
                bytes: None,
                random_reads: DEFAULT_RANDOM_READS,
                dm_crypt: false,
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
        assert!(
            parse_header(&marked("dm_crypt=1\n"))
                .unwrap()
                .unwrap()
                .dm_crypt
        );
        for bad in [
            "bytes=1000\n",
            "bytes=0\n",
            "size=1\n",
            "random_reads=-1\n",
            "dm_crypt=2\n",
        ] {
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
}
