//! Where each suite is downloaded from. Precedence, highest first: the `--mirror` /
//! `--security-mirror` flags, the `PLINTH_MIRROR` / `PLINTH_SECURITY_MIRROR` environment
//! variables, the spec's `base.mirror` / `base.security_mirror`, the host's apt sources, and
//! finally Debian's own `http://deb.debian.org/debian(-security)`.

use crate::spec::Base;
use std::path::Path;

pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
pub const DEFAULT_SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// The base URLs of the two Debian archives (no trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirrors {
    pub main: String,
    pub security: String,
}

/// Explicit mirror choices from the command line.
#[derive(Debug, Clone, Default)]
pub struct MirrorOverrides {
    pub main: Option<String>,
    pub security: Option<String>,
}

impl Mirrors {
    /// Resolve the mirrors for `base` by the precedence above.
    pub fn resolve(base: &Base, flags: &MirrorOverrides) -> Mirrors {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let host = host_apt_mirrors(Path::new("/etc/apt"), &base.release);
        let main = flags
            .main
            .clone()
            .or_else(|| env("PLINTH_MIRROR"))
            .or_else(|| base.mirror.clone())
            .or_else(|| host.main.clone())
            .unwrap_or_else(|| DEFAULT_MIRROR.to_string());
        let security = flags
            .security
            .clone()
            .or_else(|| env("PLINTH_SECURITY_MIRROR"))
            .or_else(|| base.security_mirror.clone())
            .or(host.security)
            .unwrap_or_else(|| DEFAULT_SECURITY_MIRROR.to_string());
        Mirrors {
            main: main.trim_end_matches('/').to_string(),
            security: security.trim_end_matches('/').to_string(),
        }
    }

    /// The archive that serves `suite`.
    pub fn for_suite(&self, suite: &str) -> &str {
        if suite.ends_with("-security") {
            &self.security
        } else {
            &self.main
        }
    }
}

/// Mirrors found in the host's apt configuration (either may be missing).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostMirrors {
    pub main: Option<String>,
    pub security: Option<String>,
}

/// Read `sources.list`, `sources.list.d/*.list` and `*.sources` below `etc_apt` and pick the
/// first `deb` source serving `<release>` and the first serving `<release>-security`.
pub fn host_apt_mirrors(etc_apt: &Path, release: &str) -> HostMirrors {
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(dir) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let security_suite = format!("{release}-security");
    let mut found = HostMirrors::default();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let entries = if file.extension().is_some_and(|e| e == "sources") {
            parse_deb822_sources(&text)
        } else if file.extension().is_some_and(|e| e == "list") {
            parse_one_line_sources(&text)
        } else {
            continue;
        };
        for (uri, suites) in entries {
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                continue;
            }
            if found.main.is_none() && suites.iter().any(|s| s == release) {
                found.main = Some(uri.clone());
            }
            if found.security.is_none() && suites.contains(&security_suite) {
                found.security = Some(uri.clone());
            }
        }
    }
    found
}

/// `deb [options] URI suite components...` lines → (URI, [suite]).
fn parse_one_line_sources(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line.strip_prefix("deb ") {
            Some(r) => r.trim_start(),
            None => continue,
        };
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), vec![suite.to_string()]));
        }
    }
    out
}

/// deb822 `.sources` stanzas with `Types: deb` → (URI, suites) for each URI.
fn parse_deb822_sources(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for stanza in super::deb822::paragraphs(text) {
        let field = |k: &str| {
            stanza
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if field("Enabled").is_some_and(|v| v.trim() == "no") {
            continue;
        }
        if !field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb")) {
            continue;
        }
        let suites: Vec<String> = field("Suites")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        for uri in field("URIs").unwrap_or_default().split_whitespace() {
            out.push((uri.to_string(), suites.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_host_sources_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            "# comment\ndeb [arch=amd64] http://ftp.example.org/debian bookworm main\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://sec.example.org/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://off.example.org/debian\nSuites: bookworm\n",
        )
        .unwrap();
        let m = host_apt_mirrors(dir.path(), "bookworm");
        assert_eq!(m.main.as_deref(), Some("http://ftp.example.org/debian"));
        assert_eq!(
            m.security.as_deref(),
            Some("http://sec.example.org/debian-security")
        );
        assert_eq!(
            host_apt_mirrors(dir.path(), "trixie"),
            HostMirrors::default()
        );
    }
}
