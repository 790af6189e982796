//! `rotate-root`: stage root v(N+1) from the root in force, with governance keys added
//! (their `.pub` files) or removed (by key id, or a unique prefix of at least 8 digits) and
//! optionally a new threshold, for both the `root` and `targets` roles. `publish` takes it
//! only with a threshold of signatures of the old root's root keys AND of the new root's
//! (TUF 5.3.4), so a rotation needs the old voters and the new ones. When the new root
//! would no longer accept the published targets (their signers are removed), the same
//! targets are staged again under the next version, for the new voters to sign.
//!
//! `--publisher-key NAME.pub` replaces the publisher key (online: it signs snapshot and
//! timestamp) in the `snapshot` and `timestamp` roles, say after it leaked or its machine was
//! retired. The new root goes through the same threshold signing; until it is published the
//! old key stays in force. `governance.json` records `NAME.pem` beside the `.pub` as the next
//! publisher key: `publish` signs with it when it publishes the new root, and from then on it
//! is the publisher key (clients that take the new root refuse anything the old key signs).

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
    /// A new publisher key's public half (the `.pub` keygen writes), for `snapshot` and
    /// `timestamp`.
    pub publisher_key: Option<PathBuf>,
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
    /// The publisher key replaced, if it is.
    pub publisher: Option<PublisherChange>,
}

/// A publisher key replaced by a rotation.
#[derive(Debug, Clone, Serialize)]
pub struct PublisherChange {
    /// The key ids of the snapshot and timestamp roles before.
    pub old: Vec<String>,
    pub new: String,
    /// The private key publish signs with once the new root is published (recorded in
    /// governance.json as `next_publisher_key`).
    pub private_key: PathBuf,
    /// Whether that file exists here (it must where publish runs).
    pub private_key_present: bool,
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
    let publisher = match &opts.publisher_key {
        Some(path) => Some(replace_publisher(&mut root, &old.signed, &ids, path)?),
        None => None,
    };
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
    if added.is_empty() && removed.is_empty() && opts.threshold.is_none() && publisher.is_none() {
        return Err(GovernanceError::refused(
            "nothing to rotate",
            "pass --add-key FILE.pub, --remove-key KEYID, --threshold K or --publisher-key FILE.pub",
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
    // A key no role names any more (a removed voter's, the old publisher's) leaves the root.
    let used: Vec<Decoded<Hex>> = root
        .roles
        .values()
        .flat_map(|r| r.keyids.iter().cloned())
        .collect();
    root.keys.retain(|id, _| used.contains(id));
    root.version = root.version.checked_add(1).ok_or_else(|| {
        GovernanceError::refused(
            format!(
                "{}: root v{} has no next version",
                workdir.trusted_root_path().display(),
                root.version
            ),
            "the root in force was not written by plinth governance; restore the published one",
        )
    })?;
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
    // The next publisher key is recorded (or a stale one forgotten) with the staged root.
    let mut workdir = workdir;
    workdir.config.next_publisher_key = publisher.as_ref().map(|p| p.private_key.clone());
    workdir.write_config()?;
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
        publisher,
    })
}

/// Put the public key at `path` in place of the publisher key (`snapshot` and `timestamp`,
/// threshold 1). It must be a key of its own: neither the publisher key in force nor a
/// governance key of the old root or the new one (`governance`).
fn replace_publisher(
    root: &mut tough::schema::Root,
    old: &tough::schema::Root,
    governance: &[Decoded<Hex>],
    path: &std::path::Path,
) -> Result<PublisherChange, GovernanceError> {
    let key = keys::read_public(path)?;
    let id = key.key_id().expect("a key serializes");
    let role_ids = |r: &tough::schema::Root, role: RoleType| r.roles[&role].keyids.clone();
    let current: Vec<Decoded<Hex>> = role_ids(old, RoleType::Snapshot)
        .into_iter()
        .chain(role_ids(old, RoleType::Timestamp))
        .collect();
    if current.iter().all(|c| *c == id) {
        return Err(GovernanceError::refused(
            format!(
                "--publisher-key {}: key {} is the publisher key of root v{} already",
                path.display(),
                keys::key_id(&key),
                old.version
            ),
            "generate a new publisher key (plinth governance keygen) and pass its .pub",
        ));
    }
    if governance.contains(&id) || old.roles[&RoleType::Root].keyids.contains(&id) {
        return Err(GovernanceError::refused(
            format!(
                "--publisher-key {}: key {} is a governance key",
                path.display(),
                keys::key_id(&key)
            ),
            "the publisher key is online and signs only snapshot and timestamp: generate a key of its own (plinth governance keygen)",
        ));
    }
    for role in [RoleType::Snapshot, RoleType::Timestamp] {
        let r = root
            .roles
            .get_mut(&role)
            .expect("checked roots have every role");
        r.keyids = vec![id.clone()];
        r.threshold = NonZeroU64::MIN;
    }
    root.keys.insert(id, key.clone());
    let private_key = std::path::absolute(path.with_extension("pem"))
        .unwrap_or_else(|_| path.with_extension("pem"));
    let mut old_ids: Vec<String> = current
        .iter()
        .map(|i| hex::encode(i.clone().into_vec()))
        .collect();
    old_ids.dedup();
    Ok(PublisherChange {
        old: old_ids,
        new: keys::key_id(&key),
        private_key_present: private_key.is_file(),
        private_key,
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
