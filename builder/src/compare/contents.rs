//! What a filesystem image holds, file by file, and how two such listings differ.
//!
//! The images come from downloaded releases: hostile input. Nothing is mounted (the kernel's
//! ext4 parser never sees them) and no root is needed. ext4 images are read in user space by
//! debugfs (e2fsprogs), read-only, the image passed as an argument and every command naming
//! inodes by number (`<12>`), never by path:
//!
//! - the tree is walked breadth first, one debugfs run per depth level, each a script of
//!   `ls -l <inode>` for every directory of that level; debugfs prints control bytes, bytes
//!   from 0x7f and `\` of a name as `\xNN`, so no name can forge a line, and names holding
//!   `/`, NUL or nothing are refused;
//! - every directory's inode is remembered: a directory reached twice (an entry pointing back
//!   at an ancestor, or a hard-linked directory) is [`ContentsError::Loop`], not a hang;
//!   [`MAX_ENTRIES`], [`MAX_DEPTH`], [`MAX_LINK`] and the content budget
//!   ([`CONTENT_PER_IMAGE_BYTE`]) bound the work, [`DEBUGFS_TIMEOUT`] the whole listing;
//! - one `stat` run over the symbolic links and devices gives each fast link's target (kept
//!   in the inode; debugfs prints it raw, so it is read by its known size) and each device's
//!   number;
//! - one more run `cat`s every regular file and slow link once (by inode: hard links are read
//!   once) straight into sha256: streamed, never held whole.
//!
//! In the last two runs each inode's output is followed by a comment line with a random
//! nonce, which debugfs echoes and which must come exactly where expected: output whose
//! length is not the inode's size (or that imitates the next inode's frame) is an error,
//! never a shifted hash.
//!
//! So depth + 2 debugfs processes per image (depth: the deepest directory's). A failing
//! debugfs names the image and `e2fsck -fn IMAGE`. Every entry records its kind, mode
//! (setuid, setgid and sticky bits included), owner, size and the sha256 of its content, link
//! target or device number, as a read-only mount would show them. A name that is not UTF-8
//! or holds control characters or `\` is shown with those bytes as `\xNN`, so two names never
//! become one path.
//!
//! FAT images are read with mtools (no mount: this kernel may lack vfat), within the bounds of
//! [`crate::pipeline::esp`] (entries, depth, listing size, a timeout per mtools run, loops
//! refused by name); each file is streamed into sha256, never held whole, and all the files
//! of an image together may hold at most the image's own size.

use crate::packages::cache::sha256_bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// At most this many entries in one ext4 image (a root filesystem has 10 to 30 thousand).
pub const MAX_ENTRIES: usize = 1_000_000;
/// At most this many path components below an ext4 image's root; each level is one debugfs
/// run (real trees are about 20 deep).
pub const MAX_DEPTH: usize = 128;
/// A symbolic link's target is at most this long (PATH_MAX, what the kernel reads back).
pub const MAX_LINK: u64 = 4096;
/// The files (each inode once, sparse files at their full size) of an ext4 image hold at
/// most this many bytes per byte of the image, or [`MIN_CONTENT_BUDGET`] if that is more:
/// a crafted image cannot make the hashing run for ever with huge sparse files.
pub const CONTENT_PER_IMAGE_BYTE: u64 = 4;
/// See [`CONTENT_PER_IMAGE_BYTE`].
pub const MIN_CONTENT_BUDGET: u64 = 4 << 30;
/// The listing of one image (all its debugfs runs together) may take this long; then the
/// run under way is killed and the listing fails.
pub const DEBUGFS_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// debugfs output lines kept (longer ones are an error, or skipped where irrelevant): an
/// `ls -l` line is at most about 1100 bytes (a 255-byte name, every byte escaped).
const MAX_LINE: usize = 4096;
/// The root directory's inode.
const ROOT_INO: u32 = 2;

/// One entry of a filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// `file`, `dir`, `symlink`, `char`, `block`, `fifo` or `socket`.
    pub kind: &'static str,
    /// Permission bits with setuid, setgid and sticky (octal text); FAT has none.
    pub mode: Option<String>,
    /// `uid:gid`; FAT has none.
    pub owner: Option<String>,
    pub size: u64,
    /// sha256 of a file's content, of a link's target text, or of a device's number.
    pub sha256: Option<String>,
}

/// Path (absolute, from the filesystem's root) → entry, sorted.
pub type Listing = BTreeMap<String, Entry>;

/// How one path differs between two listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// What differs for `changed`: `content`, `mode`, `owner`, `kind`.
    pub what: Vec<&'static str>,
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

