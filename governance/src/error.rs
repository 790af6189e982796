//! What can go wrong with the governance record, one variant per kind of failure, each
//! naming the file or role, what was expected and what to do. [`GovernanceError::is_bad_input`]
//! tells the command line which failures are bad input (exit 2: a malformed or crafted file,
//! a refused request; nothing was written) and which are failed checks (exit 1: too few
//! signatures, expired metadata, a payload that does not match).

use std::path::PathBuf;

/// A failure of a governance operation.
#[derive(Debug, thiserror::Error)]
pub enum GovernanceError {
    /// A file that could not be read (missing, a link, a device, too large).
    #[error("{}: cannot read the {what}: {source}", path.display())]
    Read {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    /// A JSON file that is not what it should be.
    #[error("{}:{line}:{column}: not valid {what}: {message}\n  hint: these files are written by plinth governance; take a fresh copy instead of editing it", path.display())]
    Malformed {
        path: PathBuf,
        what: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    /// A file that could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A request refused before anything was written (a threshold above the key count, a
    /// version elected twice with other bytes, nothing staged to sign).
    #[error("{what}\n  hint: {hint}")]
    Refused { what: String, hint: String },
    /// A release directory that is not a plinth release, or whose files do not match its
    /// manifest.
    #[error("{}: {message}\n  hint: {hint}", path.display())]
    Release {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// A waves file with problems (file:line:col each).
    #[error("{0}")]
    Waves(plinth_yaml::SpecErrors),
    /// A key file that is not an ed25519 key of the expected kind.
    #[error("{}: {message}\n  hint: {hint}", path.display())]
    Key {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// A staged file (a voter's copy to merge, a role to sign) that does not belong here.
    #[error("{}: {message}\n  hint: {hint}", path.display())]
    Staged {
        path: PathBuf,
        message: String,
        hint: String,
    },
    /// A repository whose timestamp.json claims a newer snapshot or timestamp version than
    /// this workdir ever published, without the signature of the root in force's timestamp
    /// key: publishing after it would take its versions from whoever wrote the file.
    #[error("{}: claims timestamp v{claimed_timestamp} and snapshot v{claimed_snapshot}, but this workdir has published at most timestamp v{published_timestamp} and snapshot v{published_snapshot}, and the file is not signed by the timestamp key of {by}\n  hint: this repository was written by someone else (or another record); check how, then publish from the workdir that published it, or move its timestamp.json aside (publishing continues this workdir's versions, in this directory or a new one)", path.display())]
    UnverifiedVersion {
        path: PathBuf,
        claimed_timestamp: u64,
        claimed_snapshot: u64,
        published_timestamp: u64,
        published_snapshot: u64,
        /// Whose timestamp key was asked: "root v2", or "no root in force".
        by: String,
    },
    /// A role that does not carry a threshold of valid signatures.
    #[error("{role}: {valid} valid signature{s} of the {threshold} needed from the keys of {by}{detail}\n  hint: {hint}", s = if *valid == 1 { "" } else { "s" })]
    Threshold {
        role: String,
        /// Whose keys were counted: "root v1".
        by: String,
        threshold: u64,
        valid: u64,
        /// Which signatures counted and which did not, one per line.
        detail: String,
        hint: String,
    },
    /// A repository a client could not load: the role whose metadata failed, and why.
    #[error("{repo}: {role}: {message}\n  hint: {hint}")]
    Load {
        repo: String,
        role: String,
        message: String,
        hint: String,
    },
    /// A target whose bytes are not what targets.json says.
    #[error("{name}: {message}")]
    Target { name: String, message: String },
    /// tough failed at something that is not the input's fault.
    #[error("{action}: {source}")]
    Tough {
        action: String,
        /// Boxed: tough's error is large, and every `Result` here carries this enum.
        source: Box<tough::error::Error>,
    },
}

impl GovernanceError {
    /// Bad input (exit 2): the input was malformed or crafted, or the request was refused;
    /// nothing was written.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            GovernanceError::Read { .. }
                | GovernanceError::Malformed { .. }
                | GovernanceError::Refused { .. }
                | GovernanceError::Release { .. }
                | GovernanceError::Waves(_)
                | GovernanceError::Key { .. }
                | GovernanceError::Staged { .. }
                | GovernanceError::UnverifiedVersion { .. }
        )
    }

    /// A refusal with a hint.
    pub fn refused(what: impl Into<String>, hint: impl Into<String>) -> GovernanceError {
        GovernanceError::Refused {
            what: what.into(),
            hint: hint.into(),
        }
    }

    /// tough's error while doing `action`.
    pub fn tough(action: impl Into<String>) -> impl FnOnce(tough::error::Error) -> GovernanceError {
        let action = action.into();
        move |source| GovernanceError::Tough {
            action,
            source: Box::new(source),
        }
    }
}
