//! `publish REPO_DIR`: write the record as a consistent-snapshot TUF repository a client
//! (tough's `RepositoryLoader`) loads. Everything is checked before anything is written:
//!
//! 1. a staged root (init's v1, a rotation's N+1) must be the next version and carry a
//!    threshold of valid signatures of its own root keys and, for N+1, of the old root's
//!    (TUF 5.3.4);
//! 2. the staged targets (else the targets last published, re-published under a new
//!    timestamp) must carry a threshold of valid signatures of the targets keys of the root
//!    that will be in force, be newer than the last published and not expired, and hold only
//!    targets of the record ([`crate::custom`]);
//! 3. every payload is copied from the source `elect` recorded into a
//!    staging directory inside REPO_DIR and hashed on the way; a mismatch refuses the whole
//!    publication;
//! 4. the snapshot and timestamp versions follow the last this workdir published
//!    (`published/versions.json`), wherever it publishes: REPO_DIR's timestamp.json is outside
//!    input, and one claiming more is refused unless the root in force's timestamp key signed
//!    it ([`GovernanceError::UnverifiedVersion`]).
//!
//! Then snapshot and timestamp are built and signed with the publisher key by tough's
//! [`SignedRole`], and the files are moved into place in the order clients are safe with:
//! payloads (`targets/<sha256>.<name>`), `<N>.root.json` for every root, `<N>.targets.json`,
//! `<N>.snapshot.json`, and `timestamp.json` last, by rename. A refusal leaves REPO_DIR as it
//! was; the workdir moves on (root in force, published targets, nothing staged) only after.

use crate::custom::{Entry, PolicyCustom};
use crate::error::GovernanceError;
use crate::files::{self, MAX_METADATA};
use crate::health;
use crate::signatures::{self, Tally};
use crate::staging::{self, SPEC_VERSION};
use crate::workdir::{PublishedVersions, StagedRole, Workdir};
use plinth_release::Sha256;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::{Hashes, KeyHolder, Metafile, Signed, Snapshot, Timestamp};

/// The directory of payloads inside a repository.
pub const TARGETS_DIR: &str = "targets";

pub struct PublishOptions {
    pub workdir: PathBuf,
    pub repo: PathBuf,
    /// Signs snapshot and timestamp.
    pub publisher: Box<dyn KeySource>,
    /// The publisher key's file (or another name for it), for messages.
    pub publisher_name: PathBuf,
    pub snapshot_expires: jiff::Timestamp,
    pub timestamp_expires: jiff::Timestamp,
    pub now: jiff::Timestamp,
    /// The nodes' reports the health gates are evaluated from (`--health DIR`); without it
    /// every gated wave is held.
    pub health: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub repo: PathBuf,
    pub root_version: u64,
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    /// Payloads written now (others were there already).
    pub payloads_written: Vec<String>,
    /// The signatures that made each staged role publishable.
    pub tallies: Vec<(String, Tally)>,
    pub timestamp_expires: String,
    /// Each gated wave: open since when, or held, with the counts.
    pub gates: Vec<health::Verdict>,
    /// Node reports left aside (file: why).
    pub skipped_reports: Vec<String>,
}

/// A file to move into the repository: (staged temporary path, final relative path).
struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
}

