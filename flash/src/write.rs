//! The streaming writer: `disk-img.tar.zst` → zstd → `disk.img` → 4 MiB buffers aligned on
//! 1 MiB of the disk → `O_DIRECT` writes, on a thread of their own so decompression and
//! writing overlap.
//!
//! The first MiB (protective MBR and primary GPT) is written last, so that no interrupted
//! flash leaves a disk that looks whole: (1) zero the first MiB, sync; (2) write everything
//! from 1 MiB on, holes as zeros (a stick has old data; only a new file keeps them as holes);
//! (3) zero the device's last MiB past the image, so that an old backup GPT cannot survive;
//! sync; (4) check the archive's sha256 against the manifest once more; (5) write the real
//! first MiB, sync. Any failure or interruption after (1) zeroes the first MiB again. A
//! caller that writes several disks which only work together (the install: HostOS, then
//! GuestOS) defers (5) with [`WriteOptions::defer_first_mib`] and commits each disk's first
//! MiB with [`commit_first_mib`] once all of them are written and read back.

use super::image::Image;
use super::{all_zero, io_err, AlignedBuf, Disk, FlashError, MIB};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// Bytes per write.
pub const CHUNK: usize = 4 << 20;
/// Buffers between the decompressing and the writing thread.
const QUEUE: usize = 4;

/// What [`write`](fn@write) needs besides the image and the disk.
pub struct WriteOptions<'a> {
    /// Set by Ctrl-C or SIGTERM: stop, reset the first MiB.
    pub cancel: &'a AtomicBool,
    /// Called with the bytes on the disk so far, now and then.
    pub progress: &'a dyn Fn(u64),
    /// Leave the first MiB zeroed (step 5 not done): the disk has no partition table until
    /// [`commit_first_mib`].
    pub defer_first_mib: bool,
}

/// What [`write`](fn@write) did.
#[derive(Debug, Clone)]
pub struct Written {
    /// The image's bytes, all on the disk now.
    pub bytes: u64,
    /// Bytes actually written (a new file's holes are not).
    pub written: u64,
    pub seconds: f64,
    /// The span past the image zeroed at the device's end, if any.
    pub tail_zeroed: Option<(u64, u64)>,
    /// Whether `O_DIRECT` carried the writes.
    pub direct: bool,
}

