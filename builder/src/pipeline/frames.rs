//! The zstd side of release archives: the tar stream cut into independent zstd frames, each
//! compressed on its own (a zstd stream of several frames decompresses to their
//! concatenation, so `zstd -d`, `tar --zstd` and every reader see one archive).
//!
//! Where the stream is cut is decided by content position, never by timing: the archive
//! writer cuts before and after each [`FRAME`]-sized window of a member's data (windows
//! start at the member's anchors, e.g. its partitions' offsets in a disk image), so a
//! partition's frames hold the same bytes in the disk archive as in the update archive, and
//! in the next build when that part of the partition did not change. A frame is a pure
//! function of its bytes, the level and the libzstd version ([`FrameIndex::format`]); so a
//! frame already compressed in an earlier archive ([`FramePool`]) is copied instead of
//! compressed again, after checking that its compressed bytes are the ones recorded when it
//! was written (sha256; an altered or truncated archive in the cache loses its frames) and
//! that they decompress to the content wanted (sha256 of the content: a poisoned cache whose
//! index was rewritten to match cannot slip other bytes into a release).
//! The output is the same whether a frame was reused or not, and whatever the number of
//! threads.

use plinth_release::Sha256;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of member data per frame window. 4 MiB windows cost 1.2 % of size against one
/// zstd stream of a GuestOS root image at level 6 (1 MiB windows cost 5.8 %).
pub const FRAME: u64 = 4 << 20;
/// Raw bytes gathered before a batch of frames is compressed (in parallel).
const BATCH: usize = 8 * FRAME as usize;

/// A frame of a written archive: its content's sha256 and size, its place in the archive,
/// and the sha256 of its compressed bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameRecord {
    pub sha256: Sha256,
    pub raw_size: u64,
    pub offset: u64,
    pub size: u64,
    pub frame_sha256: Sha256,
}

/// The frames of one archive and the settings that made them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameIndex {
    /// Level, libzstd version and window: frames are reused only between equal formats.
    pub format: String,
    pub frames: Vec<FrameRecord>,
}

impl FrameIndex {
    /// Where an archive's index is kept beside it (in the stage cache, not in releases).
    pub fn path_for(archive: &Path) -> PathBuf {
        let mut name = archive.file_name().unwrap_or_default().to_os_string();
        name.push(".frames.json");
        archive.with_file_name(name)
    }

    /// Write the index of `archive` beside it.
    pub fn save_for(&self, archive: &Path) -> io::Result<()> {
        let path = Self::path_for(archive);
        std::fs::write(&path, serde_json::to_vec(self).map_err(io::Error::other)?)
    }
}

/// The format string of frames compressed at `level` here.
pub fn format(level: i32) -> String {
    format!(
        "zstd {} level {level}, content size and checksum, {} MiB windows",
        zstd::zstd_safe::version_string(),
        FRAME >> 20
    )
}

/// Compressed frames of earlier archives of one format, by the sha256 of their content. The
/// default pool is empty and takes nothing.
#[derive(Debug, Default)]
pub struct FramePool {
    /// The [`format`] of the frames this pool takes.
    format: String,
    archives: Vec<File>,
    by_sha256: HashMap<Sha256, (usize, FrameRecord)>,
}

impl FramePool {
    /// An empty pool for frames compressed at `level`.
    pub fn for_level(level: i32) -> FramePool {
        FramePool {
            format: format(level),
            ..FramePool::default()
        }
    }

    /// Offer the frames of `archive` as described by `index`; ignored (false) when their
    /// format is not the pool's or the archive cannot be opened.
    pub fn add(&mut self, archive: &Path, index: &FrameIndex) -> bool {
        if self.format.is_empty() || index.format != self.format {
            return false;
        }
        let Ok(file) = File::open(archive) else {
            return false;
        };
        let n = self.archives.len();
        self.archives.push(file);
        for f in &index.frames {
            self.by_sha256.entry(f.sha256).or_insert((n, f.clone()));
        }
        true
    }

    /// Offer the frames of `archive` if its index lies beside it.
    pub fn add_saved(&mut self, archive: &Path) -> bool {
        let Ok(bytes) = std::fs::read(FrameIndex::path_for(archive)) else {
            return false;
        };
        match serde_json::from_slice::<FrameIndex>(&bytes) {
            Ok(index) => self.add(archive, &index),
            Err(_) => false,
        }
    }

