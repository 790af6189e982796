//! Staging a new targets version, which `elect` and `revoke` both do: start from the staged
//! targets (whose signatures no longer hold once the content changes, so they are dropped)
//! or else from the targets last published, with the next version and a new expiry; and
//! keep each OS's policy target (`max_version`) in step with its elected versions.

use crate::custom::{self, Entry, PolicyCustom};
use crate::error::GovernanceError;
use crate::names::TargetPath;
use crate::workdir::Workdir;
use plinth_release::{Os, Sha256, Version};
use std::collections::HashMap;
use std::num::NonZeroU64;
use tough::schema::{Hashes, Signed, Target, Targets};

/// The TUF specification version the record's metadata follows.
pub const SPEC_VERSION: &str = "1.0.0";

/// A targets version being staged.
#[derive(Debug)]
pub struct Draft {
    pub targets: Targets,
    /// Signatures the staged file had, dropped because its content changes.
    pub dropped_signatures: usize,
}

/// Start the next targets version in `workdir`, expiring at `expires`.
pub fn start(workdir: &Workdir, expires: jiff::Timestamp) -> Result<Draft, GovernanceError> {
    let published = workdir.published_targets()?;
    let published_version = published.as_ref().map_or(0, |p| p.signed.version.get());
    let (mut targets, dropped_signatures) = match workdir.staged_targets()? {
        Some(staged) => (staged.signed, staged.signatures.len()),
        None => match published {
            Some(p) => (p.signed, 0),
            None => {
                let mut t = Targets::new(SPEC_VERSION.into(), NonZeroU64::MIN, expires);
                t.delegations = None;
                (t, 0)
            }
        },
    };
    targets.version = published_version
        .checked_add(1)
        .and_then(NonZeroU64::new)
        .ok_or_else(|| {
            GovernanceError::refused(
                format!(
                    "{}: targets v{published_version} has no next version",
                    workdir.published_targets_path().display()
                ),
                "the published targets were not written by plinth governance; restore them",
            )
        })?;
    targets.expires = expires;
    Ok(Draft {
        targets,
        dropped_signatures,
    })
}

impl Draft {
    /// The record's entries, each checked ([`custom::read_entry`]).
    pub fn entries(&self) -> Result<Vec<(TargetPath, Entry)>, GovernanceError> {
        entries(&self.targets)
    }

    /// The policy of `os` in the draft, if it has one.
    pub fn policy(&self, os: Os) -> Result<Option<PolicyCustom>, GovernanceError> {
        Ok(self.entries()?.into_iter().find_map(|(_, e)| match e {
            Entry::Policy(p) if p.os == os => Some(p),
            _ => None,
        }))
    }

    /// Set the policy of `os` to `max_version`.
    pub fn set_policy(&mut self, os: Os, max_version: Option<Version>) {
        let policy = PolicyCustom::new(os, max_version);
        let payload = policy.payload();
        let target = Target {
            length: payload.len() as u64,
            hashes: Hashes {
                sha256: Sha256::of(&payload).as_bytes().to_vec().into(),
                _extra: HashMap::new(),
            },
            custom: custom::to_custom(&policy),
            _extra: HashMap::new(),
        };
        self.targets
            .targets
            .insert(TargetPath::Policy { os }.target_name(), target);
    }

    /// Stage the draft: unsigned, in `staged/targets.json`.
    pub fn stage(self, workdir: &Workdir) -> Result<Signed<Targets>, GovernanceError> {
        let signed = Signed {
            signed: self.targets,
            signatures: Vec::new(),
        };
        workdir.write_staged_targets(&signed)?;
        Ok(signed)
    }
}

/// Every target of `targets` as a checked entry of the record, sorted by name.
pub fn entries(targets: &Targets) -> Result<Vec<(TargetPath, Entry)>, GovernanceError> {
    let mut out = Vec::new();
    for (name, target) in &targets.targets {
        let raw = name.raw();
        let path: TargetPath = raw.parse().map_err(|e: String| {
            GovernanceError::refused(e, "the targets were not written by plinth governance")
        })?;
        let entry = custom::read_entry(raw, target).map_err(|e| {
            GovernanceError::refused(e, "the targets were not written by plinth governance")
        })?;
        out.push((path, entry));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
