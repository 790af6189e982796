//! `sign` and `merge`: how voters' signatures reach a staged role. Each voter holds a copy of
//! the workdir (JSON only: it can be a git clone or an archive passed around) and their own
//! key. `sign --key FILE` adds that key's signature to the workdir's staged file in place,
//! after showing what is signed; the signed copy goes back to the coordinator, who either
//! passes the same workdir to the next voter (signing in turn) or `merge`s the voters'
//! staged files (`staged/targets.json` of each copy) into one: copies must sign the same
//! content, and only signatures that verify by a key of the role are taken.
//!
//! A key signs targets only if it is a targets key of the root that will be in force (the
//! staged root, if one is staged); it signs a root only if it is a root key of the root in
//! force or of the staged root (a rotation needs both).
//!
//! What a voter is shown first ([`describe`]) is the whole staged role and how it differs
//! from what is in force: for a root, every role's keys and threshold and, per role, the keys
//! added and removed and the threshold changed; for targets, every entry with its waves and
//! the versions added, removed or changed and each OS's max_version change. A staged root
//! whose `targets` role is not its governance keys is refused before anything is shown or
//! signed ([`crate::workdir::check_root`]).

use crate::custom::{Entry, Wave};
use crate::error::GovernanceError;
use crate::names::TargetPath;
use crate::signatures::{self, Merged, Tally};
use crate::workdir::{StagedRole, Workdir};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tough::key_source::KeySource;
use tough::schema::{Role, RoleType, Root, Signed};

/// What `sign` did.
#[derive(Debug, Clone, Serialize)]
pub struct SignReport {
    pub role: &'static str,
    pub version: u64,
    pub key_id: String,
    pub staged: PathBuf,
    /// How the role stands now, against each root that must accept it.
    pub tallies: Vec<(String, Tally)>,
}

/// Add `source`'s signature to the staged `role` of the workdir at `dir`.
pub async fn sign(
    dir: &Path,
    role: StagedRole,
    source: &dyn KeySource,
    key_path: &Path,
) -> Result<SignReport, GovernanceError> {
    let workdir = Workdir::open(dir)?;
    let staged = workdir.staged_path(role);
    match role {
        StagedRole::Targets => {
            let mut targets = workdir
                .staged_targets()?
                .ok_or_else(|| nothing_staged(&staged, role))?;
            let root = workdir.root_for_targets()?;
            let key_id = signatures::add(&mut targets, source, key_path, |id| {
                if root.signed.roles[&RoleType::Targets].keyids.contains(id) {
                    Ok(())
                } else {
                    Err(format!(
                        "is not a targets key of root v{}",
                        root.signed.version
                    ))
                }
            })
            .await?;
            workdir.write_staged_targets(&targets)?;
            Ok(SignReport {
                role: "targets",
                version: targets.signed.version.get(),
                key_id,
                staged,
                tallies: vec![(
                    format!("root v{}", root.signed.version),
                    signatures::tally(&root.signed, &targets),
                )],
            })
        }
        StagedRole::Root => {
            let mut root = workdir
                .staged_root()?
                .ok_or_else(|| nothing_staged(&staged, role))?;
            let old = workdir.trusted_root()?;
            let judges = root_judges(old.as_ref(), &root);
            let key_id = signatures::add(&mut root, source, key_path, |id| {
                if judges
                    .iter()
                    .any(|r| r.roles[&RoleType::Root].keyids.contains(id))
                {
                    Ok(())
                } else {
                    Err(format!(
                        "is a root key of neither the root in force nor the staged root v{}",
                        root_version(&judges)
                    ))
                }
            })
            .await?;
            workdir.write_staged_root(&root)?;
            Ok(SignReport {
                role: "root",
                version: root.signed.version.get(),
                key_id,
                staged,
                tallies: root_tallies(old.as_ref(), &root),
            })
        }
    }
}

