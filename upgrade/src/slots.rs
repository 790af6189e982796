//! The two update slots (A and B) and the small state that says what is on them.
//!
//! A slot is a list of parts ([`Part`]), each a regular file or a block device given by the
//! caller (HostOS: its root and verity partitions and its UKI's file on the ESP; a test:
//! preallocated files), written with one member of the update archive (`root.img`,
//! `verity.img`, `host-os-b.efi`). A part is written in place from its first byte and never
//! grown: its capacity is its size (a file's length, a device's size).
//!
//! The state ([`State`], one JSON file on the state partition) names the active slot (the
//! one booted and committed), what each slot holds ([`Content`]), the slot pending a trial
//! boot and its tries left, and the last outcome and why. Its transitions are methods on
//! [`State`] that touch nothing; [`SlotStore::persist`] writes it atomically (a temporary
//! file beside it, fsync, rename, fsync of the directory), so a crash leaves the old state
//! or the new one. An upgrade goes: inactive slot marked `writing` → persist → stream →
//! fsync → read back → marked `written` and pending → persist (the flip).
//!
//! Positions (A/B) and roles (active/inactive) stay apart: the writer ([`InactiveWriter`])
//! can only be had for the inactive slot ([`SlotStore::inactive_writer`]); there is no way
//! to open a part of the active slot for writing, and a layout whose slots share a part
//! (the same file or device, by any path) is refused. The state file alone does not decide
//! what is safe to write: the caller gives the slot that actually booted (`plinth.slot=` on
//! the kernel command line, [`SlotStore::with_booted`]), and the slot running is never the
//! one written, whatever the file says (a trial boot of the pending slot, or a fall-back the
//! file has not recorded yet); a block-device part is opened with `O_EXCL`, so the kernel
//! refuses one that is mounted or mapped. One writer at a time: [`SlotStore::lock`] takes an
//! exclusive lock beside the state file, held for a whole apply.

use crate::error::UpgradeError;
use plinth_release::{Sha256, Slot, Version};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The state file format this plinth writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest state file read.
pub const MAX_STATE_SIZE: u64 = 64 << 10;
/// The buffer of every slot read and write.
pub const BUFFER: usize = 1 << 20;
/// The most parts a slot may have.
pub const MAX_PARTS: usize = 16;

/// One part of a slot: the archive member written to it, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub member: String,
    pub path: PathBuf,
}

/// The parts of both slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub a: Vec<Part>,
    pub b: Vec<Part>,
}

impl Layout {
    pub fn parts(&self, slot: Slot) -> &[Part] {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// Check the layout: 1 to [`MAX_PARTS`] parts a slot, member names as archives allow
    /// and each once a slot, every part an existing regular file or block device, and no
    /// file or device in both slots or twice in one.
    pub fn check(&self) -> Result<(), UpgradeError> {
        let mut seen: Vec<(u64, u64, PathBuf)> = Vec::new();
        for slot in Slot::ALL {
            let parts = self.parts(slot);
            if parts.is_empty() || parts.len() > MAX_PARTS {
                return Err(UpgradeError::Layout {
                    path: PathBuf::from(slot.as_str()),
                    message: format!("slot {slot} has {} parts", parts.len()),
                    hint: format!("give each slot 1 to {MAX_PARTS} parts"),
                });
            }
            for (i, p) in parts.iter().enumerate() {
                let bad = |message: String, hint: &str| UpgradeError::Layout {
                    path: p.path.clone(),
                    message,
                    hint: hint.into(),
                };
                plinth_release::archive::check_name(&p.member).map_err(|why| {
                    bad(
                        format!(
                            "slot {slot}'s member name `{}` {why}",
                            p.member.escape_debug()
                        ),
                        "name the archive member (root.img, verity.img, <os>-a.efi)",
                    )
                })?;
                if parts[..i].iter().any(|q| q.member == p.member) {
                    return Err(bad(
                        format!("member `{}` twice in slot {slot}", p.member),
                        "each member goes to one part",
                    ));
                }
                let meta = std::fs::metadata(&p.path).map_err(|e| {
                    bad(
                        format!("slot {slot}'s part cannot be opened: {e}"),
                        "create the slot's parts (partitions, or preallocated files) first",
                    )
                })?;
                let id = part_id(&meta).ok_or_else(|| {
                    bad(
                        format!("slot {slot}'s part is neither a regular file nor a block device"),
                        "a part is a partition or a preallocated file",
                    )
                })?;
                if let Some((_, _, other)) = seen.iter().find(|(a, b, _)| (*a, *b) == id) {
                    return Err(bad(
                        format!("the same file or device as {}", other.display()),
                        "slots A and B must not share a part: writing one would write the other",
                    ));
                }
                seen.push((id.0, id.1, p.path.clone()));
            }
        }
        Ok(())
    }
}

/// What identifies a part's storage: (device, inode) of a file, (0, rdev) of a block device.
fn part_id(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    if meta.file_type().is_block_device() {
        Some((0, meta.rdev()))
    } else if meta.file_type().is_file() {
        Some((meta.dev(), meta.ino()))
    } else {
        None
    }
}

/// A member written to a part: what read-back and a later boot check compare with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberDigest {
    pub member: String,
    pub length: u64,
    pub sha256: Sha256,
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "condition", rename_all = "snake_case", deny_unknown_fields)]
pub enum Content {
    /// Nothing known to be usable.
    Empty,
    /// Installed by other means (the installer), with this version.
    Installed { version: Version },
    /// Being written with `version`: not bootable until `written`.
    Writing { version: Version },
    /// Written with `version`, fsynced and read back.
    Written {
        version: Version,
        target_sha256: Sha256,
        members: Vec<MemberDigest>,
    },
}

