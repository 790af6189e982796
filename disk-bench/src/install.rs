//! The mark of a disk holding a release's disk image for SetupOS's `install-bench`
//! (`ci/bench-install`): the install's streaming writer against `dd` of the same image,
//! onto the same NVMe disk, in the same VM. The source disk's first sector is the mark
//! ([`MAGIC`], then `key=value` lines as [`crate::mark`] reads them); the raw image
//! (`disk.img`, uncompressed) starts at [`IMAGE_OFFSET`]:
//!
//! ```text
//! PLINTH INSTALL BENCH SOURCE v1
//! release=host-os
//! bytes=3221225472
//! target=PLINTH-BENCH-0
//! runs=2
//! ```
//!
//! `release` is the carried release the image is of (`host-os` or `guest-os`), `bytes` its
//! image's size (a multiple of 512), `target` the serial of the NVMe disk both sides write
//! (it must hold no partition), `runs` how many times each side writes (1 to
//! [`MAX_RUNS`], default 2).

use crate::mark;

/// The first bytes of a source disk's first sector.
pub const MAGIC: &[u8] = b"PLINTH INSTALL BENCH SOURCE v1\n";
/// Where the image starts on the source disk.
pub const IMAGE_OFFSET: u64 = 1 << 20;
/// The most runs a header may ask for.
pub const MAX_RUNS: u32 = 10;
const DEFAULT_RUNS: u32 = 2;
/// The largest image a header may name (16 TiB).
pub const MAX_BYTES: u64 = 1 << 44;
/// The longest serial a header may name (NVMe's is 20 characters).
const MAX_SERIAL: usize = 64;

/// The releases SetupOS carries, whose images a source disk may hold.
pub const RELEASES: [&str; 2] = ["host-os", "guest-os"];

/// What a source disk's header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `host-os` or `guest-os`.
    pub release: &'static str,
    /// The image's size; the image is at [`IMAGE_OFFSET`].
    pub bytes: u64,
    /// The serial of the NVMe disk to write.
    pub target: String,
    pub runs: u32,
}

/// The header on a disk's first sector: `None` when the sector does not start with
/// [`MAGIC`], `Some(Err)` when it does but the rest is not valid.
pub fn parse_header(sector: &[u8]) -> Option<Result<Header, String>> {
    Some(parse_fields(mark::fields(sector, MAGIC)?))
}

fn parse_fields(fields: Result<Vec<(&str, &str)>, String>) -> Result<Header, String> {
    let (mut release, mut bytes, mut target, mut runs) = (None, None, None, DEFAULT_RUNS);
    for (key, value) in fields? {
        match key {
            "release" => {
                release =
                    Some(RELEASES.into_iter().find(|r| *r == value).ok_or_else(|| {
                        format!("release={value:?}: expected host-os or guest-os")
                    })?)
            }
            "bytes" => {
                bytes = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0 && n % 512 == 0 && *n <= MAX_BYTES)
                        .ok_or_else(|| {
                            format!("bytes={value:?}: expected a multiple of 512 up to 16 TiB")
                        })?,
                )
            }
            "target" => {
                let serial_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
                if value.is_empty() || value.len() > MAX_SERIAL || !value.chars().all(serial_char) {
                    return Err(format!(
                        "target={value:?}: expected an NVMe serial (letters, digits, - _ .)"
                    ));
                }
                target = Some(value.to_string());
            }
            "runs" => {
                runs = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_RUNS).contains(n))
                    .ok_or_else(|| format!("runs={value:?}: expected 1 to {MAX_RUNS}"))?
            }
            _ => {
                return Err(format!(
                    "header key {key:?}: expected release, bytes, target or runs"
                ))
            }
        }
    }
    let missing = |key: &str| format!("the header has no {key}=");
    Ok(Header {
        release: release.ok_or_else(|| missing("release"))?,
        bytes: bytes.ok_or_else(|| missing("bytes"))?,
        target: target.ok_or_else(|| missing("target"))?,
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marked(extra: &str) -> Vec<u8> {
        [MAGIC, extra.as_bytes()].concat()
    }

    #[test]
    fn a_source_header_names_the_release_its_size_and_the_target() {
        assert_eq!(
            parse_header(&marked(
                "release=host-os\nbytes=3221225472\ntarget=PLINTH-BENCH-0\n\0runs=9"
            )),
            Some(Ok(Header {
                release: "host-os",
                bytes: 3 << 30,
                target: "PLINTH-BENCH-0".into(),
                runs: DEFAULT_RUNS,
            }))
        );
        assert_eq!(
            parse_header(&marked("runs=3\ntarget=S1\nrelease=guest-os\nbytes=512\n"))
                .unwrap()
                .unwrap()
                .runs,
            3
        );
        // The scratch disks' mark, a GPT's protective MBR, a zeroed sector: not a source.
        assert_eq!(parse_header(&crate::scratch::MAGIC.repeat(2)), None);
        let mut mbr = [0u8; mark::SECTOR];
        mbr[450] = 0xee;
        assert_eq!(parse_header(&mbr), None);
        assert_eq!(parse_header(&[0u8; mark::SECTOR]), None);
    }

    #[test]
    fn every_bad_header_is_refused_with_its_field() {
        let base = "release=host-os\nbytes=1048576\ntarget=S1\n";
        for (bad, field) in [
            ("release=setup-os\nbytes=512\ntarget=S1\n", "release"),
            ("release=../x\nbytes=512\ntarget=S1\n", "release"),
            ("release=host-os\nbytes=1000\ntarget=S1\n", "bytes"),
            ("release=host-os\nbytes=0\ntarget=S1\n", "bytes"),
            (
                "release=host-os\nbytes=18446744073709551615\ntarget=S1\n",
                "bytes",
            ),
            ("release=host-os\nbytes=-512\ntarget=S1\n", "bytes"),
            (
                "release=host-os\nbytes=512\ntarget=../../dev/sda\n",
                "target",
            ),
            ("release=host-os\nbytes=512\ntarget=\n", "target"),
            ("release=host-os\nbytes=512\n", "target"),
            ("bytes=512\ntarget=S1\n", "release"),
            ("release=host-os\ntarget=S1\n", "bytes"),
        ] {
            let e = parse_header(&marked(bad)).unwrap().unwrap_err();
            assert!(e.contains(field), "{bad:?}: {e}");
        }
        for (extra, field) in [
            ("runs=0\n", "runs"),
            ("runs=11\n", "runs"),
            ("device=/dev/sda\n", "device"),
            ("release=guest-os\n", "twice"),
        ] {
            let e = parse_header(&marked(&format!("{base}{extra}")))
                .unwrap()
                .unwrap_err();
            assert!(e.contains(field), "{extra:?}: {e}");
        }
        let long = format!("release=host-os\nbytes=512\ntarget={}\n", "S".repeat(65));
        assert!(parse_header(&marked(&long)).unwrap().is_err());
    }
}