/// Check, sign and write.
pub async fn publish(opts: PublishOptions) -> Result<PublishReport, GovernanceError> {
    let mut workdir = Workdir::open(&opts.workdir)?;
    let mut tallies = Vec::new();

    // 1. The root in force after this publication.
    let trusted = workdir.trusted_root()?;
    let staged_root = workdir.staged_root()?;
    let root = match (&trusted, &staged_root) {
        (_, Some(new)) => {
            let expected = trusted
                .as_ref()
                .map_or(Some(1), |t| t.signed.version.get().checked_add(1))
                .ok_or_else(|| {
                    GovernanceError::refused(
                        "the root in force has the last version there is",
                        "restore the root.json publish wrote",
                    )
                })?;
            if new.signed.version.get() != expected {
                return Err(GovernanceError::refused(
                    format!(
                        "staged root is v{}, the next root is v{expected}",
                        new.signed.version
                    ),
                    "stage the next root with rotate-root",
                ));
            }
            if let Some(old) = &trusted {
                tallies.push((
                    format!(
                        "root v{} by root v{}",
                        new.signed.version, old.signed.version
                    ),
                    signatures::require(
                        &old.signed,
                        new,
                        &format!("root v{}", new.signed.version),
                    )?,
                ));
            }
            tallies.push((
                format!("root v{} by itself", new.signed.version),
                signatures::require(&new.signed, new, &format!("root v{}", new.signed.version))?,
            ));
            if new.signed.expires <= opts.now {
                return Err(expired(
                    "staged root",
                    &new.signed.expires,
                    "rotate-root again",
                ));
            }
            new.clone()
        }
        (Some(t), None) => t.clone(),
        (None, None) => {
            return Err(GovernanceError::refused(
                format!("{}: no root, staged or in force", workdir.dir.display()),
                "run plinth governance init",
            ))
        }
    };

    if root.signed.expires <= opts.now {
        return Err(expired(
            &format!("root v{}", root.signed.version),
            &root.signed.expires,
            "rotate the root (rotate-root with a later --root-expires), sign and publish it",
        ));
    }

    // 2. The targets.
    let published = workdir.published_targets()?;
    let staged_targets = workdir.staged_targets()?;
    let targets = match (&staged_targets, &published) {
        (Some(t), _) => {
            let label = format!("targets v{}", t.signed.version);
            if let Some(p) = &published {
                if t.signed.version <= p.signed.version {
                    return Err(GovernanceError::refused(
                        format!(
                            "staged {label} is not newer than the published targets v{}",
                            p.signed.version
                        ),
                        "stage again with elect or revoke",
                    ));
                }
            }
            tallies.push((label.clone(), signatures::require(&root.signed, t, &label)?));
            t.clone()
        }
        (None, Some(p)) => {
            // Re-published under the root in force, which must still accept it.
            signatures::require(
                &root.signed,
                p,
                &format!("published targets v{}", p.signed.version),
            )?;
            p.clone()
        }
        (None, None) => {
            return Err(GovernanceError::refused(
                "nothing is elected yet",
                "elect a release, have the voters sign the targets, then publish",
            ))
        }
    };
    if targets.signed.expires <= opts.now {
        return Err(expired(
            &format!("targets v{}", targets.signed.version),
            &targets.signed.expires,
            "stage the targets again (elect or revoke) with a later --targets-expires and sign them",
        ));
    }
    let entries = staging::entries(&targets.signed)?;

    // 3. Versions after the last this workdir published: its own record, not REPO_DIR's
    //    timestamp.json, which anyone who can write there could plant (a version of
    //    u64::MAX - 1 would leave no room for the next). A repository timestamp claiming
    //    more is taken only when the root in force's timestamp key signed it (a workdir that
    //    published before it kept a record, or a copy behind the one that published last);
    //    otherwise publish is refused.
    let repo = &opts.repo;
    let mut last = workdir.published_versions()?.unwrap_or_default();
    if let Some(t) = read_timestamp(repo)? {
        let claimed = PublishedVersions {
            timestamp: t.signed.version.get(),
            snapshot: t
                .signed
                .meta
                .get("snapshot.json")
                .map_or(0, |m| m.version.get()),
        };
        if claimed.timestamp > last.timestamp || claimed.snapshot > last.snapshot {
            let verified = trusted
                .as_ref()
                .is_some_and(|r| signatures::tally(&r.signed, &t).met());
            if !verified {
                return Err(GovernanceError::UnverifiedVersion {
                    path: repo.join("timestamp.json"),
                    claimed_timestamp: claimed.timestamp,
                    claimed_snapshot: claimed.snapshot,
                    published_timestamp: last.timestamp,
                    published_snapshot: last.snapshot,
                    by: trusted.as_ref().map_or("no root in force".into(), |r| {
                        format!("root v{}", r.signed.version)
                    }),
                });
            }
            last.timestamp = last.timestamp.max(claimed.timestamp);
            last.snapshot = last.snapshot.max(claimed.snapshot);
        }
    }
    let timestamp_version = next_version(last.timestamp, "timestamp")?;
    let snapshot_version = next_version(last.snapshot, "snapshot")?;

    // Roots every client needs to walk from v1 to the one in force, as the bytes published
    // (a re-serialization may order keys otherwise, and the snapshot's hashes are of bytes).
    let mut roots: Vec<(u64, Vec<u8>)> = Vec::new();
    let published_roots = root.signed.version.get() - u64::from(staged_root.is_some());
    for v in 1..=published_roots {
        let path = workdir.root_history_path(v);
        let bytes = files::read_bounded(&path, MAX_METADATA, "published root metadata")?;
        roots.push((v, bytes));
    }
    if staged_root.is_some() {
        roots.push((root.signed.version.get(), files::to_json(&root)));
    }
    let targets_bytes = if staged_targets.is_some() {
        files::to_json(&targets)
    } else {
        files::read_bounded(
            &workdir.published_targets_path(),
            MAX_METADATA,
            "published targets metadata",
        )?
    };
    for (v, bytes) in &roots {
        refuse_other(repo, &format!("{v}.root.json"), bytes)?;
    }
    refuse_other(
        repo,
        &format!("{}.targets.json", targets.signed.version),
        &targets_bytes,
    )?;

    // 4. Snapshot and timestamp, signed by the publisher through tough.
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let holder = KeyHolder::Root(root.signed.clone());
    let keys: Vec<Box<dyn KeySource>> = vec![opts.publisher];
    let mut snapshot = Snapshot::new(
        SPEC_VERSION.into(),
        NonZeroU64::new(snapshot_version).expect("not zero"),
        opts.snapshot_expires,
    );
    // The health gates, signed with the snapshot (see [`health`]). Without --health, the
    // gates stay as the last publish left them (of the targets still listed): a timestamp
    // refresh neither opens nor closes a wave.
    let artifacts: Vec<(String, &crate::custom::ArtifactCustom)> = entries
        .iter()
        .filter_map(|(path, entry)| match entry {
            Entry::Artifact(a) => Some((path.to_string(), a.as_ref())),
            Entry::Policy(_) => None,
        })
        .collect();
    let previous = workdir.published_gates()?;
    let (reports, gates, verdicts) = match &opts.health {
        Some(dir) => {
            let reports = health::read_reports(dir, opts.now)?;
            let (gates, verdicts) = health::evaluate(
                artifacts.iter().map(|(n, a)| (n.as_str(), *a)),
                &reports,
                &previous,
                opts.now,
            );
            (reports, gates, verdicts)
        }
        None => {
            let mut kept = previous.clone();
            kept.0
                .retain(|target, _| artifacts.iter().any(|(n, _)| n == target));
            (health::Reports::default(), kept, Vec::new())
        }
    };
    if !gates.0.is_empty() {
        snapshot._extra.insert(
            health::EXTRA_KEY.into(),
            serde_json::to_value(&gates).expect("gates serialize"),
        );
    }
    snapshot.meta.insert(
        "targets.json".into(),
        metafile(targets.signed.version, &targets_bytes),
    );
    let snapshot = SignedRole::new(snapshot, &holder, &keys, &rng)
        .await
        .map_err(publisher_error(&opts.publisher_name))?;
    let mut timestamp = Timestamp::new(
        SPEC_VERSION.into(),
        NonZeroU64::new(timestamp_version).expect("not zero"),
        opts.timestamp_expires,
    );
    timestamp.meta.insert(
        "snapshot.json".into(),
        metafile(snapshot.signed().signed.version, snapshot.buffer()),
    );
    let timestamp = SignedRole::new(timestamp, &holder, &keys, &rng)
        .await
        .map_err(publisher_error(&opts.publisher_name))?;

    // 5. Stage everything inside the repository, payloads checked on the way.
    std::fs::create_dir_all(repo).map_err(|source| GovernanceError::Write {
        path: repo.clone(),
        source,
    })?;
    let staging_dir = tempfile::Builder::new()
        .prefix(".plinth-publish-")
        .tempdir_in(repo)
        .map_err(|source| GovernanceError::Write {
            path: repo.clone(),
            source,
        })?;
    let sources = workdir.sources()?;
    let mut pending = Vec::new();
    let mut payloads_written = Vec::new();
    for (i, (path, entry)) in entries.iter().enumerate() {
        let name = path.to_string();
        let target = &targets.signed.targets[&path.target_name()];
        let sha256 = hex::encode(target.hashes.sha256.clone().into_vec());
        let dest = PathBuf::from(TARGETS_DIR).join(format!("{sha256}.{name}"));
        if payload_present(&repo.join(&dest), target.length, &sha256)? {
            continue;
        }
        let tmp = staging_dir.path().join(format!("payload-{i}"));
        match entry {
            Entry::Policy(p) => write_policy(&tmp, p, target, &name)?,
            Entry::Artifact(_) => {
                let source = sources.get(&name).ok_or_else(|| {
                    GovernanceError::refused(
                        format!(
                            "{name}: the workdir does not say where its bytes are (sources.json)"
                        ),
                        "publish from the workdir that elected it, or elect the release again here",
                    )
                })?;
                copy_checked(&source.path, &tmp, target.length, &sha256, &name)?;
            }
        }
        pending.push(Pending { tmp, dest });
        payloads_written.push(name);
    }
    let mut put = |name: String, bytes: &[u8]| -> Result<(), GovernanceError> {
        let tmp = staging_dir.path().join(&name);
        std::fs::write(&tmp, bytes).map_err(|source| GovernanceError::Write {
            path: tmp.clone(),
            source,
        })?;
        pending.push(Pending {
            tmp,
            dest: PathBuf::from(name),
        });
        Ok(())
    };
    for (v, bytes) in &roots {
        put(format!("{v}.root.json"), bytes)?;
    }
    put(
        format!("{}.targets.json", targets.signed.version),
        &targets_bytes,
    )?;
    put(
        format!("{snapshot_version}.snapshot.json"),
        snapshot.buffer(),
    )?;
    put("timestamp.json".into(), timestamp.buffer())?;

    // The versions are recorded before anything moves into place: a publication that fails
    // half-way leaves a gap in the versions, which clients accept, never a version used twice.
    workdir.write_published_versions(&PublishedVersions {
        snapshot: snapshot_version,
        timestamp: timestamp_version,
    })?;

    // 6. Into place; timestamp.json (last) is what makes the new state visible, so every
    // directory a rename or a creation changed (a payload's own directory and each one above
    // it up to the repository: targets/<sha256>.<os>/<version>/, ..., targets/, the
    // repository) is synced before it moves: after a crash, a timestamp on disk never names
    // metadata or payloads that are not.
    let mut renamed_in: Vec<PathBuf> = Vec::new();
    for p in &pending {
        let dest = repo.join(&p.dest);
        let parent = dest.parent().unwrap_or(repo).to_path_buf();
        if p.dest == Path::new("timestamp.json") {
            for dir in &renamed_in {
                sync_dir(dir)?;
            }
        }
        std::fs::create_dir_all(&parent).map_err(|source| GovernanceError::Write {
            path: parent.clone(),
            source,
        })?;
        sync(&p.tmp)?;
        std::fs::rename(&p.tmp, &dest)
            .map_err(|source| GovernanceError::Write { path: dest, source })?;
        for dir in parent.ancestors() {
            if !dir.starts_with(repo) {
                break;
            }
            if !renamed_in.iter().any(|d| d == dir) {
                renamed_in.push(dir.to_path_buf());
            }
        }
    }
    sync_dir(repo)?;

    // 7. The workdir moves on: the gates first (a gate's `since` is kept from a snapshot
    // that is out, never from one a failed publication left unseen).
    workdir.write_published_gates(&gates)?;
    if staged_root.is_some() {
        let (_, bytes) = roots.last().expect("the staged root is in the list");
        files::write_atomic(
            &workdir.root_history_path(root.signed.version.get()),
            bytes,
            0o644,
        )?;
        files::write_atomic(&workdir.trusted_root_path(), bytes, 0o644)?;
        // A root that replaced the publisher key puts its private key in force.
        if let Some(next) = workdir.config.next_publisher_key.take() {
            workdir.config.publisher_key = next;
            workdir.write_config()?;
        }
        workdir.clear_staged(StagedRole::Root)?;
    }
    if staged_targets.is_some() {
        files::write_atomic(&workdir.published_targets_path(), &targets_bytes, 0o644)?;
        workdir.clear_staged(StagedRole::Targets)?;
    }
    Ok(PublishReport {
        repo: repo.clone(),
        root_version: root.signed.version.get(),
        targets_version: targets.signed.version.get(),
        snapshot_version,
        timestamp_version,
        payloads_written,
        tallies,
        timestamp_expires: opts.timestamp_expires.to_string(),
        gates: verdicts,
        skipped_reports: reports
            .skipped
            .iter()
            .map(|(path, why)| format!("{}: {why}", path.display()))
            .collect(),
    })
}

