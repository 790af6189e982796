//! The waves' health gate: the nodes' reports in, the publisher's verdict out.
//!
//! A wave with a [`Gate`] opens only once the wave before it is healthy on the version:
//! at least `min_healthy` of that wave's nodes report running it and at most `max_failed`
//! report that it failed on them. Governance signs the gate (in the artifact's waves); the
//! publisher, whose key signs the snapshot, evaluates it at each `publish --health DIR` and
//! writes the waves whose gate holds, with the time it first held ([`Opened::since`]), into
//! the snapshot under [`EXTRA_KEY`]. A node takes a gated wave no earlier than both its
//! governance time and that `since` ([`Gates::opens_for`]), so the publisher's key can only
//! hold a wave back, never open one before governance's time. A wave whose gate stops holding
//! (failures reported after it opened) is left out of the next snapshot: the nodes of that
//! wave that have not started yet wait again.
//!
//! The reports ([`NodeReport`], one JSON file a node, what `plinth-upgrade report` writes) are
//! outside input: each a regular file of at most [`MAX_REPORT_SIZE`] bytes with a plain name,
//! at most [`MAX_REPORTS`] of them; one that cannot be read or parsed is skipped and named in
//! the publish report (a skipped report can only leave a wave held, never open one). One node
//! counts once: its newest report. How reports reach the directory is the fleet's own hook
//! (docs/upgrades.md); the simulation writes them there directly.

use crate::custom::{ArtifactCustom, Gate, Wave};
use crate::error::GovernanceError;
use plinth_release::{Os, Version};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The node report format this plinth writes and reads.
pub const REPORT_FORMAT_VERSION: u32 = 1;
/// The largest node report read.
pub const MAX_REPORT_SIZE: u64 = 4 << 10;
/// The most reports one health directory may hold.
pub const MAX_REPORTS: usize = 200_000;
/// The most failed versions one report lists.
pub const MAX_FAILED: usize = 16;
/// The key of the gates in the snapshot's signed metadata.
pub const EXTRA_KEY: &str = "plinth_gates";
/// The most gated waves a snapshot may carry (readers refuse more).
pub const MAX_OPENED: usize = 4096;

/// What one node says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub format_version: u32,
    /// The node's name in the fleet: 1 to 64 of `a-z 0-9 -`.
    pub node: String,
    pub os: Os,
    /// Its seed, 0..=2047 ([`crate::custom::MAX_SEED`]).
    pub seed: u16,
    /// The version it runs, committed (none before its first install).
    pub version: Option<Version>,
    /// Versions that failed on it (rolled back), at most [`MAX_FAILED`].
    #[serde(default)]
    pub failed: Vec<Version>,
    /// When it wrote the report.
    pub at: jiff::Timestamp,
}

impl NodeReport {
    /// Parse and check a report's bytes; the error says what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<NodeReport, String> {
        let r: NodeReport = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if r.format_version != REPORT_FORMAT_VERSION {
            return Err(format!(
                "format_version {}, this plinth reads {REPORT_FORMAT_VERSION}",
                r.format_version
            ));
        }
        if !valid_node_name(&r.node) {
            return Err(format!(
                "node `{}`: expected 1 to 64 of a-z, 0-9 and -",
                r.node.escape_debug()
            ));
        }
        if r.seed > crate::custom::MAX_SEED {
            return Err(format!("seed {} above {}", r.seed, crate::custom::MAX_SEED));
        }
        if r.failed.len() > MAX_FAILED {
            return Err(format!(
                "{} failed versions, at most {MAX_FAILED}",
                r.failed.len()
            ));
        }
        Ok(r)
    }
}

fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// How far ahead of the publisher's clock a report's time may be.
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 600;

/// The reports of a health directory, and the files skipped with why.
#[derive(Debug, Default)]
pub struct Reports {
    pub reports: Vec<NodeReport>,
    pub skipped: Vec<(PathBuf, String)>,
    /// Skipped files named like a node's report (`<node>.json`): each counts as a node that
    /// reports a failure, in every gated wave (a report that cannot be read must not leave
    /// a failure unseen).
    pub unreadable: u32,
    /// More than [`MAX_REPORTS`] entries: the rest were not read, and every gate is held.
    pub truncated: bool,
}

