//! dm-verity: the hash tree of a root filesystem image, with a salt and UUID derived from the
//! release (never random), and its root hash, which goes into the kernel command line (and so
//! into the UKI's measurement and the SNP launch digest).
//!
//! The tree is written here in the on-disk format of `veritysetup format` (cryptsetup's
//! `lib/verity/verity_hash.c`; format version 1, hash type 1): a 512-byte superblock in the
//! first hash block, then the tree's levels from the top one down to the leaves, each digest
//! `sha256(salt ‖ block)`, each hash block holding 128 digests and zero padding; the root hash
//! is the digest of the top block. The bytes equal veritysetup's (a test compares them and
//! runs `veritysetup verify`). Doing it here lets all-zero data blocks, most of a root
//! partition, cost one digest for all of them, and the file's holes go unread.

use super::blocks;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

/// The tree's parameters; part of every image's contract with its initrd.
pub const HASH: &str = "sha256";
pub const BLOCK_SIZE: u32 = 4096;
const BLOCK: usize = BLOCK_SIZE as usize;
/// Digests per hash block (32-byte sha256 digests in 4 KiB blocks), as a power of two.
const PER_BLOCK_BITS: u32 = 7;

/// A formatted hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    /// The root hash.
    pub root_hash: plinth_release::Sha256,
    /// Size of the hash tree file in bytes.
    pub hash_size: u64,
}

/// Why the hash tree could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error(transparent)]
    Tool(#[from] super::tool::ToolError),
    #[error("{hash}: the hash tree needs {needed} bytes but its partition has {available}\n  hint: raise the verity partition's size in os.yaml")]
    TooSmall {
        hash: String,
        needed: u64,
        available: u64,
    },
    #[error(
        "{data}: {size} bytes is not a positive multiple of the {BLOCK_SIZE}-byte verity block"
    )]
    BadSize { data: String, size: u64 },
    #[error("verity salt `{salt}`: expected 1 to 256 bytes as hex; uuid `{uuid}`: expected 8-4-4-4-12 hex digits")]
    BadParameter { salt: String, uuid: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Format the hash tree of `data` into `hash` (a new file) and return its root hash. The tree
/// must fit `available` bytes (the verity partition); nothing is written if it does not.
pub fn format(
    data: &Path,
    hash: &Path,
    salt_hex: &str,
    uuid: &str,
    available: u64,
) -> Result<VerityTree, VerityError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| VerityError::Io { path, source }
    };
    let bad = || VerityError::BadParameter {
        salt: salt_hex.to_string(),
        uuid: uuid.to_string(),
    };
    let salt = hex::decode(salt_hex).map_err(|_| bad())?;
    let uuid_bytes = hex::decode(uuid.replace('-', "")).map_err(|_| bad())?;
    if salt.is_empty() || salt.len() > 256 || uuid_bytes.len() != 16 || uuid.len() != 36 {
        return Err(bad());
    }
    let file = File::open(data).map_err(io(data))?;
    let size = file.metadata().map_err(io(data))?.len();
    if size == 0 || size % BLOCK as u64 != 0 {
        return Err(VerityError::BadSize {
            data: data.display().to_string(),
            size,
        });
    }
    let layout = Layout::new(size / BLOCK as u64);
    let needed = layout.total_blocks * BLOCK as u64;
    if needed > available {
        return Err(VerityError::TooSmall {
            hash: hash.display().to_string(),
            needed,
            available,
        });
    }

    let digest = |bytes: &[u8]| -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&salt);
        h.update(bytes);
        h.finalize().into()
    };
    let zero_digest = digest(&[0u8; BLOCK]);
    // Level 0: a digest per data block.
    let mut level: Vec<[u8; 32]> = Vec::with_capacity(layout.data_blocks as usize);
    blocks::for_each_block(&file, 0, size, |block| {
        match block.data {
            None => level.extend(std::iter::repeat_n(
                zero_digest,
                (block.len / BLOCK as u64) as usize,
            )),
            Some(bytes) => level.extend(bytes.chunks(BLOCK).map(|b| {
                if b.iter().all(|&x| x == 0) {
                    zero_digest
                } else {
                    digest(b)
                }
            })),
        }
        Ok(())
    })
    .map_err(io(data))?;

    let _ = std::fs::remove_file(hash);
    let out = File::create(hash).map_err(io(hash))?;
    out.write_all_at(&superblock(&salt, &uuid_bytes, layout.data_blocks), 0)
        .map_err(io(hash))?;
    // Each level's hash blocks, written where the layout puts them; their digests form the
    // next level up.
    for &(start, blocks) in &layout.levels {
        let mut bytes = vec![0u8; blocks as usize * BLOCK];
        for (i, d) in level.iter().enumerate() {
            bytes[i * 32..i * 32 + 32].copy_from_slice(d);
        }
        out.write_all_at(&bytes, start * BLOCK as u64)
            .map_err(io(hash))?;
        level = bytes.chunks(BLOCK).map(digest).collect();
    }
    out.set_len(needed).map_err(io(hash))?;
    Ok(VerityTree {
        root_hash: plinth_release::Sha256(level[0]),
        hash_size: needed,
    })
}