/// The version after `last` of `role` (snapshot or timestamp).
fn next_version(last: u64, role: &str) -> Result<u64, GovernanceError> {
    last.checked_add(1).ok_or_else(|| {
        GovernanceError::refused(
            format!("{role} v{last} was published: there is no later {role} version"),
            "the publisher key signed the last version there is; nodes holding it refuse any other, so they need a new record (init) and its root",
        )
    })
}

fn expired(what: &str, at: &jiff::Timestamp, hint: &str) -> GovernanceError {
    GovernanceError::refused(format!("{what} expired at {at}"), hint)
}

fn publisher_error(key: &Path) -> impl Fn(tough::error::Error) -> GovernanceError + '_ {
    move |e| {
        GovernanceError::Key {
        path: key.to_path_buf(),
        message: format!("cannot sign snapshot and timestamp: {e}"),
        hint: "sign with the snapshot and timestamp key of the root in force after this publication: governance.json's publisher_key, or its next_publisher_key while a root staged by rotate-root --publisher-key is published (--publisher-key FILE)".into(),
    }
    }
}

/// The metadata of a role file for snapshot or timestamp: version, length, sha256.
fn metafile(version: NonZeroU64, bytes: &[u8]) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: Sha256::of(bytes).as_bytes().to_vec().into(),
            _extra: HashMap::new(),
        }),
        version,
        _extra: HashMap::new(),
    }
}