impl Content {
    pub fn version(&self) -> Option<&Version> {
        match self {
            Content::Empty => None,
            Content::Installed { version }
            | Content::Writing { version }
            | Content::Written { version, .. } => Some(version),
        }
    }
}

/// What happened last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutcomeKind {
    /// The state was created.
    Initialized,
    /// A version was written and its slot made pending.
    Applied,
    /// The pending slot booted and passed the health gate: it is active.
    Committed,
    /// The pending slot failed: the active slot stays.
    RolledBack,
    /// A pending flip was called off before its boot: governance no longer elects its
    /// version for this node (revoked, above `max_version`, or another one elected).
    Cancelled,
}

/// The last outcome, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    pub kind: OutcomeKind,
    pub slot: Slot,
    pub version: Option<Version>,
    pub reason: String,
    pub at: jiff::Timestamp,
}

/// The most failed versions a state remembers; the oldest is forgotten first.
pub const MAX_FAILED: usize = 16;

/// The longest failure reason kept (the state file is read with a size cap).
pub const MAX_REASON: usize = 512;

/// A version whose trial boot failed on this node: it is not applied again unless asked for
/// by name, or until governance publishes other bytes for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub version: Version,
    /// The sha256 of the update archive that failed, when the slot recorded it.
    #[serde(default)]
    pub target_sha256: Option<Sha256>,
    pub reason: String,
    pub at: jiff::Timestamp,
}

/// `reason` cut to [`MAX_REASON`] bytes, at a character boundary.
fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// The slot state. Fields it does not know are ignored (not refused), so that an older agent
/// (after a fall-back to an older slot) reads what a newer one wrote; a change an older agent
/// must not ignore raises [`FORMAT_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    /// The slot booted and committed.
    pub active: Slot,
    pub a: Content,
    pub b: Content,
    /// The slot to try on the next boot, if any (never the active one).
    pub pending: Option<Slot>,
    /// Boots left for the pending slot before it is given up.
    pub tries_left: u8,
    pub last: Option<Outcome>,
    /// The versions that failed here, oldest first (at most [`MAX_FAILED`]): whatever
    /// happens after (another version's outcome), none is applied again by itself.
    #[serde(default)]
    pub failed: Vec<Failure>,
}

/// A transition its state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Transition(pub String);

impl State {
    /// A node whose `active` slot holds `version` and whose other slot is empty.
    pub fn new(active: Slot, version: Version, now: jiff::Timestamp) -> State {
        let mut s = State {
            format_version: FORMAT_VERSION,
            active,
            a: Content::Empty,
            b: Content::Empty,
            pending: None,
            tries_left: 0,
            last: Some(Outcome {
                kind: OutcomeKind::Initialized,
                slot: active,
                version: Some(version.clone()),
                reason: "state created".into(),
                at: now,
            }),
            failed: Vec::new(),
        };
        *s.content_mut(active) = Content::Installed { version };
        s
    }

