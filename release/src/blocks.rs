//! Spans of sparse image files (a partition inside a disk image) walked in 1 MiB blocks with
//! the file's holes skipped: the manifest's partition digest ([`PartitionImage::blocks_sha256`]),
//! and sparse copies of a span.
//!
//! [`PartitionImage::blocks_sha256`]: crate::manifest::PartitionImage::blocks_sha256
//!
//! The partition digest is `sha256(sha256(block 0) ‖ sha256(block 1) ‖ …)` over the span's
//! 1 MiB blocks (the last one may be shorter), so an all-zero block costs nothing after the
//! first: a prod GuestOS disk spans 64 GiB, mostly zeros, and a plain sha256 of every span took
//! 65 s of its build. Anyone can recompute it from the disk image with standard tools:
//! `dd if=disk.img bs=1M skip=$((OFFSET/1048576)) count=$((SIZE/1048576)) | split -b 1M
//! --filter='sha256sum | head -c 64 | xxd -r -p' | sha256sum` (for 1 MiB-aligned spans).

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The block size of the partition digest.
pub const BLOCK: u64 = 1 << 20;

/// One block of a span: where it starts (relative to the span) and its bytes, or `None` when
/// the block is all zeros (a hole of the file, or zeros that were read).
pub struct Block<'a> {
    pub at: u64,
    pub len: u64,
    pub data: Option<&'a [u8]>,
}

/// Call `f` for each [`BLOCK`]-sized block of `len` bytes of `file` from `offset`, in order.
/// Blocks inside holes are not read. Fails if the file ends before the span does.
pub fn for_each_block(
    file: &File,
    offset: u64,
    len: u64,
    mut f: impl FnMut(Block<'_>) -> io::Result<()>,
) -> io::Result<()> {
    let size = file.metadata()?.len();
    if size < offset.saturating_add(len) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{len} bytes from offset {offset} wanted, the file has {size}"),
        ));
    }
    let mut buf = vec![0u8; BLOCK as usize];
    // No data before this absolute position (as far as SEEK_DATA said).
    let mut data_from = 0u64;
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(BLOCK);
        let (start, end) = (offset + at, offset + at + n);
        if start >= data_from {
            data_from = match lseek(file, start as i64, Whence::SeekData) {
                Ok(d) => d as u64,
                Err(Errno::ENXIO) => u64::MAX,
                Err(e) => return Err(e.into()),
            };
        }
        let data = if data_from >= end {
            None
        } else {
            let bytes = &mut buf[..n as usize];
            file.read_exact_at(bytes, start)?;
            if bytes.iter().all(|&b| b == 0) {
                None
            } else {
                Some(&bytes[..])
            }
        };
        f(Block { at, len: n, data })?;
        at += n;
    }
    Ok(())
}

/// The partition digest (see the module comment) built block by block, from any source: a
/// sparse file ([`blocks_sha256`]) or a disk read back (`plinth-flash`'s verify). Each call gives
/// one block, in order; all but the last must be [`BLOCK`] bytes.
#[derive(Default)]
pub struct BlockDigest {
    outer: Sha256,
    /// The digest of an all-zero block of each length seen (a span has at most two).
    zero_digests: Vec<(u64, [u8; 32])>,
}

impl BlockDigest {
    pub fn new() -> BlockDigest {
        BlockDigest::default()
    }

    /// The next block's bytes (an all-zero block costs a scan, not a hash, after the first).
    pub fn update(&mut self, block: &[u8]) {
        if block.iter().all(|&b| b == 0) {
            self.zeros(block.len() as u64);
        } else {
            self.outer.update(Sha256::digest(block));
        }
    }

    /// The next block: `len` zero bytes.
    pub fn zeros(&mut self, len: u64) {
        let known = self.zero_digests.iter().find(|(n, _)| *n == len);
        let digest = match known {
            Some((_, d)) => *d,
            None => {
                let d: [u8; 32] = Sha256::digest(vec![0u8; len as usize]).into();
                self.zero_digests.push((len, d));
                d
            }
        };
        self.outer.update(digest);
    }

    pub fn finish(self) -> crate::Sha256 {
        crate::Sha256(self.outer.finalize().into())
    }
}

/// The partition digest (see the module comment) of `len` bytes of `path` from `offset`.
pub fn blocks_sha256(path: &Path, offset: u64, len: u64) -> io::Result<crate::Sha256> {
    let file = File::open(path)?;
    let mut digest = BlockDigest::new();
    for_each_block(&file, offset, len, |block| {
        match block.data {
            Some(bytes) => digest.update(bytes),
            None => digest.zeros(block.len),
        }
        Ok(())
    })?;
    Ok(digest.finish())
}

/// Copy `len` bytes of `src` from `offset` into a new file `out`, zero blocks left as holes.
pub fn copy_span_sparse(src: &Path, offset: u64, len: u64, out: &Path) -> io::Result<()> {
    let file = File::open(src)?;
    let dst = File::create(out)?;
    dst.set_len(len)?;
    for_each_block(&file, offset, len, |block| match block.data {
        Some(bytes) => dst.write_all_at(bytes, block.at),
        None => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(bytes: &[u8]) -> String {
        let mut outer = Sha256::new();
        for chunk in bytes.chunks(BLOCK as usize) {
            outer.update(Sha256::digest(chunk));
        }
        hex::encode(outer.finalize())
    }

    #[test]
    fn digest_and_copy_agree_with_the_bytes_holes_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let size = 9 * BLOCK + 12_345;
        let file = File::create(&path).unwrap();
        file.set_len(size).unwrap();
        // Data straddling block edges, a block of written zeros, a hole, a short tail.
        file.write_all_at(&[7u8; 3000], BLOCK - 1000).unwrap();
        file.write_all_at(&vec![0u8; BLOCK as usize], 3 * BLOCK)
            .unwrap();
        file.write_all_at(b"tail", size - 4).unwrap();
        drop(file);
        let bytes = std::fs::read(&path).unwrap();
        for (offset, len) in [
            (0, size),
            (500, size - 500),
            (BLOCK, 2 * BLOCK),
            (4 * BLOCK, 0),
        ] {
            let span = &bytes[offset as usize..(offset + len) as usize];
            assert_eq!(
                blocks_sha256(&path, offset, len).unwrap(),
                reference(span),
                "span {offset}+{len}"
            );
            let out = dir.path().join("copy.img");
            copy_span_sparse(&path, offset, len, &out).unwrap();
            assert_eq!(std::fs::read(&out).unwrap(), span);
        }
        let err = blocks_sha256(&path, size - 10, 11).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