/// A filesystem that could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ContentsError {
    #[error("{}: {action}: {message}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        message: String,
    },
    #[error("debugfs cannot read {} as ext4: {message}\n  hint: is it an intact ext4 image? `e2fsck -fn {}` says more", image.display(), image.display())]
    Debugfs { image: PathBuf, message: String },
    #[error("{}: directory {path} is inode {inode}, a directory already reached: a directory loop (or a hard-linked directory); not walking it\n  hint: `e2fsck -fn {}` says more", image.display(), image.display())]
    Loop {
        image: PathBuf,
        path: String,
        inode: u32,
    },
    #[error("{}: {what}: refusing to list it", image.display())]
    Limit { image: PathBuf, what: String },
    #[error("{}: {path}: {problem}\n  hint: `e2fsck -fn {}` says more", image.display(), image.display())]
    Malformed {
        image: PathBuf,
        path: String,
        problem: String,
    },
    #[error(transparent)]
    Fat(#[from] crate::pipeline::esp::EspError),
}

impl ContentsError {
    /// The image is malformed or crafted (bad input), not a failure of this host.
    pub fn is_crafted(&self) -> bool {
        !matches!(self, ContentsError::Io { .. } | ContentsError::Fat(_))
    }
}

fn io<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> ContentsError + 'a {
    move |e| ContentsError::Io {
        path: path.to_path_buf(),
        action,
        message: e.to_string(),
    }
}

/// One directory entry as `ls -l` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RawEntry {
    ino: u32,
    /// `i_mode`: file type and permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    /// The name's bytes, unescaped.
    name: Vec<u8>,
}

