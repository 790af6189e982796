//! `apply`: from the governance record to a flipped slot, in one ordered function
//! ([`apply`]):
//!
//! 0. take the store's lock ([`SlotStore::lock`]: one apply at a time), read the state
//!    again, and refuse if the inactive slot is the one that booted;
//! 1. load the record ([`crate::repo`]: tough verifies threshold, expiry, rollback);
//! 2. choose ([`crate::choose`]): the version elected for this node's wave, or the one asked
//!    for by name if and only if it is that one; a version that just failed its health gate
//!    on this node is not taken again; a pending flip to a version governance no longer
//!    elects for this node (revoked, above `max_version`) is called off before it boots;
//! 3. download into staging ([`crate::fetch`]): length and sha256 checked against the signed
//!    target, resumed and from the next mirror on failure;
//! 4. check pass, beside the download (its bytes fed to a checking thread as they arrive,
//!    the result counting only once the download's hash matched; read from the staged file
//!    when [`install`] is called on its own): the staged archive read through once (its bytes hashed again as they are
//!    read: the sha256 and length must still be the signed ones, in this pass and the next,
//!    so what is decompressed is what was signed) (zstd, then the tar members with
//!    [`plinth_release::archive`]'s strict reader, each slot member bounded by its part's
//!    size before any of it is read), every member the inactive slot needs present, each
//!    member's sha256 computed. Nothing has touched a slot yet: every refusal up to here
//!    leaves both slots and the state as they were;
//! 5. the inactive slot marked `writing`, persisted;
//! 6. write pass: each member streamed into its part of the inactive slot (never the
//!    active's: [`crate::slots::SlotStore::inactive_writer`]), fsynced, its sha256 compared
//!    with the check pass's;
//! 7. read back: each part's written bytes read again (cache dropped) and compared;
//! 8. only then marked `written` and pending with its tries (the flip), persisted in one
//!    atomic write; the staged payload removed.
//!
//! A crash anywhere leaves the active slot untouched and the state either as before, with
//! the inactive slot `writing` (not bootable; the next apply writes it again, from the
//! staged payload if it is whole) or flipped. Memory is fixed buffers plus zstd's window,
//! capped by [`plinth_release::archive`] whatever the frames ask.

use crate::choose::{self, Decision, Node, Reason, Record};
use crate::error::UpgradeError;
use crate::fetch::{self, Staging, Want};
use crate::repo::{self, RepoOptions};
use crate::slots::{self, MemberDigest, OutcomeKind, SlotStore};
use plinth_release::archive::{self, ArchiveError, Bound, Bounds};
use plinth_release::{Os, Sha256, Slot, Version};
use sha2::Digest;
use std::path::Path;

/// What the caller asks.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub repo: RepoOptions,
    pub os: Os,
    pub seed: u16,
    pub now: jiff::Timestamp,
    pub staging: Staging,
    /// Boots the new slot gets before it is given up (HostOS: systemd-boot's `+3`).
    pub tries: u8,
    /// Take this version, and only if it is the one elected for this node.
    pub version: Option<Version>,
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Nothing to take.
    Stay { current: Version, why: String },
    /// The version is already written and pending on the inactive slot.
    AlreadyPending { version: Version, slot: Slot },
    /// Written, read back and flipped: `slot` boots next, with `version`.
    Flipped {
        version: Version,
        slot: Slot,
        reason: Reason,
        timings: Timings,
    },
    /// A pending flip to `version` was called off: governance no longer elects it here.
    Cancelled {
        version: Version,
        slot: Slot,
        why: String,
    },
}

/// How long each step of a flipped apply took, in seconds (reported by `apply --json`,
/// read by the benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Loading the record (tough) and choosing.
    pub load_s: f64,
    /// The payload into staging, its length and sha256 checked.
    pub download_s: f64,
    /// The check pass (decompressed, every needed member present and hashed).
    pub check_s: f64,
    /// The write pass (decompressed into the inactive slot's parts, fsynced).
    pub write_s: f64,
    /// Every part read back and compared.
    pub read_back_s: f64,
}

