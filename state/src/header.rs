//! What the data partition holds, read before anything is written to it: plinth's committed
//! state volume, one whose creation was cut short, a partition nothing was ever written to, or
//! somebody else's data (which is never touched).
//!
//! The answer comes from the LUKS2 binary headers (the primary at 0, the secondary at the
//! primary's size or, if the primary is damaged, at one of LUKS2's fixed offsets), each
//! accepted only with its version and SHA-256 checksum right; of two valid ones the higher
//! sequence number wins, as cryptsetup decides. Reads are bounded: at most [`HEAD_LEN`] bytes of
//! headers and the [`DATA_START`]..[`SCAN_END`] window, streamed.
//!
//! cryptsetup's format fills the key-slot area with random bytes before it writes a header, so
//! a format cut there leaves bytes that no header explains. plinth writes its creation mark at
//! [`DATA_START`] before every format ([`creation_mark`]): a mark with no valid header is a
//! creation cut short, started again; without the mark the same bytes are somebody's data.

use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};

/// LUKS label of a volume being created: creation starts again from the beginning.
pub const LABEL_CREATING: &str = "plinth-creating";
/// LUKS label of a committed state volume: opened, never formatted again.
pub const LABEL_STATE: &str = "plinth-state";

/// The bytes the headers are read from: room for a 4 MiB primary and a 4 MiB secondary.
pub const HEAD_LEN: usize = 8 << 20;
/// Where the volume's data begins (LUKS2's default metadata and key slot area, which plinth's
/// format keeps): below it only cryptsetup writes.
pub const DATA_START: u64 = 16 << 20;
/// The end of the window that must be zero for a partition to count as never written.
pub const SCAN_END: u64 = 32 << 20;

/// The creation mark's text; the rest of its sector is zero.
const MARK_TEXT: &[u8] = b"plinth-state: a state volume is being created here\n";
/// The creation mark's length: one 512-byte sector, written whole or not at all.
pub const MARK_LEN: usize = 512;

/// The sector plinth writes at [`DATA_START`] before it formats the partition.
pub fn creation_mark() -> [u8; MARK_LEN] {
    let mut mark = [0u8; MARK_LEN];
    mark[..MARK_TEXT.len()].copy_from_slice(MARK_TEXT);
    mark
}

const MAGIC_PRIMARY: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";
/// Sizes LUKS2 allows for a header with its JSON area, and so the secondary's offsets.
const HEADER_SIZES: [usize; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const BINARY_HEADER: usize = 4096;
const CSUM_AT: usize = 448;
const CSUM_LEN: usize = 64;

/// What the data partition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Nothing that could hold a file system was ever written: the state may be created.
    /// `torn` when a LUKS header was begun (a format cut short by a power loss).
    Blank { torn: bool },
    /// A volume plinth began to create and did not commit: creation starts again.
    Creating,
    /// plinth's committed state volume.
    State,
    /// Anything else, described: never written to.
    Foreign(String),
}

/// What the [`DATA_START`]..[`SCAN_END`] window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Only zeros: no file system or volume data was ever written there.
    Zero,
    /// plinth's creation mark at its start: a creation began (what follows does not matter).
    Marked,
    /// Something else, the first non-zero byte at this (partition-relative) offset.
    DataAt(u64),
}

impl Content {
    /// One word for the console (`PLINTH STATE found=…`): blank, torn, creating, state or
    /// foreign.
    pub fn word(&self) -> &'static str {
        match self {
            Content::Blank { torn: false } => "blank",
            Content::Blank { torn: true } => "torn",
            Content::Creating => "creating",
            Content::State => "state",
            Content::Foreign(_) => "foreign",
        }
    }
}

/// One valid LUKS2 binary header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Offset of the header on the partition.
    pub offset: usize,
    /// The sequence number (raised by every metadata write).
    pub seqid: u64,
    /// The label, up to its first NUL.
    pub label: Vec<u8>,
    /// The volume's UUID (`cryptsetup luksUUID`), when the field holds one.
    pub uuid: Option<String>,
}

