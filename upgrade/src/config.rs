//! The node's upgrade configuration (`/etc/plinth/upgrade.yaml`, part of the OS image): which
//! OS this is, the mirrors and the trusted root the record is loaded with, where the agent
//! keeps its state (slot state, tough's datastore, staging), the slots' parts, how often the
//! daemon polls and how slow a mirror may be. Read bounded, parsed strictly (unknown keys
//! refused), every problem an error naming the file, line, field, what was expected and what
//! to do.
//!
//! ```yaml
//! format_version: 1
//! os: host-os
//! mirrors: [https://updates.example.org/plinth/]
//! trusted_root: /usr/share/plinth/governance/root.json
//! state_dir: /var/lib/plinth/upgrade
//! slots:
//!   a: [{member: root.img, path: /dev/disk/by-partlabel/root-a}]
//!   b: [{member: root.img, path: /dev/disk/by-partlabel/root-b}]
//! ```

use crate::apply::ApplyOptions;
use crate::choose;
use crate::fetch::{Pace, Staging};
use crate::repo::RepoOptions;
use crate::slots::{Layout, Part};
use plinth_governance::custom::MAX_SEED;
use plinth_release::{Os, Version};
use plinth_yaml::document;
use plinth_yaml::error::{SpecError, SpecErrors};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// The format this plinth reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest configuration file read.
pub const MAX_CONFIG: u64 = 64 << 10;
/// Where the OS image puts it.
pub const DEFAULT_PATH: &str = "/etc/plinth/upgrade.yaml";
const HINT: &str = "compare with the example in docs/upgrades.md";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    format_version: u32,
    os: String,
    mirrors: Vec<String>,
    trusted_root: PathBuf,
    state_dir: PathBuf,
    #[serde(default = "default_keep_free")]
    keep_free_mib: u64,
    #[serde(default = "default_tries")]
    tries: u8,
    #[serde(default)]
    seed: Option<u16>,
    #[serde(default = "default_identity")]
    identity_file: PathBuf,
    #[serde(default)]
    poll: RawPoll,
    #[serde(default)]
    mirror_pace: RawPace,
    slots: RawSlots,
}

fn default_keep_free() -> u64 {
    256
}
fn default_tries() -> u8 {
    3
}
fn default_identity() -> PathBuf {
    PathBuf::from("/etc/machine-id")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoll {
    interval_seconds: u64,
    jitter_seconds: u64,
}

impl Default for RawPoll {
    fn default() -> RawPoll {
        RawPoll {
            interval_seconds: 3600,
            jitter_seconds: 900,
        }
    }
}

/// How slow a mirror may be before the next is tried ([`Pace`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPace {
    min_kib_per_second: u64,
    grace_seconds: u64,
}

impl Default for RawPace {
    fn default() -> RawPace {
        RawPace {
            min_kib_per_second: Pace::DEFAULT.min_rate >> 10,
            grace_seconds: Pace::DEFAULT.grace.as_secs(),
        }
    }
}

/// The slowest pace a configuration may ask for (a mirror that never sends a byte is given
/// up after the grace whatever the rate), and the shortest and longest grace (below 10 s a
/// mirror is given up before a TLS handshake and the first bytes over a slow link).
const MIN_KIB_PER_SECOND: u64 = 1;
const MIN_GRACE_SECONDS: u64 = 10;
const MAX_GRACE_SECONDS: u64 = 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlots {
    a: Vec<Part>,
    b: Vec<Part>,
}

/// Where this node's seed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedSource {
    /// Given in the configuration (a test, or an operator's pin).
    Fixed(u16),
    /// [`choose::seed_of`] the file's trimmed contents (the machine-id by default).
    Identity(PathBuf),
}

/// How the daemon polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poll {
    pub interval: Duration,
    /// Each poll waits a random time up to this first, so that a fleet does not poll at once.
    pub jitter: Duration,
}

/// A checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub os: Os,
    pub mirrors: Vec<Url>,
    pub trusted_root: PathBuf,
    pub state_dir: PathBuf,
    pub keep_free: u64,
    pub tries: u8,
    pub seed: SeedSource,
    pub poll: Poll,
    pub pace: Pace,
    pub layout: Layout,
}

