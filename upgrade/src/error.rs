//! What can stop an upgrade, one variant per failure, each naming the mirror, role, target,
//! file or slot part, what was expected and what to do. Every refusal leaves the node as it
//! was: nothing is written to a slot before the payload has been downloaded, hash-checked
//! and read through once ([`crate::apply`]), and nothing is flipped before the written slot
//! has been read back. tough's load errors are mapped to the variants here by
//! [`crate::repo`], so that a caller (and a test) can tell a replayed timestamp from an
//! expired one without reading tough's messages.

use plinth_release::{Os, Slot, Version};
use std::path::PathBuf;

/// A failure of the upgrade agent.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Signed metadata past its expiry (TUF 5.3.10, 5.4.5, 5.5.6, 5.6.6).
    #[error("{mirror}: the {role} metadata expired at {expires}\n  hint: governance's publisher re-publishes before expiry (plinth governance publish); the node keeps its version until then")]
    MetadataExpired {
        mirror: String,
        role: String,
        expires: String,
    },
    /// Metadata without a threshold of valid signatures from the keys the trusted root names
    /// (unsigned, signed by too few voters, or by foreign keys).
    #[error("{mirror}: the {role} metadata is not signed by a threshold of its keys: {message}\n  hint: governance signs it with enough voters' keys (plinth governance sign) and publishes again")]
    BelowThreshold {
        mirror: String,
        role: String,
        message: String,
    },
    /// Metadata older than what this node already trusts (a replay or a freeze: TUF 5.4.3,
    /// 5.5.5); the datastore keeps what was trusted.
    #[error("{mirror}: the {role} metadata is version {offered}, older than version {trusted} this node already trusts: a replay of old metadata\n  hint: the mirror serves a stale copy; sync it from the publisher")]
    MetadataReplayed {
        mirror: String,
        role: String,
        trusted: u64,
        offered: u64,
    },
    /// Metadata whose version or hash is not the one the role above it names (files mixed
    /// from two publications: TUF 5.5.2, 5.6.2).
    #[error("{mirror}: the {role} metadata is not the one the role above it names: {message}\n  hint: the mirror holds files of two publications; sync it whole from the publisher")]
    MetadataMixed {
        mirror: String,
        role: String,
        message: String,
    },
    /// Metadata that does not parse.
    #[error("{mirror}: the {role} metadata is malformed: {message}\n  hint: the mirror's copy is corrupt; sync it from the publisher")]
    MetadataMalformed {
        mirror: String,
        role: String,
        message: String,
    },
    /// The trusted root this node starts from is unusable.
    #[error("{}: the trusted root is unusable: {message}\n  hint: the node's trusted root.json comes with its OS image; reinstall if it is damaged", path.display())]
    TrustedRoot { path: PathBuf, message: String },
    /// A mirror that could not be reached or read.
    #[error("{mirror}: unreachable: {message}\n  hint: check the network and the mirror list; the next poll retries")]
    Unreachable { mirror: String, message: String },
    /// The system clock is earlier than a time the node's trusted metadata already saw
    /// (tough's `latest_known_time`): expiry cannot be judged, so nothing is loaded.
    #[error("the system clock ({now}) is earlier than {seen}, a time this node's trusted metadata already saw: the clock stepped back or is set wrong; nothing was loaded\n  hint: set the clock right (NTP: `timedatectl status`); the record is read again once the clock is past {seen}")]
    ClockBehind { now: String, seen: String },
    /// tough failed at something else.
    #[error("{mirror}: {message}")]
    Tough { mirror: String, message: String },
    /// A target of the record that is not what plinth governance writes.
    #[error("target `{target}`: {message}\n  hint: the record was not written by plinth governance; do not take anything from it")]
    Record { target: String, message: String },
    /// A version this node may not take: never elected, revoked, above `max_version`, not
    /// yet open for this node's wave, or a downgrade governance did not elect.
    #[error("{os} {version} is not elected for this node (seed {seed}): {why}\n  hint: `plinth governance status` shows what is elected for which seeds from when")]
    NotElected {
        os: Os,
        version: Version,
        seed: u16,
        why: String,
    },
    /// The payload ended before its signed length.
    #[error("{url}: the payload ends after {got} bytes, the signed target has {expected}\n  hint: the mirror's copy is truncated; the next mirror or poll retries")]
    Truncated {
        url: String,
        got: u64,
        expected: u64,
    },
    /// The payload goes on past its signed length.
    #[error("{url}: the payload is longer than the {expected} bytes of the signed target\n  hint: the mirror serves another file; sync it from the publisher")]
    TooLong { url: String, expected: u64 },
    /// The payload's sha256 is not the signed one (corrupt or substituted).
    #[error("{url}: the payload's sha256 is {found}, the signed target's is {expected}\n  hint: the mirror's copy is corrupt or not the elected one; nothing was written")]
    WrongHash {
        url: String,
        expected: String,
        found: String,
    },
    /// Every mirror failed to give the payload; each one's error, in order.
    #[error("no mirror gave the payload of {target}:\n{}", .tried.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    NoMirror {
        target: String,
        tried: Vec<UpgradeError>,
    },
    /// Not enough room: the staging directory's file system, or a slot part smaller than
    /// the member written to it, or ENOSPC while writing.
    #[error("{}: no space: {needed} bytes needed, {available} available ({what})\n  hint: {hint}", path.display())]
    NoSpace {
        path: PathBuf,
        what: String,
        needed: u64,
        available: u64,
        hint: String,
    },
    /// The signed payload is not a plinth update archive, or not one for these slots.
    #[error("{0}")]
    Archive(#[from] Box<plinth_release::archive::ArchiveError>),
    /// The archive lacks a member a slot part needs.
    #[error("{target}: no member `{member}` for slot {slot}'s part {}\n  hint: the release's update image does not fit this node's slot layout", path.display())]
    MissingMember {
        target: String,
        member: String,
        slot: Slot,
        path: PathBuf,
    },
    /// What was read back from a slot part is not what was written.
    #[error("{}: read back sha256 {found} after writing member `{member}` ({length} bytes) whose sha256 is {expected}\n  hint: the disk does not keep what is written to it; the slot was not flipped", path.display())]
    ReadBack {
        path: PathBuf,
        member: String,
        length: u64,
        expected: String,
        found: String,
    },
    /// The staged payload read by a pass is not the signed one (altered after its download).
    #[error("{}: the staged payload now reads as {found}; the signed target is {expected}\n  hint: something altered the staged file after its download; it was removed, and the next apply downloads it again; the slot was not flipped", path.display())]
    StagedChanged {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// A slot layout that cannot be used (a part that is not a regular file or block device,
    /// a part shared by both slots, a bad member name).
    #[error("{}: {message}\n  hint: {hint}", path.display())]
    Layout {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// The slot state file is malformed, or a transition that its state does not allow.
    #[error("{}: {message}\n  hint: {hint}", path.display())]
    State {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// Another apply holds the store's lock.
    #[error("{}: another upgrade run holds this lock\n  hint: wait for it to end (`upgrade status` shows what it does); nothing was changed", path.display())]
    Busy { path: PathBuf },
    /// The slot that would be written is the one running, or its device is in use.
    #[error("{}: slot {slot} cannot be written: {why}\n  hint: nothing was changed; the next apply after the slot's trial boot ends (or after the state is corrected) can write it", path.display())]
    SlotInUse {
        path: PathBuf,
        slot: Slot,
        why: String,
    },
    /// An I/O failure on a named file.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
}

impl UpgradeError {
    /// Whether this is a failure to reach a mirror (the next mirror may do better), as opposed
    /// to a refusal of what a mirror served.
    pub fn is_transport(&self) -> bool {
        matches!(self, UpgradeError::Unreachable { .. })
    }

    /// An I/O error on `path` while doing `action`; ENOSPC becomes [`UpgradeError::NoSpace`].
    pub fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
    ) -> impl FnOnce(std::io::Error) -> UpgradeError {
        let path = path.into();
        move |source| {
            if source.raw_os_error() == Some(nix::libc::ENOSPC) {
                UpgradeError::NoSpace {
                    what: format!("the file system is full (ENOSPC) while trying to {action} it"),
                    path,
                    needed: 0,
                    available: 0,
                    hint: "free space there; nothing was flipped".into(),
                }
            } else {
                UpgradeError::Io {
                    path,
                    action,
                    source,
                }
            }
        }
    }
}

impl From<plinth_release::archive::ArchiveError> for UpgradeError {
    fn from(e: plinth_release::archive::ArchiveError) -> UpgradeError {
        UpgradeError::Archive(Box::new(e))
    }
}