/// Whether `s` is a UUID as cryptsetup writes it: 36 characters, lower-case hex digits and
/// dashes at 8, 13, 18 and 23.
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// The header at `offset` of `head` if it is a whole, valid LUKS2 header with `magic`.
fn header_at(head: &[u8], offset: usize, magic: &[u8; 6]) -> Option<Header> {
    let bin = head.get(offset..offset.checked_add(BINARY_HEADER)?)?;
    if &bin[..6] != magic || u16::from_be_bytes([bin[6], bin[7]]) != 2 {
        return None;
    }
    let size = usize::try_from(be_u64(bin, 8)).ok()?;
    if !HEADER_SIZES.contains(&size) || be_u64(bin, 256) != offset as u64 {
        return None;
    }
    let alg = &bin[72..104];
    if alg.split(|&c| c == 0).next() != Some(b"sha256".as_slice()) {
        return None;
    }
    let whole = head.get(offset..offset.checked_add(size)?)?;
    let mut hasher = Sha256::new();
    hasher.update(&whole[..CSUM_AT]);
    hasher.update([0u8; CSUM_LEN]);
    hasher.update(&whole[CSUM_AT + CSUM_LEN..]);
    let sum = hasher.finalize();
    let stored = &whole[CSUM_AT..CSUM_AT + CSUM_LEN];
    if stored[..32] != sum[..] || stored[32..].iter().any(|&b| b != 0) {
        return None;
    }
    let label = bin[24..72]
        .split(|&c| c == 0)
        .next()
        .unwrap_or(&[])
        .to_vec();
    let uuid = std::str::from_utf8(bin[168..208].split(|&c| c == 0).next().unwrap_or(&[]))
        .ok()
        .filter(|u| is_uuid(u))
        .map(str::to_string);
    Some(Header {
        offset,
        seqid: be_u64(bin, 16),
        label,
        uuid,
    })
}

/// The LUKS2 header cryptsetup would use: the valid one with the highest sequence number,
/// looking for the secondary where the primary says and, failing that, at every offset LUKS2
/// allows.
pub fn best_header(head: &[u8]) -> Option<Header> {
    let primary = header_at(head, 0, MAGIC_PRIMARY);
    let mut found: Vec<Header> = primary.iter().cloned().collect();
    for offset in HEADER_SIZES {
        if let Some(h) = header_at(head, offset, MAGIC_SECONDARY) {
            found.push(h);
        }
    }
    found.into_iter().max_by_key(|h| h.seqid)
}

/// Whether any LUKS magic (valid or not) begins at 0 or at a secondary's offset.
fn any_magic(head: &[u8]) -> bool {
    head.starts_with(b"LUKS\xba\xbe")
        || HEADER_SIZES
            .iter()
            .any(|&o| head.get(o..o + 6) == Some(MAGIC_SECONDARY.as_slice()))
}

/// The file system whose superblock magic `head` holds (ext2/3/4, XFS, btrfs), if any: none of
/// them can be bytes cryptsetup wrote (a LUKS2 binary header is zero at ext4's magic).
fn fs_signature(head: &[u8]) -> Option<&'static str> {
    if head.get(1080..1082) == Some([0x53, 0xef].as_slice()) {
        Some("an ext2/3/4 file system")
    } else if head.starts_with(b"XFSB") {
        Some("an XFS file system")
    } else if head.get(0x10040..0x10048) == Some(b"_BHRfS_M".as_slice()) {
        Some("a btrfs file system")
    } else {
        None
    }
}

/// A label for a message: printable ASCII kept, anything else escaped.
fn shown(label: &[u8]) -> String {
    label.escape_ascii().to_string()
}

