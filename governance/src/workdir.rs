//! The governance work directory: the small, copyable state between `init` and `publish`.
//! It holds only JSON (no payloads), so it can live in a git repository or be passed from
//! voter to voter:
//!
//! ```text
//! governance.json          marks the directory; where the publisher key is (and the next
//!                          one, while a root that replaces it is staged)
//! root.json                the root in force (the last one published)
//! roots/<N>.root.json      every root published, for the repository's chain
//! staged/root.json         a root awaiting signatures (init's v1, rotate-root's N+1)
//! staged/targets.json      targets awaiting signatures (elect, revoke)
//! published/targets.json   the targets last published (what the next election starts from)
//! published/gates.json     the health gates the last publish signed (their `since` kept)
//! published/versions.json  the snapshot and timestamp versions last published (the next
//!                          publication's start, wherever it goes)
//! sources.json             where publish finds each artifact's bytes (not signed)
//! ```
//!
//! Every file is read as outside input (bounded, parsed, checked) and written atomically.

use crate::error::GovernanceError;
use crate::files::{self, MAX_METADATA};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tough::schema::{Role, RoleType, Root, Signed, Targets};

/// The workdir format this plinth reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// The file that marks a workdir.
pub const MARKER: &str = "governance.json";

/// `governance.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub format_version: u32,
    /// The publisher's private key (signs snapshot and timestamp): the one init made, or the
    /// one a published rotation put in its place.
    pub publisher_key: PathBuf,
    /// The private key of the publisher key a staged root puts in place
    /// (`rotate-root --publisher-key NAME.pub` records the `NAME.pem` beside it): `publish`
    /// signs with it when it publishes that root, and it then becomes `publisher_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_publisher_key: Option<PathBuf>,
}

/// `published/versions.json`: the snapshot and timestamp versions this workdir published
/// last. The next publication counts on from here, never from what a repository directory
/// says (anyone who can write there could claim any version).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedVersions {
    pub snapshot: u64,
    pub timestamp: u64,
}

/// Where publish reads one artifact's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub path: PathBuf,
    pub sha256: plinth_release::Sha256,
    pub length: u64,
}

/// `sources.json`: target name → its source.
pub type Sources = BTreeMap<String, Source>;

/// An open workdir.
#[derive(Debug, Clone)]
pub struct Workdir {
    pub dir: PathBuf,
    pub config: Config,
}

/// Which role's staged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagedRole {
    Root,
    Targets,
}

impl StagedRole {
    pub fn as_str(self) -> &'static str {
        match self {
            StagedRole::Root => "root",
            StagedRole::Targets => "targets",
        }
    }
}

