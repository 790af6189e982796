//! The record's meaning, in each target's `custom` metadata: one object under the key
//! `plinth`, versioned by its `format_version` ([`FORMAT_VERSION`]), of one of two kinds:
//!
//! - `artifact` ([`ArtifactCustom`]), on `<os>/<version>/<file>`: the elected release's OS,
//!   version and file, the file's sha256 and length (equal to TUF's own `hashes` and
//!   `length`, which are what a client checks the bytes against), the sha256 of the release's
//!   manifest.json, when it was elected, its rollout [`Wave`]s and its measurements.json
//!   (predicted PCRs, SEV-SNP launch digests), copied whole and validated by
//!   [`plinth_release::measurements`];
//! - `policy` ([`PolicyCustom`]), on `<os>/policy.json`: the OS's `max_version`, the newest
//!   version a node may run (`null`: none). The policy target's bytes are this same object
//!   as pretty JSON, so a plain TUF client that downloads it checks it too.
//!
//! Why a policy target of its own instead of a field beside `targets`: it travels through
//! TUF's ordinary target path (listed and hash-checked by every client, kept by tough's
//! editor), the upgrade agent reads it from `custom` without downloading anything, and it is
//! one entry per OS that `revoke` rewrites without touching any artifact's entry.
//!
//! Readers refuse another `format_version`, unknown fields, and an object whose names
//! disagree with its target's name or whose digest disagrees with TUF's.

use crate::names::TargetPath;
use plinth_release::measurements::Measurements;
use plinth_release::{FileName, Name, Os, Sha256, Version};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The custom metadata format this plinth writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The key under which the object sits in a target's `custom` map.
pub const KEY: &str = "plinth";
/// The largest node seed; seeds are 0..=MAX_SEED.
pub const MAX_SEED: u16 = 2047;

/// Which kind of object a target's custom metadata is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Artifact,
    Policy,
}

/// The longest a wave may spread its nodes' starts over: 30 days.
pub const MAX_SPREAD_SECONDS: u64 = 30 * 24 * 3600;

/// One rollout wave: from `opens_at`, nodes whose seed is in `seeds` (inclusive) may take
/// the version, each at its own time within `spread_seconds` ([`Wave::opens_for`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub name: Name,
    /// RFC 3339, UTC.
    pub opens_at: jiff::Timestamp,
    /// First and last seed, inclusive, within 0..=[`MAX_SEED`].
    pub seeds: [u16; 2],
    /// Over how many seconds after `opens_at` the wave's nodes start (0: all at once; at
    /// most [`MAX_SPREAD_SECONDS`]). Left out of the metadata when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spread_seconds: u64,
    /// The health gate: this wave opens only once the wave before it is healthy on this
    /// version (never on the first wave). Left out of the metadata when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The most nodes a gate may ask for (more than a fleet has would hold a wave for ever).
pub const MAX_GATE_NODES: u32 = 100_000;

/// A wave's health gate: the wave before it is healthy on the version when at least
/// `min_healthy` of its nodes report running it (committed) and at most `max_failed` report
/// that it failed on them (rolled back). The publisher evaluates it from the nodes' reports
/// and signs, with the snapshot, when it held ([`crate::health`]); a node takes a gated wave
/// only after that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    pub min_healthy: u32,
    pub max_failed: u32,
}

impl Wave {
    /// Whether `seed` is in this wave.
    pub fn contains(&self, seed: u16) -> bool {
        self.seeds[0] <= seed && seed <= self.seeds[1]
    }

    /// When the wave opens for `seed`: `opens_at` plus the seed's position in this wave
    /// (`(seed - first) / (last - first + 1)`) of `spread_seconds`. The position is relative
    /// to the wave's own first seed, so every wave spreads its own nodes evenly over its
    /// whole spread, whatever its seed range (an absolute seed would start a wave of high
    /// seeds late and crowd a wave of low seeds at its opening).
    pub fn opens_for(&self, seed: u16) -> jiff::Timestamp {
        let position = u64::from(seed.saturating_sub(self.seeds[0]));
        let count = u64::from(self.seeds[1].saturating_sub(self.seeds[0])) + 1;
        let offset = self.spread_seconds.min(MAX_SPREAD_SECONDS) * position.min(count) / count;
        self.opens_at
            .checked_add(jiff::SignedDuration::from_secs(offset as i64))
            .unwrap_or(jiff::Timestamp::MAX)
    }

    /// How the wave is shown: `seeds A-B from T` and the spread, if any.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "seeds {}-{} from {}",
            self.seeds[0], self.seeds[1], self.opens_at
        );
        if self.spread_seconds > 0 {
            text.push_str(&format!(", spread over {} s", self.spread_seconds));
        }
        if let Some(g) = &self.gate {
            text.push_str(&format!(
                ", once the wave before has {} healthy and at most {} failed",
                g.min_healthy, g.max_failed
            ));
        }
        text
    }
}

/// An elected artifact's custom metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactCustom {
    pub format_version: u32,
    pub kind: Kind,
    pub os: Os,
    pub version: Version,
    pub file: FileName,
    pub sha256: Sha256,
    pub length: u64,
    /// sha256 of the release's manifest.json (what a voter's rebuild is compared with).
    pub manifest_sha256: Sha256,
    /// When governance elected it (RFC 3339, UTC).
    pub elected_at: jiff::Timestamp,
    /// In the order they open.
    pub waves: Vec<Wave>,
    /// The release's measurements.json.
    pub measurements: Measurements,
}

