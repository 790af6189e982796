//! The package closure of one profile: exactly what mmdebstrap would install.
//!
//! We do not re-implement apt's resolver. The verified indexes are laid out as a private,
//! `copy:` archive (apt lists no URIs for `file:` ones) (the signed InRelease next to the Packages.xz it lists), and apt, with a
//! configuration that ignores the host's, is asked in two stages the way mmdebstrap 1.x does:
//! first the variant's base set (`?essential`, or `dist-upgrade` for `apt`) into an empty
//! system, then the requested packages (plus the variant's priority set) on top of that, the
//! first stage recorded as installed. `--print-uris` makes apt list each chosen `.deb` with its
//! size and SHA256, which must equal the signed index.

use super::archive::Archive;
use super::index::IndexEntry;
use crate::spec::{Base, PackageRequest};
use plinth_release::Sha256;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One `.deb` of a profile's closure, as the lock records it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The suite whose index listed this version (decides which mirror serves it).
    pub suite: String,
    /// Path below the mirror root, e.g. `pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb`.
    pub filename: String,
    pub size: u64,
    pub sha256: Sha256,
}

impl LockedPackage {
    /// `name=version`, as profiles list their packages.
    pub fn key(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

/// Why a closure could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{location}: no package `{name}` in {} (profile {profile})\n  hint: check the name (`apt-cache policy {name}` on a {release} system), or add the suite that has it to base.suites", suites.join(", "))]
    UnknownPackage {
        /// `file:line:col: field`, e.g. `guest-os/os.yaml:22:5: packages[3]`.
        location: String,
        profile: String,
        name: String,
        release: String,
        suites: Vec<String>,
    },
    #[error("{os} ({profile}): apt cannot resolve the package set:\n{stderr}\n  command: {command}\n  hint: a requested package conflicts or has an unsatisfiable dependency; the lines above name it")]
    Unsatisfiable {
        os: String,
        profile: String,
        command: String,
        stderr: String,
    },
    #[error("{os} ({profile}): apt chose {uri}, which no signed index lists with that SHA256\n  hint: this is a bug in plinth's private archive layout; please report it")]
    NotInIndex {
        os: String,
        profile: String,
        uri: String,
    },
    #[error("cannot run apt-get: {0}\n  hint: plinth resolves with apt; run on Debian or Ubuntu with apt installed")]
    NoApt(std::io::Error),
    #[error("preparing the private apt directory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What to resolve: one profile of one OS.
#[derive(Clone)]
pub struct Request<'a> {
    pub os: &'a str,
    pub profile: &'a str,
    /// Where a requested package's name stands in the spec, as `file:line:col: field`.
    pub locate_request: &'a dyn Fn(&str) -> String,
    pub base: &'a Base,
    pub packages: &'a [PackageRequest],
    pub keyring: &'a Path,
}

/// Resolve `req` against `archive`, using `work` as apt's private root (created if missing).
pub fn resolve(
    archive: &Archive,
    req: &Request<'_>,
    work: &Path,
) -> Result<Vec<LockedPackage>, ResolveError> {
    check_names(archive, req)?;
    let apt = AptRoot::create(work, archive, req)?;
    let base = &req.base;
    let narrow = |pattern: &str| {
        format!(
            "?narrow(?or(?archive(^{r}$),?codename(^{r}$)),?architecture({a}),{pattern})",
            r = base.release,
            a = base.architecture
        )
    };
    // Stage 1: the variant's base set into an empty system.
    let stage1_args: Vec<String> = if base.variant == "apt" {
        vec!["dist-upgrade".into()]
    } else {
        vec!["install".into(), narrow("?essential")]
    };
    let first = apt.print_uris(&stage1_args, req)?;
    // Stage 2: requested packages and the variant's priority set, the first stage installed.
    let priority = match base.variant.as_str() {
        "required" | "minbase" => Some("?and(?priority(required),?not(?essential))"),
        "important" => Some("?and(?or(?priority(required),?priority(important)),?not(?essential))"),
        "standard" => Some("?and(?or(~prequired,~pimportant,~pstandard),?not(?essential))"),
        _ => None,
    };
    let mut stage2_args: Vec<String> = vec!["install".into()];
    stage2_args.extend(req.packages.iter().map(|p| p.to_string()));
    stage2_args.extend(priority.map(narrow));
    let lookup = Lookup::new(archive, &apt.repo);
    let first: Vec<&IndexEntry> = first
        .iter()
        .map(|uri| lookup.entry(uri, req))
        .collect::<Result<_, _>>()?;
    let mut chosen: BTreeSet<LockedPackage> = first.iter().map(|e| lookup.resolved(e)).collect();
    if stage2_args.len() > 1 {
        apt.write_status(&first)?;
        for uri in apt.print_uris(&stage2_args, req)? {
            chosen.insert(lookup.resolved(lookup.entry(&uri, req)?));
        }
    }
    Ok(chosen.into_iter().collect())
}

/// Every requested name must be a package (or provided by one) in a suite it may come from;
/// apt's own message for this is vague, ours names the spec.
fn check_names(archive: &Archive, req: &Request<'_>) -> Result<(), ResolveError> {
    let mut known: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for index in &archive.indexes {
        let names = known.entry(index.suite.as_str()).or_default();
        for e in &index.entries {
            names.insert(e.name.as_str());
            for (k, v) in &e.fields {
                if k == "Provides" {
                    for p in v.split(',') {
                        if let Some(name) = p.split_whitespace().next() {
                            names.insert(name);
                        }
                    }
                }
            }
        }
    }
    for p in req.packages {
        let suites: Vec<String> = match &p.suite {
            Some(s) => vec![s.clone()],
            None => req.base.suites.clone(),
        };
        let found = suites.iter().any(|s| {
            known
                .get(s.as_str())
                .is_some_and(|n| n.contains(p.name.as_str()))
        });
        if !found {
            return Err(ResolveError::UnknownPackage {
                location: (req.locate_request)(&p.name),
                profile: req.profile.to_string(),
                name: p.name.clone(),
                release: req.base.release.clone(),
                suites,
            });
        }
    }
    Ok(())
}

/// apt's private root: configuration that ignores the host's, a file archive, empty state.
struct AptRoot {
    root: PathBuf,
    repo: PathBuf,
    config: PathBuf,
}

impl AptRoot {
    fn create(work: &Path, archive: &Archive, req: &Request<'_>) -> Result<AptRoot, ResolveError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| ResolveError::Io { path, source }
        };
        let root = std::path::absolute(work).map_err(io(work))?;
        let repo = root.join("repo");
        for dir in [
            "etc/apt/apt.conf.d",
            "etc/apt/preferences.d",
            "etc/apt/sources.list.d",
            "etc/apt/trusted.gpg.d",
            "var/lib/apt/lists/partial",
            "var/cache/apt/archives/partial",
            "var/lib/dpkg",
            "var/log/apt",
        ] {
            std::fs::create_dir_all(root.join(dir)).map_err(io(&root.join(dir)))?;
        }
        for release in &archive.releases {
            let dir = repo.join("dists").join(&release.suite);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            std::fs::write(dir.join("InRelease"), &release.raw).map_err(io(&dir))?;
        }
        for index in &archive.indexes {
            let path = repo.join("dists").join(&index.suite).join(&index.path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::write(&path, &index.xz).map_err(io(&path))?;
        }
        let status = root.join("var/lib/dpkg/status");
        std::fs::write(&status, "").map_err(io(&status))?;
        let keyring = std::path::absolute(req.keyring).map_err(io(req.keyring))?;
        let mut sources = String::new();
        for suite in &req.base.suites {
            let _ = writeln!(
                sources,
                "deb [signed-by={}] copy:{} {suite} {}",
                keyring.display(),
                repo.display(),
                req.base.components.join(" ")
            );
        }
        let sources_path = root.join("etc/apt/sources.list");
        std::fs::write(&sources_path, sources).map_err(io(&sources_path))?;
        let arch = &req.base.architecture;
        let config = root.join("etc/apt/apt.conf");
        let mut conf = format!(
            "Dir \"{root}/\";\n\
             Dir::State::Status \"{root}/var/lib/dpkg/status\";\n\
             APT::Architecture \"{arch}\";\n\
             APT::Architectures {{ \"{arch}\"; }};\n\
             APT::Install-Recommends \"false\";\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::By-Hash \"no\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\n\
             Debug::NoLocking \"true\";\n",
            root = root.display()
        );
        // As mmdebstrap does: apt counts itself as essential unless told otherwise, which is
        // right only for the `apt` variant.
        if req.base.variant != "apt" {
            conf.push_str("pkgCacheGen::ForceEssential \",\";\n");
        }
        std::fs::write(&config, conf).map_err(io(&config))?;
        let apt = AptRoot { root, repo, config };
        apt.run(&["update".to_string()], req)?;
        Ok(apt)
    }