/// Read every `<node>.json` report in `dir` (see the module doc for the bounds): each must
/// name the node its file is named for, and be no later than `now` plus
/// [`MAX_CLOCK_SKEW_SECONDS`]. Only a directory that cannot be listed is an error.
pub fn read_reports(dir: &Path, now: jiff::Timestamp) -> Result<Reports, GovernanceError> {
    let listing = std::fs::read_dir(dir).map_err(|source| GovernanceError::Read {
        path: dir.to_path_buf(),
        what: "health directory",
        source,
    })?;
    let mut out = Reports::default();
    let latest = now
        .checked_add(jiff::SignedDuration::from_secs(MAX_CLOCK_SKEW_SECONDS))
        .unwrap_or(jiff::Timestamp::MAX);
    for (n, entry) in listing.enumerate() {
        if n >= MAX_REPORTS {
            out.truncated = true;
            out.skipped.push((
                dir.to_path_buf(),
                format!("more than {MAX_REPORTS} entries: the rest were not read, and every gate is held"),
            ));
            break;
        }
        let entry = entry.map_err(|source| GovernanceError::Read {
            path: dir.to_path_buf(),
            what: "health directory",
            source,
        })?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            out.skipped.push((path, "a name that is not UTF-8".into()));
            continue;
        };
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        if !valid_node_name(stem) {
            out.skipped.push((
                path,
                "expected <node>.json, a node name of a-z, 0-9 and -".into(),
            ));
            continue;
        }
        let report = plinth_release::untrusted::read_untrusted(&path, MAX_REPORT_SIZE)
            .map_err(|e| format!("cannot read the node report: {e}"))
            .and_then(|bytes| NodeReport::parse(&bytes))
            .and_then(|r| {
                if r.node != stem {
                    Err(format!(
                        "names node `{}`, not `{stem}`: a node reports in its own file only",
                        r.node.escape_debug()
                    ))
                } else if r.at > latest {
                    Err(format!(
                        "written at {}, later than now ({now}) by more than {MAX_CLOCK_SKEW_SECONDS} s",
                        r.at
                    ))
                } else {
                    Ok(r)
                }
            });
        match report {
            Ok(r) => out.reports.push(r),
            Err(why) => {
                out.unreadable = out.unreadable.saturating_add(1);
                out.skipped.push((
                    path,
                    format!("{why} (counted as a failure in every gated wave)"),
                ));
            }
        }
    }
    out.reports.sort_by(|a, b| a.node.cmp(&b.node));
    out.skipped.sort();
    Ok(out)
}

/// A gated wave whose gate holds: since when, and the counts it held with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Opened {
    /// When a publish first found the gate holding (kept while it goes on holding).
    pub since: jiff::Timestamp,
    pub healthy: u32,
    pub failed: u32,
}

/// The gated waves whose gate holds: target name → wave name → [`Opened`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Gates(pub BTreeMap<String, BTreeMap<String, Opened>>);

impl Gates {
    /// The gates a snapshot's signed metadata carries (none: empty); the error says what is
    /// wrong with them.
    pub fn from_extra(extra: &HashMap<String, serde_json::Value>) -> Result<Gates, String> {
        let Some(value) = extra.get(EXTRA_KEY) else {
            return Ok(Gates::default());
        };
        let gates: Gates = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        let count: usize = gates.0.values().map(BTreeMap::len).sum();
        if count > MAX_OPENED {
            return Err(format!("{count} opened waves, at most {MAX_OPENED}"));
        }
        Ok(gates)
    }

    /// When a gated `wave` of `target` opened, if its gate holds.
    pub fn opened(&self, target: &str, wave: &str) -> Option<&Opened> {
        self.0.get(target).and_then(|w| w.get(wave))
    }

    /// When `wave` of `target` opens for `seed`: its own time ([`Wave::opens_for`]) without
    /// a gate; with one, the wave starts at the later of its `opens_at` and the gate's
    /// `since`, the seed's place in its spread counted from there; `None` while held.
    pub fn opens_for(&self, target: &str, wave: &Wave, seed: u16) -> Option<jiff::Timestamp> {
        gated_opens_for(wave, self.opened(target, wave.name.as_str()), seed)
    }
}

/// When `wave` opens for `seed` given its gate's state (`opened`: the gate holds, since
/// when): see [`Gates::opens_for`].
pub fn gated_opens_for(wave: &Wave, opened: Option<&Opened>, seed: u16) -> Option<jiff::Timestamp> {
    if wave.gate.is_none() {
        return Some(wave.opens_for(seed));
    }
    Some(opens_after(wave, opened?.since, seed))
}