impl Config {
    /// Read and check the file at `path`.
    pub fn load(path: &Path) -> Result<Config, SpecErrors> {
        let file = path.display().to_string();
        let bytes = plinth_release::untrusted::read_untrusted(path, MAX_CONFIG).map_err(|e| {
            SpecErrors::single(SpecError::io(
                &file,
                format!("cannot read it ({e}); it is at most {MAX_CONFIG} bytes"),
            ))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| SpecErrors::single(SpecError::io(&file, "not UTF-8 text".into())))?;
        Config::parse(&text, path)
    }

    /// Check the text of the file `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, SpecErrors> {
        let file = path.display().to_string();
        let (raw, index): (RawConfig, _) = document::parse(
            text,
            &file,
            "a YAML mapping with format_version, os, mirrors, trusted_root, state_dir and slots",
            HINT,
        )?;
        let mut errors = Vec::new();
        let mut fail = |field: &str, expected: &str, found: String, hint: &str| {
            let pos = index.locate(field);
            errors.push(SpecError {
                file: file.clone(),
                line: pos.line,
                column: pos.column,
                path: field.into(),
                expected: expected.into(),
                found,
                hint: hint.into(),
            });
        };
        if raw.format_version != FORMAT_VERSION {
            fail(
                "format_version",
                &format!("{FORMAT_VERSION}"),
                format!("`{}`", raw.format_version),
                "this plinth reads format 1",
            );
        }
        let os = raw.os.parse::<Os>().ok();
        if os.is_none() {
            fail(
                "os",
                "host-os or guest-os",
                format!("`{}`", raw.os),
                "the OS whose slots this agent writes",
            );
        }
        let mut mirrors = Vec::new();
        if raw.mirrors.is_empty() {
            fail(
                "mirrors",
                "at least one mirror URL",
                "an empty list".into(),
                "list the governance record's mirrors, in the order to try them",
            );
        }
        for (i, m) in raw.mirrors.iter().enumerate() {
            match mirror(m) {
                Ok(url) => mirrors.push(url),
                Err(why) => fail(
                    &format!("mirrors[{i}]"),
                    "an https:// URL (http:// only to 127.0.0.1, or file://)",
                    format!("`{m}`: {why}"),
                    "the record is checked by its signatures, but its transport still must not \
                     be open to anyone on the path",
                ),
            }
        }
        for (field, p) in [
            ("trusted_root", &raw.trusted_root),
            ("state_dir", &raw.state_dir),
            ("identity_file", &raw.identity_file),
        ] {
            if !p.is_absolute() {
                fail(
                    field,
                    "an absolute path",
                    format!("`{}`", p.display()),
                    "the daemon runs from /",
                );
            }
        }
        if !(1..=10).contains(&raw.tries) {
            fail(
                "tries",
                "1 to 10 boots",
                format!("`{}`", raw.tries),
                "the boots a new slot gets before it is given up (systemd-boot's +N)",
            );
        }
        if let Some(seed) = raw.seed {
            if seed > MAX_SEED {
                fail(
                    "seed",
                    &format!("0 to {MAX_SEED}"),
                    format!("`{seed}`"),
                    "leave it out to derive the seed from identity_file",
                );
            }
        }
        if raw.poll.interval_seconds == 0 || raw.poll.jitter_seconds > raw.poll.interval_seconds {
            fail(
                "poll",
                "interval_seconds of 1 or more, and jitter_seconds at most interval_seconds",
                format!(
                    "interval_seconds {}, jitter_seconds {}",
                    raw.poll.interval_seconds, raw.poll.jitter_seconds
                ),
                "an hour with 15 minutes of jitter is the default",
            );
        }
        let pace = &raw.mirror_pace;
        if !(MIN_KIB_PER_SECOND..=1 << 30).contains(&pace.min_kib_per_second)
            || !(MIN_GRACE_SECONDS..=MAX_GRACE_SECONDS).contains(&pace.grace_seconds)
        {
            fail(
                "mirror_pace",
                &format!(
                    "min_kib_per_second of {MIN_KIB_PER_SECOND} to 1073741824, and grace_seconds \
                     of {MIN_GRACE_SECONDS} to {MAX_GRACE_SECONDS}"
                ),
                format!(
                    "min_kib_per_second {}, grace_seconds {}",
                    pace.min_kib_per_second, pace.grace_seconds
                ),
                "a mirror slower than this after the grace is given up for the next one; \
                 64 KiB/s after 120 s is the default",
            );
        }
        if raw.keep_free_mib > 1 << 30 {
            fail(
                "keep_free_mib",
                "at most 1073741824 (1 PiB)",
                format!("`{}`", raw.keep_free_mib),
                "the MiB left free on state_dir's file system after staging",
            );
        }
        for (slot, parts) in [("a", &raw.slots.a), ("b", &raw.slots.b)] {
            if parts.is_empty() || parts.len() > crate::slots::MAX_PARTS {
                fail(
                    &format!("slots.{slot}"),
                    &format!("1 to {} parts", crate::slots::MAX_PARTS),
                    format!("{} parts", parts.len()),
                    "each slot is its partitions (root, verity) and its UKI's file",
                );
            }
            for (i, p) in parts.iter().enumerate() {
                if parts[..i].iter().any(|q| q.member == p.member) {
                    fail(
                        &format!("slots.{slot}[{i}].member"),
                        "each member once a slot",
                        format!("`{}` again", p.member.escape_debug()),
                        "each member goes to one part",
                    );
                }
                let field = format!("slots.{slot}[{i}]");
                if let Err(why) = plinth_release::archive::check_name(&p.member) {
                    fail(
                        &format!("{field}.member"),
                        "an archive member's name (root.img, verity.img, <os>-b.efi)",
                        format!("`{}`: {why}", p.member.escape_debug()),
                        HINT,
                    );
                }
                if !p.path.is_absolute() {
                    fail(
                        &format!("{field}.path"),
                        "an absolute path",
                        format!("`{}`", p.path.display()),
                        "a partition (/dev/disk/by-partlabel/...) or a preallocated file",
                    );
                }
            }
        }
        if !errors.is_empty() {
            return Err(SpecErrors(errors));
        }
        Ok(Config {
            file: path.to_path_buf(),
            os: os.expect("checked"),
            mirrors,
            trusted_root: raw.trusted_root,
            state_dir: raw.state_dir,
            keep_free: raw.keep_free_mib << 20,
            tries: raw.tries,
            seed: match raw.seed {
                Some(s) => SeedSource::Fixed(s),
                None => SeedSource::Identity(raw.identity_file),
            },
            poll: Poll {
                interval: Duration::from_secs(raw.poll.interval_seconds),
                jitter: Duration::from_secs(raw.poll.jitter_seconds),
            },
            pace: Pace {
                min_rate: raw.mirror_pace.min_kib_per_second << 10,
                grace: Duration::from_secs(raw.mirror_pace.grace_seconds),
            },
            layout: Layout {
                a: raw.slots.a,
                b: raw.slots.b,
            },
        })
    }