/// What `check` found: the version to take, if any.
#[derive(Debug)]
pub struct Plan {
    pub loaded: repo::Loaded,
    pub record: Record,
    pub node: Node,
}

impl Plan {
    /// The decision for this node.
    pub fn decision(&self) -> Decision<'_> {
        choose::choose(&self.record, &self.node)
    }
}

/// Load the record and read this OS's part of it.
pub async fn check(
    opts: &ApplyOptions,
    store: &SlotStore,
    client: &reqwest::Client,
) -> Result<Plan, UpgradeError> {
    let current = store
        .state()
        .current()
        .cloned()
        .ok_or_else(|| UpgradeError::State {
            path: store.state_path().to_path_buf(),
            message: format!(
                "the active slot {} holds no known version",
                store.state().active
            ),
            hint: "the installer records the installed version in the slot state".into(),
        })?;
    let loaded = repo::load(&opts.repo, client).await?;
    let record = Record::read(
        loaded.repo.all_targets().map(|(n, t)| (n.raw(), t)),
        opts.os,
    )?;
    Ok(Plan {
        loaded,
        record,
        node: Node {
            os: opts.os,
            current,
            seed: opts.seed,
            now: opts.now,
        },
    })
}

/// Apply the version elected for this node (see the module doc).
pub async fn apply(opts: &ApplyOptions, store: &mut SlotStore) -> Result<Applied, UpgradeError> {
    let _lock = store.lock()?;
    store.reload()?;
    store.writable()?;
    let started = std::time::Instant::now();
    let client = repo::http_client()?;
    let plan = check(opts, store, &client).await?;
    let load_s = started.elapsed().as_secs_f64();
    let stay = |why: String| Applied::Stay {
        current: plan.node.current.clone(),
        why,
    };
    let (offer, reason) = match &opts.version {
        Some(v) => {
            let offer = choose::check_requested(&plan.record, &plan.node, v)?;
            let reason = match plan.decision() {
                Decision::Take { reason, .. } => reason,
                Decision::Stay(_) => Reason::Upgrade,
            };
            (offer, reason)
        }
        None => match plan.decision() {
            Decision::Take { offer, reason } => (offer, reason),
            Decision::Stay(s) => {
                opts.staging.clean_except(None);
                if let Some(cancelled) = cancel_pending(store, &s.to_string(), opts.now)? {
                    return Ok(cancelled);
                }
                return Ok(stay(s.to_string()));
            }
        },
    };
    let version = offer.version().clone();
    let state = store.state();
    let inactive = state.inactive();
    if let slots::Content::Written {
        version: v,
        target_sha256,
        ..
    } = state.content(inactive)
    {
        if *v == version
            && *target_sha256 == offer.artifact.sha256
            && state.pending == Some(inactive)
        {
            return Ok(Applied::AlreadyPending {
                version,
                slot: inactive,
            });
        }
    }
    if let Some(last) = &state.last {
        if last.kind == OutcomeKind::RolledBack && last.version.as_ref() == Some(&version) {
            return Ok(stay(format!(
                "{version} failed on this node ({}); waiting for another version",
                last.reason
            )));
        }
    }
    if opts.tries == 0 {
        return Err(UpgradeError::State {
            path: store.state_path().to_path_buf(),
            message: "0 tries asked for the new slot".into(),
            hint: "give it at least one boot".into(),
        });
    }
    let want = Want {
        target: offer.target.clone(),
        sha256: offer.artifact.sha256,
        length: offer.artifact.length,
        consistent: plan.loaded.repo.root().signed.consistent_snapshot,
    };
    let started = std::time::Instant::now();
    let (members, bounds) = slot_plan(&store.inactive_writer()?);
    let mut checker = Checker::new(
        members.into_iter().map(|m| m.0).collect(),
        bounds,
        opts.staging.path(&want.sha256),
    );
    let staged = fetch::download_with(
        &client,
        &plan.loaded.mirrors,
        &want,
        &opts.staging,
        &mut checker,
    )
    .await?;
    let checked = checker.finish();
    let download_s = started.elapsed().as_secs_f64();
    let why = match reason {
        Reason::Upgrade => format!("upgrade from {} to {version}", plan.node.current),
        Reason::PullBack => format!(
            "pulled back from {} to {version}: governance lowered max_version",
            plan.node.current
        ),
    };
    let timings = install_with(
        &staged, &want, &version, store, opts.tries, why, opts.now, checked,
    )?;
    let _ = std::fs::remove_file(&staged);
    Ok(Applied::Flipped {
        version,
        slot: inactive,
        reason,
        timings: Timings {
            load_s,
            download_s,
            ..timings
        },
    })
}