/// The files of an ext4 image, read with debugfs (see the module documentation).
pub fn list_ext4(image: &Path) -> Result<Listing, ContentsError> {
    let deadline = std::time::Instant::now() + DEBUGFS_TIMEOUT;
    let image_len = std::fs::metadata(image).map_err(io(image, "stat"))?.len();
    let malformed = |path: &str, problem: String| ContentsError::Malformed {
        image: image.to_path_buf(),
        path: path.to_string(),
        problem,
    };
    let mut listing = Listing::new();
    // Inodes whose content (files, links) or number (devices) is still to read, and the
    // paths that show each.
    let mut contents: BTreeMap<u32, (&'static str, u64)> = BTreeMap::new();
    let mut shown: Vec<(String, u32)> = Vec::new();
    let mut visited = HashSet::from([ROOT_INO]);
    let mut level: Vec<(u32, String)> = vec![(ROOT_INO, String::new())];
    let mut depth = 0;
    while !level.is_empty() {
        depth += 1;
        let script: String = level
            .iter()
            .map(|(ino, _)| format!("ls -l <{ino}>\n"))
            .collect();
        let dirs: Vec<u32> = level.iter().map(|(ino, _)| *ino).collect();
        let room = MAX_ENTRIES - listing.len();
        let read = debugfs(image, deadline, &script, |out| {
            parse_ls(image, out, &dirs, room)
        })?;
        let mut next = Vec::new();
        for ((_, dir), entries) in level.iter().zip(read) {
            for e in entries {
                let path = format!("{dir}/{}", display_name(&e.name));
                if depth > MAX_DEPTH {
                    return Err(ContentsError::Limit {
                        image: image.to_path_buf(),
                        what: format!("{path} is more than {MAX_DEPTH} levels deep"),
                    });
                }
                let Some(kind) = kind_of(e.mode) else {
                    return Err(malformed(
                        &path,
                        format!("inode {} has no known file type (mode {:o})", e.ino, e.mode),
                    ));
                };
                match kind {
                    "dir" => {
                        if !visited.insert(e.ino) {
                            return Err(ContentsError::Loop {
                                image: image.to_path_buf(),
                                path,
                                inode: e.ino,
                            });
                        }
                        next.push((e.ino, path.clone()));
                    }
                    "symlink" if e.size > MAX_LINK => {
                        return Err(malformed(
                            &path,
                            format!("a symbolic link of {} bytes (at most {MAX_LINK})", e.size),
                        ));
                    }
                    "file" | "symlink" | "char" | "block" => {
                        contents.insert(e.ino, (kind, e.size));
                        shown.push((path.clone(), e.ino));
                    }
                    _ => {}
                }
                let entry = Entry {
                    kind,
                    mode: Some(format!("{:04o}", e.mode & 0o7777)),
                    owner: Some(format!("{}:{}", e.uid, e.gid)),
                    size: if kind == "dir" { 0 } else { e.size },
                    // A FIFO or socket has no device number: the kernel shows 0.
                    sha256: matches!(kind, "fifo" | "socket").then(|| sha256_bytes(b"0")),
                };
                if listing.insert(path.clone(), entry).is_some() {
                    return Err(malformed(&path, "two entries of this name".into()));
                }
            }
        }
        level = next;
    }

    let linked: Vec<(u32, &'static str, u64)> = contents
        .iter()
        .filter(|(_, (kind, _))| matches!(*kind, "symlink" | "char" | "block"))
        .map(|(ino, (kind, size))| (*ino, *kind, *size))
        .collect();
    let (mut hashes, slow) = stat_links_and_devices(image, deadline, &linked)?;
    let mut streamed: Vec<(u32, u64)> = contents
        .iter()
        .filter(|(_, (kind, _))| *kind == "file")
        .map(|(ino, (_, size))| (*ino, *size))
        .chain(slow)
        .collect();
    streamed.sort_unstable();
    let budget = image_len
        .saturating_mul(CONTENT_PER_IMAGE_BYTE)
        .max(MIN_CONTENT_BUDGET);
    let total = streamed
        .iter()
        .fold(0u64, |sum, (_, size)| sum.saturating_add(*size));
    if total > budget {
        return Err(ContentsError::Limit {
            image: image.to_path_buf(),
            what: format!(
                "its files hold {total} bytes, more than {budget} ({CONTENT_PER_IMAGE_BYTE} per image byte, at least {MIN_CONTENT_BUDGET})"
            ),
        });
    }
    hashes.extend(hash_contents(image, deadline, &streamed)?);
    for (path, ino) in shown {
        if let Some(entry) = listing.get_mut(&path) {
            entry.sha256 = hashes.get(&ino).cloned();
        }
    }
    Ok(listing)
}

/// The kind of an `i_mode`'s file type.
fn kind_of(mode: u32) -> Option<&'static str> {
    Some(match mode & 0o170000 {
        0o040000 => "dir",
        0o100000 => "file",
        0o120000 => "symlink",
        0o020000 => "char",
        0o060000 => "block",
        0o010000 => "fifo",
        0o140000 => "socket",
        _ => return None,
    })
}

/// A name as a path component: UTF-8 as is, except control characters, `\` and bytes that
/// are not UTF-8, which become `\xNN` (so distinct names stay distinct).
fn display_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// Parse the output of one `ls -l <ino>` per directory of `dirs`, in order: each
/// directory's entries without `.`, `..` and unused slots. At most `room` entries in all.
fn parse_ls(
    image: &Path,
    out: &mut dyn BufRead,
    dirs: &[u32],
    room: usize,
) -> Result<Vec<Vec<RawEntry>>, ContentsError> {
    let bad = |message: String| ContentsError::Debugfs {
        image: image.to_path_buf(),
        message,
    };
    let mut read: Vec<Vec<RawEntry>> = Vec::with_capacity(dirs.len());
    let mut count = 0usize;
    let mut line = Vec::new();
    while let Some(long) = read_line(out, &mut line, MAX_LINE).map_err(|e| bad(e.to_string()))? {
        if long {
            return Err(bad(format!("an output line longer than {MAX_LINE} bytes")));
        }
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix(b"debugfs: ") {
            let want = dirs.get(read.len()).map(|ino| format!("ls -l <{ino}>"));
            if want.as_deref().map(str::as_bytes) != Some(cmd) {
                return Err(bad(format!(
                    "unexpected command echo {:?}",
                    String::from_utf8_lossy(cmd)
                )));
            }
            read.push(Vec::new());
            continue;
        }
        let Some(&dir) = read.len().checked_sub(1).and_then(|i| dirs.get(i)) else {
            return Err(bad(format!(
                "output before the first command: {:?}",
                String::from_utf8_lossy(&line)
            )));
        };
        let entry = parse_ls_line(&line).map_err(|problem| {
            bad(format!(
                "directory inode {dir}: {problem} in {:?}",
                String::from_utf8_lossy(&line)
            ))
        })?;
        let Some(entry) = entry else { continue };
        if entry.name == b"." || entry.name == b".." {
            continue;
        }
        let problem = if entry.name.contains(&b'/') {
            Some("holds `/`")
        } else if entry.name.contains(&0) {
            Some("holds a NUL byte")
        } else if entry.name.starts_with(b"<encrypted (") && entry.name.ends_with(b")>") {
            Some("is encrypted (debugfs shows no name)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(ContentsError::Malformed {
                image: image.to_path_buf(),
                path: format!("directory inode {dir}"),
                problem: format!("the name {:?} {problem}", display_name(&entry.name)),
            });
        }
        count += 1;
        if count > room {
            return Err(ContentsError::Limit {
                image: image.to_path_buf(),
                what: format!("more than {MAX_ENTRIES} entries"),
            });
        }
        read.last_mut().expect("a command was echoed").push(entry);
    }
    if read.len() != dirs.len() {
        return Err(bad(format!(
            "output ends after {} of {} directories",
            read.len(),
            dirs.len()
        )));
    }
    Ok(read)
}