    /// The compressed frame of content `sha256` (of `raw_size` bytes) and the sha256 of its
    /// bytes, if an earlier archive still holds it as recorded and it decompresses to exactly
    /// that content. The stage cache is not trusted: an index and archive rewritten together
    /// would pass the compressed digest alone, so the frame is decompressed and its content
    /// hashed before it is reused (a frame that does not is compressed afresh).
    fn find(&self, sha256: &Sha256, raw_size: usize) -> Option<(Vec<u8>, Sha256)> {
        let (n, f) = self.by_sha256.get(sha256)?;
        if f.raw_size != raw_size as u64 {
            return None;
        }
        // Bounded before anything is allocated: no frame is larger than zstd's bound for its
        // content.
        let size = usize::try_from(f.size).ok()?;
        if size > zstd::zstd_safe::compress_bound(raw_size) {
            return None;
        }
        let mut frame = vec![0u8; size];
        self.archives[*n].read_exact_at(&mut frame, f.offset).ok()?;
        let digest = Sha256::of(&frame);
        if digest != f.frame_sha256 {
            return None;
        }
        let content = zstd::bulk::Decompressor::new()
            .ok()?
            .decompress(&frame, raw_size)
            .ok()?;
        let content_sha256 = Sha256::of(&content);
        (content.len() == raw_size && &content_sha256 == sha256).then_some((frame, digest))
    }
}

/// A writer of independent zstd frames: bytes gather in the current frame until [`cut`];
/// finished frames are compressed in batches on `threads` threads (or copied from the pool)
/// and written in order.
///
/// [`cut`]: FrameWriter::cut
pub struct FrameWriter<'p, W: Write> {
    out: W,
    level: i32,
    threads: usize,
    pool: &'p FramePool,
    current: Vec<u8>,
    queue: Vec<Vec<u8>>,
    queued: usize,
    index: FrameIndex,
    written: u64,
    /// Raw bytes whose frames came from the pool.
    reused: u64,
}

impl<'p, W: Write> FrameWriter<'p, W> {
    pub fn new(out: W, level: i32, threads: usize, pool: &'p FramePool) -> Self {
        FrameWriter {
            out,
            level,
            threads: threads.max(1),
            pool,
            current: Vec::new(),
            queue: Vec::new(),
            queued: 0,
            index: FrameIndex {
                format: format(level),
                frames: Vec::new(),
            },
            written: 0,
            reused: 0,
        }
    }

    /// Append to the current frame.
    pub fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.current.extend_from_slice(bytes);
        Ok(())
    }

    /// End the current frame (nothing happens when it is empty).
    pub fn cut(&mut self) -> io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let frame = std::mem::take(&mut self.current);
        self.queued += frame.len();
        self.queue.push(frame);
        if self.queued >= BATCH {
            self.drain()?;
        }
        Ok(())
    }

    /// Compress (or take from the pool) every queued frame and write them in order.
    fn drain(&mut self) -> io::Result<()> {
        let frames = std::mem::take(&mut self.queue);
        self.queued = 0;
        let (level, pool) = (self.level, self.pool);
        let threads = self.threads.min(frames.len()).max(1);
        let mut done: Vec<Option<io::Result<Done>>> = (0..frames.len()).map(|_| None).collect();
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let frames = &frames;
                    s.spawn(move || {
                        let mut out = Vec::new();
                        let mut compressor = None;
                        for (i, raw) in frames.iter().enumerate().skip(t).step_by(threads) {
                            out.push((i, one_frame(raw, level, pool, &mut compressor)));
                        }
                        out
                    })
                })
                .collect();
            for w in workers {
                for (i, r) in w.join().expect("a frame thread panicked") {
                    done[i] = Some(r);
                }
            }
        });
        for (raw, d) in frames.iter().zip(done) {
            let d = d.expect("every frame is done")?;
            self.out.write_all(&d.bytes)?;
            if d.reused {
                self.reused += raw.len() as u64;
            }
            self.index.frames.push(FrameRecord {
                sha256: d.sha256,
                raw_size: raw.len() as u64,
                offset: self.written,
                size: d.bytes.len() as u64,
                frame_sha256: d.frame_sha256,
            });
            self.written += d.bytes.len() as u64;
        }
        Ok(())
    }

    /// Write what is left; returns the inner writer and the index of the frames written.
    pub fn finish(mut self) -> io::Result<(W, FrameIndex, u64)> {
        self.cut()?;
        self.drain()?;
        Ok((self.out, self.index, self.reused))
    }
}

/// One frame's output.
struct Done {
    sha256: Sha256,
    bytes: Vec<u8>,
    frame_sha256: Sha256,
    reused: bool,
}