/// A flip still pending when governance elects nothing for this node (`why`) is called off,
/// persisted, before the node can boot into it.
fn cancel_pending(
    store: &mut SlotStore,
    why: &str,
    now: jiff::Timestamp,
) -> Result<Option<Applied>, UpgradeError> {
    let Some(slot) = store.state().pending else {
        return Ok(None);
    };
    let Some(version) = store.state().content(slot).version().cloned() else {
        return Ok(None);
    };
    let reason = format!("governance no longer elects {version} for this node: {why}");
    store.update(|s| s.cancel(reason.clone(), now))?;
    store.persist()?;
    Ok(Some(Applied::Cancelled {
        version,
        slot,
        why: reason,
    }))
}

/// The staged payload, read once from its start with its bytes hashed as they go, so that a
/// pass can prove it read exactly the signed bytes ([`Hashed::finish`]).
struct Hashed {
    file: std::fs::File,
    hasher: sha2::Sha256,
    length: u64,
}

impl Hashed {
    fn open(staged: &Path) -> Result<Hashed, UpgradeError> {
        Ok(Hashed {
            file: plinth_release::untrusted::open_untrusted(staged)
                .map_err(UpgradeError::io(staged, "open the staged payload"))?,
            hasher: sha2::Sha256::new(),
            length: 0,
        })
    }

