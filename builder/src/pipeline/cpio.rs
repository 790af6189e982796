//! A cpio archive in the kernel's initramfs format ("newc", `070701`), written byte for byte
//! the same anywhere: entries in the order given, inode numbers from 1, owner root, one
//! modification time. The kernel unpacks archives appended to an initrd one after the other
//! (Documentation/driver-api/early-userspace/buffer-format.rst), which is how the UKI's initrd
//! gets plinth's own files on top of dracut's.

use std::io::Write;

/// One member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory, with its mode bits (0o755).
    Dir { path: String, mode: u32 },
    /// A regular file's bytes and mode bits.
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    /// A symbolic link to `target`.
    Symlink { path: String, target: String },
}

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio member `{0}`: expected a relative path of plain components")]
    BadPath(String),
    #[error("cpio member `{0}`: larger than the format's 4 GiB")]
    TooLarge(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn pad4(out: &mut impl Write, len: usize) -> std::io::Result<()> {
    out.write_all(&[0u8; 3][..(4 - len % 4) % 4])
}

fn header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    name: &str,
) -> std::io::Result<()> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        mtime,
        size,
        0,
        0,
        0,
        0,
        namesize as u32,
        0,
    ];
    let mut head = String::from("070701");
    for f in fields {
        head.push_str(&format!("{f:08X}"));
    }
    out.write_all(head.as_bytes())?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad4(out, head.len() + namesize)
}

fn check_path(path: &str) -> Result<(), CpioError> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(CpioError::BadPath(path.into()))
    }
}

/// Write `entries` and the trailer to `out`, every member's time `mtime`.
pub fn write(out: &mut impl Write, entries: &[Entry], mtime: u32) -> Result<(), CpioError> {
    for (i, entry) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        let (path, mode, nlink, data): (&str, u32, u32, &[u8]) = match entry {
            Entry::Dir { path, mode } => (path, 0o040000 | mode, 2, &[]),
            Entry::File { path, mode, data } => (path, 0o100000 | mode, 1, data),
            Entry::Symlink { path, target } => (path, 0o120777, 1, target.as_bytes()),
        };
        check_path(path)?;
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(path.into()))?;
        header(out, ino, mode, nlink, mtime, size, path)?;
        out.write_all(data)?;
        pad4(out, data.len())?;
    }
    header(out, 0, 0, 1, 0, 0, "TRAILER!!!")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_names_and_padding() {
        let entries = [
            Entry::Dir {
                path: "usr".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "usr/x".into(),
                mode: 0o644,
                data: b"hello".to_vec(),
            },
            Entry::Symlink {
                path: "usr/y".into(),
                target: "x".into(),
            },
        ];
        let mut out = Vec::new();
        write(&mut out, &entries, 7).unwrap();
        // Every header starts on a 4-byte boundary; the first is the directory's.
        assert!(out.starts_with(b"07070100000001000041ED"));
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("070701").count(), 4);
        for (at, _) in text.match_indices("070701") {
            assert_eq!(at % 4, 0, "{text}");
        }
        // The file: mode 100644, time 7, size 5, name "usr/x" (6 bytes with its NUL).
        let file = text.find("07070100000002").unwrap();
        let h = &text[file..file + 110];
        assert_eq!(&h[14..22], "000081A4");
        assert_eq!(&h[46..54], "00000007");
        assert_eq!(&h[54..62], "00000005");
        assert_eq!(&h[94..102], "00000006");
        // 110 header bytes and "usr/x\0" end on a 4-byte boundary: no padding before the data.
        assert!(text.contains("usr/x\0hello\0\0\0"), "{text:?}");
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"), "{text:?}");
        assert_eq!(out.len() % 4, 0);
        // The same entries, the same bytes.
        let mut again = Vec::new();
        write(&mut again, &entries, 7).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn paths_must_be_relative_and_plain() {
        for bad in ["", "/etc/x", "a/../b", "a//b", "./a"] {
            let e = write(
                &mut Vec::new(),
                &[Entry::Dir {
                    path: bad.into(),
                    mode: 0o755,
                }],
                0,
            );
            assert!(matches!(e, Err(CpioError::BadPath(_))), "{bad}");
        }
    }
}
