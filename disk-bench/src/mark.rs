//! The mark that makes a virtio disk a benchmark's disk: its first sector starts with a
//! magic line, and whatever follows, up to the first NUL, is `key=value` lines. Two kinds of
//! mark exist: the scratch disks `disk-bench` writes and reads ([`crate::scratch`]), and the
//! disks holding a release's image for SetupOS's `install-bench` ([`crate::install`]). A
//! production disk never starts with either magic (a boot disk starts with a GPT's
//! protective MBR, an encrypted volume with its LUKS header), so on those the verbs are
//! inert.
//!
//! The sector is outside input (whoever attached the disk wrote it): it is read once, 512
//! bytes, and each header's parser bounds every value it accepts.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The sector that holds a mark.
pub const SECTOR: usize = 512;

/// The `key=value` lines after `magic` on `sector`: `None` when the sector does not start
/// with `magic` (not this kind of disk), `Some(Err)` when it does but a line is not
/// `key=value` or a key comes twice. Blank lines and the lines' surrounding blanks are
/// ignored.
#[allow(clippy::type_complexity)]
pub fn fields<'a>(
    sector: &'a [u8],
    magic: &[u8],
) -> Option<Result<Vec<(&'a str, &'a str)>, String>> {
    let rest = sector.strip_prefix(magic)?;
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let Ok(text) = std::str::from_utf8(&rest[..end]) else {
        return Some(Err("the header is not UTF-8".into()));
    };
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((key, value)) = line.split_once('=') else {
            return Some(Err(format!("header line {line:?} is not key=value")));
        };
        if fields.iter().any(|(k, _)| *k == key) {
            return Some(Err(format!("header key {key:?} comes twice")));
        }
        fields.push((key, value));
    }
    Some(Ok(fields))
}

/// The first sector of the disk or file at `path`; `None` when it cannot be read.
pub fn first_sector(path: &Path) -> Option<[u8; SECTOR]> {
    let mut sector = [0u8; SECTOR];
    File::open(path).ok()?.read_exact(&mut sector).ok()?;
    Some(sector)
}

/// A marked disk and what its header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedDisk<H> {
    /// `vdb`.
    pub name: String,
    /// `/dev/vdb`.
    pub path: PathBuf,
    /// Its size in bytes.
    pub capacity: u64,
    pub header: Result<H, String>,
}

/// The whole virtio disks (`vd*`) of the machine whose sysfs is at `sys` and devices at
/// `dev` whose first sector `parse` accepts as marked, by name. A disk that is read-only,
/// has partitions or holders is not even read.
pub fn marked_disks<H>(
    sys: &Path,
    dev: &Path,
    parse: impl Fn(&[u8]) -> Option<Result<H, String>>,
) -> Vec<MarkedDisk<H>> {
    let block = sys.join("block");
    let mut names: Vec<String> = std::fs::read_dir(&block)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| name.starts_with("vd"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
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
        if let Some(header) = first_sector(&path).and_then(|s| parse(&s)) {
            disks.push(MarkedDisk {
                name,
                path,
                capacity: sectors.saturating_mul(512),
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8] = b"TEST MARK v1\n";

    #[test]
    fn fields_follow_the_magic_up_to_the_first_nul() {
        let sector = [MAGIC, b"a=1\n  b = x \n\nc=\0d=4"].concat();
        assert_eq!(
            fields(&sector, MAGIC),
            Some(Ok(vec![("a", "1"), ("b ", " x"), ("c", "")]))
        );
        assert_eq!(fields(b"a=1\n", MAGIC), None);
        assert_eq!(fields(&[b"\0", MAGIC].concat(), MAGIC), None);
        for bad in [&b"a\n"[..], b"a=1\na=2\n", b"\xff=1\n"] {
            assert!(
                matches!(fields(&[MAGIC, bad].concat(), MAGIC), Some(Err(_))),
                "{bad:?}"
            );
        }
    }
}
