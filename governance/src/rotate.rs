//! `rotate-root`: stage root v(N+1) from the root in force, with governance keys added
//! (their `.pub` files) or removed (by key id, or a unique prefix of at least 8 digits) and
//! optionally a new threshold, for both the `root` and `targets` roles. `publish` takes it
//! only with a threshold of signatures of the old root's root keys AND of the new root's
//! (TUF 5.3.4), so a rotation needs the old voters and the new ones. When the new root
//! would no longer accept the published targets (their signers are removed), the same
//! targets are staged again under the next version, for the new voters to sign.

use crate::error::GovernanceError;
use crate::keys;
use crate::workdir::Workdir;
use serde::Serialize;
use std::num::NonZeroU64;
use std::path::PathBuf;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{RoleType, Signed};

#[derive(Debug, Clone)]
pub struct RotateOptions {
    pub workdir: PathBuf,
    pub add_keys: Vec<PathBuf>,
    pub remove_keys: Vec<String>,
    pub threshold: Option<u64>,
    pub root_expires: jiff::Timestamp,
    /// The expiry of targets staged again when the new root no longer accepts the published
    /// ones.
    pub targets_expires: jiff::Timestamp,
}

#[derive(Debug, Clone, Serialize)]
pub struct RotateReport {
    pub version: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub keys: usize,
    pub threshold: u64,
    pub old_threshold: u64,
    pub staged: PathBuf,
    /// The targets version staged with the root: the published targets are signed by keys
    /// the new root drops, so the new voters sign them again (same content).
    pub restaged_targets: Option<u64>,
}

/// Stage the next root.
pub fn rotate(opts: &RotateOptions) -> Result<RotateReport, GovernanceError> {
    let workdir = Workdir::open(&opts.workdir)?;
    if let Some(staged) = workdir.staged_root()? {
        return Err(GovernanceError::refused(
            format!(
                "root v{} is staged already ({})",
                staged.signed.version,
                workdir
                    .staged_path(crate::workdir::StagedRole::Root)
                    .display()
            ),
            "publish it first (or remove the staged file to start over)",
        ));
    }
    let old = workdir.trusted_root()?.ok_or_else(|| {
        GovernanceError::refused(
            "no root is in force yet",
            "publish root v1 (signed by its voters) before rotating it",
        )
    })?;
    let mut root = old.signed.clone();
    let old_threshold = root.roles[&RoleType::Root].threshold.get();
    let mut ids: Vec<Decoded<Hex>> = root.roles[&RoleType::Root].keyids.clone();
    let mut removed = Vec::new();
    for given in &opts.remove_keys {
        let id = find_key(&ids, given)?;
        ids.retain(|k| *k != id);
        removed.push(hex::encode(id.clone().into_vec()));
        let still_used = [RoleType::Snapshot, RoleType::Timestamp]
            .iter()
            .any(|r| root.roles[r].keyids.contains(&id));
        if !still_used {
            root.keys.remove(&id);
        }
    }
    let mut added = Vec::new();
    for path in &opts.add_keys {
        let key = keys::read_public(path)?;
        let id = key.key_id().expect("a key serializes");
        if ids.contains(&id) || root.keys.contains_key(&id) {
            return Err(GovernanceError::refused(
                format!(
                    "{}: key {} is in root v{} already",
                    path.display(),
                    keys::key_id(&key),
                    root.version
                ),
                "add each new key once; the publisher key cannot be a governance key",
            ));
        }
        ids.push(id.clone());
        root.keys.insert(id, key);
        added.push(keys::key_id(&root.keys[&ids[ids.len() - 1]]));
    }
    let threshold = opts.threshold.unwrap_or(old_threshold);
    if ids.is_empty() || threshold == 0 || threshold > ids.len() as u64 {
        return Err(GovernanceError::refused(
            format!(
                "threshold {threshold} with {} governance keys: expected 1 to {}",
                ids.len(),
                ids.len()
            ),
            "keep at least one key and a threshold the keys can meet (--threshold K)",
        ));
    }
    if added.is_empty() && removed.is_empty() && opts.threshold.is_none() {
        return Err(GovernanceError::refused(
            "nothing to rotate",
            "pass --add-key FILE.pub, --remove-key KEYID or --threshold K",
        ));
    }
    let k = NonZeroU64::new(threshold).expect("checked above");
    for role in [RoleType::Root, RoleType::Targets] {
        let r = root
            .roles
            .get_mut(&role)
            .expect("checked roots have every role");
        r.keyids = ids.clone();
        r.threshold = k;
    }
    root.version = root
        .version
        .checked_add(1)
        .expect("root versions do not overflow");
    root.expires = opts.root_expires;
    let signed = Signed {
        signed: root,
        signatures: Vec::new(),
    };
    let mut restaged_targets = None;
    if workdir.staged_targets()?.is_none() {
        if let Some(published) = workdir.published_targets()? {
            if !crate::signatures::tally(&signed.signed, &published).met() {
                let draft = crate::staging::start(&workdir, opts.targets_expires)?;
                restaged_targets = Some(draft.targets.version.get());
                draft.stage(&workdir)?;
            }
        }
    }
    workdir.write_staged_root(&signed)?;
    Ok(RotateReport {
        version: signed.signed.version.get(),
        added,
        removed,
        keys: ids.len(),
        threshold,
        old_threshold,
        staged: workdir.staged_path(crate::workdir::StagedRole::Root),
        restaged_targets,
    })
}

/// The governance key whose id is `given` or starts with it (8 digits at least, unique).
fn find_key(ids: &[Decoded<Hex>], given: &str) -> Result<Decoded<Hex>, GovernanceError> {
    let given_l = given.to_ascii_lowercase();
    let matches: Vec<&Decoded<Hex>> = ids
        .iter()
        .filter(|id| {
            given_l.len() >= 8 && hex::encode((*id).clone().into_vec()).starts_with(&given_l)
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(GovernanceError::refused(
            format!("--remove-key {given}: no governance key has this id"),
            "give the key id (at least 8 hex digits) as plinth governance status shows it",
        )),
        _ => Err(GovernanceError::refused(
            format!("--remove-key {given}: more than one key id starts with it"),
            "give more digits of the key id",
        )),
    }
}
