//! `packages.lock`: the exact Debian packages of every profile of one OS, and the digests of
//! the indexes they were resolved from. Written deterministically (sorted, no timestamps):
//! same inputs and mirror state give the same bytes. Every digest is a [`Sha256`], so a lock
//! whose hex is wrong does not parse (the error names the file, line and field).

pub use super::index::IndexDigest;
pub use super::resolve::LockedPackage;
pub use super::sources::{LockedSource, SourceFile};
use plinth_release::Sha256;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The lock format version this plinth reads and writes.
pub const LOCK_VERSION: u32 = 1;

/// One OS's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub lock_version: u32,
    pub os: String,
    pub release: String,
    pub architecture: String,
    /// The indexes every profile was resolved from, sorted by suite then path.
    pub indexes: Vec<IndexDigest>,
    /// Per profile: what was asked and which packages resolved.
    pub profiles: BTreeMap<String, LockedProfile>,
    /// Every package of any profile, sorted by name, version, architecture.
    pub packages: Vec<LockedPackage>,
    /// Debian source packages the build compiles (the guest firmware's edk2), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<LockedSource>,
}

/// What one profile asked for and what it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedProfile {
    /// sha256 of the canonical JSON of [`LockInputs`]: changes whenever os.yaml changes
    /// anything resolution depends on.
    pub inputs_sha256: Sha256,
    pub inputs: LockInputs,
    /// `name=version` of every package of the profile, sorted.
    pub packages: Vec<String>,
}

/// Everything the resolution of one profile depends on, besides the mirror state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockInputs {
    pub release: String,
    pub architecture: String,
    pub variant: String,
    pub components: Vec<String>,
    pub suites: Vec<String>,
    /// Requested packages, `name` or `name/suite`, sorted.
    pub requests: Vec<String>,
}

/// A lock file that cannot be read or does not fit its spec.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path}: no lock file\n  hint: run `plinth lock {os}` to create it")]
    Missing { path: String, os: String },
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: line {line}, column {column}{}: not a valid packages.lock: {message}\n  hint: regenerate it with `plinth lock {os}`; do not edit it by hand", .field.as_ref().map(|f| format!(", field {f}")).unwrap_or_default())]
    Malformed {
        path: String,
        os: String,
        line: usize,
        column: usize,
        /// The field whose value broke its type's rule (e.g. `packages[3].sha256`), when the
        /// text was JSON of the right shape otherwise.
        field: Option<String>,
        message: String,
    },
    #[error("{path}: lock_version is {found}, this plinth reads version {LOCK_VERSION}\n  hint: regenerate it with `plinth lock {os}`")]
    Version {
        path: String,
        os: String,
        found: u32,
    },
    #[error("{path}: {message}\n  hint: regenerate it with `plinth lock {os}`")]
    Inconsistent {
        path: String,
        os: String,
        message: String,
    },
}