/// An OS's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCustom {
    pub format_version: u32,
    pub kind: Kind,
    pub os: Os,
    /// The newest version a node of this OS may run; `null` when none is elected.
    pub max_version: Option<Version>,
}

impl PolicyCustom {
    pub fn new(os: Os, max_version: Option<Version>) -> PolicyCustom {
        PolicyCustom {
            format_version: FORMAT_VERSION,
            kind: Kind::Policy,
            os,
            max_version,
        }
    }

    /// The policy target's bytes: this object as pretty JSON with a trailing newline.
    pub fn payload(&self) -> Vec<u8> {
        crate::files::to_json(self)
    }
}

/// `value` as a target's custom map.
pub fn to_custom<T: Serialize>(value: &T) -> HashMap<String, serde_json::Value> {
    HashMap::from([(
        KEY.to_string(),
        serde_json::to_value(value).expect("custom metadata serializes"),
    )])
}

/// What a target of the record says, read from its name and custom metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// Boxed: an artifact carries its measurements, a policy one field.
    Artifact(Box<ArtifactCustom>),
    Policy(PolicyCustom),
}

/// Read target `name`'s custom metadata and check it against the name and TUF's digest;
/// the error says what is wrong (the caller names the file).
pub fn read_entry(name: &str, target: &tough::schema::Target) -> Result<Entry, String> {
    let path: TargetPath = name.parse()?;
    let value = target
        .custom
        .get(KEY)
        .ok_or_else(|| format!("target `{name}` has no `custom.{KEY}` object"))?;
    let version = value.get("format_version").and_then(|v| v.as_u64());
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(format!(
            "target `{name}`: custom.{KEY}.format_version is {}, this plinth reads {FORMAT_VERSION}",
            version.map_or("missing".to_string(), |v| v.to_string())
        ));
    }
    let bad = |e: serde_json::Error| format!("target `{name}`: custom.{KEY}: {e}");
    match path {
        TargetPath::Artifact { os, version, file } => {
            let a: ArtifactCustom = serde_json::from_value(value.clone()).map_err(bad)?;
            let tuf_sha256 = target.hashes.sha256.clone().into_vec();
            if a.kind != Kind::Artifact
                || a.os != os
                || a.version != version
                || a.file != file
                || a.measurements.os != os
                || a.measurements.version != version
            {
                return Err(format!(
                    "target `{name}`: custom.{KEY} names another artifact ({} {} {}, measurements of {} {})",
                    a.os, a.version, a.file, a.measurements.os, a.measurements.version
                ));
            }
            if a.sha256.as_bytes().as_slice() != tuf_sha256.as_slice() || a.length != target.length
            {
                return Err(format!(
                    "target `{name}`: custom.{KEY} says sha256 {} and {} bytes, TUF's hashes say {} and {} bytes",
                    a.sha256,
                    a.length,
                    hex::encode(&tuf_sha256),
                    target.length
                ));
            }
            check_waves(&a.waves)
                .map_err(|e| format!("target `{name}`: custom.{KEY}.waves: {e}"))?;
            Ok(Entry::Artifact(Box::new(a)))
        }
        TargetPath::Policy { os } => {
            let p: PolicyCustom = serde_json::from_value(value.clone()).map_err(bad)?;
            if p.kind != Kind::Policy || p.os != os {
                return Err(format!(
                    "target `{name}`: custom.{KEY} is not {os}'s policy"
                ));
            }
            Ok(Entry::Policy(p))
        }
    }
}

/// The rules the waves file is checked by ([`crate::waves`]), for waves read from metadata.
pub fn check_waves(waves: &[Wave]) -> Result<(), String> {
    for (i, w) in waves.iter().enumerate() {
        if w.seeds[0] > w.seeds[1] || w.seeds[1] > MAX_SEED {
            return Err(format!(
                "wave `{}`: seeds {:?} out of 0..={MAX_SEED}",
                w.name, w.seeds
            ));
        }
        if w.spread_seconds > MAX_SPREAD_SECONDS {
            return Err(format!(
                "wave `{}`: spread_seconds {} above {MAX_SPREAD_SECONDS}",
                w.name, w.spread_seconds
            ));
        }
        if let Some(g) = &w.gate {
            if i == 0 {
                return Err(format!(
                    "wave `{}`: the first wave has no wave before it to gate on",
                    w.name
                ));
            }
            if g.min_healthy == 0 || g.min_healthy > MAX_GATE_NODES || g.max_failed > MAX_GATE_NODES
            {
                return Err(format!(
                    "wave `{}`: gate min_healthy {} and max_failed {} out of 1..={MAX_GATE_NODES} and 0..={MAX_GATE_NODES}",
                    w.name, g.min_healthy, g.max_failed
                ));
            }
        }
        for o in &waves[..i] {
            if w.opens_at < o.opens_at {
                return Err(format!("wave `{}` opens before `{}`", w.name, o.name));
            }
            if w.seeds[0] <= o.seeds[1] && o.seeds[0] <= w.seeds[1] {
                return Err(format!("waves `{}` and `{}` overlap", o.name, w.name));
            }
            if w.name == o.name {
                return Err(format!("wave `{}` twice", w.name));
            }
        }
    }
    Ok(())
}
