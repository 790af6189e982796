//! The passes over an update archive that [`crate::apply`] runs, and the threads and
//! channels they use: the check pass ([`check_archive`]; beside the download as a
//! [`fetch::Tap`], [`Checker`]), the write pass ([`write_pass`]: one thread decompresses, the
//! caller's writes), and the staged payload hashed again by every pass that reads it
//! ([`Hashed`]).
//!
//! Threads and channels: every channel is bounded (a few 1 MiB pieces), so memory is fixed.
//! A side that stops drops its end: the other side's next send or receive fails and it ends
//! too (a writer that fails drops its receiver before the reading thread is joined; a
//! finished or restarted check drops its sender before its thread is joined, and that thread
//! reads to the end of the stream, so the feeder never waits on a thread that stopped). The
//! check reads bytes a mirror sent before their hash is checked (their result counts only
//! once it is): it bounds its own work, at most [`MAX_MEMBERS`] members and declared sizes
//! summing to at most twice the slot's parts, whatever the stream holds.

use crate::error::UpgradeError;
use crate::fetch::{self, Want};
use crate::slots::{self, MemberDigest};
use plinth_release::archive::{self, ArchiveError, Bound, Bounds};
use plinth_release::Sha256;
use sha2::Digest;
use std::path::Path;

/// The most members a checked archive may have (a plinth update archive has 3 to 5).
pub const MAX_MEMBERS: usize = 64;

/// The staged payload, read once from its start with its bytes hashed as they go, so that a
/// pass can prove it read exactly the signed bytes ([`Hashed::finish`]).
pub struct Hashed {
    file: std::fs::File,
    hasher: sha2::Sha256,
    length: u64,
}

impl Hashed {
    pub fn open(staged: &Path) -> Result<Hashed, UpgradeError> {
        Ok(Hashed {
            file: plinth_release::untrusted::open_untrusted(staged)
                .map_err(UpgradeError::io(staged, "open the staged payload"))?,
            hasher: sha2::Sha256::new(),
            length: 0,
        })
    }

    /// Read what the archive reader left (padding past the end of the archive), then
    /// compare the whole with the signed target.
    pub fn finish(mut self, staged: &Path, want: &Want) -> Result<(), UpgradeError> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = std::io::Read::read(&mut self, &mut buf)
                .map_err(UpgradeError::io(staged, "read the staged payload"))?;
            if n == 0 || self.length > want.length {
                break;
            }
        }
        let found = Sha256(self.hasher.finalize().into());
        if self.length != want.length || found != want.sha256 {
            let _ = std::fs::remove_file(staged);
            return Err(UpgradeError::StagedChanged {
                path: staged.to_path_buf(),
                expected: format!("sha256 {} and {} bytes", want.sha256, want.length),
                found: format!(
                    "sha256 {found} and {}{} bytes",
                    self.length,
                    if self.length > want.length {
                        " or more"
                    } else {
                        ""
                    }
                ),
            });
        }
        Ok(())
    }
}

impl std::io::Read for Hashed {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.length += n as u64;
        Ok(n)
    }
}

/// A piece of the write pass's stream: a member begins (its name and size), or its next
/// bytes.
enum Piece {
    Member(String, u64),
    Bytes(Vec<u8>),
}

/// The writer's side of the channel, as the member's reader: bytes as they come; the
/// emptied buffers go back to the reading thread.
struct Pieces<'a> {
    rx: &'a std::sync::mpsc::Receiver<Piece>,
    back: &'a std::sync::mpsc::SyncSender<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl std::io::Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(Piece::Bytes(b)) => {
                    let old = std::mem::replace(&mut self.current, b);
                    let _ = self.back.try_send(old);
                    self.at = 0;
                }
                // The reading thread ended (its error is reported) or a member began early.
                Ok(Piece::Member(..)) | Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Step 6: the needed members written to their parts, each fsynced; their digests.