impl Workdir {
    /// Create a new workdir at `dir` (which must not be a workdir already).
    pub fn create(dir: &Path, config: Config) -> Result<Workdir, GovernanceError> {
        if dir.join(MARKER).exists() {
            return Err(GovernanceError::refused(
                format!("{}: is a governance workdir already", dir.display()),
                "init makes a new record; use another directory",
            ));
        }
        for sub in ["", "staged", "published", "roots"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d)
                .map_err(|source| GovernanceError::Write { path: d, source })?;
        }
        files::write_json(&dir.join(MARKER), &config)?;
        Ok(Workdir {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// Open the workdir at `dir`.
    pub fn open(dir: &Path) -> Result<Workdir, GovernanceError> {
        let marker = dir.join(MARKER);
        if !marker.exists() {
            return Err(GovernanceError::refused(
                format!("{}: not a governance workdir (no {MARKER})", dir.display()),
                "pass the directory `plinth governance init` made (--workdir DIR)",
            ));
        }
        let config: Config = files::read_json(&marker, 64 << 10, "workdir configuration")?;
        if config.format_version != FORMAT_VERSION {
            return Err(GovernanceError::refused(
                format!(
                    "{}: format_version {}, this plinth reads {FORMAT_VERSION}",
                    marker.display(),
                    config.format_version
                ),
                "use the plinth that made the workdir",
            ));
        }
        Ok(Workdir {
            dir: dir.to_path_buf(),
            config,
        })
    }

    /// Write `governance.json` (atomically).
    pub fn write_config(&self) -> Result<(), GovernanceError> {
        files::write_json(&self.dir.join(MARKER), &self.config)
    }

    /// The publisher key `publish` signs with unless told otherwise: the next one while a
    /// root that replaces the publisher key is staged (snapshot and timestamp must be signed
    /// by the root that will be in force), else the one in force.
    pub fn default_publisher_key(&self) -> Result<PathBuf, GovernanceError> {
        match &self.config.next_publisher_key {
            Some(next) if self.staged_root()?.is_some() => Ok(next.clone()),
            _ => Ok(self.config.publisher_key.clone()),
        }
    }

    pub fn trusted_root_path(&self) -> PathBuf {
        self.dir.join("root.json")
    }

    pub fn staged_path(&self, role: StagedRole) -> PathBuf {
        self.dir
            .join("staged")
            .join(format!("{}.json", role.as_str()))
    }

    pub fn published_targets_path(&self) -> PathBuf {
        self.dir.join("published").join("targets.json")
    }

    pub fn published_versions_path(&self) -> PathBuf {
        self.dir.join("published").join("versions.json")
    }

    /// The snapshot and timestamp versions last published, if this workdir recorded any.
    pub fn published_versions(&self) -> Result<Option<PublishedVersions>, GovernanceError> {
        read_optional(
            &self.published_versions_path(),
            "published snapshot and timestamp versions",
        )
    }

    pub fn write_published_versions(&self, v: &PublishedVersions) -> Result<(), GovernanceError> {
        files::write_json(&self.published_versions_path(), v)
    }

    pub fn published_gates_path(&self) -> PathBuf {
        self.dir.join("published").join("gates.json")
    }

    /// The health gates the last publish signed (none: empty).
    pub fn published_gates(&self) -> Result<crate::health::Gates, GovernanceError> {
        Ok(
            read_optional(&self.published_gates_path(), "published health gates")?
                .unwrap_or_default(),
        )
    }

    pub fn write_published_gates(&self, g: &crate::health::Gates) -> Result<(), GovernanceError> {
        files::write_json(&self.published_gates_path(), g)
    }

    pub fn root_history_path(&self, version: u64) -> PathBuf {
        self.dir.join("roots").join(format!("{version}.root.json"))
    }

    /// The root in force, if one was published.
    pub fn trusted_root(&self) -> Result<Option<Signed<Root>>, GovernanceError> {
        read_optional(&self.trusted_root_path(), "root metadata")?
            .map(|r| check_root(&self.trusted_root_path(), r))
            .transpose()
    }

    /// The staged root, if any.
    pub fn staged_root(&self) -> Result<Option<Signed<Root>>, GovernanceError> {
        let path = self.staged_path(StagedRole::Root);
        read_optional(&path, "staged root metadata")?
            .map(|r| check_root(&path, r))
            .transpose()
    }

    /// The staged targets, if any.
    pub fn staged_targets(&self) -> Result<Option<Signed<Targets>>, GovernanceError> {
        read_optional(
            &self.staged_path(StagedRole::Targets),
            "staged targets metadata",
        )
    }

    /// The targets last published, if any.
    pub fn published_targets(&self) -> Result<Option<Signed<Targets>>, GovernanceError> {
        read_optional(&self.published_targets_path(), "published targets metadata")
    }

    /// The root the staged targets will be checked against when published: the staged root
    /// if one is staged (it will be in force by then), else the root in force.
    pub fn root_for_targets(&self) -> Result<Signed<Root>, GovernanceError> {
        match self.staged_root()? {
            Some(r) => Ok(r),
            None => self.trusted_root()?.ok_or_else(|| {
                GovernanceError::refused(
                    format!("{}: no root yet", self.dir.display()),
                    "run plinth governance init first",
                )
            }),
        }
    }

    pub fn write_staged_root(&self, root: &Signed<Root>) -> Result<(), GovernanceError> {
        files::write_json(&self.staged_path(StagedRole::Root), root)
    }

    pub fn write_staged_targets(&self, targets: &Signed<Targets>) -> Result<(), GovernanceError> {
        files::write_json(&self.staged_path(StagedRole::Targets), targets)
    }

    /// Remove a staged file (after publishing it).
    pub fn clear_staged(&self, role: StagedRole) -> Result<(), GovernanceError> {
        let path = self.staged_path(role);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(GovernanceError::Write { path, source }),
        }
    }

    pub fn sources(&self) -> Result<Sources, GovernanceError> {
        Ok(read_optional(&self.dir.join("sources.json"), "payload sources")?.unwrap_or_default())
    }

    pub fn write_sources(&self, sources: &Sources) -> Result<(), GovernanceError> {
        files::write_json(&self.dir.join("sources.json"), sources)
    }
}

/// `path` parsed, or `None` if there is no such file.
fn read_optional<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Option<T>, GovernanceError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => files::read_json(path, MAX_METADATA, what).map(Some),
    }
}

