//! Which version this node takes, from the governance record's targets: a pure function of
//! what the record lists ([`Record`], read with [`Record::read`]) and of the node ([`Node`]:
//! its OS, current version, seed and the time), unit-tested below.
//!
//! The rules, in order:
//!
//! 1. Only versions the record lists are candidates: a revoked version is no longer listed,
//!    so it is never taken (a node already running it is pulled back by rule 3 when
//!    governance lowers `max_version`, and otherwise keeps it until something newer opens).
//! 2. A version is *open* for this node when one of its waves contains the node's seed and
//!    has opened for it ([`Wave::opens_for`] `<= now`: the wave's `opens_at`, plus the
//!    seed's position in the wave's range times its `spread_seconds`). A version above the OS's `max_version` is never
//!    taken; an OS without a policy target, or whose `max_version` is `null`, takes nothing.
//! 3. Pull-back: if the current version is above `max_version`, the node moves to the
//!    highest listed version `<= max_version`: preferably one open for its wave, otherwise
//!    any listed one (leaving a pulled-back release beats waiting for a wave). This is the
//!    only way a node goes down, and only because governance elected it.
//! 4. Otherwise the node takes the highest open version `<= max_version` if it is newer
//!    than the current one, and stays put if not: it never downgrades on its own.
//!
//! Versions compare with the governance record's order ([`plinth_governance::order`]).
//!
//! The seed: each node has a stable seed in 0..=[`MAX_SEED`], [`seed_of`] its identity
//! (for HostOS the TPM's EK public key, for a test any bytes): the first two bytes,
//! big-endian, of `sha256("plinth-upgrade-seed-v1" || 0x00 || identity)`, modulo 2048.
//! 2048 divides 65536, so seeds are uniform over 0..=2047; the domain prefix keeps the seed
//! unrelated to any other use of the same identity's hash.

use crate::error::UpgradeError;
use plinth_governance::custom::{read_entry, ArtifactCustom, Entry, Wave, MAX_SEED};
use plinth_governance::health::{opens_after, Gates, Opened};
use plinth_governance::order::compare;
use plinth_release::archive::UPDATE_ARCHIVE;
use plinth_release::{Os, Version};
use sha2::Digest;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// The domain prefix of [`seed_of`].
pub const SEED_DOMAIN: &[u8] = b"plinth-upgrade-seed-v1\0";

/// This node's seed from its identity (see the module doc).
pub fn seed_of(identity: &[u8]) -> u16 {
    let digest = sha2::Sha256::new()
        .chain_update(SEED_DOMAIN)
        .chain_update(identity)
        .finalize();
    u16::from_be_bytes([digest[0], digest[1]]) % (MAX_SEED + 1)
}

/// An elected update image of one version of this node's OS.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Its target name: `<os>/<version>/update-img.tar.zst`.
    pub target: String,
    pub artifact: ArtifactCustom,
    /// Its gated waves whose gate holds (wave name → since when), from the snapshot.
    pub opened: BTreeMap<String, Opened>,
}

impl Offer {
    pub fn version(&self) -> &Version {
        &self.artifact.version
    }

    /// The first wave containing `seed` (waves never overlap, so the only one).
    pub fn wave_of(&self, seed: u16) -> Option<&Wave> {
        self.artifact.waves.iter().find(|w| w.contains(seed))
    }

    /// When the version opens for `seed`: `None` when no wave holds the seed, or a gate
    /// holds its wave back: its own, or any gate of a wave before it (a gate held earlier in
    /// the election holds every later wave, gated or not). Otherwise the wave's own time
    /// ([`opens_after`]), no earlier than the latest `since` of those gates.
    pub fn opens_for(&self, seed: u16) -> Option<jiff::Timestamp> {
        let i = self.artifact.waves.iter().position(|w| w.contains(seed))?;
        let wave = &self.artifact.waves[i];
        // The latest `since` of the gates up to this wave; held if any of them is.
        let mut since: Option<jiff::Timestamp> = None;
        for w in self.artifact.waves[..=i]
            .iter()
            .filter(|w| w.gate.is_some())
        {
            let o = self.opened.get(w.name.as_str())?;
            since = since.max(Some(o.since));
        }
        Some(match since {
            Some(since) => opens_after(wave, since, seed),
            None => wave.opens_for(seed),
        })
    }