/// The roots whose keys may sign a staged root: the root in force (if any) and the staged
/// root itself; a new root needs a threshold of each (TUF 5.3.4).
fn root_judges(old: Option<&Signed<Root>>, staged: &Signed<Root>) -> Vec<Root> {
    old.iter()
        .map(|o| o.signed.clone())
        .chain([staged.signed.clone()])
        .collect()
}

fn root_version(judges: &[Root]) -> u64 {
    judges.last().map_or(0, |r| r.version.get())
}

/// How a staged root stands: against the old root's root keys (if any) and its own.
pub fn root_tallies(old: Option<&Signed<Root>>, staged: &Signed<Root>) -> Vec<(String, Tally)> {
    let mut out = Vec::new();
    if let Some(old) = old {
        out.push((
            format!("root v{}", old.signed.version),
            signatures::tally(&old.signed, staged),
        ));
    }
    out.push((
        format!("root v{}", staged.signed.version),
        signatures::tally(&staged.signed, staged),
    ));
    out
}

fn nothing_staged(path: &Path, role: StagedRole) -> GovernanceError {
    GovernanceError::refused(
        format!("{}: no {} is staged", path.display(), role.as_str()),
        match role {
            StagedRole::Targets => "elect or revoke stages targets",
            StagedRole::Root => "init and rotate-root stage a root",
        },
    )
}

/// Merge the signatures of voters' copies of the staged `role` (`files`) into the workdir's.
pub fn merge(
    dir: &Path,
    role: StagedRole,
    files: &[PathBuf],
) -> Result<Vec<(PathBuf, Merged)>, GovernanceError> {
    let workdir = Workdir::open(dir)?;
    let staged = workdir.staged_path(role);
    let mut out = Vec::new();
    match role {
        StagedRole::Targets => {
            let mut targets = workdir
                .staged_targets()?
                .ok_or_else(|| nothing_staged(&staged, role))?;
            let root = workdir.root_for_targets()?;
            for f in files {
                let other = read_copy(f, "a voter's staged targets")?;
                out.push((
                    f.clone(),
                    signatures::merge(&mut targets, other, f, &[&root.signed])?,
                ));
            }
            workdir.write_staged_targets(&targets)?;
        }
        StagedRole::Root => {
            let mut root = workdir
                .staged_root()?
                .ok_or_else(|| nothing_staged(&staged, role))?;
            let old = workdir.trusted_root()?;
            let judges = root_judges(old.as_ref(), &root);
            let refs: Vec<&Root> = judges.iter().collect();
            for f in files {
                let other = read_copy(f, "a voter's staged root")?;
                out.push((f.clone(), signatures::merge(&mut root, other, f, &refs)?));
            }
            workdir.write_staged_root(&root)?;
        }
    }
    Ok(out)
}

fn read_copy<T: Role + serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Signed<T>, GovernanceError> {
    crate::files::read_json(path, crate::files::MAX_METADATA, what)
}