    pub fn inactive(&self) -> Slot {
        self.active.other()
    }

    pub fn content(&self, slot: Slot) -> &Content {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    fn content_mut(&mut self, slot: Slot) -> &mut Content {
        match slot {
            Slot::A => &mut self.a,
            Slot::B => &mut self.b,
        }
    }

    /// The version running (on the active slot).
    pub fn current(&self) -> Option<&Version> {
        self.content(self.active).version()
    }

    /// The inactive slot is about to be written with `version`: it is no longer bootable,
    /// and a pending flip to it is cancelled.
    pub fn begin_write(&mut self, version: Version) {
        let slot = self.inactive();
        if self.pending == Some(slot) {
            self.pending = None;
            self.tries_left = 0;
        }
        *self.content_mut(slot) = Content::Writing { version };
    }

    /// The inactive slot was written, fsynced and read back.
    pub fn written(
        &mut self,
        target_sha256: Sha256,
        members: Vec<MemberDigest>,
    ) -> Result<(), Transition> {
        let slot = self.inactive();
        let Content::Writing { version } = self.content(slot).clone() else {
            return Err(Transition(format!(
                "slot {slot} is not being written, so it cannot be marked written"
            )));
        };
        *self.content_mut(slot) = Content::Written {
            version,
            target_sha256,
            members,
        };
        Ok(())
    }

    /// Flip: the written inactive slot becomes pending with `tries` boots.
    pub fn flip(
        &mut self,
        tries: u8,
        reason: String,
        now: jiff::Timestamp,
    ) -> Result<(), Transition> {
        let slot = self.inactive();
        let Content::Written { version, .. } = self.content(slot) else {
            return Err(Transition(format!(
                "slot {slot} is not written and read back, so it cannot be flipped to"
            )));
        };
        if tries == 0 {
            return Err(Transition("a flip needs at least one try".into()));
        }
        self.last = Some(Outcome {
            kind: OutcomeKind::Applied,
            slot,
            version: Some(version.clone()),
            reason,
            at: now,
        });
        self.pending = Some(slot);
        self.tries_left = tries;
        Ok(())
    }

    /// Call off the pending flip before it boots (`reason`: why governance no longer wants
    /// it): the slot keeps its written bytes but is no longer pending.
    pub fn cancel(&mut self, reason: String, now: jiff::Timestamp) -> Result<(), Transition> {
        self.end_pending(OutcomeKind::Cancelled, "called off", reason, now)
    }

    /// The pending slot is no longer pending, for `reason`, recorded as `kind`.
    fn end_pending(
        &mut self,
        kind: OutcomeKind,
        what: &str,
        reason: String,
        now: jiff::Timestamp,
    ) -> Result<(), Transition> {
        let Some(slot) = self.pending else {
            return Err(Transition(format!(
                "no slot is pending, so none can be {what}"
            )));
        };
        self.last = Some(Outcome {
            kind,
            slot,
            version: self.content(slot).version().cloned(),
            reason,
            at: now,
        });
        self.pending = None;
        self.tries_left = 0;
        Ok(())
    }

    /// The pending slot booted and passed the health gate: it becomes active.
    pub fn commit(&mut self, now: jiff::Timestamp) -> Result<(), Transition> {
        let Some(slot) = self.pending else {
            return Err(Transition(
                "no slot is pending, so none can be committed".into(),
            ));
        };
        self.active = slot;
        self.pending = None;
        self.tries_left = 0;
        // It failed before, and now it runs: no longer a failure.
        if let Some(version) = self.content(slot).version().cloned() {
            self.failed.retain(|f| f.version != version);
        }
        self.last = Some(Outcome {
            kind: OutcomeKind::Committed,
            slot,
            version: self.content(slot).version().cloned(),
            reason: "booted and passed the health gate".into(),
            at: now,
        });
        Ok(())
    }

    /// A boot of the pending slot is starting: one try fewer; `false` when none was left
    /// (the caller then rolls back).
    pub fn take_try(&mut self) -> bool {
        if self.pending.is_none() || self.tries_left == 0 {
            return false;
        }
        self.tries_left -= 1;
        true
    }

    /// The pending slot failed (`reason`: "health gate failed: plinth-guest.service"): the
    /// active slot stays, the failed one is no longer pending.
    pub fn roll_back(&mut self, reason: String, now: jiff::Timestamp) -> Result<(), Transition> {
        let reason = bounded(reason);
        let failed = self.pending.map(|p| self.content(p).clone());
        self.end_pending(OutcomeKind::RolledBack, "rolled back", reason.clone(), now)?;
        if let Some(version) = failed.as_ref().and_then(Content::version).cloned() {
            let target_sha256 = match failed {
                Some(Content::Written { target_sha256, .. }) => Some(target_sha256),
                _ => None,
            };
            self.failed.retain(|f| f.version != version);
            self.failed.push(Failure {
                version,
                target_sha256,
                reason,
                at: now,
            });
            let over = self.failed.len().saturating_sub(MAX_FAILED);
            self.failed.drain(..over);
        }
        Ok(())
    }

    /// How `version` with the archive `sha256` failed here, if it did (other bytes published
    /// for the version since are not that failure).
    pub fn failure(&self, version: &Version, sha256: &Sha256) -> Option<&Failure> {
        self.failed
            .iter()
            .find(|f| &f.version == version && f.target_sha256.as_ref().is_none_or(|s| s == sha256))
    }
}

/// The slots and their state file.
#[derive(Debug)]
pub struct SlotStore {
    layout: Layout,
    state_path: PathBuf,
    state: State,
    booted: Option<Slot>,
}

/// The exclusive lock of a store's writer ([`SlotStore::lock`]); released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _lock: nix::fcntl::Flock<File>,
}