    /// Whether the version is open for `seed` at `now`.
    pub fn open_for(&self, seed: u16, now: jiff::Timestamp) -> bool {
        self.opens_for(seed).is_some_and(|t| t <= now)
    }

    /// When a gate holds `seed`'s wave back: the first held gated wave up to it, and the
    /// wave before that one (whose health it waits for).
    pub fn held_for(&self, seed: u16) -> Option<(&Wave, &Wave)> {
        let i = self.artifact.waves.iter().position(|w| w.contains(seed))?;
        (1..=i)
            .find(|&j| {
                let w = &self.artifact.waves[j];
                w.gate.is_some() && !self.opened.contains_key(w.name.as_str())
            })
            .map(|j| (&self.artifact.waves[j], &self.artifact.waves[j - 1]))
    }
}

/// What the record says about one OS: its elected update images and its policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Record {
    pub offers: Vec<Offer>,
    /// `None` with `has_policy`: governance allows no version; without a policy target,
    /// nothing is taken either.
    pub max_version: Option<Version>,
    pub has_policy: bool,
}

impl Record {
    /// The record for `os` from a loaded repository's targets (name, target). Every target
    /// of `os` is read with the governance record's own checks ([`read_entry`]); one that
    /// fails them is an error (the record is not plinth's), targets of other OSes and other
    /// files of `os` are left aside.
    pub fn read<'a>(
        targets: impl IntoIterator<Item = (&'a str, &'a tough::schema::Target)>,
        gates: &Gates,
        os: Os,
    ) -> Result<Record, UpgradeError> {
        let prefix = format!("{os}/");
        let mut record = Record::default();
        for (name, target) in targets {
            if !name.starts_with(&prefix) {
                continue;
            }
            let entry = read_entry(name, target).map_err(|message| UpgradeError::Record {
                target: name.to_string(),
                message,
            })?;
            match entry {
                Entry::Policy(p) => {
                    record.has_policy = true;
                    record.max_version = p.max_version;
                }
                Entry::Artifact(a) if a.file.as_str() == UPDATE_ARCHIVE => {
                    record.offers.push(Offer {
                        target: name.to_string(),
                        artifact: *a,
                        opened: gates.0.get(name).cloned().unwrap_or_default(),
                    });
                }
                Entry::Artifact(_) => {}
            }
        }
        record
            .offers
            .sort_by(|a, b| compare(a.version(), b.version()));
        Ok(record)
    }

    fn at_most_max<'a>(&'a self) -> impl DoubleEndedIterator<Item = &'a Offer> + 'a {
        self.offers.iter().filter(|o| {
            self.max_version
                .as_ref()
                .is_some_and(|m| compare(o.version(), m) != Ordering::Greater)
        })
    }
}

/// The node choosing.
#[derive(Debug, Clone)]
pub struct Node {
    pub os: Os,
    pub current: Version,
    pub seed: u16,
    pub now: jiff::Timestamp,
}

/// Why a node takes a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Newer than the current version, open for the node's wave.
    Upgrade,
    /// Governance lowered `max_version` below the current version.
    PullBack,
}

/// Why a node keeps its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stay {
    /// No policy target for the OS.
    NoPolicy,
    /// `max_version` is null, and the current version is not above anything.
    NothingAllowed,
    /// The current version is the newest open one (or newer than any).
    UpToDate,
    /// A newer version is elected but its wave for this seed has not opened, or no wave
    /// holds this seed.
    Waiting {
        version: Version,
        opens_at: Option<jiff::Timestamp>,
    },
    /// Pulled back, but nothing at or below `max_version` is listed.
    NoPullBackTarget { max_version: Version },
    /// A newer version's wave for this seed waits for the wave before it to be healthy.
    Held {
        version: Version,
        wave: String,
        after: String,
    },
}

