//! `revoke OS VERSION`: stage targets without that version's artifacts, so no node starts
//! taking it; if it was the OS's `max_version`, lower `max_version` to the newest version
//! still elected (or to none), so nodes that took it are pulled back.

use crate::custom::Entry;
use crate::error::GovernanceError;
use crate::names::TargetPath;
use crate::order;
use crate::staging;
use crate::workdir::Workdir;
use plinth_release::{Os, Version};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RevokeReport {
    pub os: Os,
    pub version: Version,
    pub removed: Vec<String>,
    pub max_version_before: Option<Version>,
    pub max_version: Option<Version>,
    pub targets_version: u64,
    pub dropped_signatures: usize,
}

/// Stage the revocation of `os` `version` in the workdir at `dir`.
pub fn revoke(
    dir: &std::path::Path,
    os: Os,
    version: &Version,
    targets_expires: jiff::Timestamp,
) -> Result<RevokeReport, GovernanceError> {
    let workdir = Workdir::open(dir)?;
    let mut draft = staging::start(&workdir, targets_expires)?;
    let entries = draft.entries()?;
    let removed: Vec<TargetPath> = entries
        .iter()
        .filter(|(p, _)| matches!(p, TargetPath::Artifact { os: o, version: v, .. } if *o == os && v == version))
        .map(|(p, _)| p.clone())
        .collect();
    if removed.is_empty() {
        let elected: Vec<String> = entries
            .iter()
            .filter_map(|(p, _)| match p {
                TargetPath::Artifact {
                    os: o, version: v, ..
                } if *o == os => Some(v.to_string()),
                _ => None,
            })
            .collect();
        return Err(GovernanceError::refused(
            format!(
                "{os} {version} is not elected (elected: {})",
                if elected.is_empty() {
                    "none".to_string()
                } else {
                    elected.join(", ")
                }
            ),
            "plinth governance status shows what is elected",
        ));
    }
    for p in &removed {
        draft.targets.targets.remove(&p.target_name());
    }
    let before = draft.policy(os)?.and_then(|p| p.max_version);
    let max_version = if before.as_ref() == Some(version) || before.is_none() {
        let remaining: Vec<Version> = entries
            .iter()
            .filter_map(|(p, e)| match (p, e) {
                (
                    TargetPath::Artifact {
                        os: o, version: v, ..
                    },
                    Entry::Artifact(_),
                ) if *o == os && v != version => Some(v.clone()),
                _ => None,
            })
            .collect();
        order::newest(&remaining).cloned()
    } else {
        before.clone()
    };
    draft.set_policy(os, max_version.clone());
    let dropped_signatures = draft.dropped_signatures;
    let targets_version = draft.targets.version.get();
    draft.stage(&workdir)?;
    Ok(RevokeReport {
        os,
        version: version.clone(),
        removed: removed.iter().map(|p| p.to_string()).collect(),
        max_version_before: before,
        max_version,
        targets_version,
        dropped_signatures,
    })
}