    /// Run apt-get with the private configuration; its stdout on success.
    fn run(&self, args: &[String], req: &Request<'_>) -> Result<String, ResolveError> {
        let out = Command::new("apt-get")
            .env("APT_CONFIG", &self.config)
            .env("LC_ALL", "C.UTF-8")
            .args([
                "-q",
                "-y",
                "-o",
                "APT::Get::Show-User-Simulation-Note=false",
            ])
            .args(args)
            .output()
            .map_err(ResolveError::NoApt)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // apt reports some failures only as `E:` lines with exit status 0 (e.g. in update).
        if !out.status.success() || stderr.lines().any(|l| l.starts_with("E:")) {
            return Err(ResolveError::Unsatisfiable {
                os: req.os.to_string(),
                profile: req.profile.to_string(),
                command: format!(
                    "APT_CONFIG={} apt-get {}",
                    self.config.display(),
                    args.iter()
                        .map(|a| shell_quote(a))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                stderr: format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `.deb` URIs (with apt's size and SHA256) that `args` would download.
    fn print_uris(&self, args: &[String], req: &Request<'_>) -> Result<Vec<AptUri>, ResolveError> {
        let mut full = vec!["--print-uris".to_string()];
        full.extend(args.iter().cloned());
        let stdout = self.run(&full, req)?;
        stdout
            .lines()
            .filter(|l| l.starts_with('\''))
            .map(|l| {
                AptUri::parse(l).ok_or_else(|| ResolveError::Unsatisfiable {
                    os: req.os.to_string(),
                    profile: req.profile.to_string(),
                    command: format!("apt-get {}", full.join(" ")),
                    stderr: format!("    cannot parse apt's output line `{l}`"),
                })
            })
            .collect()
    }

    /// Record `installed` as installed in the private dpkg status.
    fn write_status(&self, installed: &[&IndexEntry]) -> Result<(), ResolveError> {
        let mut text = String::new();
        for e in installed {
            for (k, v) in &e.fields {
                let _ = writeln!(text, "{k}: {}", v.replace('\n', "\n "));
                if k == "Package" {
                    text.push_str("Status: install ok installed\n");
                }
            }
            text.push('\n');
        }
        let path = self.root.join("var/lib/dpkg/status");
        std::fs::write(&path, text).map_err(|source| ResolveError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

/// One line of `apt-get --print-uris`: `'URI' FILE SIZE ALGO:HEX` (apt 2.6 prints MD5Sum).
#[derive(Debug, Clone, PartialEq, Eq)]
struct AptUri {
    uri: String,
    size: u64,
    /// The SHA256 when apt printed that algorithm.
    sha256: Option<String>,
}

impl AptUri {
    fn parse(line: &str) -> Option<AptUri> {
        let rest = line.strip_prefix('\'')?;
        let (uri, rest) = rest.split_once('\'')?;
        // The hash is missing for some entries (apt 2.6 omits it when no MD5Sum is known).
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (size, hash) = match words[..] {
            [_file, size] => (size, None),
            [_file, size, hash] => (size, Some(hash)),
            _ => return None,
        };
        Some(AptUri {
            uri: uri.to_string(),
            size: size.parse().ok()?,
            sha256: hash
                .and_then(|h| h.strip_prefix("SHA256:"))
                .map(str::to_string),
        })
    }
}

/// Maps apt's URIs back to signed index entries.
struct Lookup<'a> {
    by_filename: BTreeMap<&'a str, Vec<(&'a str, &'a IndexEntry)>>,
    prefix: String,
}

impl<'a> Lookup<'a> {
    fn new(archive: &'a Archive, repo: &Path) -> Lookup<'a> {
        let mut by_filename: BTreeMap<&str, Vec<(&str, &IndexEntry)>> = BTreeMap::new();
        for index in &archive.indexes {
            for e in &index.entries {
                by_filename
                    .entry(e.filename.as_str())
                    .or_default()
                    .push((index.suite.as_str(), e));
            }
        }
        Lookup {
            by_filename,
            prefix: format!("copy:{}/", repo.display()),
        }
    }

    /// The entry behind `uri`: same pool path and size (and SHA256, when apt prints it).
    fn entry(&self, uri: &AptUri, req: &Request<'_>) -> Result<&'a IndexEntry, ResolveError> {
        let not_found = || ResolveError::NotInIndex {
            os: req.os.to_string(),
            profile: req.profile.to_string(),
            uri: uri.uri.clone(),
        };
        let filename = uri.uri.strip_prefix(&self.prefix).ok_or_else(not_found)?;
        let filename = percent_decode(filename);
        self.by_filename
            .get(filename.as_str())
            .and_then(|c| {
                c.iter().map(|(_, e)| *e).find(|e| {
                    e.size == uri.size && uri.sha256.as_ref().is_none_or(|h| e.sha256 == *h)
                })
            })
            .ok_or_else(not_found)
    }

    /// The entry as a lock records it; the suite is the first (in spec order) that lists it.
    fn resolved(&self, e: &IndexEntry) -> LockedPackage {
        let suite = self.by_filename[e.filename.as_str()]
            .iter()
            .find(|(_, c)| c.sha256 == e.sha256)
            .map(|(s, _)| s.to_string())
            .unwrap_or_default();
        LockedPackage {
            name: e.name.clone(),
            version: e.version.clone(),
            architecture: e.architecture.clone(),
            suite,
            filename: e.filename.clone(),
            size: e.size,
            sha256: e.sha256,
        }
    }
}

/// apt escapes some characters of pool paths in URIs (`%3a` for `:`, …).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./=:+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_print_uris_lines() {
        let line = "'copy:/w/repo/pool/main/s/systemd/libsystemd0_252.39-1%7edeb12u1_amd64.deb' libsystemd0_252.39-1~deb12u1_amd64.deb 331772 SHA256:0a1b";
        let u = AptUri::parse(line).unwrap();
        assert_eq!(u.size, 331772);
        assert_eq!(u.sha256.as_deref(), Some("0a1b"));
        let md5 = AptUri::parse("'copy:/x' x 1 MD5Sum:8e7e").unwrap();
        assert_eq!(md5.sha256, None);
        let bare = AptUri::parse("'copy:/x' x 205796 ").unwrap();
        assert_eq!((bare.size, bare.sha256), (205796, None));
        assert_eq!(
            percent_decode(u.uri.strip_prefix("copy:/w/repo/").unwrap()),
            "pool/main/s/systemd/libsystemd0_252.39-1~deb12u1_amd64.deb"
        );
        assert_eq!(AptUri::parse("Reading package lists..."), None);
        assert_eq!(percent_decode("a%3ab%2"), "a:b%2");
    }
}
