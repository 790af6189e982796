//! Read-back: every partition span of the release read from the target itself (`O_DIRECT`,
//! or buffered after dropping the span from the page cache, so the cache cannot answer) and
//! its block digest ([`plinth_release::blocks::BlockDigest`]) compared with the manifest's
//! `blocks_sha256`; and the GPT region (the first MiB) compared byte for byte with the image's.

use super::image::Image;
use super::{io_err, AlignedBuf, Disk, FlashError, MIB};
use plinth_release::blocks::BlockDigest;
use plinth_release::{Role, Sha256};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Bytes per read.
const CHUNK: usize = 4 << 20;

/// One partition read back.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionCheck {
    pub number: u32,
    pub name: String,
    pub role: Role,
    pub offset: u64,
    pub size: u64,
    pub expected: Sha256,
    pub actual: Sha256,
    pub ok: bool,
}

/// The whole read-back.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// The first MiB equals the image's.
    pub gpt_ok: bool,
    pub partitions: Vec<PartitionCheck>,
    /// Bytes read.
    pub bytes: u64,
    pub seconds: f64,
}

impl Verified {
    pub fn ok(&self) -> bool {
        self.gpt_ok && self.partitions.iter().all(|p| p.ok)
    }

    /// What differs first, in disk order: the GPT region, then the partitions.
    pub fn first_mismatch(&self) -> Option<String> {
        if !self.gpt_ok {
            return Some("the GPT region (first MiB)".into());
        }
        self.partitions
            .iter()
            .find(|p| !p.ok)
            .map(|p| format!("partition {} `{}` ({})", p.number, p.name, p.role))
    }
}

/// The block digest of `len` bytes of `disk` from `offset`, read in 4 MiB chunks.
pub fn span_digest(
    disk: &Disk,
    offset: u64,
    len: u64,
    buf: &mut AlignedBuf,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<Sha256, FlashError> {
    let mut digest = BlockDigest::new();
    let mut at = 0u64;
    while at < len {
        if cancel.load(Ordering::SeqCst) {
            return Err(FlashError::Interrupted);
        }
        let n = (len - at).min(CHUNK as u64) as usize;
        let bytes = &mut buf.as_mut_slice()[..n];
        disk.read_at(bytes, offset + at)
            .map_err(io_err(&disk.path, "read back"))?;
        // CHUNK is a whole number of digest blocks, so blocks never straddle reads.
        for block in bytes.chunks(MIB as usize) {
            digest.update(block);
        }
        at += n as u64;
        progress(n as u64);
    }
    Ok(digest.finish())
}

/// Read back every partition of `image` and the GPT region from `disk`.
pub fn verify(
    disk: &Disk,
    image: &Image,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<Verified, FlashError> {
    let start = Instant::now();
    let mut buf = AlignedBuf::new(CHUNK);
    let head_len = image.first_mib.len();
    let head = &mut buf.as_mut_slice()[..head_len];
    disk.read_at(head, 0)
        .map_err(io_err(&disk.path, "read back"))?;
    let gpt_ok = *head == image.first_mib[..];
    let mut bytes = head_len as u64;
    let mut partitions = Vec::new();
    for p in &image.manifest.partitions {
        let end = p.offset.checked_add(p.size).filter(|&e| e <= disk.capacity);
        if end.is_none() {
            return Err(FlashError::Release {
                path: image.dir.join(plinth_release::manifest::FILE_NAME),
                message: format!(
                    "partition {} `{}` ({} bytes from {}) ends past {}'s {} bytes",
                    p.number,
                    p.name,
                    p.size,
                    p.offset,
                    disk.path.display(),
                    disk.capacity
                ),
            });
        }
        let actual = span_digest(disk, p.offset, p.size, &mut buf, cancel, progress)?;
        bytes += p.size;
        partitions.push(PartitionCheck {
            number: p.number,
            name: p.name.to_string(),
            role: p.role,
            offset: p.offset,
            size: p.size,
            expected: p.blocks_sha256,
            actual,
            ok: actual == p.blocks_sha256,
        });
    }
    Ok(Verified {
        gpt_ok,
        partitions,
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}
