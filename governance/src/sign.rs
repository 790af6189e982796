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

use crate::error::GovernanceError;
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
/// before signing.
pub fn describe(dir: &Path, role: StagedRole) -> Result<Vec<String>, GovernanceError> {
    let workdir = Workdir::open(dir)?;
    let mut out = Vec::new();
    match role {
        StagedRole::Targets => {
            if let Some(t) = workdir.staged_targets()? {
                out.push(format!(
                    "targets v{} (expires {}):",
                    t.signed.version, t.signed.expires
                ));
                for (path, entry) in crate::staging::entries(&t.signed)? {
                    out.push(match entry {
                        crate::custom::Entry::Artifact(a) => format!(
                            "  {path}: sha256 {} ({} bytes), manifest sha256 {}, {} wave(s) from {}",
                            a.sha256,
                            a.length,
                            a.manifest_sha256,
                            a.waves.len(),
                            a.waves.first().map_or("never".into(), |w| w.opens_at.to_string())
                        ),
                        crate::custom::Entry::Policy(p) => format!(
                            "  {path}: max_version {}",
                            p.max_version.as_ref().map_or("none", |v| v.as_str())
                        ),
                    });
                }
            }
        }
        StagedRole::Root => {
            if let Some(r) = workdir.staged_root()? {
                let keys = &r.signed.roles[&RoleType::Root];
                out.push(format!(
                    "root v{} (expires {}): {} of these {} governance keys:",
                    r.signed.version,
                    r.signed.expires,
                    keys.threshold,
                    keys.keyids.len()
                ));
                for id in &keys.keyids {
                    out.push(format!("  {}", hex::encode(id.clone().into_vec())));
                }
            }
        }
    }
    Ok(out)
}