pub fn write_pass(
    staged: &Path,
    want: &Want,
    bounds: &Bounds,
    writer: &mut slots::InactiveWriter,
    archive_error: &(dyn Fn(ArchiveError) -> UpgradeError + Sync),
) -> Result<Vec<MemberDigest>, UpgradeError> {
    use std::sync::mpsc::sync_channel;
    const IN_FLIGHT: usize = 4;
    let needed: Vec<String> = writer.members().map(str::to_string).collect();
    let (tx, rx) = sync_channel::<Piece>(IN_FLIGHT);
    let (back, free) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
    std::thread::scope(|scope| {
        let reading = scope.spawn(move || -> Result<(), UpgradeError> {
            let mut payload = Hashed::open(staged)?;
            let result =
                archive::for_each_member_of(&mut payload, staged, bounds, |name, size, reader| {
                    if !needed.iter().any(|m| m == name) {
                        return Ok(true);
                    }
                    if tx.send(Piece::Member(name.to_string(), size)).is_err() {
                        return Ok(false);
                    }
                    let mut left = size;
                    while left > 0 {
                        let mut b = free
                            .try_recv()
                            .unwrap_or_else(|_| Vec::with_capacity(slots::BUFFER));
                        b.resize(left.min(slots::BUFFER as u64) as usize, 0);
                        let n = reader.read(&mut b)?;
                        if n == 0 {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("member `{name}` ended early"),
                            ));
                        }
                        b.truncate(n);
                        left -= n as u64;
                        if tx.send(Piece::Bytes(b)).is_err() {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                });
            drop(tx);
            result.map_err(archive_error)?;
            payload.finish(staged, want)
        });
        let mut digests = Vec::new();
        let mut buf = vec![0u8; slots::BUFFER];
        let written = (|| -> Result<(), UpgradeError> {
            let mut pieces = Pieces {
                rx: &rx,
                back: &back,
                current: Vec::new(),
                at: 0,
            };
            while let Ok(piece) = pieces.rx.recv() {
                let Piece::Member(name, size) = piece else {
                    continue;
                };
                let sha256 = writer.write_member(&name, size, &mut pieces, &mut buf)?;
                digests.push(MemberDigest {
                    member: name,
                    length: size,
                    sha256,
                });
            }
            Ok(())
        })();
        // Unblock the reading thread if the writer stopped first.
        drop(rx);
        let read = reading.join().expect("the reading thread does not panic");
        // The reader's error first: a short or altered payload explains a short member.
        read?;
        written?;
        Ok(digests)
    })
}

/// The inactive slot's plan ([`SlotPlan`]).
pub fn slot_plan(writer: &slots::InactiveWriter) -> SlotPlan {
    let slot = writer.slot();
    let members: Vec<(String, std::path::PathBuf, u64)> = writer
        .members()
        .map(|m| {
            let (path, cap) = writer.part(m).expect("a member of this slot");
            (m.to_string(), path.to_path_buf(), cap)
        })
        .collect();
    let largest = members.iter().map(|m| m.2).max().unwrap_or(0);
    let mut bounds = Bounds::default().others(Bound::new(
        largest,
        format!("the largest part of slot {slot}"),
    ));
    for (m, path, cap) in &members {
        bounds = bounds.member(m, Bound::new(*cap, format!("its part {}", path.display())));
    }
    let budget = members
        .iter()
        .fold(0u64, |sum, m| sum.saturating_add(m.2))
        .saturating_mul(2);
    SlotPlan {
        members,
        bounds,
        budget,
    }
}

/// What the passes need of the inactive slot: its parts (member, path, capacity), the
/// archive bounds they set, and the check's budget of declared member bytes.
pub struct SlotPlan {
    pub members: Vec<(String, std::path::PathBuf, u64)>,
    pub bounds: Bounds,
    pub budget: u64,
}