/// Classify a partition from its first [`HEAD_LEN`] bytes and what its
/// [`DATA_START`]..[`SCAN_END`] window holds.
pub fn classify_parts(head: &[u8], window: Window) -> Content {
    if let Some(h) = best_header(head) {
        return match h.label.as_slice() {
            l if l == LABEL_STATE.as_bytes() => Content::State,
            l if l == LABEL_CREATING.as_bytes() => Content::Creating,
            l => Content::Foreign(format!(
                "a LUKS2 volume labelled `{}` that plinth did not make",
                shown(l)
            )),
        };
    }
    if head.starts_with(MAGIC_PRIMARY) && head.get(6..8) == Some([0u8, 1].as_slice()) {
        return Content::Foreign("a LUKS1 volume".into());
    }
    match window {
        Window::Marked => {
            return match fs_signature(head) {
                // A file system made over an unfinished creation (the mark left below it).
                Some(fs) => Content::Foreign(format!(
                    "{fs} over an unfinished plinth state volume"
                )),
                // plinth's format was cut before cryptsetup wrote a header (or while it did).
                None => Content::Blank { torn: true },
            }
        }
        Window::DataAt(at) => {
            return Content::Foreign(format!(
                "data that is not a plinth state volume (a non-zero byte at offset {at}, inside the area a file system would use)"
            ))
        }
        Window::Zero => {}
    }
    if head.iter().all(|&b| b == 0) {
        return Content::Blank { torn: false };
    }
    if any_magic(head) {
        return Content::Blank { torn: true };
    }
    Content::Foreign(
        "data that is not a plinth state volume (non-zero bytes in its first 8 MiB, no LUKS2 header, no creation mark)"
            .into(),
    )
}

/// The UUID of the LUKS2 volume on `dev`, if it holds a valid header with one.
pub fn volume_uuid<D: Read + Seek>(dev: &mut D) -> std::io::Result<Option<String>> {
    dev.seek(SeekFrom::Start(0))?;
    let mut head = vec![0u8; HEAD_LEN];
    dev.read_exact(&mut head)?;
    Ok(best_header(&head).and_then(|h| h.uuid))
}