/// Fill `buf` from `data`; fewer bytes only at its end.
fn read_full(data: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match data.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Zeros over `len` bytes of `disk` from `pos`.
fn zero(disk: &Disk, pos: u64, len: u64) -> std::io::Result<()> {
    let zeros = AlignedBuf::new(CHUNK);
    let mut at = pos;
    while at < pos + len {
        let n = (pos + len - at).min(CHUNK as u64) as usize;
        disk.write_at(&zeros.as_slice()[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The first MiB zeroed and synced: the disk has no primary GPT.
pub fn reset_first_mib(disk: &Disk) -> std::io::Result<()> {
    zero(disk, 0, MIB.min(disk.capacity))?;
    disk.sync()
}

/// Write `image` onto `disk` (see the module comment). On an error or interruption the
/// first MiB is zeroed again (and the error says so).
pub fn write(image: &Image, disk: &mut Disk, opts: &WriteOptions) -> Result<Written, FlashError> {
    let start = Instant::now();
    disk.grow(image.size)?;
    let disk: &Disk = disk;
    reset_first_mib(disk).map_err(io_err(&disk.path, "zero the first MiB of"))?;
    match write_rest(image, disk, opts) {
        Ok((written, tail_zeroed)) => Ok(Written {
            bytes: image.size,
            written,
            seconds: start.elapsed().as_secs_f64(),
            tail_zeroed,
            direct: disk.is_direct(),
        }),
        Err(e) => {
            if let Err(reset) = reset_first_mib(disk) {
                return Err(FlashError::Io {
                    path: disk.path.clone(),
                    action: "zero the first MiB after a failed write (the disk may look whole but is NOT: wipe it)",
                    source: reset,
                });
            }
            Err(e)
        }
    }
}

fn write_rest(
    image: &Image,
    disk: &Disk,
    opts: &WriteOptions,
) -> Result<(u64, Option<(u64, u64)>), FlashError> {
    let first = image.size.min(MIB);
    let written = AtomicU64::new(first);
    let skip_zeros = disk.fresh;
    let write_err = |e| io_err(&disk.path, "write")(e);
    let streamed = std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<(u64, AlignedBuf, usize)>(QUEUE);
        let (back_tx, back_rx) = mpsc::channel::<AlignedBuf>();
        let written = &written;
        let writer = s.spawn(move || -> std::io::Result<u64> {
            let mut bytes = 0u64;
            for (pos, buf, n) in rx {
                let data = &buf.as_slice()[..n];
                if !(skip_zeros && all_zero(data)) {
                    disk.write_at(data, pos)?;
                    bytes += n as u64;
                }
                written.fetch_add(n as u64, Ordering::Relaxed);
                let _ = back_tx.send(buf);
            }
            Ok(bytes)
        });
        let mut first_seen = Vec::new();
        let read = image.stream(|data| {
            first_seen = vec![0u8; first as usize];
            data.read_exact(&mut first_seen)
                .map_err(io_err(&image.archive, "read"))?;
            let mut pos = first;
            let mut buffers = 0;
            while pos < image.size {
                if opts.cancel.load(Ordering::SeqCst) {
                    return Err(FlashError::Interrupted);
                }
                let mut buf = match back_rx.try_recv() {
                    Ok(b) => b,
                    Err(_) if buffers < QUEUE + 2 => {
                        buffers += 1;
                        AlignedBuf::new(CHUNK)
                    }
                    Err(_) => back_rx.recv().map_err(|_| stopped())?,
                };
                let want = (image.size - pos).min(CHUNK as u64) as usize;
                let n = read_full(data, &mut buf.as_mut_slice()[..want])
                    .map_err(io_err(&image.archive, "read"))?;
                if n != want {
                    return Err(FlashError::Release {
                        path: image.archive.clone(),
                        message: format!(
                            "`disk.img` ends at byte {}, before its size",
                            pos + n as u64
                        ),
                    });
                }
                tx.send((pos, buf, n)).map_err(|_| stopped())?;
                pos += n as u64;
                (opts.progress)(written.load(Ordering::Relaxed));
            }
            Ok(())
        });
        drop(tx);
        let wrote = writer.join().expect("the writer thread does not panic");
        match (read, wrote) {
            (_, Err(e)) => Err(write_err(e)),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(bytes)) => Ok((bytes, first_seen)),
        }
    });
    let (mut bytes, first_seen) = streamed?;
    if opts.cancel.load(Ordering::SeqCst) {
        return Err(FlashError::Interrupted);
    }
    if first_seen != image.first_mib {
        return Err(FlashError::Release {
            path: image.archive.clone(),
            message: "the first MiB of `disk.img` changed between the check and the write".into(),
        });
    }
    // An old backup GPT at the end of a larger device must not survive.
    let mut tail_zeroed = None;
    if disk.capacity > image.size {
        let from = image.size.max(disk.capacity.saturating_sub(MIB));
        zero(disk, from, disk.capacity - from).map_err(write_err)?;
        bytes += disk.capacity - from;
        tail_zeroed = Some((from, disk.capacity - from));
    }
    disk.sync().map_err(io_err(&disk.path, "sync"))?;
    if opts.cancel.load(Ordering::SeqCst) {
        return Err(FlashError::Interrupted);
    }
    if !opts.defer_first_mib {
        commit_first_mib(image, disk)?;
        bytes += first;
    }
    (opts.progress)(image.size);
    Ok((bytes, tail_zeroed))
}

/// Write `image`'s first MiB (protective MBR and primary GPT) onto `disk`, sync, and read it
/// back: the last step of a write, done by the caller when the write deferred it.
pub fn commit_first_mib(image: &Image, disk: &Disk) -> Result<(), FlashError> {
    let first = image.first_mib.len();
    let mut head = AlignedBuf::new(first);
    head.as_mut_slice().copy_from_slice(&image.first_mib);
    disk.write_at(head.as_slice(), 0)
        .map_err(io_err(&disk.path, "write"))?;
    disk.sync().map_err(io_err(&disk.path, "sync"))?;
    let mut back = AlignedBuf::new(first);
    disk.read_at(back.as_mut_slice(), 0)
        .map_err(io_err(&disk.path, "read back"))?;
    if back.as_slice() != &image.first_mib[..] {
        return Err(FlashError::Io {
            path: disk.path.clone(),
            action: "read back the first MiB of",
            source: std::io::Error::other("it differs from what was written"),
        });
    }
    Ok(())
}

/// The writer thread stopped (its error is reported instead).
fn stopped() -> FlashError {
    FlashError::Io {
        path: "(writer)".into(),
        action: "hand data to the writer",
        source: std::io::Error::other("the writer stopped"),
    }
}