impl SlotStore {
    /// Open the store whose state is at `state_path`; without a state file there, create
    /// one from `initial` (the installer's knowledge: which slot is active, with which
    /// version).
    pub fn open_or_init(
        layout: Layout,
        state_path: &Path,
        initial: impl FnOnce() -> State,
    ) -> Result<SlotStore, UpgradeError> {
        layout.check()?;
        let state = match read_state(state_path)? {
            Some(s) => s,
            None => {
                let s = initial();
                write_state(state_path, &s)?;
                s
            }
        };
        Ok(SlotStore {
            layout,
            state_path: state_path.to_path_buf(),
            state,
            booted: None,
        })
    }

    /// Open the store; its state file must exist.
    pub fn open(layout: Layout, state_path: &Path) -> Result<SlotStore, UpgradeError> {
        layout.check()?;
        let state = read_state(state_path)?.ok_or_else(|| UpgradeError::State {
            path: state_path.to_path_buf(),
            message: "no slot state file".into(),
            hint: "the installer creates it; `upgrade status` cannot guess which slot is active"
                .into(),
        })?;
        Ok(SlotStore {
            layout,
            state_path: state_path.to_path_buf(),
            state,
            booted: None,
        })
    }

    /// The slot that booted (from `plinth.slot=` on the kernel command line): it is never
    /// written, whatever the state file says. `None` where no slot booted (a test of files,
    /// or an installer writing both).
    pub fn with_booted(mut self, booted: Option<Slot>) -> SlotStore {
        self.booted = booted;
        self
    }

    pub fn booted(&self) -> Option<Slot> {
        self.booted
    }