/// When `wave` opens for `seed` once it may start no earlier than `since`: the later of its
/// `opens_at` and `since`, plus the seed's place in its spread.
pub fn opens_after(wave: &Wave, since: jiff::Timestamp, seed: u16) -> jiff::Timestamp {
    let offset = wave.opens_for(seed).duration_since(wave.opens_at);
    since
        .max(wave.opens_at)
        .checked_add(offset)
        .unwrap_or(jiff::Timestamp::MAX)
}

/// Count `reports` of the nodes of `wave` for `artifact`: (running it or a later version,
/// failed on it).
fn counts(artifact: &ArtifactCustom, wave: &Wave, reports: &[NodeReport]) -> (u32, u32) {
    let mine = reports
        .iter()
        .filter(|r| r.os == artifact.os && wave.contains(r.seed));
    let (mut healthy, mut failed) = (0u32, 0u32);
    for r in mine {
        if r.failed.contains(&artifact.version) {
            failed = failed.saturating_add(1);
        } else if r.version.as_ref().is_some_and(|v| {
            crate::order::compare(v, &artifact.version) != std::cmp::Ordering::Less
        }) {
            // On the version or past it (a canary that went on to the next release still
            // ran this one).
            healthy = healthy.saturating_add(1);
        }
    }
    (healthy, failed)
}

/// Whether `gate` holds with these counts.
pub fn holds(gate: &Gate, healthy: u32, failed: u32) -> bool {
    healthy >= gate.min_healthy && failed <= gate.max_failed
}

/// One gated wave's verdict at a publish, for its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub target: String,
    pub wave: String,
    /// The wave before it, whose nodes were counted.
    pub after: String,
    pub healthy: u32,
    pub failed: u32,
    pub gate: Gate,
    /// Since when it is open; `None`: held.
    pub open_since: Option<jiff::Timestamp>,
}

