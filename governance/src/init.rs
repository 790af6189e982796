//! `init`: a new record. The governance keys are either generated here (`--keys N`, for a
//! ceremony on one offline machine, each key then carried to its voter) or given as the
//! public keys voters generated on their own machines (`keygen`, then `--public-key
//! FILE.pub` each); the publisher key, which signs snapshot and timestamp online, is
//! generated here. The root (v1) lists the N governance keys for the `root` and `targets`
//! roles with threshold K and the publisher key for `snapshot` and `timestamp` (threshold
//! 1). It is staged unsigned: each voter signs it on their own machine (`sign --role root`),
//! and the first `publish` requires K of those signatures (TUF 5.3.4: a root is signed by a
//! threshold of its own keys).

use crate::error::GovernanceError;
use crate::keys::{self, NewKey};
use crate::staging::SPEC_VERSION;
use crate::workdir::{Config, Workdir};
use serde::Serialize;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use tough::schema::key::Key;
use tough::schema::{RoleKeys, RoleType, Root, Signed};

/// The most governance keys a root may list.
pub const MAX_KEYS: usize = 64;
/// The name of the publisher key's files.
pub const PUBLISHER: &str = "publisher";

/// Where the governance keys come from.
#[derive(Debug, Clone)]
pub enum GovernanceKeys {
    /// Generate this many, as `voter-1.pem` ... in the key directory.
    Generate(usize),
    /// The voters' public key files.
    Public(Vec<PathBuf>),
}

#[derive(Debug, Clone)]
pub struct InitOptions {
    pub workdir: PathBuf,
    pub keys: GovernanceKeys,
    pub threshold: u64,
    /// Where generated keys go (0700); default `<workdir>/keys`.
    pub key_dir: Option<PathBuf>,
    pub root_expires: jiff::Timestamp,
}

/// What init made.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub workdir: PathBuf,
    pub staged_root: PathBuf,
    pub threshold: u64,
    pub governance_keys: Vec<KeyFile>,
    pub publisher_key: KeyFile,
    pub root_expires: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyFile {
    pub key_id: String,
    /// The private key, when init generated it.
    pub private: Option<PathBuf>,
    pub public: Option<PathBuf>,
}

impl From<&NewKey> for KeyFile {
    fn from(k: &NewKey) -> KeyFile {
        KeyFile {
            key_id: k.key_id.clone(),
            private: Some(k.private.clone()),
            public: Some(k.public.clone()),
        }
    }
}