impl fmt::Display for Stay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stay::NoPolicy => f.write_str("the record has no policy for this OS"),
            Stay::NothingAllowed => f.write_str("governance allows no version (max_version null)"),
            Stay::UpToDate => f.write_str("up to date"),
            Stay::Waiting {
                version,
                opens_at: Some(t),
            } => write!(f, "{version} opens for this node (its place in its wave) at {t}"),
            Stay::Waiting {
                version,
                opens_at: None,
            } => write!(f, "{version} has no wave for this node's seed"),
            Stay::Held {
                version,
                wave,
                after,
            } => write!(
                f,
                "{version}'s wave `{wave}` for this node is held until wave `{after}` is healthy on it (the repository's health gate)"
            ),
            Stay::NoPullBackTarget { max_version } => write!(
                f,
                "max_version is {max_version}, below this version, but no version at or below it is elected"
            ),
        }
    }
}

/// The outcome of [`choose`].
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'a> {
    Take { offer: &'a Offer, reason: Reason },
    Stay(Stay),
}

/// The version `node` takes from `record` (see the module doc for the rules).
pub fn choose<'a>(record: &'a Record, node: &Node) -> Decision<'a> {
    if !record.has_policy {
        return Decision::Stay(Stay::NoPolicy);
    }
    let newest_open = record
        .at_most_max()
        .rfind(|o| o.open_for(node.seed, node.now));
    // Rule 3: pulled back.
    let above_max = record
        .max_version
        .as_ref()
        .is_none_or(|m| compare(&node.current, m) == Ordering::Greater);
    if above_max {
        let Some(max) = &record.max_version else {
            return Decision::Stay(Stay::NothingAllowed);
        };
        // Nothing open for this node: a version no gate holds back (its wave's time not
        // come yet), and only then any (a held one may be failing on the wave before).
        let fallback = || {
            record
                .at_most_max()
                .rfind(|o| o.held_for(node.seed).is_none())
                .or_else(|| record.at_most_max().next_back())
        };
        return match newest_open.or_else(fallback) {
            Some(offer) => Decision::Take {
                offer,
                reason: Reason::PullBack,
            },
            None => Decision::Stay(Stay::NoPullBackTarget {
                max_version: max.clone(),
            }),
        };
    }
    // Rule 4.
    if let Some(offer) = newest_open {
        if compare(offer.version(), &node.current) == Ordering::Greater {
            return Decision::Take {
                offer,
                reason: Reason::Upgrade,
            };
        }
    }
    let waiting = record
        .at_most_max()
        .rfind(|o| compare(o.version(), &node.current) == Ordering::Greater);
    match waiting {
        Some(o) => Decision::Stay(match o.held_for(node.seed) {
            Some((wave, after)) => Stay::Held {
                version: o.version().clone(),
                wave: wave.name.to_string(),
                after: after.name.to_string(),
            },
            None => Stay::Waiting {
                version: o.version().clone(),
                opens_at: o.opens_for(node.seed),
            },
        }),
        None => Decision::Stay(Stay::UpToDate),
    }
}