    /// Take the store's exclusive lock (a file beside the state file), without waiting: one
    /// apply at a time, so that two runs never write the inactive slot or the staging
    /// directory together, nor persist each other's stale state. Re-read the state
    /// ([`SlotStore::reload`]) once it is held.
    pub fn lock(&self) -> Result<StoreLock, UpgradeError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.lock_path();
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(UpgradeError::io(&path, "open the lock file"))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(StoreLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(UpgradeError::Busy { path }),
            Err((_, e)) => Err(UpgradeError::io(&path, "lock")(e.into())),
        }
    }

    fn lock_path(&self) -> PathBuf {
        let name = self
            .state_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "state".into());
        self.state_path.with_file_name(format!(".{name}.lock"))
    }

    /// Read the state file again (after taking the lock: another run may have changed it).
    pub fn reload(&mut self) -> Result<(), UpgradeError> {
        self.state = read_state(&self.state_path)?.ok_or_else(|| UpgradeError::State {
            path: self.state_path.clone(),
            message: "the slot state file is gone".into(),
            hint: "the installer creates it; restore it from the boot loader's view of the slots"
                .into(),
        })?;
        Ok(())
    }

    /// The inactive slot, if it may be written: not the slot that booted.
    pub fn writable(&self) -> Result<Slot, UpgradeError> {
        let slot = self.state.inactive();
        match self.booted {
            Some(b) if b == slot => {
                let why = if self.state.pending == Some(b) {
                    format!(
                        "slot {b} is on its trial boot ({} tries left): it is committed when it \
                         passes the health gate, or given up for slot {}",
                        self.state.tries_left,
                        b.other()
                    )
                } else {
                    format!(
                        "slot {b} booted, but the state file names slot {} as active (a \
                         fall-back by the boot loader the state has not recorded yet?)",
                        self.state.active
                    )
                };
                Err(UpgradeError::SlotInUse {
                    path: self.state_path.clone(),
                    slot: b,
                    why,
                })
            }
            _ => Ok(slot),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub fn state_path(&self) -> &Path {
        &self.state_path
    }

    /// Apply a transition in memory; nothing is written until [`SlotStore::persist`].
    pub fn update<T>(
        &mut self,
        f: impl FnOnce(&mut State) -> Result<T, Transition>,
    ) -> Result<T, UpgradeError> {
        let mut next = self.state.clone();
        let out = f(&mut next).map_err(|t| UpgradeError::State {
            path: self.state_path.clone(),
            message: t.0,
            hint: "nothing was changed".into(),
        })?;
        self.state = next;
        Ok(out)
    }

    /// Write the state atomically.
    pub fn persist(&self) -> Result<(), UpgradeError> {
        write_state(&self.state_path, &self.state)
    }

    /// Open the inactive slot's parts for writing. Only the inactive slot's: the active
    /// slot's parts are never opened for writing.
    /// A block-device part is opened with `O_EXCL`: Linux refuses (EBUSY) a device that is
    /// mounted, mapped (dm-verity) or otherwise claimed, such as the running root.
    pub fn inactive_writer(&self) -> Result<InactiveWriter, UpgradeError> {
        use std::os::unix::fs::OpenOptionsExt;
        let slot = self.writable()?;
        self.layout.check()?;
        let mut parts = Vec::new();
        for p in self.layout.parts(slot) {
            let block = std::fs::metadata(&p.path)
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false);
            let file = File::options()
                .write(true)
                .custom_flags(if block { nix::libc::O_EXCL } else { 0 })
                .open(&p.path)
                .map_err(|e| {
                    if e.raw_os_error() == Some(nix::libc::EBUSY) {
                        UpgradeError::SlotInUse {
                            path: p.path.clone(),
                            slot,
                            why: "the device is in use (mounted, mapped or claimed): it is not \
                                  an inactive slot's part"
                                .into(),
                        }
                    } else {
                        UpgradeError::io(&p.path, "open for writing")(e)
                    }
                })?;
            let capacity = capacity(&file, &p.path)?;
            parts.push(OpenPart {
                part: p.clone(),
                file,
                capacity,
            });
        }
        Ok(InactiveWriter { slot, parts })
    }

    /// The sha256 of the first `length` bytes of `part`, read (never written) with a fixed
    /// buffer, after asking the kernel to drop its cached pages so the disk is read.
    pub fn read_back(part: &Path, length: u64) -> Result<Sha256, UpgradeError> {
        let mut file = File::open(part).map_err(UpgradeError::io(part, "open for reading"))?;
        let _ = nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        let mut hasher = sha2::Sha256::new();
        let mut buf = vec![0u8; BUFFER];
        let mut left = length;
        while left > 0 {
            let n = (left.min(BUFFER as u64)) as usize;
            file.read_exact(&mut buf[..n])
                .map_err(UpgradeError::io(part, "read back"))?;
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(Sha256(hasher.finalize().into()))
    }
}

/// The size of a regular file or block device.
fn capacity(file: &File, path: &Path) -> Result<u64, UpgradeError> {
    let meta = file.metadata().map_err(UpgradeError::io(path, "stat"))?;
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    if meta.file_type().is_block_device() {
        let mut f = file;
        return f
            .seek(SeekFrom::End(0))
            .map_err(UpgradeError::io(path, "find the size of"));
    }
    Err(UpgradeError::Layout {
        path: path.to_path_buf(),
        message: "neither a regular file nor a block device".into(),
        hint: "a part is a partition or a preallocated file".into(),
    })
}

struct OpenPart {
    part: Part,
    file: File,
    capacity: u64,
}

/// The inactive slot's parts, open for writing.
pub struct InactiveWriter {
    slot: Slot,
    parts: Vec<OpenPart>,
}

impl InactiveWriter {
    pub fn slot(&self) -> Slot {
        self.slot
    }

    /// The part `member` goes to, and its capacity.
    pub fn part(&self, member: &str) -> Option<(&Path, u64)> {
        self.parts
            .iter()
            .find(|p| p.part.member == member)
            .map(|p| (p.part.path.as_path(), p.capacity))
    }

    /// The members this slot needs.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|p| p.part.member.as_str())
    }

    /// Write `size` bytes of `member` from `reader` to the start of its part, with a fixed
    /// buffer, then fsync the part; returns their sha256. A member larger than its part is
    /// refused before anything is written.
    pub fn write_member(
        &mut self,
        member: &str,
        size: u64,
        reader: &mut dyn Read,
        buf: &mut [u8],
    ) -> Result<Sha256, UpgradeError> {
        let p = self
            .parts
            .iter_mut()
            .find(|p| p.part.member == member)
            .expect("callers write only members of this slot");
        let path = p.part.path.clone();
        if size > p.capacity {
            return Err(too_small(&path, member, size, p.capacity));
        }
        let mut hasher = sha2::Sha256::new();
        let mut pos = 0u64;
        while pos < size {
            let want = ((size - pos).min(buf.len() as u64)) as usize;
            let n = reader
                .read(&mut buf[..want])
                .map_err(UpgradeError::io(&path, "read the member for"))?;
            if n == 0 {
                return Err(UpgradeError::Io {
                    path,
                    action: "write",
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("member `{member}` ended after {pos} of {size} bytes"),
                    ),
                });
            }
            p.file
                .write_all_at(&buf[..n], pos)
                .map_err(UpgradeError::io(&path, "write"))?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        p.file.flush().map_err(UpgradeError::io(&path, "flush"))?;
        p.file
            .sync_all()
            .map_err(UpgradeError::io(&path, "fsync"))?;
        Ok(Sha256(hasher.finalize().into()))
    }
}