/// Where the levels go in the hash file, as cryptsetup lays them out.
struct Layout {
    data_blocks: u64,
    /// (first hash block, blocks) per level, leaves first.
    levels: Vec<(u64, u64)>,
    total_blocks: u64,
}

impl Layout {
    fn new(data_blocks: u64) -> Layout {
        let mut count = 0u32;
        while PER_BLOCK_BITS * count < 64 && (data_blocks - 1) >> (PER_BLOCK_BITS * count) != 0 {
            count += 1;
        }
        // Block 0 holds the superblock; the top level comes first after it.
        let mut position = 1u64;
        let mut levels = vec![(0, 0); count as usize];
        for i in (0..count).rev() {
            let shift = (i + 1) * PER_BLOCK_BITS;
            let blocks = (data_blocks + (1u64 << shift) - 1) >> shift;
            levels[i as usize] = (position, blocks);
            position += blocks;
        }
        Layout {
            data_blocks,
            levels,
            total_blocks: position,
        }
    }
}

/// The 512-byte verity superblock (little-endian), padded to a hash block.
fn superblock(salt: &[u8], uuid: &[u8], data_blocks: u64) -> Vec<u8> {
    let mut sb = vec![0u8; BLOCK];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // format version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: salt first
    sb[16..32].copy_from_slice(uuid);
    sb[32..32 + HASH.len()].copy_from_slice(HASH.as_bytes());
    sb[64..68].copy_from_slice(&BLOCK_SIZE.to_le_bytes()); // data block size
    sb[68..72].copy_from_slice(&BLOCK_SIZE.to_le_bytes()); // hash block size
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[88..88 + salt.len()].copy_from_slice(salt);
    sb
}

/// Check `data` against `hash` and `root_hash` with `veritysetup verify`.
pub fn verify(
    data: &Path,
    hash: &Path,
    root_hash: &plinth_release::Sha256,
) -> Result<(), VerityError> {
    let mut cmd = Command::new("veritysetup");
    cmd.arg("verify")
        .arg(data)
        .arg(hash)
        .arg(root_hash.to_hex());
    super::tool::run("veritysetup", "cryptsetup-bin", &mut cmd)?;
    Ok(())
}

/// `veritysetup format` with this module's parameters (the reference the tests compare
/// against); its root hash.
pub fn format_with_veritysetup(
    data: &Path,
    hash: &Path,
    salt_hex: &str,
    uuid: &str,
) -> Result<String, VerityError> {
    let _ = std::fs::remove_file(hash);
    let mut cmd = Command::new("veritysetup");
    cmd.arg("format")
        .arg(format!("--hash={HASH}"))
        .arg(format!("--data-block-size={BLOCK_SIZE}"))
        .arg(format!("--hash-block-size={BLOCK_SIZE}"))
        .arg(format!("--salt={salt_hex}"))
        .arg(format!("--uuid={uuid}"))
        .arg(data)
        .arg(hash)
        .env("LC_ALL", "C");
    let out = super::tool::run("veritysetup", "cryptsetup-bin", &mut cmd)?.stdout_text();
    Ok(out
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::Layout;

    #[test]
    fn layout_matches_cryptsetup_for_a_1_gib_root() {
        let l = Layout::new(262_144);
        assert_eq!(l.levels, [(18, 2048), (2, 16), (1, 1)]);
        assert_eq!(l.total_blocks, 2066);
        assert_eq!(Layout::new(1).levels, []);
        assert_eq!(Layout::new(129).levels, [(2, 2), (1, 1)]);
    }
}