/// The gates of `artifacts` (target name, custom) at `now` from `reports`, keeping the
/// `since` of every gate that held at the last publish (`previous`) and still holds; with
/// each gated wave's verdict.
pub fn evaluate<'a>(
    artifacts: impl IntoIterator<Item = (&'a str, &'a ArtifactCustom)>,
    reports: &Reports,
    previous: &Gates,
    now: jiff::Timestamp,
) -> (Gates, Vec<Verdict>) {
    let mut gates = Gates::default();
    let mut verdicts = Vec::new();
    for (target, artifact) in artifacts {
        // A gate opens only while every gate before it in the same election holds.
        let mut earlier_held = false;
        for pair in artifact.waves.windows(2) {
            let (before, wave) = (&pair[0], &pair[1]);
            let Some(gate) = wave.gate else { continue };
            let (healthy, failed) = counts(artifact, before, &reports.reports);
            let failed = failed.saturating_add(reports.unreadable);
            let open = !reports.truncated && !earlier_held && holds(&gate, healthy, failed);
            earlier_held |= !open;
            let open_since = open.then(|| {
                previous
                    .opened(target, wave.name.as_str())
                    .map_or(now, |o| o.since)
            });
            if let Some(since) = open_since {
                gates.0.entry(target.to_string()).or_default().insert(
                    wave.name.to_string(),
                    Opened {
                        since,
                        healthy,
                        failed,
                    },
                );
            }
            verdicts.push(Verdict {
                target: target.to_string(),
                wave: wave.name.to_string(),
                after: before.name.to_string(),
                healthy,
                failed,
                gate,
                open_since,
            });
        }
    }
    (gates, verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn wave(name: &str, at: &str, seeds: [u16; 2], gate: Option<Gate>) -> Wave {
        Wave {
            name: name.parse().unwrap(),
            opens_at: t(at),
            seeds,
            spread_seconds: 0,
            gate,
        }
    }

    fn report(node: &str, seed: u16, version: &str, failed: &[&str]) -> NodeReport {
        NodeReport {
            format_version: REPORT_FORMAT_VERSION,
            node: node.into(),
            os: "host-os".parse().unwrap(),
            seed,
            version: Some(version.parse().unwrap()),
            failed: failed.iter().map(|v| v.parse().unwrap()).collect(),
            at: t("2026-01-10T01:00:00Z"),
        }
    }

    fn artifact(waves: Vec<Wave>) -> ArtifactCustom {
        let os: Os = "host-os".parse().unwrap();
        ArtifactCustom {
            format_version: crate::custom::FORMAT_VERSION,
            kind: crate::custom::Kind::Artifact,
            os,
            version: "1.1.0".parse().unwrap(),
            file: "update-img.tar.zst".parse().unwrap(),
            sha256: plinth_release::Sha256::of(b"payload"),
            length: 7,
            manifest_sha256: plinth_release::Sha256::of(b"manifest"),
            elected_at: t("2026-01-09T00:00:00Z"),
            waves,
            measurements: crate::fixtures::measurements(os, "1.1.0"),
        }
    }

    const T: &str = "host-os/1.1.0/update-img.tar.zst";

    #[test]
    fn a_gated_wave_opens_once_the_wave_before_is_healthy_and_holds_again_on_failures() {
        let gate = Gate {
            min_healthy: 2,
            max_failed: 0,
        };
        let a = artifact(vec![
            wave("canary", "2026-01-10T00:00:00Z", [0, 15], None),
            wave("rest", "2026-01-11T00:00:00Z", [16, 2047], Some(gate)),
        ]);
        let now = t("2026-01-10T02:00:00Z");
        // One canary node on 1.1.0, one still on 1.0.0, one of `rest` (not counted).
        let mut reports = Reports {
            reports: vec![
                report("n1", 3, "1.1.0", &[]),
                report("n2", 9, "1.0.0", &[]),
                report("n3", 100, "1.1.0", &[]),
            ],
            ..Reports::default()
        };
        let (gates, verdicts) = evaluate([(T, &a)], &reports, &Gates::default(), now);
        assert!(gates.0.is_empty());
        assert_eq!((verdicts[0].healthy, verdicts[0].failed), (1, 0));
        assert_eq!(verdicts[0].open_since, None);
        let rest = &a.waves[1];
        assert_eq!(gates.opens_for(T, rest, 100), None, "held");
        assert_eq!(
            gates.opens_for(T, &a.waves[0], 3),
            Some(a.waves[0].opens_at),
            "the canary wave has no gate"
        );

        // The second canary node upgrades: open since this publish; later publishes keep it.
        reports.reports[1] = report("n2", 9, "1.1.0", &[]);
        let (gates, _) = evaluate([(T, &a)], &reports, &Gates::default(), now);
        assert_eq!(gates.opened(T, "rest").unwrap().since, now);
        let later = t("2026-01-12T00:00:00Z");
        let (kept, _) = evaluate([(T, &a)], &reports, &gates, later);
        assert_eq!(kept.opened(T, "rest").unwrap().since, now);
        // Governance's time is the earliest: the gate held before it.
        assert_eq!(kept.opens_for(T, rest, 16), Some(rest.opens_at));

        // A canary that went on to a later version still counts.
        reports.reports[0] = report("n1", 3, "1.2.0", &[]);
        let (still, _) = evaluate([(T, &a)], &reports, &kept, later);
        assert_eq!(still.opened(T, "rest").unwrap().since, now);

        // A canary node rolls back from 1.1.0: the gate holds no longer.
        reports.reports.push(report("n4", 12, "1.0.0", &["1.1.0"]));
        let (held, verdicts) = evaluate([(T, &a)], &reports, &kept, later);
        assert!(held.0.is_empty());
        assert_eq!((verdicts[0].healthy, verdicts[0].failed), (2, 1));

        // An unreadable report counts as a failure; too many entries hold every gate.
        reports.reports.pop();
        reports.unreadable = 1;
        let (held, verdicts) = evaluate([(T, &a)], &reports, &kept, later);
        assert!(held.0.is_empty());
        assert_eq!(verdicts[0].failed, 1);
        reports.unreadable = 0;
        reports.truncated = true;
        assert!(evaluate([(T, &a)], &reports, &kept, later).0 .0.is_empty());
    }

    #[test]
    fn a_gate_opens_only_while_every_gate_before_it_holds() {
        let gate = Some(Gate {
            min_healthy: 1,
            max_failed: 0,
        });
        let a = artifact(vec![
            wave("canary", "2026-01-10T00:00:00Z", [0, 15], None),
            wave("early", "2026-01-11T00:00:00Z", [16, 99], gate),
            wave("rest", "2026-01-12T00:00:00Z", [100, 2047], gate),
        ]);
        // `early` has a node on the version, the canaries none: `early` is held, and so is
        // `rest` although its own gate would hold.
        let reports = Reports {
            reports: vec![report("n1", 20, "1.1.0", &[])],
            ..Reports::default()
        };
        let now = t("2026-01-13T00:00:00Z");
        let (gates, verdicts) = evaluate([(T, &a)], &reports, &Gates::default(), now);
        assert!(gates.0.is_empty(), "{gates:?}");
        assert_eq!(verdicts.len(), 2);
        assert_eq!(verdicts[1].healthy, 1);
    }

    #[test]
    fn a_gate_that_holds_after_its_time_starts_the_spread_then() {
        let mut rest = wave(
            "rest",
            "2026-01-11T00:00:00Z",
            [16, 2047],
            Some(Gate {
                min_healthy: 1,
                max_failed: 0,
            }),
        );
        rest.spread_seconds = 2032;
        let since = t("2026-01-12T00:00:00Z");
        let gates = Gates(BTreeMap::from([(
            T.to_string(),
            BTreeMap::from([(
                "rest".to_string(),
                Opened {
                    since,
                    healthy: 1,
                    failed: 0,
                },
            )]),
        )]));
        assert_eq!(gates.opens_for(T, &rest, 16), Some(since));
        assert_eq!(
            gates.opens_for(T, &rest, 1032),
            Some(since + jiff::SignedDuration::from_secs(1016))
        );
    }

    #[test]
    fn a_snapshots_gates_are_read_bounded() {
        let opened = |n: usize| {
            let waves: BTreeMap<String, serde_json::Value> = (0..n)
                .map(|i| {
                    (
                        format!("w{i}"),
                        serde_json::json!({"since": "2026-01-12T00:00:00Z", "healthy": 1, "failed": 0}),
                    )
                })
                .collect();
            HashMap::from([(EXTRA_KEY.to_string(), serde_json::json!({ T: waves }))])
        };
        assert_eq!(
            Gates::from_extra(&HashMap::new()).unwrap(),
            Gates::default()
        );
        assert_eq!(Gates::from_extra(&opened(2)).unwrap().0[T].len(), 2);
        let e = Gates::from_extra(&opened(MAX_OPENED + 1)).unwrap_err();
        assert!(e.contains("at most 4096"), "{e}");
        let odd = HashMap::from([(
            EXTRA_KEY.to_string(),
            serde_json::json!({ T: {"rest": {"since": "2026-01-12T00:00:00Z", "healthy": 1, "failed": 0, "force": true}}}),
        )]);
        assert!(Gates::from_extra(&odd).unwrap_err().contains("force"));
    }

    #[test]
    fn reports_are_bounded_checked_and_one_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        let good = |r: &NodeReport| serde_json::to_vec(r).unwrap();
        let mut future = report("n8", 3, "1.1.0", &[]);
        future.at = t("2026-01-10T01:20:00Z");
        write("n1.json", &good(&report("n1", 3, "1.1.0", &[])));
        // Another node's report in a file of its own name: a node reports for itself only.
        write("n1-old.json", &good(&report("n1", 3, "1.0.0", &["1.1.0"])));
        // A report from later than now: refused (it would outlive every real one).
        write("n8.json", &good(&future));
        write("n2.json", b"{\"format_version\": 1");
        write("n3.json", &vec![b' '; MAX_REPORT_SIZE as usize + 1]);
        write("Bad Name.json", &good(&report("n5", 1, "1.1.0", &[])));
        let mut bad_seed = report("n6", 1, "1.1.0", &[]);
        bad_seed.seed = 2048;
        write("n6.json", &good(&bad_seed));
        write("notes.txt", b"not a report");
        std::os::unix::fs::symlink(dir.path().join("n1.json"), dir.path().join("n7.json")).unwrap();
        let r = read_reports(dir.path(), t("2026-01-10T01:05:00Z")).unwrap();
        assert_eq!(r.reports.len(), 1);
        assert_eq!(r.reports[0].version, Some("1.1.0".parse().unwrap()));
        // Every skipped file named like a report counts as a failure ("Bad Name" does not).
        assert_eq!(r.unreadable, 6);
        assert!(!r.truncated);
        let skipped: Vec<String> = r
            .skipped
            .iter()
            .map(|(p, why)| format!("{} {why}", p.file_name().unwrap().to_str().unwrap()))
            .collect();
        assert_eq!(skipped.len(), 7, "{skipped:?}");
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("n1-old.json names node `n1`, not `n1-old`")),
            "{skipped:?}"
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("n8.json written at 2026-01-10T01:20:00Z")),
            "{skipped:?}"
        );
        assert!(
            skipped.iter().any(|s| s.starts_with("n6.json seed 2048")),
            "{skipped:?}"
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("Bad Name.json expected")),
            "{skipped:?}"
        );
        assert!(
            skipped.iter().any(|s| s.starts_with("n7.json")),
            "a link is not followed: {skipped:?}"
        );
    }
}