impl Lock {
    /// Read and structurally check a lock file; `display` names it in errors.
    pub fn read(path: &Path, display: &str, os: &str) -> Result<Lock, LockError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LockError::Missing {
                    path: display.to_string(),
                    os: os.to_string(),
                })
            }
            Err(source) => {
                return Err(LockError::Io {
                    path: display.to_string(),
                    source,
                })
            }
        };
        Self::parse(&text, display, os)
    }

    /// Parse lock text; see [`Lock::read`].
    pub fn parse(text: &str, display: &str, os: &str) -> Result<Lock, LockError> {
        let malformed = |e: serde_json::Error, field: Option<String>| LockError::Malformed {
            path: display.to_string(),
            os: os.to_string(),
            line: e.line(),
            column: e.column(),
            field,
            message: e.to_string(),
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let lock: Lock = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let e = e.into_inner();
            // A value that broke its type's rule (a digest that is not hex): name its field.
            let field = (e.is_data() && field != ".").then_some(field);
            malformed(e, field)
        })?;
        // Trailing text is malformed too, as with `serde_json::from_str`.
        de.end().map_err(|e| malformed(e, None))?;
        if lock.lock_version != LOCK_VERSION {
            return Err(LockError::Version {
                path: display.to_string(),
                os: os.to_string(),
                found: lock.lock_version,
            });
        }
        lock.check_consistent(display)?;
        Ok(lock)
    }

    /// The file's bytes: pretty JSON with a trailing newline. Field order is fixed by the
    /// types and every list is sorted, so equal locks give equal bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a lock always serializes");
        out.push(b'\n');
        out
    }

    /// The packages of one profile, in lock order.
    pub fn profile_packages(&self, profile: &str) -> Option<Vec<&LockedPackage>> {
        let p = self.profiles.get(profile)?;
        let wanted: std::collections::BTreeSet<&str> =
            p.packages.iter().map(String::as_str).collect();
        Some(
            self.packages
                .iter()
                .filter(|pkg| wanted.contains(pkg.key().as_str()))
                .collect(),
        )
    }

    fn check_consistent(&self, display: &str) -> Result<(), LockError> {
        let bad = |message: String| LockError::Inconsistent {
            path: display.to_string(),
            os: self.os.clone(),
            message,
        };
        let mut seen = std::collections::BTreeSet::new();
        for pkg in &self.packages {
            if pkg.filename.contains("..") || pkg.filename.starts_with('/') {
                return Err(bad(format!(
                    "package {} has filename `{}`: expected a path below the mirror root",
                    pkg.key(),
                    pkg.filename
                )));
            }
            if !seen.insert(pkg.key()) {
                return Err(bad(format!("package {} is listed twice", pkg.key())));
            }
        }
        for src in &self.sources {
            for f in &src.files {
                let plain_name =
                    !f.name.is_empty() && f.name != ".." && f.name != "." && !f.name.contains('/');
                if !plain_name
                    || f.filename.contains("..")
                    || f.filename.starts_with('/')
                    || !f.filename.ends_with(&format!("/{}", f.name))
                {
                    return Err(bad(format!(
                        "source {} {}: file {} has filename `{}`: expected a plain file name and a path below the mirror root ending in it",
                        src.package, src.version, f.name, f.filename
                    )));
                }
            }
        }
        for (name, profile) in &self.profiles {
            for key in &profile.packages {
                if !seen.contains(key) {
                    return Err(bad(format!(
                        "profile {name} lists {key}, which is not among the locked packages"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl LockInputs {
    /// The resolution inputs of one applied profile.
    pub fn of(profile: &crate::spec::Profile) -> LockInputs {
        let mut requests: Vec<String> = profile.packages.iter().map(|p| p.to_string()).collect();
        requests.sort();
        LockInputs {
            release: profile.base.release.clone(),
            architecture: profile.base.architecture.clone(),
            variant: profile.base.variant.clone(),
            components: profile.base.components.clone(),
            suites: profile.base.suites.clone(),
            requests,
        }
    }

    /// sha256 of the canonical JSON of these inputs.
    pub fn sha256(&self) -> Sha256 {
        let json = serde_json::to_vec(self).expect("inputs always serialize");
        Sha256::of(&json)
    }

    /// How `self` (the spec) differs from `locked`, one line per difference.
    pub fn differences(&self, locked: &LockInputs) -> Vec<String> {
        let mut out = Vec::new();
        let scalar = |out: &mut Vec<String>, field: &str, spec: &str, lock: &str| {
            if spec != lock {
                out.push(format!(
                    "base.{field} is `{spec}` in os.yaml but `{lock}` in the lock"
                ));
            }
        };
        scalar(&mut out, "release", &self.release, &locked.release);
        scalar(
            &mut out,
            "architecture",
            &self.architecture,
            &locked.architecture,
        );
        scalar(&mut out, "variant", &self.variant, &locked.variant);
        scalar(
            &mut out,
            "components",
            &self.components.join(", "),
            &locked.components.join(", "),
        );
        scalar(
            &mut out,
            "suites",
            &self.suites.join(", "),
            &locked.suites.join(", "),
        );
        for r in &self.requests {
            if !locked.requests.contains(r) {
                out.push(format!("package `{r}` is in os.yaml but not in the lock"));
            }
        }
        for r in &locked.requests {
            if !self.requests.contains(r) {
                out.push(format!(
                    "package `{r}` is in the lock but no longer in os.yaml"
                ));
            }
        }
        out
    }
}

impl Lock {
    /// Assemble a lock from each profile's inputs and resolved packages.
    pub fn assemble(
        os: &str,
        base: &crate::spec::Base,
        indexes: Vec<IndexDigest>,
        profiles: BTreeMap<String, (LockInputs, Vec<LockedPackage>)>,
        mut sources: Vec<LockedSource>,
    ) -> Lock {
        sources.sort();
        let mut all = std::collections::BTreeSet::new();
        let mut locked_profiles = BTreeMap::new();
        for (name, (inputs, resolved)) in profiles {
            let mut keys = Vec::new();
            for pkg in resolved {
                keys.push(pkg.key());
                all.insert(pkg);
            }
            keys.sort();
            keys.dedup();
            locked_profiles.insert(
                name,
                LockedProfile {
                    inputs_sha256: inputs.sha256(),
                    inputs,
                    packages: keys,
                },
            );
        }
        Lock {
            lock_version: LOCK_VERSION,
            os: os.to_string(),
            release: base.release.clone(),
            architecture: base.architecture.clone(),
            indexes,
            profiles: locked_profiles,
            packages: all.into_iter().collect(),
            sources,
        }
    }

    /// Where the spec and this lock disagree (empty when they agree). Offline and fast.
    pub fn disagreements(&self, spec: &crate::spec::OsSpec) -> Vec<String> {
        let mut out = Vec::new();
        let mut sets: Vec<crate::spec::Profile> = spec
            .profile_names()
            .into_iter()
            .map(|name| spec.profile(name).expect("names come from the spec"))
            .collect();
        sets.extend(spec.firmware_toolchain());
        for profile in &sets {
            let name = profile.profile.as_str();
            let inputs = LockInputs::of(profile);
            match self.profiles.get(name) {
                None => out.push(format!(
                    "profile `{name}` is in os.yaml but not in the lock"
                )),
                Some(locked) => {
                    let diffs = inputs.differences(&locked.inputs);
                    out.extend(diffs.into_iter().map(|d| format!("profile `{name}`: {d}")));
                    if locked.inputs_sha256 != locked.inputs.sha256() {
                        out.push(format!(
                            "profile `{name}`: inputs_sha256 does not match the recorded inputs (edited by hand?)"
                        ));
                    }
                }
            }
        }
        for name in self.profiles.keys() {
            if !sets.iter().any(|p| p.profile == *name) {
                out.push(format!(
                    "profile `{name}` is in the lock but not in os.yaml"
                ));
            }
        }
        let wanted: Vec<(&str, &str, &str)> = spec
            .firmware
            .iter()
            .map(|f| {
                let s = &f.source;
                (s.package.as_str(), s.version.as_str(), s.suite.as_str())
            })
            .collect();
        let locked: Vec<(&str, &str, &str)> = self
            .sources
            .iter()
            .map(|s| {
                (
                    s.package.as_str(),
                    s.version.as_str(),
                    s.index.suite.as_str(),
                )
            })
            .collect();
        for (package, version, suite) in &wanted {
            if !locked.contains(&(package, version, suite)) {
                out.push(format!(
                    "source {package} {version} ({suite}) is in os.yaml but not in the lock"
                ));
            }
        }
        for (package, version, suite) in &locked {
            if !wanted.contains(&(package, version, suite)) {
                out.push(format!(
                    "source {package} {version} ({suite}) is in the lock but not in os.yaml"
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_text(sha256: &str) -> String {
        format!(
            r#"{{"lock_version": 1, "os": "guestos", "release": "bookworm", "architecture": "amd64",
"indexes": [], "profiles": {{}},
"packages": [{{"name": "a", "version": "1", "architecture": "amd64", "suite": "bookworm",
  "filename": "pool/main/a/a_1_amd64.deb", "size": 1, "sha256": "{sha256}"}}]}}"#
        )
    }

    #[test]
    fn digests_are_checked_as_the_lock_is_parsed() {
        let good = Lock::parse(&lock_text(&"ab".repeat(32)), "x/packages.lock", "guestos").unwrap();
        assert_eq!(good.packages[0].sha256, "ab".repeat(32));
        assert_eq!(
            String::from_utf8(good.to_bytes())
                .unwrap()
                .matches(&"ab".repeat(32))
                .count(),
            1
        );
        // Text that would be a path below the cache never becomes a digest.
        for bad in ["../../etc/passwd", "../x", &"AB".repeat(32)] {
            let e = Lock::parse(&lock_text(bad), "x/packages.lock", "guestos").unwrap_err();
            let LockError::Malformed { line, field, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!((*line, field.as_deref()), (4, Some("packages[0].sha256")));
            let msg = e.to_string();
            assert!(
                msg.starts_with("x/packages.lock: line 4, column ")
                    && msg.contains(", field packages[0].sha256: not a valid packages.lock: `")
                    && msg.contains("expected 64 lower-case hex digits")
                    && msg.contains("hint: regenerate it with `plinth lock guestos`"),
                "{msg}"
            );
        }
    }
}