/// A part too small for its member.
pub fn too_small(path: &Path, member: &str, size: u64, capacity: u64) -> UpgradeError {
    UpgradeError::NoSpace {
        path: path.to_path_buf(),
        what: format!("member `{member}` is larger than this slot part"),
        needed: size,
        available: capacity,
        hint: "the release does not fit this node's partitions; it needs a reinstall with a newer layout".into(),
    }
}

/// The state at `path`, if there is one.
fn read_state(path: &Path) -> Result<Option<State>, UpgradeError> {
    let bytes = match plinth_release::untrusted::read_untrusted(path, MAX_STATE_SIZE) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(UpgradeError::io(path, "read the slot state")(e)),
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| UpgradeError::State {
        path: path.to_path_buf(),
        message: format!("not a slot state: line {} column {}: {e}", e.line(), e.column()),
        hint: "it is written only by the upgrade agent, atomically; restore it from the boot loader's view of the slots".into(),
    })?;
    if state.format_version != FORMAT_VERSION {
        return Err(UpgradeError::State {
            path: path.to_path_buf(),
            message: format!(
                "format_version {}, this plinth reads {FORMAT_VERSION}",
                state.format_version
            ),
            hint: "a newer agent wrote it; boot that version".into(),
        });
    }
    if state.pending == Some(state.active) {
        return Err(UpgradeError::State {
            path: path.to_path_buf(),
            message: format!("slot {} is both active and pending", state.active),
            hint: "the file was altered; it is written only by the upgrade agent".into(),
        });
    }
    Ok(Some(state))
}