    /// Read what the archive reader left (padding past the end of the archive), then
    /// compare the whole with the signed target.
    fn finish(mut self, staged: &Path, want: &Want) -> Result<(), UpgradeError> {
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
fn write_pass(
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

/// The inactive slot's parts (member, path, capacity) and the archive bounds they set.
fn slot_plan(writer: &slots::InactiveWriter) -> (Vec<(String, std::path::PathBuf, u64)>, Bounds) {
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
    (members, bounds)
}

/// Read `compressed` as an update archive, reading through every member in `needed` (as
/// the write pass will): the needed members found, with their sizes.
fn check_archive(
    compressed: impl std::io::Read,
    staged: &Path,
    bounds: &Bounds,
    needed: &[String],
) -> Result<Vec<(String, u64)>, ArchiveError> {
    let mut found: Vec<(String, u64)> = Vec::new();
    let mut buf = vec![0u8; slots::BUFFER];
    archive::for_each_member_of(compressed, staged, bounds, |name, size, reader| {
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
struct Checker {
    needed: Vec<String>,
    bounds: Bounds,
    staged: std::path::PathBuf,
    run: Option<CheckRun>,
}

type CheckResult = Result<Vec<(String, u64)>, ArchiveError>;

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
    fn new(needed: Vec<String>, bounds: Bounds, staged: std::path::PathBuf) -> Checker {
        Checker {
            needed,
            bounds,
            staged,
            run: None,
        }
    }

    /// The result for the bytes fed since the last restart, the stream ended there; `None`
    /// if nothing ran.
    fn finish(mut self) -> Option<CheckResult> {
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
        let (needed, bounds, staged) = (
            self.needed.clone(),
            self.bounds.clone(),
            self.staged.clone(),
        );
        let thread = std::thread::spawn(move || {
            let mut input = Chunks {
                rx,
                current: Vec::new(),
                at: 0,
            };
            let result = check_archive(&mut input, &staged, &bounds, &needed);
            // Whatever follows the archive is read, so that the feeder never waits.
            while input.rx.recv().is_ok() {}
            result
        });
        self.run = Some(CheckRun { tx, thread });
    }
}

/// Steps 4 to 8 of the module doc, from a staged payload whose sha256 was checked; the
/// time of the check, write and read-back passes.
pub fn install(
    staged: &Path,
    want: &Want,
    version: &Version,
    store: &mut SlotStore,
    tries: u8,
    why: String,
    now: jiff::Timestamp,
) -> Result<Timings, UpgradeError> {
    install_with(staged, want, version, store, tries, why, now, None)
}

/// [`install`], with the check pass's result when it ran beside the download.
#[allow(clippy::too_many_arguments)]
fn install_with(
    staged: &Path,
    want: &Want,
    version: &Version,
    store: &mut SlotStore,
    tries: u8,
    why: String,
    now: jiff::Timestamp,
    checked: Option<CheckResult>,
) -> Result<Timings, UpgradeError> {
    let mut timings = Timings::default();
    let mut started = std::time::Instant::now();
    let mut writer = store.inactive_writer()?;
    let slot = writer.slot();
    let (members, bounds) = slot_plan(&writer);
    let too_large = |e: ArchiveError| match e {
        ArchiveError::TooLarge {
            name,
            declared,
            limit,
            ..
        } if members.iter().any(|m| m.0 == name) => {
            let path = &members.iter().find(|m| m.0 == name).expect("found").1;
            slots::too_small(path, &name, declared, limit)
        }
        e => e.into(),
    };

    // 4. Check pass: the archive read through as the write pass will read it (every
    // member the slot needs present, within its part), the payload hashed again; or its
    // result from beside the download.
    let needed: Vec<String> = members.iter().map(|m| m.0.clone()).collect();
    let found = match checked {
        Some(result) => result.map_err(too_large)?,
        None => {
            let mut payload = Hashed::open(staged)?;
            let found = check_archive(&mut payload, staged, &bounds, &needed).map_err(too_large)?;
            payload.finish(staged, want)?;
            found
        }
    };
    for (m, path, _) in &members {
        if !found.iter().any(|(f, _)| f == m) {
            return Err(UpgradeError::MissingMember {
                target: want.target.clone(),
                member: m.clone(),
                slot,
                path: path.clone(),
            });
        }
    }

    timings.check_s = started.elapsed().as_secs_f64();
    started = std::time::Instant::now();

    // 5. The inactive slot is no longer bootable.
    store.update(|s| {
        s.begin_write(version.clone());
        Ok(())
    })?;
    store.persist()?;

    // 6. Write pass: one thread reads the staged payload (hashing it), decompresses and
    // splits it into members, and hands each needed member's bytes over a bounded channel;
    // this one writes them to their parts (hashing them) and fsyncs, so decompressing and
    // writing overlap.
    let digests = write_pass(staged, want, &bounds, &mut writer, &too_large)?;
    drop(writer);

    timings.write_s = started.elapsed().as_secs_f64();
    started = std::time::Instant::now();

    // 7. Read back.
    for d in &digests {
        let path = &members
            .iter()
            .find(|m| m.0 == d.member)
            .expect("a member")
            .1;
        let found = SlotStore::read_back(path, d.length)?;
        if found != d.sha256 {
            return Err(UpgradeError::ReadBack {
                path: path.clone(),
                member: d.member.clone(),
                length: d.length,
                expected: d.sha256.to_string(),
                found: found.to_string(),
            });
        }
    }

    timings.read_back_s = started.elapsed().as_secs_f64();

    // 8. The flip.
    store.update(|s| {
        s.written(want.sha256, digests.clone())?;
        s.flip(tries, why, now)
    })?;
    store.persist()?;
    Ok(timings)
}