/// The repository's current timestamp, if it has one (its versions are checked against the
/// workdir's record).
fn read_timestamp(repo: &Path) -> Result<Option<Signed<Timestamp>>, GovernanceError> {
    let path = repo.join("timestamp.json");
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    files::read_json(&path, 1 << 20, "timestamp metadata").map(Some)
}

/// Refuse when the repository has `name` already with other bytes (a version is never
/// rewritten: clients may hold the old one).
fn refuse_other(repo: &Path, name: &str, bytes: &[u8]) -> Result<(), GovernanceError> {
    let path = repo.join(name);
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(());
    }
    let existing = files::read_bounded(&path, MAX_METADATA, "published metadata")?;
    if existing != bytes {
        return Err(GovernanceError::refused(
            format!(
                "{}: exists with other content; a published version is never rewritten",
                path.display()
            ),
            "this directory holds another record's (or an edited) repository: publish into the repository this workdir published, or into an empty directory (the versions continue from this workdir's record)",
        ));
    }
    Ok(())
}

/// Whether the payload is in the repository already, whole (checked by hash).
fn payload_present(path: &Path, length: u64, sha256: &str) -> Result<bool, GovernanceError> {
    let Ok(f) = plinth_release::untrusted::open_untrusted(path) else {
        return Ok(false);
    };
    let (found, n) = Sha256::of_reader(f.take(length.saturating_add(1))).map_err(|source| {
        GovernanceError::Read {
            path: path.to_path_buf(),
            what: "published payload",
            source,
        }
    })?;
    Ok(n == length && found.to_hex() == sha256)
}