/// One line of `ls -l`: `  INO  MODE (FT)  UID  GID  SIZE DD-Mon-YYYY HH:MM NAME`, the
/// name escaped (`\xNN`). `None` for an unused slot (inode 0).
fn parse_ls_line(line: &[u8]) -> Result<Option<RawEntry>, String> {
    let text = std::str::from_utf8(line).map_err(|_| "bytes that are not ASCII".to_string())?;
    let mut rest = text;
    let mut field = |what: &str| -> Result<&str, String> {
        let s = rest.trim_start_matches(' ');
        let end = s.find(' ').unwrap_or(s.len());
        if end == 0 {
            return Err(format!("no {what}"));
        }
        rest = &s[end..];
        Ok(&s[..end])
    };
    let number = |s: &str, what: &str| -> Result<u64, String> {
        s.parse::<u64>().map_err(|_| format!("bad {what} {s:?}"))
    };
    // `inode_uid` and `inode_gid` are printed with `%d`: above 2^31 they are negative.
    let id = |s: &str, what: &str| -> Result<u32, String> {
        let v: i64 = s.parse().map_err(|_| format!("bad {what} {s:?}"))?;
        u32::try_from(if v < 0 { v + (1 << 32) } else { v })
            .map_err(|_| format!("bad {what} {s:?}"))
    };
    let ino = number(field("inode")?, "inode")?;
    if ino == 0 {
        return Ok(None);
    }
    let ino = u32::try_from(ino).map_err(|_| format!("bad inode {ino}"))?;
    let mode_text = field("mode")?;
    let mode = u32::from_str_radix(mode_text, 8)
        .ok()
        .filter(|m| *m <= 0o177777)
        .ok_or_else(|| format!("bad mode {mode_text:?}"))?;
    let ft = field("file type")?;
    if !(ft.starts_with('(') && ft.ends_with(')')) {
        return Err(format!("bad file type {ft:?}"));
    }
    let uid = id(field("uid")?, "uid")?;
    let gid = id(field("gid")?, "gid")?;
    let size = number(field("size")?, "size")?;
    let date = field("date")?;
    if date.split('-').count() != 3 {
        return Err(format!("bad date {date:?}"));
    }
    let time = field("time")?;
    if !(time.len() == 5 && time.as_bytes()[2] == b':') {
        return Err(format!("bad time {time:?}"));
    }
    let escaped = rest
        .strip_prefix(' ')
        .filter(|n| !n.is_empty())
        .ok_or("no name")?;
    Ok(Some(RawEntry {
        ino,
        mode,
        uid,
        gid,
        size,
        name: unescape(escaped)?,
    }))
}