/// What the staged `role` of the workdir at `dir` says, in lines for the voter to read
/// before signing: the whole of it, then how it differs from what is in force (the root in
/// force, the targets last published), since a voter signs the change as much as the result.
/// The baseline is the workdir's own copy; a baseline that does not carry the signatures it
/// was published with is said to be so (the copy was edited, compare with `status`).
pub fn describe(dir: &Path, role: StagedRole) -> Result<Vec<String>, GovernanceError> {
    let workdir = Workdir::open(dir)?;
    let mut out = Vec::new();
    match role {
        StagedRole::Targets => {
            if let Some(t) = workdir.staged_targets()? {
                let published = workdir.published_targets()?;
                out.push(format!(
                    "targets v{} (expires {}){}:",
                    t.signed.version,
                    t.signed.expires,
                    published.as_ref().map_or(String::new(), |p| format!(
                        ", replacing the published targets v{}",
                        p.signed.version
                    ))
                ));
                let staged = crate::staging::entries(&t.signed)?;
                for (path, entry) in &staged {
                    out.extend(entry_lines(&path.to_string(), entry));
                }
                match published {
                    None => out.push("changes: none published yet, every entry is new".into()),
                    Some(p) => {
                        if let Some(root) = workdir.trusted_root()? {
                            let tally = signatures::tally(&root.signed, &p);
                            if !tally.met() {
                                out.push(format!(
                                    "WARNING: the published targets v{} of this workdir carry {} valid signature(s) of the {} root v{} needs: they are not what was published; compare with plinth governance status",
                                    p.signed.version,
                                    tally.valid().len(),
                                    tally.threshold,
                                    root.signed.version
                                ));
                            }
                        }
                        out.push(format!(
                            "changes from the published targets v{}:",
                            p.signed.version
                        ));
                        let before = crate::staging::entries(&p.signed)?;
                        let changes = targets_changes(&before, &staged);
                        if changes.is_empty() {
                            out.push("  none (the same entries under a new version)".into());
                        }
                        out.extend(changes.into_iter().map(|c| format!("  {c}")));
                    }
                }
            }
        }
        StagedRole::Root => {
            if let Some(r) = workdir.staged_root()? {
                let old = workdir.trusted_root()?;
                out.push(format!(
                    "root v{} (expires {}){}:",
                    r.signed.version,
                    r.signed.expires,
                    old.as_ref().map_or(String::new(), |o| format!(
                        ", replacing root v{} (expires {})",
                        o.signed.version, o.signed.expires
                    ))
                ));
                for role in ROLES {
                    let keys = &r.signed.roles[&role];
                    out.push(format!(
                        "  {role}: {} of these {} key(s){}:",
                        keys.threshold,
                        keys.keyids.len(),
                        match role {
                            RoleType::Root => " (the governance keys)",
                            RoleType::Targets => " (the governance keys, who elect)",
                            _ => " (the publisher key, online)",
                        }
                    ));
                    for id in &keys.keyids {
                        out.push(format!("    {}", hex::encode(id.clone().into_vec())));
                    }
                }
                match old {
                    None => out.push(
                        "changes: no root is in force yet, this is the first; check every key id with its holder"
                            .into(),
                    ),
                    Some(o) => {
                        let tally = signatures::tally(&o.signed, &o);
                        if !tally.met() {
                            out.push(format!(
                                "WARNING: root v{} of this workdir (root.json) carries {} valid signature(s) of its own {} needed: it is not the root published; compare it with the root nodes trust",
                                o.signed.version,
                                tally.valid().len(),
                                tally.threshold
                            ));
                        }
                        out.push(format!("changes from root v{}:", o.signed.version));
                        out.extend(
                            root_changes(&o.signed, &r.signed)
                                .into_iter()
                                .map(|c| format!("  {c}")),
                        );
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The four roles, in the order they are shown.
const ROLES: [RoleType; 4] = [
    RoleType::Root,
    RoleType::Targets,
    RoleType::Snapshot,
    RoleType::Timestamp,
];

/// Per role: keys added and removed and a threshold change, or "no change".
pub fn root_changes(old: &Root, new: &Root) -> Vec<String> {
    ROLES
        .iter()
        .map(|role| {
            let (o, n) = (&old.roles[role], &new.roles[role]);
            let hexes = |k: &tough::schema::RoleKeys| -> Vec<String> {
                k.keyids
                    .iter()
                    .map(|id| hex::encode(id.clone().into_vec()))
                    .collect()
            };
            let (o_ids, n_ids) = (hexes(o), hexes(n));
            let mut what = Vec::new();
            for id in n_ids.iter().filter(|id| !o_ids.contains(id)) {
                what.push(format!("key {id} added"));
            }
            for id in o_ids.iter().filter(|id| !n_ids.contains(id)) {
                what.push(format!("key {id} removed"));
            }
            if o.threshold != n.threshold {
                what.push(format!("threshold {} -> {}", o.threshold, n.threshold));
            }
            if what.is_empty() {
                format!("{role}: no change")
            } else {
                format!("{role}: {}", what.join("; "))
            }
        })
        .collect()
}

/// An entry of the targets as the voter reads it: digests, every wave, max_version.
fn entry_lines(path: &str, entry: &Entry) -> Vec<String> {
    match entry {
        Entry::Artifact(a) => {
            let mut out = vec![format!(
                "  {path}: sha256 {} ({} bytes), manifest sha256 {}, {} wave(s)",
                a.sha256,
                a.length,
                a.manifest_sha256,
                a.waves.len()
            )];
            out.extend(a.waves.iter().map(|w| format!("    {}", wave_text(w))));
            out
        }
        Entry::Policy(p) => vec![format!("  {path}: max_version {}", max_version(p))],
    }
}

fn wave_text(w: &Wave) -> String {
    format!("wave {}: {}", w.name, w.describe())
}

fn waves_text(waves: &[Wave]) -> String {
    if waves.is_empty() {
        return "no waves".into();
    }
    waves.iter().map(wave_text).collect::<Vec<_>>().join(", ")
}

fn max_version(p: &crate::custom::PolicyCustom) -> &str {
    p.max_version.as_ref().map_or("none", |v| v.as_str())
}

/// What changes from the targets `before` to `after`: versions added and removed, an
/// artifact whose bytes, manifest, measurements or waves changed, each OS's max_version.
pub fn targets_changes(
    before: &[(TargetPath, Entry)],
    after: &[(TargetPath, Entry)],
) -> Vec<String> {
    let find = |list: &[(TargetPath, Entry)], p: &TargetPath| {
        list.iter().find(|(q, _)| q == p).map(|(_, e)| e.clone())
    };
    let mut out = Vec::new();
    for (path, entry) in after {
        match (find(before, path), entry) {
            (None, Entry::Artifact(a)) => out.push(format!(
                "added {path}: sha256 {}, {}",
                a.sha256,
                waves_text(&a.waves)
            )),
            (None, Entry::Policy(p)) => out.push(format!(
                "{} max_version: none -> {} (a new policy)",
                p.os,
                max_version(p)
            )),
            (Some(Entry::Artifact(o)), Entry::Artifact(a)) => {
                let mut what = Vec::new();
                if o.sha256 != a.sha256 || o.length != a.length {
                    what.push(format!(
                        "sha256 {} ({} bytes) -> {} ({} bytes)",
                        o.sha256, o.length, a.sha256, a.length
                    ));
                }
                if o.manifest_sha256 != a.manifest_sha256 {
                    what.push(format!(
                        "manifest sha256 {} -> {}",
                        o.manifest_sha256, a.manifest_sha256
                    ));
                }
                if o.measurements != a.measurements {
                    what.push("measurements changed".into());
                }
                if o.waves != a.waves {
                    what.push(format!(
                        "waves [{}] -> [{}]",
                        waves_text(&o.waves),
                        waves_text(&a.waves)
                    ));
                }
                if o.elected_at != a.elected_at && what.is_empty() {
                    what.push(format!("elected_at {} -> {}", o.elected_at, a.elected_at));
                }
                if !what.is_empty() {
                    out.push(format!("changed {path}: {}", what.join("; ")));
                }
            }
            (Some(Entry::Policy(o)), Entry::Policy(p)) => {
                if o.max_version != p.max_version {
                    out.push(format!(
                        "{} max_version: {} -> {}",
                        p.os,
                        max_version(&o),
                        max_version(p)
                    ));
                }
            }
            // A path names its kind, so an entry never changes kind.
            (Some(_), _) => out.push(format!("changed {path}: another kind of entry")),
        }
    }
    for (path, entry) in before {
        if find(after, path).is_none() {
            out.push(match entry {
                Entry::Artifact(_) => format!("removed {path}"),
                Entry::Policy(p) => {
                    format!("{} max_version: {} -> no policy", p.os, max_version(p))
                }
            });
        }
    }
    out
}