/// Copy `from` to `to` while hashing; refuse unless it is `length` bytes of `sha256`. Always
/// a copy of the file opened: a hard link would name whatever `from` is by then (it can be
/// swapped after the open), and would share its inode, so that a later write to the release's
/// file would change the published payload.
fn copy_checked(
    from: &Path,
    to: &Path,
    length: u64,
    sha256: &str,
    name: &str,
) -> Result<(), GovernanceError> {
    let mismatch = |found: String, n: u64| {
        GovernanceError::Release {
        path: from.to_path_buf(),
        message: format!("{name}: sha256 {found} ({n} bytes), the signed targets say {sha256} ({length} bytes)"),
        hint: "the release changed since it was elected; elect it again (and have it signed) or restore it".into(),
    }
    };
    let read_err = |source| GovernanceError::Read {
        path: from.to_path_buf(),
        what: "elected artifact",
        source,
    };
    let src = plinth_release::untrusted::open_untrusted(from).map_err(read_err)?;
    let out = std::fs::File::create(to).map_err(|source| GovernanceError::Write {
        path: to.to_path_buf(),
        source,
    })?;
    let mut w = plinth_release::Sha256Writer::new(std::io::BufWriter::new(out));
    std::io::copy(&mut src.take(length.saturating_add(1)), &mut w).map_err(read_err)?;
    let (buf, found, n) = w.finish();
    buf.into_inner()
        .map_err(|e| GovernanceError::Write {
            path: to.to_path_buf(),
            source: e.into_error(),
        })?
        .sync_all()
        .map_err(|source| GovernanceError::Write {
            path: to.to_path_buf(),
            source,
        })?;
    if n != length || found.to_hex() != sha256 {
        return Err(mismatch(found.to_hex(), n));
    }
    Ok(())
}

/// Write a policy target's bytes, which must be what targets.json signed.
fn write_policy(
    to: &Path,
    policy: &PolicyCustom,
    target: &tough::schema::Target,
    name: &str,
) -> Result<(), GovernanceError> {
    let bytes = policy.payload();
    if bytes.len() as u64 != target.length
        || Sha256::of(&bytes).as_bytes().as_slice() != target.hashes.sha256.as_ref() as &[u8]
    {
        return Err(GovernanceError::refused(
            format!("{name}: its signed hash is not that of its policy"),
            "the targets were not written by plinth governance; stage them again",
        ));
    }
    std::fs::write(to, bytes).map_err(|source| GovernanceError::Write {
        path: to.to_path_buf(),
        source,
    })
}

fn sync(path: &Path) -> Result<(), GovernanceError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|source| GovernanceError::Write {
            path: path.to_path_buf(),
            source,
        })
}

fn sync_dir(dir: &Path) -> Result<(), GovernanceError> {
    sync(dir)
}
