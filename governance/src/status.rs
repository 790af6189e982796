//! `status`: load a published repository as a node will, with tough's `RepositoryLoader`
//! from a root obtained out of band (TUF 5.2), every role's signatures, thresholds,
//! versions and expiry enforced (a fresh datastore in a temporary directory), and say what
//! it holds: per OS the elected versions, their waves (from when, for which seeds), the
//! `max_version`, when each role expires, and which keys signed the targets. A repository a
//! client would refuse is an error naming the role (expired timestamp, targets below
//! threshold, ...). With `check_payloads`, every target is also read through tough, which
//! checks its length and sha256 as it streams.

use crate::custom::{Entry, Wave};
use crate::error::GovernanceError;
use crate::files;
use crate::names::TargetPath;
use crate::signatures;
use plinth_release::{FileName, Os, Sha256, Version};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tough::schema::RoleType;
use tough::{ExpirationEnforcement, Limits, RepositoryLoader};
use url::Url;

#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// A repository directory or its `file://` URL.
    pub repo: String,
    /// The trusted root (root.json of any published version, obtained out of band).
    pub root: PathBuf,
    /// Read every payload through tough and check it.
    pub check_payloads: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub repo: String,
    pub roles: Vec<RoleStatus>,
    /// Key ids of the valid targets signatures, and how many were needed.
    pub targets_signed_by: Vec<String>,
    pub targets_threshold: u64,
    /// Governance keys (root and targets roles) of the root in force.
    pub governance_keys: Vec<String>,
    pub oses: Vec<OsStatus>,
    /// How many payloads were read and checked (with `check_payloads`).
    pub payloads_checked: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleStatus {
    pub role: String,
    pub version: u64,
    pub expires: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct OsStatus {
    pub os: Os,
    pub max_version: Option<Version>,
    pub elected: Vec<Elected>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Elected {
    pub version: Version,
    pub elected_at: String,
    pub manifest_sha256: Sha256,
    pub files: Vec<ElectedFile>,
    pub waves: Vec<Wave>,
    /// Its gated waves whose gate holds, from the snapshot (wave name → since when).
    pub gates_open: BTreeMap<String, crate::health::Opened>,
    /// Launch digests in its measurements (SEV-SNP), and predicted boot slots.
    pub snp_launch_digests: usize,
    pub slots_predicted: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ElectedFile {
    pub target: String,
    pub file: FileName,
    pub sha256: Sha256,
    pub length: u64,
}

/// The limits a status check (and a node) loads with: tough's defaults, except targets,
/// whose size snapshot.json always gives.
pub fn limits() -> Limits {
    Limits {
        max_root_size: 1 << 20,
        max_targets_size: 16 << 20,
        max_timestamp_size: 1 << 20,
        max_snapshot_size: 1 << 20,
        max_root_updates: 1024,
    }
}

/// The metadata and targets base URLs of `repo` (a directory or a `file://` URL).
pub fn base_urls(repo: &str) -> Result<(Url, Url), GovernanceError> {
    let bad = |why: String| {
        GovernanceError::refused(
            format!("{repo}: {why}"),
            "pass the directory publish wrote, or its file:// URL (https:// is the upgrade agent's)",
        )
    };
    let base = if repo.contains("://") {
        let url = Url::parse(repo).map_err(|e| bad(e.to_string()))?;
        if url.scheme() != "file" {
            return Err(bad(format!(
                "a {}:// repository cannot be read here",
                url.scheme()
            )));
        }
        let mut s = url.to_string();
        if !s.ends_with('/') {
            s.push('/');
        }
        Url::parse(&s).map_err(|e| bad(e.to_string()))?
    } else {
        let dir = std::fs::canonicalize(repo).map_err(|e| bad(format!("cannot open: {e}")))?;
        Url::from_directory_path(&dir).map_err(|_| bad("not an absolute directory".into()))?
    };
    let targets = base
        .join(&format!("{}/", crate::publish::TARGETS_DIR))
        .map_err(|e| bad(e.to_string()))?;
    Ok((base, targets))
}

/// Load the repository as a client and describe it.
pub async fn status(opts: &StatusOptions) -> Result<Status, GovernanceError> {
    let root_bytes = files::read_bounded(&opts.root, 1 << 20, "trusted root metadata")?;
    let (metadata, targets_url) = base_urls(&opts.repo)?;
    let datastore = tempfile::tempdir().map_err(|source| GovernanceError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let repo = RepositoryLoader::new(&root_bytes, metadata, targets_url)
        .limits(limits())
        .datastore(datastore.path())
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
        .map_err(|e| load_error(&opts.repo, &opts.root, e))?;

    let root = &repo.root().signed;
    let targets = repo.targets();
    let tally = signatures::tally(root, targets);
    let mut roles = vec![
        role_status("root", root.version.get(), &root.expires),
        role_status(
            "targets",
            targets.signed.version.get(),
            &targets.signed.expires,
        ),
        role_status(
            "snapshot",
            repo.snapshot().signed.version.get(),
            &repo.snapshot().signed.expires,
        ),
        role_status(
            "timestamp",
            repo.timestamp().signed.version.get(),
            &repo.timestamp().signed.expires,
        ),
    ];
    roles.sort_by_key(|r| {
        ["root", "targets", "snapshot", "timestamp"]
            .iter()
            .position(|n| *n == r.role)
    });

    let mut oses: BTreeMap<Os, OsStatus> = BTreeMap::new();
    let mut elected: BTreeMap<(Os, Version), Elected> = BTreeMap::new();
    let bad_target = |e: String| GovernanceError::Load {
        repo: opts.repo.clone(),
        role: "targets".into(),
        message: e,
        hint: "the repository was not published by plinth governance".into(),
    };
    let gates = crate::health::Gates::from_extra(&repo.snapshot().signed._extra).map_err(|e| {
        GovernanceError::Load {
            repo: opts.repo.clone(),
            role: "snapshot".into(),
            message: format!("{}: {e}", crate::health::EXTRA_KEY),
            hint: "the repository was not published by plinth governance".into(),
        }
    })?;
    for (name, target) in repo.all_targets() {
        let raw = name.raw();
        let path: TargetPath = raw.parse().map_err(bad_target)?;
        let entry = crate::custom::read_entry(raw, target).map_err(bad_target)?;
        let os_status = oses.entry(path.os()).or_insert_with(|| OsStatus {
            os: path.os(),
            max_version: None,
            elected: Vec::new(),
        });
        match entry {
            Entry::Policy(p) => os_status.max_version = p.max_version,
            Entry::Artifact(a) => {
                let e = elected
                    .entry((a.os, a.version.clone()))
                    .or_insert_with(|| Elected {
                        version: a.version.clone(),
                        elected_at: a.elected_at.to_string(),
                        manifest_sha256: a.manifest_sha256,
                        files: Vec::new(),
                        waves: a.waves.clone(),
                        gates_open: BTreeMap::new(),
                        snp_launch_digests: a
                            .measurements
                            .snp
                            .as_ref()
                            .map_or(0, |s| s.launch_digests.len()),
                        slots_predicted: a.measurements.slots.len(),
                    });
                if let Some(open) = gates.0.get(raw) {
                    e.gates_open.extend(open.clone());
                }
                e.files.push(ElectedFile {
                    target: raw.to_string(),
                    file: a.file,
                    sha256: a.sha256,
                    length: a.length,
                });
            }
        }
    }
    for ((os, _), e) in elected {
        oses.entry(os)
            .or_insert_with(|| OsStatus {
                os,
                max_version: None,
                elected: Vec::new(),
            })
            .elected
            .push(e);
    }
    for s in oses.values_mut() {
        s.elected
            .sort_by(|a, b| crate::order::compare(&a.version, &b.version));
        for e in &mut s.elected {
            e.files.sort_by(|a, b| a.target.cmp(&b.target));
        }
    }

    let payloads_checked = if opts.check_payloads {
        let names: Vec<tough::TargetName> = repo.all_targets().map(|(n, _)| n.clone()).collect();
        for name in &names {
            read_target(&repo, name).await?;
        }
        Some(names.len())
    } else {
        None
    };

    Ok(Status {
        repo: opts.repo.clone(),
        roles,
        targets_signed_by: tally.valid().iter().map(|s| s.to_string()).collect(),
        targets_threshold: tally.threshold,
        governance_keys: root
            .roles
            .get(&RoleType::Root)
            .map(|r| {
                r.keyids
                    .iter()
                    .map(|k| hex::encode(k.clone().into_vec()))
                    .collect()
            })
            .unwrap_or_default(),
        oses: oses.into_values().collect(),
        payloads_checked,
    })
}

/// Read target `name` whole through tough (length and sha256 checked as it streams); an
/// error names the target. Returns its length.
pub async fn read_target(
    repo: &tough::Repository,
    name: &tough::TargetName,
) -> Result<u64, GovernanceError> {
    use futures_util::StreamExt;
    let fail = |message: String| GovernanceError::Target {
        name: name.raw().to_string(),
        message,
    };
    let stream = repo
        .read_target(name)
        .await
        .map_err(|e| fail(e.to_string()))?
        .ok_or_else(|| fail("not in targets.json".into()))?;
    let mut stream = Box::pin(stream);
    let mut n = 0u64;
    loop {
        match stream.next().await {
            None => return Ok(n),
            Some(Ok(bytes)) => n += bytes.len() as u64,
            Some(Err(e)) => {
                return Err(fail(format!(
                    "{e}\n  hint: the payload is not the one governance signed; republish it from the release"
                )))
            }
        }
    }
}

fn role_status(role: &str, version: u64, expires: &jiff::Timestamp) -> RoleStatus {
    RoleStatus {
        role: role.into(),
        version,
        expires: expires.to_string(),
    }
}

/// tough's load error as one naming the role.
fn load_error(repo: &str, root: &Path, e: tough::error::Error) -> GovernanceError {
    use tough::error::Error as E;
    let (role, hint) = match &e {
        E::ExpiredMetadata { role, .. } => (
            role.to_string(),
            match role {
                RoleType::Timestamp | RoleType::Snapshot => {
                    "the publisher re-publishes before the timestamp expires (plinth governance publish)"
                }
                RoleType::Targets => "governance stages and signs the targets again (elect or revoke), then publish",
                _ => "governance rotates the root (rotate-root), signs and publishes it",
            }
            .to_string(),
        ),
        E::VerifyMetadata { role, .. } => (
            role.to_string(),
            format!(
                "a node trusting {} refuses this metadata: publish a correctly signed version, or pass this repository's own root (--trusted-root)",
                root.display()
            ),
        ),
        E::OlderMetadata { role, .. } | E::VersionMismatch { role, .. } => (
            role.to_string(),
            "a node refuses this metadata; publish a correctly signed version".into(),
        ),
        E::ParseMetadata { role, .. } => (role.to_string(), "the file is corrupt; publish again".into()),
        E::VerifyTrustedMetadata { .. } | E::ParseTrustedMetadata { .. } => (
            format!("root ({})", root.display()),
            "pass a root.json of this repository obtained out of band (--trusted-root)".into(),
        ),
        E::Transport { url, .. } => (
            url.path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or("metadata")
                .to_string(),
            "a file is missing or unreadable; is this the directory publish wrote?".into(),
        ),
        _ => ("metadata".into(), "a node would refuse this repository".into()),
    };
    GovernanceError::Load {
        repo: repo.into(),
        role,
        message: e.to_string(),
        hint,
    }
}

/// A rendering of `status` for people.
pub fn lines(s: &Status) -> Vec<String> {
    let mut out = vec![format!("repository {}", s.repo)];
    for r in &s.roles {
        out.push(format!(
            "  {:<9} v{:<4} expires {}",
            r.role, r.version, r.expires
        ));
    }
    out.push(format!(
        "  targets signed by {} of {} needed: {}",
        s.targets_signed_by.len(),
        s.targets_threshold,
        s.targets_signed_by.join(", ")
    ));
    if s.oses.is_empty() {
        out.push("nothing elected".into());
    }
    for os in &s.oses {
        out.push(format!(
            "{}: max_version {}",
            os.os,
            os.max_version.as_ref().map_or("none", |v| v.as_str())
        ));
        for e in &os.elected {
            out.push(format!("  {} elected {}", e.version, e.elected_at));
            for f in &e.files {
                out.push(format!(
                    "    {} sha256 {} ({} bytes)",
                    f.target, f.sha256, f.length
                ));
            }
            for w in &e.waves {
                let gate = match (&w.gate, e.gates_open.get(w.name.as_str())) {
                    (None, _) => String::new(),
                    (Some(_), Some(o)) => format!(
                        "; gate open since {} ({} healthy, {} failed)",
                        o.since, o.healthy, o.failed
                    ),
                    (Some(_), None) => "; gate held".to_string(),
                };
                out.push(format!("    wave {:<12} {}{gate}", w.name, w.describe()));
            }
        }
    }
    if let Some(n) = s.payloads_checked {
        out.push(format!("{n} payloads read and checked"));
    }
    out
}