/// Make the record: keys, workdir, staged root v1.
pub fn init(opts: &InitOptions) -> Result<InitReport, GovernanceError> {
    let n = match &opts.keys {
        GovernanceKeys::Generate(n) => *n,
        GovernanceKeys::Public(files) => files.len(),
    };
    let k = opts.threshold;
    if n == 0 || n > MAX_KEYS {
        return Err(GovernanceError::refused(
            format!("{n} governance keys: expected 1 to {MAX_KEYS}"),
            "pass --keys N or one --public-key per voter",
        ));
    }
    if k == 0 || k > n as u64 {
        return Err(GovernanceError::refused(
            format!("threshold {k} with {n} keys: expected 1 to {n}"),
            "a threshold is how many of the keys must sign; it can be neither 0 nor more than the keys",
        ));
    }
    if opts.workdir.join(crate::workdir::MARKER).exists() {
        return Err(GovernanceError::refused(
            format!(
                "{}: is a governance workdir already",
                opts.workdir.display()
            ),
            "init makes a new record; use another directory",
        ));
    }
    // Public keys first: a bad file refuses before anything is written.
    let given: Vec<(Key, PathBuf)> = match &opts.keys {
        GovernanceKeys::Public(files) => files
            .iter()
            .map(|p| keys::read_public(p).map(|k| (k, p.clone())))
            .collect::<Result<_, _>>()?,
        GovernanceKeys::Generate(_) => Vec::new(),
    };
    let key_dir = opts
        .key_dir
        .clone()
        .unwrap_or_else(|| opts.workdir.join("keys"));
    // Every key file to generate is checked first, so that a name taken half-way through
    // does not leave some keys behind.
    let names: Vec<String> = match opts.keys {
        GovernanceKeys::Generate(n) => (1..=n).map(|i| format!("voter-{i}")).collect(),
        GovernanceKeys::Public(_) => Vec::new(),
    };
    for name in names.iter().map(String::as_str).chain([PUBLISHER]) {
        for ext in ["pem", "pub"] {
            let p = key_dir.join(format!("{name}.{ext}"));
            if std::fs::symlink_metadata(&p).is_ok() {
                return Err(GovernanceError::refused(
                    format!(
                        "{}: exists already; a key file is never overwritten",
                        p.display()
                    ),
                    "init generates its keys into a new --key-dir",
                ));
            }
        }
    }
    let mut governance: Vec<(Key, KeyFile)> = Vec::new();
    for (key, path) in given {
        let key_id = keys::key_id(&key);
        if governance.iter().any(|(_, f)| f.key_id == key_id) {
            return Err(GovernanceError::refused(
                format!("{}: key {key_id} is given twice", path.display()),
                "each voter has a key of their own",
            ));
        }
        governance.push((
            key,
            KeyFile {
                key_id,
                private: None,
                public: Some(path),
            },
        ));
    }
    for name in &names {
        let k = keys::generate(&key_dir, name)?;
        governance.push((k.key.clone(), KeyFile::from(&k)));
    }
    let publisher = keys::generate(&key_dir, PUBLISHER)?;
    let root = new_root(
        governance.iter().map(|(k, _)| k.clone()).collect(),
        k,
        &publisher.key,
        opts.root_expires,
    );
    let publisher_key = absolute(&publisher.private);
    let workdir = Workdir::create(
        &opts.workdir,
        Config {
            format_version: crate::workdir::FORMAT_VERSION,
            publisher_key,
            next_publisher_key: None,
        },
    )?;
    // Private keys never travel with the workdir (it is passed from voter to voter).
    crate::files::write_atomic(&opts.workdir.join(".gitignore"), b"keys/\n", 0o644)?;
    workdir.write_staged_root(&Signed {
        signed: root,
        signatures: Vec::new(),
    })?;
    Ok(InitReport {
        workdir: opts.workdir.clone(),
        staged_root: workdir.staged_path(crate::workdir::StagedRole::Root),
        threshold: k,
        governance_keys: governance.into_iter().map(|(_, f)| f).collect(),
        publisher_key: KeyFile::from(&publisher),
        root_expires: opts.root_expires.to_string(),
    })
}

/// Root v1: `governance` for root and targets (threshold `k`), `publisher` for snapshot and
/// timestamp.
fn new_root(governance: Vec<Key>, k: u64, publisher: &Key, expires: jiff::Timestamp) -> Root {
    let ids: Vec<_> = governance
        .iter()
        .map(|k| k.key_id().expect("a key serializes"))
        .collect();
    let publisher_id = publisher.key_id().expect("a key serializes");
    let mut all_keys = HashMap::new();
    for (id, key) in ids.iter().zip(governance) {
        all_keys.insert(id.clone(), key);
    }
    all_keys.insert(publisher_id.clone(), publisher.clone());
    let role = |keyids: Vec<_>, threshold: u64| RoleKeys {
        keyids,
        threshold: NonZeroU64::new(threshold).expect("thresholds were checked"),
        _extra: HashMap::new(),
    };
    Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires,
        keys: all_keys,
        roles: HashMap::from([
            (RoleType::Root, role(ids.clone(), k)),
            (RoleType::Targets, role(ids, k)),
            (RoleType::Snapshot, role(vec![publisher_id.clone()], 1)),
            (RoleType::Timestamp, role(vec![publisher_id], 1)),
        ]),
        _extra: HashMap::new(),
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