/// Write `state` to `path` atomically and durably ([`plinth_release::atomic`]), mode 0600.
fn write_state(path: &Path, state: &State) -> Result<(), UpgradeError> {
    let mut bytes = serde_json::to_vec_pretty(state).expect("state serializes");
    bytes.push(b'\n');
    plinth_release::atomic::write_atomic(path, &bytes, 0o600)
        .map_err(UpgradeError::io(path, "replace"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-02-01T00:00:00Z".parse().unwrap()
    }

    fn layout(dir: &Path) -> Layout {
        let part = |name: &str, member: &str| {
            let path = dir.join(name);
            std::fs::write(&path, vec![0u8; 4096]).unwrap();
            Part {
                member: member.into(),
                path,
            }
        };
        Layout {
            a: vec![part("root-a", "root.img")],
            b: vec![part("root-b", "root.img")],
        }
    }

    #[test]
    fn transitions_follow_the_order_and_refuse_the_rest() {
        let mut s = State::new(Slot::A, "1.0.0".parse().unwrap(), now());
        assert_eq!(s.current().unwrap().as_str(), "1.0.0");
        assert!(s.flip(3, "x".into(), now()).is_err(), "flip before written");
        assert!(
            s.written(Sha256::of(b""), vec![]).is_err(),
            "written before writing"
        );
        s.begin_write("1.1.0".parse().unwrap());
        s.written(Sha256::of(b"t"), vec![]).unwrap();
        assert!(s.flip(0, "x".into(), now()).is_err());
        s.flip(3, "upgrade".into(), now()).unwrap();
        assert_eq!((s.pending, s.tries_left), (Some(Slot::B), 3));
        // Rewriting the inactive slot cancels its pending flip.
        let mut again = s.clone();
        again.begin_write("1.2.0".parse().unwrap());
        assert_eq!(again.pending, None);
        // Tries run out, then roll back.
        assert!(s.take_try() && s.take_try() && s.take_try());
        assert!(!s.take_try());
        s.roll_back("health gate failed: plinth-guest.service".into(), now())
            .unwrap();
        assert_eq!((s.active, s.pending), (Slot::A, None));
        assert_eq!(s.last.as_ref().unwrap().kind, OutcomeKind::RolledBack);
        assert_eq!(
            s.failure(&"1.1.0".parse().unwrap(), &Sha256::of(b"t"))
                .unwrap()
                .reason,
            "health gate failed: plinth-guest.service"
        );
        // Other bytes for the version are not the failure.
        assert!(s
            .failure(&"1.1.0".parse().unwrap(), &Sha256::of(b"u"))
            .is_none());
        assert!(s.commit(now()).is_err());
        // Or commit: it no longer counts as failed.
        s.flip(3, "retry".into(), now()).unwrap();
        s.commit(now()).unwrap();
        assert!(s.failed.is_empty());
        assert_eq!(
            (s.active, s.current().unwrap().as_str()),
            (Slot::B, "1.1.0")
        );
    }

    #[test]
    fn failed_versions_are_remembered_past_later_outcomes_and_bounded() {
        let mut s = State::new(Slot::A, "1.0.0".parse().unwrap(), now());
        let fail = |s: &mut State, v: &str| {
            s.begin_write(v.parse().unwrap());
            s.written(Sha256::of(v.as_bytes()), vec![]).unwrap();
            s.flip(1, "upgrade".into(), now()).unwrap();
            s.roll_back(format!("{v} did not boot {}", "é".repeat(400)), now())
                .unwrap();
        };
        let failed = |s: &State, v: &str| {
            s.failure(&v.parse().unwrap(), &Sha256::of(v.as_bytes()))
                .cloned()
        };
        fail(&mut s, "1.1.0");
        fail(&mut s, "1.2.0");
        // Another outcome after: a flip called off.
        s.begin_write("1.3.0".parse().unwrap());
        s.written(Sha256::of(b"3"), vec![]).unwrap();
        s.flip(1, "upgrade".into(), now()).unwrap();
        s.cancel("revoked".into(), now()).unwrap();
        assert_eq!(s.last.as_ref().unwrap().kind, OutcomeKind::Cancelled);
        assert!(failed(&s, "1.1.0").is_some());
        assert!(failed(&s, "1.2.0").is_some());
        assert!(failed(&s, "1.3.0").is_none());
        // Reasons are bounded, at a character boundary.
        let reason = failed(&s, "1.1.0").unwrap().reason;
        assert!(reason.len() <= MAX_REASON && reason.len() > MAX_REASON - 2);
        // A version failing twice is one entry; past the bound the oldest goes.
        fail(&mut s, "1.1.0");
        assert_eq!(s.failed.len(), 2);
        for minor in 10..10 + MAX_FAILED {
            fail(&mut s, &format!("1.{minor}.0"));
        }
        assert_eq!(s.failed.len(), MAX_FAILED);
        assert!(failed(&s, "1.2.0").is_none());
        // An older state file, without the list, reads as none failed; a newer one's fields
        // this agent does not know are ignored.
        let mut json: serde_json::Value = serde_json::to_value(&s).unwrap();
        json.as_object_mut().unwrap().remove("failed");
        let old: State = serde_json::from_value(json.clone()).unwrap();
        assert!(old.failed.is_empty());
        json["a_later_field"] = serde_json::json!({"x": 1});
        let newer: State = serde_json::from_value(json).unwrap();
        assert_eq!(newer, old);
    }

    #[test]
    fn state_persists_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("slots.json");
        let l = layout(dir.path());
        let mut store = SlotStore::open_or_init(l.clone(), &state, || {
            State::new(Slot::A, "1.0.0".parse().unwrap(), now())
        })
        .unwrap();
        store
            .update(|s| {
                s.begin_write("2.0.0".parse().unwrap());
                Ok(())
            })
            .unwrap();
        // In memory only until persisted.
        assert_eq!(
            SlotStore::open(l.clone(), &state).unwrap().state().b,
            Content::Empty
        );
        store.persist().unwrap();
        let back = SlotStore::open(l.clone(), &state).unwrap();
        assert_eq!(back.state(), store.state());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
        // A refused transition changes nothing.
        let before = store.state().clone();
        assert!(store.update(|s| s.commit(now())).is_err());
        assert_eq!(store.state(), &before);
        // A damaged file is an error naming it.
        std::fs::write(&state, b"{\"format_version\": 1").unwrap();
        let e = SlotStore::open(l, &state).unwrap_err().to_string();
        assert!(
            e.contains("slots.json") && e.contains("not a slot state"),
            "{e}"
        );
    }

    #[test]
    fn the_writer_is_the_inactive_slot_and_a_shared_part_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let state = dir.path().join("slots.json");
        let store = SlotStore::open_or_init(l.clone(), &state, || {
            State::new(Slot::B, "1.0.0".parse().unwrap(), now())
        })
        .unwrap();
        let mut w = store.inactive_writer().unwrap();
        assert_eq!(w.slot(), Slot::A);
        assert_eq!(w.part("root.img").unwrap().0, l.a[0].path.as_path());
        let mut buf = vec![0u8; 7];
        let digest = w
            .write_member("root.img", 10, &mut &b"0123456789"[..], &mut buf)
            .unwrap();
        assert_eq!(digest, Sha256::of(b"0123456789"));
        assert_eq!(SlotStore::read_back(&l.a[0].path, 10).unwrap(), digest);
        assert_eq!(std::fs::read(&l.b[0].path).unwrap(), vec![0u8; 4096]);
        // Larger than the part: refused, nothing written.
        let before = std::fs::read(&l.a[0].path).unwrap();
        let big = vec![1u8; 5000];
        let e = w
            .write_member("root.img", 5000, &mut &big[..], &mut buf)
            .unwrap_err();
        assert!(matches!(e, UpgradeError::NoSpace { .. }), "{e}");
        assert_eq!(std::fs::read(&l.a[0].path).unwrap(), before);

        // B's part is A's through a link: refused.
        let link = dir.path().join("alias");
        std::os::unix::fs::symlink(&l.a[0].path, &link).unwrap();
        let shared = Layout {
            a: l.a.clone(),
            b: vec![Part {
                member: "root.img".into(),
                path: link,
            }],
        };
        let e = shared.check().unwrap_err().to_string();
        assert!(e.contains("must not share a part"), "{e}");
        let bad = Layout {
            a: vec![Part {
                member: "../x".into(),
                path: l.a[0].path.clone(),
            }],
            b: l.b.clone(),
        };
        assert!(bad.check().is_err());
        let dev = Layout {
            a: vec![Part {
                member: "root.img".into(),
                path: "/dev/null".into(),
            }],
            b: l.b,
        };
        assert!(dev.check().unwrap_err().to_string().contains("neither"));
    }
}