fn one_frame(
    raw: &[u8],
    level: i32,
    pool: &FramePool,
    compressor: &mut Option<zstd::bulk::Compressor<'static>>,
) -> io::Result<Done> {
    let sha256 = Sha256::of(raw);
    if let Some((bytes, frame_sha256)) = pool.find(&sha256, raw.len()) {
        return Ok(Done {
            sha256,
            bytes,
            frame_sha256,
            reused: true,
        });
    }
    if compressor.is_none() {
        let mut c = zstd::bulk::Compressor::new(level)?;
        c.include_checksum(true)?;
        c.include_contentsize(true)?;
        *compressor = Some(c);
    }
    let c = compressor.as_mut().expect("set above");
    let bytes = c.compress(raw)?;
    Ok(Done {
        sha256,
        frame_sha256: Sha256::of(&bytes),
        bytes,
        reused: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Compressible: runs of text-like bytes.
                if i % 64 < 40 {
                    b'a' + (x % 4) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    fn write(frames: &[Vec<u8>], threads: usize, pool: &FramePool) -> (Vec<u8>, FrameIndex, u64) {
        let mut w = FrameWriter::new(Vec::new(), 6, threads, pool);
        for f in frames {
            w.put(f).unwrap();
            w.cut().unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn frames_decode_as_one_stream_and_do_not_depend_on_threads_or_reuse() {
        let frames: Vec<Vec<u8>> = (0..20)
            .map(|i| noise(100_000 + i * 777, i as u64))
            .collect();
        let empty = FramePool::default();
        let (one, index, reused) = write(&frames, 1, &empty);
        assert_eq!(reused, 0);
        assert_eq!(index.frames.len(), frames.len());
        let (three, _, _) = write(&frames, 3, &empty);
        assert_eq!(one, three);
        assert_eq!(zstd::decode_all(&one[..]).unwrap(), frames.concat());

        // The same frames again, from a pool holding the first archive.
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.zst");
        std::fs::write(&archive, &one).unwrap();
        let mut pool = FramePool::for_level(6);
        assert!(pool.add(&archive, &index));
        assert!(!FramePool::for_level(7).add(&archive, &index));
        assert!(!FramePool::default().add(&archive, &index));
        let mut changed = frames.clone();
        changed[5][10] ^= 1;
        let (again, _, reused) = write(&changed, 2, &pool);
        assert_eq!(reused, (frames.concat().len() - frames[5].len()) as u64);
        assert_eq!(again, write(&changed, 1, &empty).0);
    }

    #[test]
    fn a_corrupt_pool_frame_is_compressed_afresh() {
        let frames = vec![noise(50_000, 1), noise(60_000, 2)];
        let empty = FramePool::default();
        let (bytes, index, _) = write(&frames, 1, &empty);
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.zst");
        let mut bad = bytes.clone();
        let at = index.frames[1].offset as usize + 20;
        bad[at] ^= 0xff;
        std::fs::write(&archive, &bad).unwrap();
        index.save_for(&archive).unwrap();
        let mut pool = FramePool::for_level(6);
        assert!(pool.add_saved(&archive));
        let (again, _, reused) = write(&frames, 2, &pool);
        assert_eq!(again, bytes);
        assert_eq!(reused, frames[0].len() as u64);
    }

    #[test]
    fn a_poisoned_frame_whose_index_was_rewritten_to_match_is_compressed_afresh() {
        // The attack: a cache archive whose second frame holds other content, and an index
        // rewritten so that the frame's compressed sha256 and size match the new bytes while
        // it still claims the original content's sha256.
        let frames = vec![noise(50_000, 1), noise(60_000, 2)];
        let empty = FramePool::default();
        let (bytes, index, _) = write(&frames, 1, &empty);
        let mut evil = frames[1].clone();
        evil[100..120].copy_from_slice(b"planted by the cache");
        let evil_frame = zstd::bulk::Compressor::new(6)
            .unwrap()
            .compress(&evil)
            .unwrap();
        let at = index.frames[1].offset as usize;
        let mut poisoned = bytes[..at].to_vec();
        poisoned.extend_from_slice(&evil_frame);
        let mut forged = index.clone();
        forged.frames[1].size = evil_frame.len() as u64;
        forged.frames[1].frame_sha256 = Sha256::of(&evil_frame);
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.zst");
        std::fs::write(&archive, &poisoned).unwrap();
        forged.save_for(&archive).unwrap();
        let mut pool = FramePool::for_level(6);
        assert!(pool.add_saved(&archive));
        let (again, _, reused) = write(&frames, 2, &pool);
        assert_eq!(again, bytes, "the planted content reached the archive");
        assert_eq!(zstd::decode_all(&again[..]).unwrap(), frames.concat());
        assert_eq!(
            reused,
            frames[0].len() as u64,
            "only the honest frame is reused"
        );

        // A frame record claiming an absurd compressed size is ignored before allocation.
        let mut huge = index.clone();
        huge.frames[0].size = u64::MAX / 2;
        let archive2 = dir.path().join("b.tar.zst");
        std::fs::write(&archive2, &bytes).unwrap();
        huge.save_for(&archive2).unwrap();
        let mut pool = FramePool::for_level(6);
        assert!(pool.add_saved(&archive2));
        let (again, _, reused) = write(&frames, 1, &pool);
        assert_eq!(again, bytes);
        assert_eq!(reused, frames[1].len() as u64);
    }
}