/// Classify the partition read through `dev` (`size` bytes): at most [`HEAD_LEN`] bytes are
/// held in memory, the rest of the window is streamed.
pub fn classify<D: Read + Seek>(dev: &mut D, size: u64) -> std::io::Result<Content> {
    if size < SCAN_END {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the partition holds {size} bytes; a state volume needs more than {SCAN_END}"),
        ));
    }
    dev.seek(SeekFrom::Start(0))?;
    let mut head = vec![0u8; HEAD_LEN];
    dev.read_exact(&mut head)?;
    // Bytes between the headers and the data area are key slots: only cryptsetup writes there.
    dev.seek(SeekFrom::Start(DATA_START))?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = DATA_START;
    let mut window = Window::Zero;
    while at < SCAN_END {
        dev.read_exact(&mut chunk)?;
        if at == DATA_START && chunk.starts_with(&creation_mark()) {
            window = Window::Marked;
            break;
        }
        if let Some(i) = chunk.iter().position(|&b| b != 0) {
            window = Window::DataAt(at + i as u64);
            break;
        }
        at += chunk.len() as u64;
    }
    Ok(classify_parts(&head, window))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LUKS2 header of `size` bytes at `offset` of `head`, valid, with `label` and `seqid`.
    pub(crate) fn put_header(head: &mut [u8], offset: usize, size: usize, label: &str, seqid: u64) {
        let h = &mut head[offset..offset + size];
        h.fill(0);
        h[..6].copy_from_slice(if offset == 0 {
            MAGIC_PRIMARY
        } else {
            MAGIC_SECONDARY
        });
        h[6..8].copy_from_slice(&2u16.to_be_bytes());
        h[8..16].copy_from_slice(&(size as u64).to_be_bytes());
        h[16..24].copy_from_slice(&seqid.to_be_bytes());
        h[24..24 + label.len()].copy_from_slice(label.as_bytes());
        h[72..78].copy_from_slice(b"sha256");
        h[168..204].copy_from_slice(b"3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8");
        h[256..264].copy_from_slice(&(offset as u64).to_be_bytes());
        h[BINARY_HEADER..BINARY_HEADER + 2].copy_from_slice(b"{}");
        let sum = Sha256::digest(&*h);
        h[CSUM_AT..CSUM_AT + 32].copy_from_slice(&sum);
    }

    /// A 64 MiB partition image of zeros at `path`, open for reading and writing.
    fn partition_file(path: &std::path::Path) -> std::fs::File {
        let f = std::fs::File::create(path).unwrap();
        f.set_len(64 << 20).unwrap();
        std::fs::File::options()
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    fn volume(label: &str) -> Vec<u8> {
        let mut head = vec![0u8; HEAD_LEN];
        put_header(&mut head, 0, 0x4000, label, 3);
        put_header(&mut head, 0x4000, 0x4000, label, 3);
        head
    }

    #[test]
    fn the_uuid_is_read_and_checked() {
        let head = volume(LABEL_STATE);
        assert_eq!(
            best_header(&head).unwrap().uuid.as_deref(),
            Some("3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8")
        );
        assert_eq!(
            volume_uuid(&mut std::io::Cursor::new(head))
                .unwrap()
                .as_deref(),
            Some("3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8")
        );
        for bad in [
            "3F0C1A2B-4D5E-6F70-8192-A3B4C5D6E7F8",
            "3f0c1a2b4d5e6f708192a3b4c5d6e7f8",
            "3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f",
            "../../../../../../../../../etc/passw",
        ] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn labels_decide_between_state_creating_and_foreign() {
        assert_eq!(
            classify_parts(&volume(LABEL_STATE), Window::Zero),
            Content::State
        );
        assert_eq!(
            classify_parts(&volume(LABEL_CREATING), Window::DataAt(DATA_START)),
            Content::Creating
        );
        let Content::Foreign(why) = classify_parts(&volume("backup\u{7}"), Window::Zero) else {
            panic!()
        };
        assert!(why.contains("`backup\\x07`"), "{why}");
    }

    #[test]
    fn the_newer_valid_header_wins_and_a_damaged_one_is_ignored() {
        // The label's commit was cut between the two header writes.
        let mut head = volume(LABEL_CREATING);
        put_header(&mut head, 0, 0x4000, LABEL_STATE, 4);
        assert_eq!(classify_parts(&head, Window::Zero), Content::State);
        // The newer header torn (checksum wrong): the older one stands.
        head[30] ^= 1;
        assert_eq!(classify_parts(&head, Window::Zero), Content::Creating);
        // The primary gone entirely: the secondary is found at its fixed offset.
        head[..0x4000].fill(0);
        assert_eq!(classify_parts(&head, Window::Zero), Content::Creating);
        // A secondary at a larger size, found by scanning.
        let mut big = vec![0u8; HEAD_LEN];
        put_header(&mut big, 0x100000, 0x100000, LABEL_STATE, 9);
        assert_eq!(classify_parts(&big, Window::Zero), Content::State);
    }

    #[test]
    fn a_header_lying_about_itself_is_not_valid() {
        let mut head = volume(LABEL_STATE);
        // An offset field that does not match where it was found.
        head[0x4000 + 263] = 1;
        head[..0x4000].fill(0);
        assert!(best_header(&head).is_none());
        // A size LUKS2 does not allow, and a size reaching past the bytes read.
        let mut odd = vec![0u8; HEAD_LEN];
        put_header(&mut odd, 0, 0x4000, LABEL_STATE, 1);
        odd[8..16].copy_from_slice(&(0x5000u64).to_be_bytes());
        assert!(best_header(&odd).is_none());
        let short = &volume(LABEL_STATE)[..0x3000];
        assert!(best_header(short).is_none());
    }

    #[test]
    fn blank_torn_and_foreign_partitions() {
        let zero = vec![0u8; HEAD_LEN];
        assert_eq!(
            classify_parts(&zero, Window::Zero),
            Content::Blank { torn: false }
        );
        // A format cut short: magic written, checksum not yet.
        let mut torn = volume(LABEL_CREATING);
        torn[CSUM_AT] ^= 0xff;
        torn[0x4000 + CSUM_AT] ^= 0xff;
        assert_eq!(
            classify_parts(&torn, Window::Zero),
            Content::Blank { torn: true }
        );
        // The same with a file system's bytes past 16 MiB: somebody's data.
        assert!(matches!(
            classify_parts(&torn, Window::DataAt(DATA_START + 1024)),
            Content::Foreign(_)
        ));
        // An ext4 superblock at 1 KiB, no LUKS.
        let mut ext4 = zero.clone();
        ext4[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert!(matches!(
            classify_parts(&ext4, Window::Zero),
            Content::Foreign(_)
        ));
        let mut luks1 = zero;
        luks1[..6].copy_from_slice(MAGIC_PRIMARY);
        luks1[7] = 1;
        assert_eq!(
            classify_parts(&luks1, Window::Zero),
            Content::Foreign("a LUKS1 volume".into())
        );
    }

    #[test]
    fn a_format_cut_in_its_random_key_slot_fill_is_torn_only_with_the_mark() {
        // cryptsetup zeroed the headers' area, then began filling the key slots with random
        // bytes: no magic anywhere, non-zero bytes past 32 KiB.
        let mut head = vec![0u8; HEAD_LEN];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for b in &mut head[0x8000..0x30_0000] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        assert_eq!(
            classify_parts(&head, Window::Marked),
            Content::Blank { torn: true }
        );
        let Content::Foreign(why) = classify_parts(&head, Window::Zero) else {
            panic!("unmarked bytes are somebody's")
        };
        assert!(why.contains("no creation mark"), "{why}");
        // The mark never makes another's volume plinth's.
        assert!(matches!(
            classify_parts(&volume("backups"), Window::Marked),
            Content::Foreign(_)
        ));
        let mut luks1 = vec![0u8; HEAD_LEN];
        luks1[..6].copy_from_slice(MAGIC_PRIMARY);
        luks1[7] = 1;
        assert!(matches!(
            classify_parts(&luks1, Window::Marked),
            Content::Foreign(_)
        ));
        // A file system made over an unfinished creation is somebody's.
        let mut ext4 = head.clone();
        ext4[1080..1082].copy_from_slice(&[0x53, 0xef]);
        let Content::Foreign(why) = classify_parts(&ext4, Window::Marked) else {
            panic!("an ext4 over the mark is not plinth's")
        };
        assert!(why.contains("ext2/3/4"), "{why}");
        let mut btrfs = vec![0u8; HEAD_LEN];
        btrfs[0x10040..0x10048].copy_from_slice(b"_BHRfS_M");
        assert!(matches!(
            classify_parts(&btrfs, Window::Marked),
            Content::Foreign(_)
        ));
        // A committed volume stays committed whatever lies at its data's start.
        assert_eq!(
            classify_parts(&volume(LABEL_STATE), Window::Marked),
            Content::State
        );
    }

    #[test]
    fn only_the_whole_mark_at_the_data_start_counts() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let put = |at: u64, bytes: &[u8]| {
            let mut f = partition_file(&path);
            f.seek(SeekFrom::Start(0x8000)).unwrap();
            f.write_all(&[0x5a; 4096]).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(bytes).unwrap();
            classify(&mut f, 64 << 20).unwrap()
        };
        let mark = creation_mark();
        assert_eq!(put(DATA_START, &mark), Content::Blank { torn: true });
        // Ciphertext of an earlier attempt after the mark does not matter.
        let mut then_data = mark.to_vec();
        then_data.extend_from_slice(&[0xc3; 8192]);
        assert_eq!(put(DATA_START, &then_data), Content::Blank { torn: true });
        // Elsewhere, cut short, or altered: data, not plinth's.
        assert!(matches!(put(DATA_START + 512, &mark), Content::Foreign(_)));
        assert!(matches!(put(DATA_START, &mark[..20]), Content::Foreign(_)));
        let mut altered = mark;
        altered[MARK_LEN - 1] = 1;
        assert!(matches!(put(DATA_START, &altered), Content::Foreign(_)));
    }

    #[test]
    fn classify_streams_the_data_window_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = partition_file(&dir.path().join("data"));
        assert_eq!(
            classify(&mut f, 64 << 20).unwrap(),
            Content::Blank { torn: false }
        );
        use std::io::Write;
        f.seek(SeekFrom::Start(SCAN_END - 1)).unwrap();
        f.write_all(&[1]).unwrap();
        let Content::Foreign(why) = classify(&mut f, 64 << 20).unwrap() else {
            panic!()
        };
        assert!(why.contains(&format!("offset {}", SCAN_END - 1)), "{why}");
        assert!(classify(&mut f, 16 << 20).is_err());
    }
}