/// debugfs's name escaping undone: `\xNN` is the byte NN; every other byte is itself.
fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let byte = b
                .get(i + 1..i + 4)
                .filter(|e| e[0] == b'x')
                .and_then(|e| std::str::from_utf8(&e[1..]).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("a bad escape in the name {text:?}"))?;
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// The next line of `out` into `line` (without its newline, at most `cap` bytes kept, the
/// rest of a longer line read and dropped): `Some(true)` if it was longer, `None` at the end.
fn read_line(
    out: &mut dyn BufRead,
    line: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<bool>> {
    line.clear();
    let (mut any, mut long) = (false, false);
    loop {
        let buf = out.fill_buf()?;
        if buf.is_empty() {
            return Ok(any.then_some(long));
        }
        any = true;
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let keep = chunk.len().min(cap.saturating_sub(line.len()));
        long |= keep < chunk.len();
        line.extend_from_slice(&chunk[..keep]);
        out.consume(used);
        if done {
            return Ok(Some(long));
        }
    }
}

/// Read exactly `want` from `out`; anything else is a framing error.
fn expect(
    image: &Path,
    out: &mut dyn BufRead,
    want: &[u8],
    what: &str,
) -> Result<(), ContentsError> {
    let mut got = vec![0u8; want.len()];
    let mut n = 0;
    while n < got.len() {
        match out.read(&mut got[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(ContentsError::Debugfs {
                    image: image.to_path_buf(),
                    message: e.to_string(),
                })
            }
        }
    }
    if got[..n] == *want {
        return Ok(());
    }
    Err(ContentsError::Debugfs {
        image: image.to_path_buf(),
        message: format!(
            "{what}: expected {:?}, found {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(&got[..n])
        ),
    })
}

/// The sha256 of each inode's content (`(inode, size)`, files and links), from one debugfs
/// run that `cat`s them all; each is framed by its command echo and a nonce comment.
fn hash_contents(
    image: &Path,
    deadline: std::time::Instant,
    items: &[(u32, u64)],
) -> Result<BTreeMap<u32, String>, ContentsError> {
    if items.is_empty() {
        return Ok(BTreeMap::new());
    }
    let nonce = nonce()?;
    let marker = |i: usize| format!("#plinth-{nonce} {i}\n");
    let mut script = String::new();
    for (i, (ino, _)) in items.iter().enumerate() {
        script.push_str(&format!("cat <{ino}>\n"));
        script.push_str(&marker(i));
    }
    debugfs(image, deadline, &script, |out| {
        let mut hashes = BTreeMap::new();
        for (i, (ino, size)) in items.iter().enumerate() {
            expect(
                image,
                out,
                format!("debugfs: cat <{ino}>\n").as_bytes(),
                "command echo",
            )?;
            let mut hasher = Sha256::new();
            let mut left = *size;
            while left > 0 {
                let buf = out.fill_buf().map_err(|e| ContentsError::Debugfs {
                    image: image.to_path_buf(),
                    message: e.to_string(),
                })?;
                if buf.is_empty() {
                    break;
                }
                let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                hasher.update(&buf[..n]);
                out.consume(n);
                left -= n as u64;
            }
            expect(
                image,
                out,
                marker(i).as_bytes(),
                &format!("inode {ino}: its content as debugfs reads it is not its size of {size} bytes (inline data?)"),
            )?;
            hashes.insert(*ino, hex::encode(hasher.finalize()));
        }
        let mut extra = [0u8; 1];
        if matches!(out.read(&mut extra), Ok(1)) {
            return Err(ContentsError::Debugfs {
                image: image.to_path_buf(),
                message: "output after the last file".into(),
            });
        }
        Ok(hashes)
    })
}

/// Inode → sha256 (fast links' targets, device numbers), and the slow links (inode, size).
type LinksAndDevices = (BTreeMap<u32, String>, Vec<(u32, u64)>);

/// A random nonce (hex) for the comment lines that frame each inode's output.
fn nonce() -> Result<String, ContentsError> {
    let mut nonce = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .map_err(io(Path::new("/dev/urandom"), "read"))?;
    Ok(hex::encode(nonce))
}

/// What one `stat` run tells of symbolic links and devices (`(inode, kind, size)`): the
/// sha256 of each fast link's target (kept in the inode; debugfs prints it raw, so it is read
/// by its known size) and of each device's number (`st_rdev`, as glibc's `makedev` encodes
/// it); and the slow links, whose targets are in a block and are `cat` with the files. After
/// each inode the script has a nonce comment, which must come right where expected.
fn stat_links_and_devices(
    image: &Path,
    deadline: std::time::Instant,
    items: &[(u32, &'static str, u64)],
) -> Result<LinksAndDevices, ContentsError> {
    if items.is_empty() {
        return Ok((BTreeMap::new(), Vec::new()));
    }
    let nonce = nonce()?;
    let marker = |i: usize| format!("#plinth-{nonce} {i}");
    let mut script = String::new();
    for (i, (ino, _, _)) in items.iter().enumerate() {
        script.push_str(&format!("stat <{ino}>\n{}\n", marker(i)));
    }
    const LINK: &[u8] = b"Fast link dest: \"";
    debugfs(image, deadline, &script, |out| {
        let bad = |message: String| ContentsError::Debugfs {
            image: image.to_path_buf(),
            message,
        };
        let (mut hashes, mut slow) = (BTreeMap::new(), Vec::new());
        let mut line = Vec::new();
        for (i, &(ino, kind, size)) in items.iter().enumerate() {
            expect(
                image,
                out,
                format!("debugfs: stat <{ino}>\n").as_bytes(),
                "command echo",
            )?;
            let mut found: Option<String> = None;
            loop {
                let Some(long) =
                    read_line(out, &mut line, MAX_LINE).map_err(|e| bad(e.to_string()))?
                else {
                    return Err(bad(format!("inode {ino}: the output ends early")));
                };
                if !long && line == marker(i).as_bytes() {
                    break;
                }
                let hash = if kind == "symlink" && line.starts_with(LINK) {
                    let rest = &line[LINK.len()..];
                    let size = usize::try_from(size).unwrap_or(usize::MAX);
                    let target = if long {
                        None
                    } else if rest.len() > size {
                        (rest.len() == size + 1 && rest[size] == b'"')
                            .then(|| rest[..size].to_vec())
                    } else {
                        // The target holds a newline: read on, by its size.
                        let mut target = rest.to_vec();
                        target.push(b'\n');
                        let more = size.checked_sub(target.len());
                        if let Some(more) = more {
                            let mut tail = vec![0u8; more];
                            out.read_exact(&mut tail).map_err(|e| bad(e.to_string()))?;
                            target.extend_from_slice(&tail);
                            expect(image, out, b"\"\n", "the end of a link target")?;
                        }
                        more.map(|_| target)
                    };
                    let Some(target) = target else {
                        return Err(bad(format!(
                            "inode {ino}: the link target as debugfs prints it is not its size of {size} bytes"
                        )));
                    };
                    sha256_bytes(&target)
                } else if matches!(kind, "char" | "block") {
                    let text = String::from_utf8_lossy(&line);
                    let Some(numbers) = text
                        .strip_prefix("(New-style) ")
                        .unwrap_or(&text)
                        .strip_prefix("Device major/minor number: ")
                    else {
                        continue;
                    };
                    let parsed = numbers
                        .split(' ')
                        .next()
                        .and_then(|t| t.split_once(':'))
                        .and_then(|(ma, mi)| {
                            Some((ma.parse::<u64>().ok()?, mi.parse::<u64>().ok()?))
                        });
                    let Some((major, minor)) = parsed else {
                        return Err(bad(format!(
                            "inode {ino}: a bad device number line {text:?}"
                        )));
                    };
                    sha256_bytes(makedev(major, minor).to_string().as_bytes())
                } else {
                    continue;
                };
                if found.replace(hash).is_some() {
                    return Err(bad(format!("inode {ino}: told twice")));
                }
            }
            match (found, kind) {
                (Some(hash), _) => {
                    hashes.insert(ino, hash);
                }
                (None, "symlink") => slow.push((ino, size)),
                (None, _) => return Err(bad(format!("inode {ino}: no device number"))),
            }
        }
        let mut extra = [0u8; 1];
        if matches!(out.read(&mut extra), Ok(1)) {
            return Err(bad("output after the last inode".into()));
        }
        Ok((hashes, slow))
    })
}

/// glibc's `makedev`: the `st_rdev` a mount shows for these numbers.
fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

/// Run debugfs (read-only) on `image` with `script` as its command file; `parse` reads its
/// standard output while it runs. debugfs reports a failed command only on standard error
/// (its exit status stays 0), so anything there but its version line is an error, and so is
/// a run still going at `deadline` (the image's listing started [`DEBUGFS_TIMEOUT`] before).
fn debugfs<T>(
    image: &Path,
    deadline: std::time::Instant,
    script: &str,
    parse: impl FnOnce(&mut dyn BufRead) -> Result<T, ContentsError>,
) -> Result<T, ContentsError> {
    let mut file = tempfile::Builder::new()
        .prefix("plinth-debugfs-")
        .tempfile()
        .map_err(io(image, "write a debugfs script for"))?;
    file.write_all(script.as_bytes())
        .and_then(|()| file.flush())
        .map_err(io(image, "write a debugfs script for"))?;
    // A relative path is made to start with `./`: never taken for an option.
    let image_arg = if image.is_absolute() {
        image.to_path_buf()
    } else {
        Path::new(".").join(image)
    };
    let mut child = Command::new("debugfs")
        .arg("-f")
        .arg(file.path())
        .arg(&image_arg)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("TZ", "UTC")
        .env("DEBUGFS_PAGER", "__none__")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(image, "run debugfs on"))?;
    let stdout = child.stdout.take().expect("piped");
    let errors = crate::pipeline::tool::keep_stderr(child.stderr.take().expect("piped"));
    let (done, cancelled) = std::sync::mpsc::channel::<()>();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // The child is reaped only after the watchdog has ended: its pid cannot be reused.
    let watchdog = std::thread::spawn(move || {
        let late = matches!(
            cancelled.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if late {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        late
    });
    let mut reader = BufReader::with_capacity(256 << 10, stdout);
    let parsed = parse(&mut reader);
    if parsed.is_err() {
        let _ = child.kill();
    }
    drop(reader);
    let _ = done.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let status = child.wait().map_err(io(image, "wait for debugfs on"))?;
    let errors = errors.join().unwrap_or_default();
    let errors = String::from_utf8_lossy(&errors);
    // The first line is debugfs's version: `debugfs 1.47.0 (5-Feb-2023)`.
    let complaints: Vec<&str> = errors
        .lines()
        .enumerate()
        .filter(|(i, l)| !(l.trim().is_empty() || *i == 0 && l.starts_with("debugfs ")))
        .map(|(_, l)| l)
        .take(5)
        .collect();
    let failed = |message: String| ContentsError::Debugfs {
        image: image.to_path_buf(),
        message,
    };
    if timed_out {
        return Err(failed(format!(
            "killed: the listing took more than {} s",
            DEBUGFS_TIMEOUT.as_secs()
        )));
    }
    match parsed {
        Err(ContentsError::Debugfs { .. }) | Ok(_) if !complaints.is_empty() => {
            Err(failed(complaints.join("; ")))
        }
        Err(e) => Err(e),
        Ok(_) if !status.success() => Err(failed(format!("debugfs exited with {status}"))),
        Ok(v) => Ok(v),
    }
}

/// The files of a FAT image, read with mtools (see [`crate::pipeline::esp`]'s bounds): each
/// file streamed into sha256, and all of them together at most the image's own size (more
/// means clusters shared between files: a crafted image). A crafted image (a loop, a bound
/// exceeded, an mtools run past its timeout) is [`ContentsError::Limit`].
pub fn list_fat(image: &Path) -> Result<Listing, ContentsError> {
    use crate::pipeline::esp::{self, EspError};
    let fat = |e: EspError| {
        if e.is_crafted() {
            ContentsError::Limit {
                image: image.to_path_buf(),
                what: e.to_string(),
            }
        } else {
            ContentsError::Fat(e)
        }
    };
    let image_len = std::fs::metadata(image).map_err(io(image, "stat"))?.len();
    let mut budget = image_len;
    let mut listing = Listing::new();
    for e in esp::list_fat(image).map_err(fat)? {
        let entry = if e.is_dir {
            Entry {
                kind: "dir",
                mode: None,
                owner: None,
                size: 0,
                sha256: None,
            }
        } else {
            let (size, sha256) = esp::hash_fat_file(image, &e.path, budget).map_err(|err| {
                match err {
                    EspError::TooLarge { .. } => ContentsError::Limit {
                        image: image.to_path_buf(),
                        what: format!(
                            "its files hold more than its own {image_len} bytes (at /{}: clusters shared between files?)",
                            e.path
                        ),
                    },
                    err => fat(err),
                }
            })?;
            budget -= size;
            Entry {
                kind: "file",
                mode: None,
                owner: None,
                size,
                sha256: Some(sha256),
            }
        };
        listing.insert(format!("/{}", e.path), entry);
    }
    Ok(listing)
}

/// Every path that differs between `before` and `after`, sorted by path.
pub fn changes(before: &Listing, after: &Listing) -> Vec<Change> {
    let mut out = Vec::new();
    for (path, a) in before {
        match after.get(path) {
            None => out.push(Change {
                path: path.clone(),
                change: "removed",
                what: Vec::new(),
                before: Some(a.clone()),
                after: None,
            }),
            Some(b) if a != b => {
                let mut what = Vec::new();
                if a.kind != b.kind {
                    what.push("kind");
                }
                if a.sha256 != b.sha256 || a.size != b.size {
                    what.push("content");
                }
                if a.mode != b.mode {
                    what.push("mode");
                }
                if a.owner != b.owner {
                    what.push("owner");
                }
                out.push(Change {
                    path: path.clone(),
                    change: "changed",
                    what,
                    before: Some(a.clone()),
                    after: Some(b.clone()),
                });
            }
            Some(_) => {}
        }
    }
    for (path, b) in after {
        if !before.contains_key(path) {
            out.push(Change {
                path: path.clone(),
                change: "added",
                what: Vec::new(),
                before: None,
                after: Some(b.clone()),
            });
        }
    }
    out.sort_by(|x, y| x.path.cmp(&y.path));
    out
}

impl Change {
    /// One line: `changed /etc/hostname (content): 10 B sha256 0a1b2c3d4e5f → 12 B sha256 …`.
    pub fn line(&self) -> String {
        let side = |e: &Option<Entry>| match e {
            None => "absent".to_string(),
            Some(e) => {
                let mut s = format!("{} {} B", e.kind, e.size);
                if let Some(m) = &e.mode {
                    s.push_str(&format!(" mode {m}"));
                }
                if let Some(o) = &e.owner {
                    s.push_str(&format!(" owner {o}"));
                }
                if let Some(h) = &e.sha256 {
                    s.push_str(&format!(" sha256 {}", &h[..12]));
                }
                s
            }
        };
        let what = if self.what.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.what.join(", "))
        };
        format!(
            "{} {}{what}: {} → {}",
            self.change,
            self.path,
            side(&self.before),
            side(&self.after)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sha: &str, mode: &str) -> Entry {
        Entry {
            kind: "file",
            mode: Some(mode.into()),
            owner: Some("0:0".into()),
            size: 1,
            sha256: Some(sha.repeat(64)),
        }
    }

    #[test]
    fn changes_name_added_removed_and_what_changed() {
        let before: Listing = [
            ("/a".to_string(), file("a", "0644")),
            ("/b".to_string(), file("b", "0644")),
            ("/c".to_string(), file("c", "0644")),
        ]
        .into();
        let after: Listing = [
            ("/a".to_string(), file("a", "0644")),
            ("/b".to_string(), file("x", "4755")),
            ("/d".to_string(), file("d", "0644")),
        ]
        .into();
        let c = changes(&before, &after);
        let summary: Vec<(&str, &str, Vec<&str>)> = c
            .iter()
            .map(|c| (c.path.as_str(), c.change, c.what.clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/b", "changed", vec!["content", "mode"]),
                ("/c", "removed", vec![]),
                ("/d", "added", vec![]),
            ]
        );
        assert!(c[0]
            .line()
            .starts_with("changed /b (content, mode): file 1 B mode 0644"));
        assert!(changes(&before, &before).is_empty());
    }

    #[test]
    fn ext4_listing_sees_modes_links_and_devices() {
        // No root needed: nothing is mounted.
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/a"), "hi\n").unwrap();
        std::os::unix::fs::symlink("a", src.join("etc/l")).unwrap();
        let img = dir.path().join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let ok = Command::new("mke2fs")
            .args(["-q", "-t", "ext4", "-d"])
            .arg(&src)
            .arg(&img)
            .status()
            .unwrap();
        assert!(ok.success());
        let listing = list_ext4(&img).unwrap();
        assert_eq!(
            listing["/etc/a"].sha256.as_deref(),
            Some(sha256_bytes(b"hi\n").as_str())
        );
        assert_eq!(listing["/etc/l"].kind, "symlink");
        assert_eq!(
            listing["/etc/l"].sha256.as_deref(),
            Some(sha256_bytes(b"a").as_str())
        );
        assert!(listing.contains_key("/lost+found"));
    }

    #[test]
    fn ls_lines_parse_with_escaped_names() {
        let line = b"     15  104755 (1)   1000   1001   70000  5-Dec-2026 13:08  a\\x0ab\\x5c";
        let e = parse_ls_line(line).unwrap().unwrap();
        assert_eq!(
            (e.ino, e.mode, e.uid, e.gid, e.size),
            (15, 0o104755, 1000, 1001, 70000)
        );
        assert_eq!(e.name, b" a\nb\\");
        // `%d` of a uid above 2^31.
        let e = parse_ls_line(b"  16  100644 (1)     -1     -2       0 14-Nov-2023 22:13 x")
            .unwrap()
            .unwrap();
        assert_eq!((e.uid, e.gid), (u32::MAX, u32::MAX - 1));
        // An unused slot.
        assert_eq!(
            parse_ls_line(b"      0       0 (1)      0      0       0                   x")
                .unwrap(),
            None
        );
        for bad in [
            &b"  16  100644 (1)  0  0  0 14-Nov-2023 22:13 bad\\q"[..],
            b"  16  100644 (1)  0  0  0 14-Nov-2023 22:13 ",
            b"  16  999999 (1)  0  0  0 14-Nov-2023 22:13 x",
            b"  16  100644 (1)  0  0",
        ] {
            assert!(
                parse_ls_line(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn names_show_unambiguously() {
        assert_eq!(display_name(b"caf\xc3\xa9 ok"), "café ok");
        assert_eq!(display_name(b"a\nb"), "a\\x0ab");
        assert_eq!(display_name(b"a\\x0ab"), "a\\x5cx0ab");
        assert_eq!(display_name(b"\xff"), "\\xff");
        assert_eq!(makedev(1, 3), 259);
        assert_eq!(
            makedev(259, 70000),
            (259 << 8) | 0x70 | ((70000 & !0xff) << 12)
        );
    }
}