/// Read `compressed` as an update archive, reading through every member in `needed` (as
/// the write pass will): the needed members found, with their sizes. At most
/// [`MAX_MEMBERS`] members whose declared sizes sum to at most `budget` bytes.
pub fn check_archive(
    compressed: impl std::io::Read,
    staged: &Path,
    bounds: &Bounds,
    needed: &[String],
    budget: u64,
) -> Result<Vec<(String, u64)>, ArchiveError> {
    let mut found: Vec<(String, u64)> = Vec::new();
    let mut buf = vec![0u8; slots::BUFFER];
    let (mut count, mut declared) = (0usize, 0u64);
    archive::for_each_member_of(compressed, staged, bounds, |name, size, reader| {
        count += 1;
        declared = declared.saturating_add(size);
        if count > MAX_MEMBERS || declared > budget {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "more than {MAX_MEMBERS} members or {budget} bytes of members (at member \
                     {count}, `{}`): not an update archive for these slots",
                    name.escape_debug()
                ),
            ));
        }
        if needed.iter().any(|m| m == name) {
            let mut left = size;
            while left > 0 {
                let n = reader.read(&mut buf[..left.min(slots::BUFFER as u64) as usize])?;
                if n == 0 {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("member `{name}` ended early"),
                    ));
                }
                left -= n as u64;
            }
            found.push((name.to_string(), size));
        }
        Ok(true)
    })?;
    Ok(found)
}

/// The check pass beside the download (a [`fetch::Tap`]): the staged bytes, as they arrive,
/// go over a bounded channel to a thread that reads them as the archive
/// ([`check_archive`]), so that decompressing overlaps downloading. A restart (the staged
/// bytes dropped) starts a new thread; [`Checker::finish`] ends the stream and gives the
/// result, which counts only once the download's length and sha256 were checked.
pub struct Checker {
    needed: Vec<String>,
    bounds: Bounds,
    budget: u64,
    staged: std::path::PathBuf,
    run: Option<CheckRun>,
}

pub type CheckResult = Result<Vec<(String, u64)>, ArchiveError>;

struct CheckRun {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    thread: std::thread::JoinHandle<CheckResult>,
}

/// The checking thread's input: the chunks sent, as one stream.
struct Chunks {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.current = b;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Checker {
    pub fn new(
        needed: Vec<String>,
        bounds: Bounds,
        budget: u64,
        staged: std::path::PathBuf,
    ) -> Checker {
        Checker {
            needed,
            bounds,
            budget,
            staged,
            run: None,
        }
    }

    /// The result for the bytes fed since the last restart, the stream ended there; `None`
    /// if nothing ran.
    pub fn finish(mut self) -> Option<CheckResult> {
        let run = self.run.take()?;
        drop(run.tx);
        Some(run.thread.join().unwrap_or_else(|_| {
            Err(ArchiveError::Io {
                path: self.staged.clone(),
                action: "check",
                source: std::io::Error::other("the checking thread panicked"),
            })
        }))
    }
}

impl fetch::Tap for Checker {
    fn feed(&mut self, bytes: &[u8]) {
        if self.run.is_none() {
            self.restart();
        }
        if let Some(run) = &self.run {
            // A thread that stopped (the archive is bad) has dropped its end: ignored here,
            // its error comes with finish.
            let _ = run.tx.send(bytes.to_vec());
        }
    }

    fn restart(&mut self) {
        if let Some(run) = self.run.take() {
            drop(run.tx);
            let _ = run.thread.join();
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let (needed, bounds, staged, budget) = (
            self.needed.clone(),
            self.bounds.clone(),
            self.staged.clone(),
            self.budget,
        );
        let thread = std::thread::spawn(move || {
            let mut input = Chunks {
                rx,
                current: Vec::new(),
                at: 0,
            };
            let result = check_archive(&mut input, &staged, &bounds, &needed, budget);
            // Whatever follows the archive is read, so that the feeder never waits.
            while input.rx.recv().is_ok() {}
            result
        });
        self.run = Some(CheckRun { tx, thread });
    }
}