    /// The slot state file.
    pub fn state_path(&self) -> PathBuf {
        self.state_dir.join("slots.json")
    }

    /// This node's seed.
    pub fn seed(&self) -> Result<u16, String> {
        match &self.seed {
            SeedSource::Fixed(s) => Ok(*s),
            SeedSource::Identity(path) => {
                let bytes = plinth_release::untrusted::read_untrusted(path, 4096).map_err(|e| {
                    format!("{}: cannot read the node's identity: {e}", path.display())
                })?;
                let text = String::from_utf8_lossy(&bytes);
                let id = text.trim();
                if id == "uninitialized" {
                    return Err(format!(
                        "{}: `uninitialized`: the machine-id is not set up yet (every such node \
                         would get the same seed)",
                        path.display()
                    ));
                }
                if id.is_empty() {
                    return Err(format!(
                        "{}: empty; the seed is derived from the node's identity",
                        path.display()
                    ));
                }
                Ok(choose::seed_of(id.as_bytes()))
            }
        }
    }

    /// What `apply` and `check` are given.
    pub fn apply_options(
        &self,
        seed: u16,
        now: jiff::Timestamp,
        version: Option<Version>,
    ) -> ApplyOptions {
        ApplyOptions {
            repo: RepoOptions {
                mirrors: self.mirrors.clone(),
                trusted_root: self.trusted_root.clone(),
                datastore: self.state_dir.join("datastore"),
            },
            os: self.os,
            seed,
            now,
            staging: Staging {
                dir: self.state_dir.join("staging"),
                keep_free: self.keep_free,
                pace: self.pace,
            },
            tries: self.tries,
            version,
        }
    }
}