/// Check that `version`, asked for by name, is what [`choose`] gives this node; the error
/// says why not.
pub fn check_requested<'a>(
    record: &'a Record,
    node: &Node,
    version: &Version,
) -> Result<&'a Offer, UpgradeError> {
    let not = |why: String| UpgradeError::NotElected {
        os: node.os,
        version: version.clone(),
        seed: node.seed,
        why,
    };
    let listed = record.offers.iter().find(|o| o.version() == version);
    match choose(record, node) {
        Decision::Take { offer, .. } if offer.version() == version => Ok(offer),
        decision => {
            let chosen = match decision {
                Decision::Take { offer, .. } => format!("this node takes {}", offer.version()),
                Decision::Stay(s) => format!("this node stays on {}: {s}", node.current),
            };
            Err(not(match listed {
                None => {
                    format!("the record does not list it (never elected, or revoked); {chosen}")
                }
                Some(o) if !record.at_most_max().any(|a| a == o) => format!(
                    "it is above max_version {}; {chosen}",
                    record.max_version.as_ref().map_or("null", |m| m.as_str())
                ),
                Some(o) if !o.open_for(node.seed, node.now) => {
                    match (o.wave_of(node.seed), o.opens_for(node.seed)) {
                        (Some(w), Some(at)) => format!(
                            "its wave `{}` opens for seed {} at {at}; {chosen}",
                            w.name, node.seed
                        ),
                        (Some(w), None) => format!(
                            "its wave `{}` is held by its health gate until the wave before it is healthy; {chosen}",
                            w.name
                        ),
                        (None, _) => {
                            format!("none of its waves holds seed {}; {chosen}", node.seed)
                        }
                    }
                }
                Some(_) => chosen,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plinth_governance::custom::{Kind, FORMAT_VERSION};

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn offer(version: &str, waves: &[(&str, [u16; 2])]) -> Offer {
        Offer {
            target: format!("host-os/{version}/{UPDATE_ARCHIVE}"),
            artifact: ArtifactCustom {
                format_version: FORMAT_VERSION,
                kind: Kind::Artifact,
                os: Os::HostOs,
                version: v(version),
                file: UPDATE_ARCHIVE.parse().unwrap(),
                sha256: plinth_release::Sha256::of(version.as_bytes()),
                length: 1,
                manifest_sha256: plinth_release::Sha256::of(b"m"),
                elected_at: t("2026-01-01T00:00:00Z"),
                waves: waves
                    .iter()
                    .enumerate()
                    .map(|(i, (at, seeds))| Wave {
                        name: format!("w{i}").parse().unwrap(),
                        opens_at: t(at),
                        seeds: *seeds,
                        spread_seconds: 0,
                        gate: None,
                    })
                    .collect(),
                measurements: plinth_governance::fixtures::measurements(Os::HostOs, version),
            },
            opened: BTreeMap::new(),
        }
    }

    const EARLY: &str = "2026-01-10T00:00:00Z";
    const LATE: &str = "2026-01-20T00:00:00Z";

    /// 1.0.0, 1.1.0 open for all from EARLY; 1.2.0 for seeds 0-15 from EARLY, 16-2047 from LATE.
    fn record(max: Option<&str>) -> Record {
        let mut offers = vec![
            offer("1.2.0", &[(EARLY, [0, 15]), (LATE, [16, 2047])]),
            offer("1.0.0", &[(EARLY, [0, 2047])]),
            offer("1.1.0", &[(EARLY, [0, 2047])]),
        ];
        offers.sort_by(|a, b| compare(a.version(), b.version()));
        Record {
            offers,
            max_version: max.map(v),
            has_policy: true,
        }
    }

    fn node(current: &str, seed: u16, now: &str) -> Node {
        Node {
            os: Os::HostOs,
            current: v(current),
            seed,
            now: t(now),
        }
    }

    fn taken(d: Decision<'_>) -> Option<(String, Reason)> {
        match d {
            Decision::Take { offer, reason } => Some((offer.version().to_string(), reason)),
            Decision::Stay(_) => None,
        }
    }

    #[test]
    fn a_gated_wave_waits_for_the_publishers_word_and_never_opens_before_its_time() {
        use plinth_governance::custom::Gate;
        let mut r = record(Some("1.2.0"));
        let i = r
            .offers
            .iter()
            .position(|o| o.version().as_str() == "1.2.0")
            .unwrap();
        r.offers[i].artifact.waves[1].gate = Some(Gate {
            min_healthy: 3,
            max_failed: 0,
        });
        // Past its time, but the gate has not held: held, and asked for by name, refused.
        let n = node("1.1.0", 16, "2026-01-21T00:00:00Z");
        assert_eq!(
            choose(&r, &n),
            Decision::Stay(Stay::Held {
                version: v("1.2.0"),
                wave: "w1".into(),
                after: "w0".into()
            })
        );
        let e = check_requested(&r, &n, &v("1.2.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("held by its health gate"), "{e}");
        // The canary wave has no gate: unchanged.
        assert_eq!(
            taken(choose(&r, &node("1.1.0", 3, EARLY))),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
        // The gate held before the wave's time: the wave opens at its time, not before.
        let opened = |since: &str| Opened {
            since: t(since),
            healthy: 3,
            failed: 0,
        };
        r.offers[i].opened = BTreeMap::from([("w1".to_string(), opened(EARLY))]);
        assert_eq!(
            choose(&r, &node("1.1.0", 16, "2026-01-19T23:59:59Z")),
            Decision::Stay(Stay::Waiting {
                version: v("1.2.0"),
                opens_at: Some(t(LATE))
            })
        );
        assert_eq!(
            taken(choose(&r, &node("1.1.0", 16, LATE))),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
        // It held after the wave's time: the wave opens then.
        r.offers[i].opened = BTreeMap::from([("w1".to_string(), opened("2026-01-22T00:00:00Z"))]);
        assert_eq!(
            taken(choose(&r, &node("1.1.0", 16, "2026-01-21T00:00:00Z"))),
            None
        );
        assert_eq!(
            taken(choose(&r, &node("1.1.0", 16, "2026-01-22T00:00:00Z"))),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
    }

    #[test]
    fn a_held_gate_holds_every_later_wave_and_a_pull_back_avoids_a_held_version() {
        use plinth_governance::custom::Gate;
        let gate = Some(Gate {
            min_healthy: 1,
            max_failed: 0,
        });
        let mut o = offer(
            "1.2.0",
            &[(EARLY, [0, 15]), (EARLY, [16, 99]), (EARLY, [100, 2047])],
        );
        o.artifact.waves[1].gate = gate;
        let mut r = Record {
            offers: vec![offer("1.1.0", &[(EARLY, [0, 2047])]), o],
            max_version: Some(v("1.2.0")),
            has_policy: true,
        };
        // w2 has no gate of its own, but w1's is held: w2 waits for it too.
        assert_eq!(
            choose(&r, &node("1.1.0", 500, LATE)),
            Decision::Stay(Stay::Held {
                version: v("1.2.0"),
                wave: "w1".into(),
                after: "w0".into()
            })
        );
        // Pulled back from 9.0.0 to at most 1.2.0: 1.2.0 is held for seed 500, 1.1.0 open.
        assert_eq!(
            taken(choose(&r, &node("9.0.0", 500, LATE))),
            Some(("1.1.0".into(), Reason::PullBack))
        );
        // w1's gate holds: both w1 and w2 open.
        r.offers[1].opened = BTreeMap::from([(
            "w1".to_string(),
            Opened {
                since: t(EARLY),
                healthy: 1,
                failed: 0,
            },
        )]);
        assert_eq!(
            taken(choose(&r, &node("1.1.0", 500, LATE))),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
    }

    #[test]
    fn a_canary_takes_the_newest_open_version_and_the_rest_wait() {
        let r = record(Some("1.2.0"));
        let at = "2026-01-11T00:00:00Z";
        assert_eq!(
            taken(choose(&r, &node("1.0.0", 3, at))),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
        // Seed 16 is in the second wave: 1.1.0 is open for it, 1.2.0 not yet.
        assert_eq!(
            taken(choose(&r, &node("1.0.0", 16, at))),
            Some(("1.1.0".into(), Reason::Upgrade))
        );
        assert_eq!(
            choose(&r, &node("1.1.0", 16, at)),
            Decision::Stay(Stay::Waiting {
                version: v("1.2.0"),
                opens_at: Some(t(LATE))
            })
        );
        // At the second wave's exact opening time it is open.
        assert_eq!(
            taken(choose(&r, &node("1.1.0", 2047, LATE))),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
    }

    #[test]
    fn a_spread_wave_opens_for_each_node_at_its_own_time() {
        let mut r = record(Some("1.2.0"));
        // The second wave (seeds 16-2047) spreads its 2032 nodes over 2032 s.
        let offer = r
            .offers
            .iter_mut()
            .find(|o| o.version() == &v("1.2.0"))
            .unwrap();
        offer.artifact.waves[1].spread_seconds = 2032;
        let own = |seed: i64| t(LATE) + jiff::SignedDuration::from_secs(seed - 16);
        // The wave's first seed opens at LATE, as without a spread; seed 1016 1000 s later.
        assert_eq!(
            taken(choose(&r, &node("1.1.0", 16, LATE))),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
        let n = Node {
            now: own(1016) - jiff::SignedDuration::from_secs(1),
            ..node("1.1.0", 1016, LATE)
        };
        assert_eq!(
            choose(&r, &n),
            Decision::Stay(Stay::Waiting {
                version: v("1.2.0"),
                opens_at: Some(own(1016))
            })
        );
        let e = check_requested(&r, &n, &v("1.2.0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("opens for seed 1016 at 2026-01-20T00:16:40Z"),
            "{e}"
        );
        let n = Node {
            now: own(1016),
            ..n
        };
        assert_eq!(
            taken(choose(&r, &n)),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
        // The canary wave has no spread: its last seed opens with its first.
        assert_eq!(
            taken(choose(&r, &node("1.1.0", 15, EARLY))),
            Some(("1.2.0".into(), Reason::Upgrade))
        );
    }

    #[test]
    fn one_second_before_a_wave_opens_it_is_closed() {
        let r = record(Some("1.2.0"));
        let before = t(EARLY) - jiff::SignedDuration::from_secs(1);
        let n = Node {
            now: before,
            ..node("1.0.0", 0, EARLY)
        };
        assert!(matches!(
            choose(&r, &n),
            Decision::Stay(Stay::Waiting { .. })
        ));
    }

    #[test]
    fn never_a_downgrade_of_its_own() {
        let r = record(Some("1.2.0"));
        // Running a version newer than anything listed but within max_version: stays.
        let r2 = Record {
            max_version: Some(v("9.0.0")),
            ..r.clone()
        };
        assert_eq!(
            choose(&r2, &node("2.0.0", 0, LATE)),
            Decision::Stay(Stay::UpToDate)
        );
        // Running the newest: stays.
        assert_eq!(
            choose(&r, &node("1.2.0", 0, LATE)),
            Decision::Stay(Stay::UpToDate)
        );
        // A revoked (unlisted) current version below max: stays, takes nothing older.
        let mut r3 = record(Some("1.2.0"));
        r3.offers.retain(|o| o.version().as_str() != "1.1.0");
        assert_eq!(
            choose(&r3, &node("1.1.0", 100, EARLY)),
            Decision::Stay(Stay::Waiting {
                version: v("1.2.0"),
                opens_at: Some(t(LATE))
            })
        );
    }

    #[test]
    fn max_version_pulls_back_to_the_highest_elected_below_it() {
        // Governance revoked 1.2.0: max_version 1.1.0, 1.2.0 no longer listed.
        let mut r = record(Some("1.1.0"));
        r.offers.retain(|o| o.version().as_str() != "1.2.0");
        assert_eq!(
            taken(choose(&r, &node("1.2.0", 3, LATE))),
            Some(("1.1.0".into(), Reason::PullBack))
        );
        // max_version below a version still listed: it is not taken.
        let r = record(Some("1.1.0"));
        assert_eq!(
            taken(choose(&r, &node("1.0.0", 3, LATE))),
            Some(("1.1.0".into(), Reason::Upgrade))
        );
        assert_eq!(
            taken(choose(&r, &node("1.2.0", 3, LATE))),
            Some(("1.1.0".into(), Reason::PullBack))
        );
        // Pull-back to a version whose wave has not opened for this node: still taken.
        let r = Record {
            offers: vec![offer("1.0.0", &[(LATE, [0, 2047])])],
            max_version: Some(v("1.0.0")),
            has_policy: true,
        };
        assert_eq!(
            taken(choose(&r, &node("1.5.0", 3, EARLY))),
            Some(("1.0.0".into(), Reason::PullBack))
        );
        // Nothing at or below max_version: stay and say so.
        let r = Record {
            offers: vec![offer("2.0.0", &[(EARLY, [0, 2047])])],
            max_version: Some(v("1.0.0")),
            has_policy: true,
        };
        assert_eq!(
            choose(&r, &node("1.5.0", 3, LATE)),
            Decision::Stay(Stay::NoPullBackTarget {
                max_version: v("1.0.0")
            })
        );
    }

    #[test]
    fn no_policy_or_a_null_max_takes_nothing() {
        let r = Record {
            has_policy: false,
            ..record(Some("1.2.0"))
        };
        assert_eq!(
            choose(&r, &node("1.0.0", 0, LATE)),
            Decision::Stay(Stay::NoPolicy)
        );
        assert_eq!(
            choose(&record(None), &node("1.0.0", 0, LATE)),
            Decision::Stay(Stay::NothingAllowed)
        );
    }

    #[test]
    fn a_seed_no_wave_holds_never_takes_the_version() {
        let r = Record {
            offers: vec![offer("1.1.0", &[(EARLY, [0, 99])])],
            max_version: Some(v("1.1.0")),
            has_policy: true,
        };
        assert_eq!(
            choose(&r, &node("1.0.0", 100, LATE)),
            Decision::Stay(Stay::Waiting {
                version: v("1.1.0"),
                opens_at: None
            })
        );
        let e = check_requested(&r, &node("1.0.0", 100, LATE), &v("1.1.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none of its waves holds seed 100"), "{e}");
    }

    #[test]
    fn versions_order_numerically_and_prereleases_first() {
        let r = Record {
            offers: {
                let mut o = vec![
                    offer("1.10.0", &[(EARLY, [0, 2047])]),
                    offer("1.9.0", &[(EARLY, [0, 2047])]),
                    offer("1.11.0-rc1", &[(EARLY, [0, 2047])]),
                ];
                o.sort_by(|a, b| compare(a.version(), b.version()));
                o
            },
            max_version: Some(v("1.11.0-rc1")),
            has_policy: true,
        };
        assert_eq!(
            taken(choose(&r, &node("1.9.0", 0, LATE))),
            Some(("1.11.0-rc1".into(), Reason::Upgrade))
        );
        let capped = Record {
            max_version: Some(v("1.10.0")),
            ..r
        };
        assert_eq!(
            taken(choose(&capped, &node("1.9.0", 0, LATE))),
            Some(("1.10.0".into(), Reason::Upgrade))
        );
    }

    #[test]
    fn a_requested_version_must_be_the_chosen_one() {
        let r = record(Some("1.1.0"));
        let n = node("1.0.0", 20, "2026-01-11T00:00:00Z");
        assert_eq!(
            check_requested(&r, &n, &v("1.1.0")).unwrap().version(),
            &v("1.1.0")
        );
        let e = check_requested(&r, &n, &v("3.0.0")).unwrap_err();
        assert!(matches!(e, UpgradeError::NotElected { .. }));
        assert!(e.to_string().contains("never elected, or revoked"), "{e}");
        let e = check_requested(&r, &n, &v("1.2.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("above max_version 1.1.0"), "{e}");
        let r = record(Some("1.2.0"));
        let e = check_requested(&r, &n, &v("1.2.0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("its wave `w1` opens for seed 20 at 2026-01-20"),
            "{e}"
        );
        // An older listed version is never taken by request either.
        let e = check_requested(&r, &node("1.1.0", 0, LATE), &v("1.0.0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("this node takes 1.2.0"), "{e}");
    }

    #[test]
    fn seeds_are_stable_and_spread() {
        assert_eq!(seed_of(b"node-1"), seed_of(b"node-1"));
        // Known value: a change of derivation would move every node to another wave.
        let d = sha2::Sha256::digest(b"plinth-upgrade-seed-v1\0node-1");
        assert_eq!(seed_of(b"node-1"), u16::from_be_bytes([d[0], d[1]]) % 2048);
        let mut buckets = [0u32; 8];
        for i in 0..8192u32 {
            let s = seed_of(&i.to_be_bytes());
            assert!(s <= MAX_SEED);
            buckets[usize::from(s / 256)] += 1;
        }
        // 1024 expected per bucket; uniform within a generous margin.
        assert!(
            buckets.iter().all(|&n| (850..1200).contains(&n)),
            "{buckets:?}"
        );
    }
}