/// The shape every root of the record has: plain ed25519 keys, the four roles, each with a
/// threshold it can meet, the `targets` role the governance (`root`) keys and threshold,
/// consistent snapshots. A root read from a file that breaks it is refused, naming the file.
pub fn check_root(path: &Path, root: Signed<Root>) -> Result<Signed<Root>, GovernanceError> {
    let bad = |message: String| GovernanceError::Staged {
        path: path.to_path_buf(),
        message,
        hint: "roots are made by plinth governance init and rotate-root; take a fresh copy".into(),
    };
    let r = &root.signed;
    if !r.consistent_snapshot {
        return Err(bad(
            "consistent_snapshot is false; the record always uses consistent snapshots".into(),
        ));
    }
    for (id, key) in &r.keys {
        if !crate::keys::is_plain_ed25519(key) {
            return Err(bad(format!(
                "key {} is not a plain ed25519 key",
                hex::encode(id.clone().into_vec())
            )));
        }
        let computed = key.key_id().map_err(|e| bad(e.to_string()))?;
        if computed != *id {
            return Err(bad(format!(
                "key id {} is not its key's id",
                hex::encode(id.clone().into_vec())
            )));
        }
    }
    for role in [
        RoleType::Root,
        RoleType::Targets,
        RoleType::Snapshot,
        RoleType::Timestamp,
    ] {
        let keys = r
            .roles
            .get(&role)
            .ok_or_else(|| bad(format!("no `{role}` role")))?;
        if keys.threshold.get() > keys.keyids.len() as u64 {
            return Err(bad(format!(
                "role `{role}` needs {} signatures but has {} keys",
                keys.threshold,
                keys.keyids.len()
            )));
        }
        if let Some(id) = keys.keyids.iter().find(|id| !r.keys.contains_key(*id)) {
            return Err(bad(format!(
                "role `{role}` names key {} which root does not list",
                hex::encode(id.clone().into_vec())
            )));
        }
    }
    check_targets_role(path, &root)?;
    Ok(root)
}

/// Governance elects with the same k-of-n keys it governs with: the `targets` role of every
/// root of the record has exactly the `root` role's keys and threshold (init and rotate-root
/// keep them equal). A root whose `targets` role differs, say one key of the coordinator's
/// with threshold 1, would let that key alone elect releases once the root is signed, so it
/// is refused wherever a root is read (sign, merge, publish), naming what differs.
fn check_targets_role(path: &Path, root: &Signed<Root>) -> Result<(), GovernanceError> {
    let r = &root.signed;
    let (gov, targets) = (&r.roles[&RoleType::Root], &r.roles[&RoleType::Targets]);
    let ids = |k: &tough::schema::RoleKeys| -> std::collections::BTreeSet<String> {
        k.keyids
            .iter()
            .map(|id| hex::encode(id.clone().into_vec()))
            .collect()
    };
    let (gov_ids, targets_ids) = (ids(gov), ids(targets));
    let mut differences = Vec::new();
    let only_targets: Vec<&str> = targets_ids
        .difference(&gov_ids)
        .map(|s| s.as_str())
        .collect();
    if !only_targets.is_empty() {
        differences.push(format!(
            "it lists key(s) {} that are not governance (`root`) keys",
            only_targets.join(", ")
        ));
    }
    let only_gov: Vec<&str> = gov_ids
        .difference(&targets_ids)
        .map(|s| s.as_str())
        .collect();
    if !only_gov.is_empty() {
        differences.push(format!(
            "it leaves out governance key(s) {}",
            only_gov.join(", ")
        ));
    }
    if targets.keyids.len() != targets_ids.len() {
        differences.push("it lists a key twice".into());
    }
    if targets.threshold != gov.threshold {
        differences.push(format!(
            "its threshold is {}, the `root` role's is {}",
            targets.threshold, gov.threshold
        ));
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(GovernanceError::Staged {
        path: path.to_path_buf(),
        message: format!(
            "root v{}: role `targets` is not the governance keys ({} of {} keys in role `root`): {}",
            r.version,
            gov.threshold,
            gov_ids.len(),
            differences.join("; ")
        ),
        hint: "targets are elected by the same k-of-n governance keys as the root; do not sign this root. Stage roots only with plinth governance init or rotate-root (remove staged/root.json and run rotate-root again)".into(),
    })
}

/// A role's version and expiry, for messages: "targets v3 (expires 2026-04-01T00:00:00Z)".
pub fn describe<T: Role>(name: &str, role: &T) -> String {
    format!("{name} v{} (expires {})", role.version(), role.expires())
}