/// A mirror URL: https, file, or http to a loopback address only.
fn mirror(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| e.to_string())?;
    match url.scheme() {
        "https" | "file" => Ok(url),
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(url),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(url),
            _ => Err("plain http only to a loopback address".into()),
        },
        other => Err(format!("the scheme {other} is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "format_version: 1
os: host-os
mirrors: [https://updates.example.org/plinth/, 'http://127.0.0.1:8080/']
trusted_root: /usr/share/plinth/governance/root.json
state_dir: /var/lib/plinth/upgrade
poll: {interval_seconds: 60, jitter_seconds: 10}
slots:
  a: [{member: root.img, path: /dev/disk/by-partlabel/root-a}]
  b: [{member: root.img, path: /dev/disk/by-partlabel/root-b}]
";

    #[test]
    fn a_good_file_reads_with_its_defaults() {
        let c = Config::parse(GOOD, Path::new("upgrade.yaml")).unwrap();
        assert_eq!(c.os, Os::HostOs);
        assert_eq!(c.mirrors.len(), 2);
        assert_eq!((c.tries, c.keep_free), (3, 256 << 20));
        assert_eq!(c.seed, SeedSource::Identity("/etc/machine-id".into()));
        assert_eq!(c.poll.interval, Duration::from_secs(60));
        assert_eq!(c.pace, Pace::DEFAULT);
        assert_eq!(
            c.state_path(),
            Path::new("/var/lib/plinth/upgrade/slots.json")
        );
    }

    #[test]
    fn each_bad_field_is_named_with_its_line() {
        let cases = [
            ("os: host-os", "os: windows", "os", 2),
            (
                "https://updates.example.org/plinth/",
                "http://updates.example.org/",
                "mirrors[0]",
                3,
            ),
            ("trusted_root: /usr", "trusted_root: usr", "trusted_root", 4),
            ("jitter_seconds: 10", "jitter_seconds: 100", "poll", 6),
            (
                "slots:",
                "mirror_pace: {min_kib_per_second: 0, grace_seconds: 60}\nslots:",
                "mirror_pace",
                7,
            ),
            (
                "slots:",
                "mirror_pace: {min_kib_per_second: 8, grace_seconds: 86400}\nslots:",
                "mirror_pace",
                7,
            ),
            (
                "slots:",
                "mirror_pace: {min_kib_per_second: 8, grace_seconds: 0}\nslots:",
                "mirror_pace",
                7,
            ),
            (
                "member: root.img, path: /dev/disk/by-partlabel/root-b",
                "member: ../x, path: /dev/x",
                "slots.b[0].member",
                9,
            ),
            // An unknown key: at its line, named in the message (the whole document's path).
            ("format_version: 1", "format_version: 1\nextra: 1", "", 2),
        ];
        for (from, to, field, line) in cases {
            let text = GOOD.replacen(from, to, 1);
            let e = Config::parse(&text, Path::new("upgrade.yaml")).unwrap_err();
            let first = e.iter().next().unwrap();
            assert_eq!((first.path.as_str(), first.line), (field, line), "{e}");
            assert_eq!(first.file, "upgrade.yaml");
        }
        let e = Config::parse("", Path::new("upgrade.yaml")).unwrap_err();
        assert!(e.to_string().contains("an empty document"), "{e}");
    }

    #[test]
    fn the_seed_comes_from_the_identity_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("machine-id");
        std::fs::write(&id, "78622198311626ca8a9e718e6b958097\n").unwrap();
        let text = GOOD.replacen(
            "poll:",
            &format!("identity_file: {}\npoll:", id.display()),
            1,
        );
        let c = Config::parse(&text, Path::new("u.yaml")).unwrap();
        assert_eq!(
            c.seed().unwrap(),
            choose::seed_of(b"78622198311626ca8a9e718e6b958097")
        );
        let c = Config::parse(
            &GOOD.replacen("poll:", "seed: 7\npoll:", 1),
            Path::new("u.yaml"),
        )
        .unwrap();
        assert_eq!(c.seed().unwrap(), 7);
        let e = Config::parse(
            &GOOD.replacen("poll:", "seed: 2048\npoll:", 1),
            Path::new("u.yaml"),
        )
        .unwrap_err();
        assert_eq!(e.iter().next().unwrap().path, "seed");
    }

    #[test]
    fn a_mirror_pace_is_taken_into_the_staging() {
        let text = GOOD.replacen(
            "slots:",
            "mirror_pace: {min_kib_per_second: 512, grace_seconds: 30}\nslots:",
            1,
        );
        let c = Config::parse(&text, Path::new("u.yaml")).unwrap();
        let want = Pace {
            min_rate: 512 << 10,
            grace: Duration::from_secs(30),
        };
        assert_eq!(c.pace, want);
        let options = c.apply_options(7, jiff::Timestamp::UNIX_EPOCH, None);
        assert_eq!(options.staging.pace, want);
    }
}
