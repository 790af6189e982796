//! The rollout waves of an election, from the YAML file governance writes by hand (`elect
//! --waves FILE`), with os.yaml's `file:line:col` errors:
//!
//! ```yaml
//! format_version: 1
//! waves:
//!   - name: canary                      # a name: lower-case letters, digits and -
//!     opens_at: 2026-01-10T00:00:00Z    # RFC 3339 (stored in UTC)
//!     seeds: [0, 15]                    # first and last node seed, 0..=2047
//!   - name: rest
//!     opens_at: 2026-01-12T00:00:00Z
//!     seeds: [16, 2047]
//!     spread_seconds: 86400             # optional: its nodes start over a day, not at once
//!     gate: {min_healthy: 10, max_failed: 0}  # optional: and only once `canary` is healthy
//! ```
//!
//! Each node has a stable seed in 0..=2047; a wave opens at its time for the seeds in its
//! range, each node at its position in the wave's range times `spread_seconds` later
//! ([`Wave::opens_for`]); the next wave opens no earlier than the end of that spread. Waves are listed in the order they open (times never go back), their ranges never
//! overlap, and a seed no wave names never takes the version. The file is hostile until
//! checked: a regular file of at most [`MAX_SIZE`] bytes, every field checked.

use crate::custom::{Gate, Wave, MAX_GATE_NODES, MAX_SEED, MAX_SPREAD_SECONDS};
use plinth_yaml::document;
use plinth_yaml::{PositionIndex, SpecError, SpecErrors};
use serde::Deserialize;
use std::path::Path;

/// The waves file format this plinth reads.
pub const FORMAT_VERSION: u32 = 1;
/// The largest waves file read.
pub const MAX_SIZE: u64 = 64 << 10;
/// The most waves one election may have.
pub const MAX_WAVES: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WavesFile {
    format_version: u32,
    waves: Vec<RawWave>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWave {
    name: String,
    opens_at: String,
    seeds: [u32; 2],
    #[serde(default)]
    spread_seconds: u64,
    #[serde(default)]
    gate: Option<Gate>,
}

const HINT: &str = "see the example in docs/governance.md";

/// The seed ranges no wave holds, in order: nodes with those seeds would never take the
/// version.
pub fn uncovered(waves: &[Wave]) -> Vec<[u16; 2]> {
    let mut ranges: Vec<[u16; 2]> = waves.iter().map(|w| w.seeds).collect();
    ranges.sort();
    let mut gaps = Vec::new();
    let mut next: u32 = 0;
    for [first, last] in ranges {
        if u32::from(first) > next {
            gaps.push([next as u16, first - 1]);
        }
        next = next.max(u32::from(last) + 1);
    }
    if next <= u32::from(MAX_SEED) {
        gaps.push([next as u16, MAX_SEED]);
    }
    gaps
}

/// Read and check the waves file at `path`.
pub fn read(path: &Path) -> Result<Vec<Wave>, SpecErrors> {
    let file = path.display().to_string();
    let bytes = plinth_release::untrusted::read_untrusted(path, MAX_SIZE).map_err(|e| {
        SpecErrors::single(SpecError::io(
            &file,
            format!("cannot read the waves file ({e}); it is a regular file of at most {MAX_SIZE} bytes"),
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        SpecErrors::single(SpecError::io(
            &file,
            "not UTF-8 text; save it as plain UTF-8".into(),
        ))
    })?;
    parse(&text, &file)
}

/// Parse and check the text of a waves file named `file` (in errors).
pub fn parse(text: &str, file: &str) -> Result<Vec<Wave>, SpecErrors> {
    let (raw, index): (WavesFile, _) = document::parse(
        text,
        file,
        "a YAML mapping with format_version and waves",
        HINT,
    )?;
    check(&raw, file, &index)
}

/// The waves of a parsed file, or every problem in document order.
fn check(raw: &WavesFile, file: &str, index: &PositionIndex) -> Result<Vec<Wave>, SpecErrors> {
    let mut errors = Vec::new();
    let mut fail = |path: String, expected: &str, found: String, hint: &str| {
        let pos = index.locate(&path);
        errors.push(SpecError {
            file: file.into(),
            line: pos.line,
            column: pos.column,
            path,
            expected: expected.into(),
            found,
            hint: hint.into(),
        })
    };
    if raw.format_version != FORMAT_VERSION {
        fail(
            "format_version".into(),
            &FORMAT_VERSION.to_string(),
            format!("`{}`", raw.format_version),
            "write the waves file for this plinth (docs/governance.md)",
        );
    }
    if raw.waves.is_empty() || raw.waves.len() > MAX_WAVES {
        fail(
            "waves".into(),
            &format!("1 to {MAX_WAVES} waves"),
            format!("{}", raw.waves.len()),
            "a version needs at least one wave to reach any node",
        );
    }
    let mut waves: Vec<Wave> = Vec::new();
    for (i, w) in raw.waves.iter().enumerate() {
        let at = |field: &str| format!("waves[{i}].{field}");
        let name = match w.name.parse::<plinth_release::Name>() {
            Ok(n) => Some(n),
            Err(_) => {
                fail(
                    at("name"),
                    "a name of lower-case letters, digits and `-`, starting with a letter",
                    format!("`{}`", w.name.escape_debug()),
                    "name waves like `canary` or `wave-2`",
                );
                None
            }
        };
        if let Some(j) = raw.waves[..i].iter().position(|o| o.name == w.name) {
            fail(
                at("name"),
                "each wave name once",
                format!(
                    "`{}` again (first on line {})",
                    w.name.escape_debug(),
                    index.locate(&format!("waves[{j}].name")).line
                ),
                "rename one of them",
            );
        }
        let opens_at = match w.opens_at.parse::<jiff::Timestamp>() {
            Ok(t) => Some(t),
            Err(e) => {
                fail(
                    at("opens_at"),
                    "an RFC 3339 time with its offset, like `2026-01-10T00:00:00Z`",
                    format!("`{}` ({e})", w.opens_at.escape_debug()),
                    "write the time in UTC with a trailing Z",
                );
                None
            }
        };
        let [first, last] = w.seeds;
        let mut seeds_ok = true;
        if first > last || last > u32::from(MAX_SEED) {
            seeds_ok = false;
            fail(
                at("seeds"),
                &format!("[first, last] with first <= last <= {MAX_SEED}"),
                format!("[{first}, {last}]"),
                &format!("node seeds are 0 to {MAX_SEED}"),
            );
        }
        if let (Some(prev), Some(t)) = (waves.last(), opens_at) {
            let prev_spread_end = prev
                .opens_at
                .checked_add(jiff::SignedDuration::from_secs(prev.spread_seconds as i64))
                .unwrap_or(jiff::Timestamp::MAX);
            if t >= prev.opens_at && t < prev_spread_end {
                fail(
                    at("opens_at"),
                    &format!(
                        "a time no earlier than the end of wave `{}`'s spread ({prev_spread_end})",
                        prev.name
                    ),
                    format!("`{}`", w.opens_at.escape_debug()),
                    "a wave opens after the one before has reached all its nodes: shorten that \
                     wave's spread_seconds or open this one later",
                );
            }
            if t < prev.opens_at {
                fail(
                    at("opens_at"),
                    &format!(
                        "a time no earlier than the wave before (`{}`, {})",
                        prev.name, prev.opens_at
                    ),
                    format!("`{}`", w.opens_at.escape_debug()),
                    "list the waves in the order they open",
                );
            }
        }
        if seeds_ok {
            if let Some(other) = waves
                .iter()
                .find(|o| first <= u32::from(o.seeds[1]) && u32::from(o.seeds[0]) <= last)
            {
                fail(
                    at("seeds"),
                    "a seed range no other wave has",
                    format!(
                        "[{first}, {last}], which overlaps wave `{}`'s [{}, {}]",
                        other.name, other.seeds[0], other.seeds[1]
                    ),
                    "each node seed belongs to at most one wave",
                );
            }
        }
        if w.spread_seconds > MAX_SPREAD_SECONDS {
            fail(
                at("spread_seconds"),
                &format!("at most {MAX_SPREAD_SECONDS} (30 days)"),
                format!("`{}`", w.spread_seconds),
                "the seconds over which the wave's nodes start after opens_at; 0 starts them all at once",
            );
        }
        if let Some(g) = &w.gate {
            if i == 0 {
                fail(
                    at("gate"),
                    "no gate on the first wave",
                    "a gate".into(),
                    "a gate holds a wave until the wave before it is healthy; the first wave \
                     has none before it (make it a small canary wave instead)",
                );
            }
            if g.min_healthy == 0 || g.min_healthy > MAX_GATE_NODES {
                fail(
                    at("gate.min_healthy"),
                    &format!("1 to {MAX_GATE_NODES}"),
                    format!("`{}`", g.min_healthy),
                    "how many nodes of the wave before must report running the version",
                );
            }
            if g.max_failed > MAX_GATE_NODES {
                fail(
                    at("gate.max_failed"),
                    &format!("0 to {MAX_GATE_NODES}"),
                    format!("`{}`", g.max_failed),
                    "how many nodes of the wave before may report that the version failed on \
                     them (0: none)",
                );
            }
        }
        if let (Some(name), Some(opens_at), true) = (name, opens_at, seeds_ok) {
            waves.push(Wave {
                name,
                opens_at,
                // Both fit: last <= MAX_SEED was checked.
                seeds: [first as u16, last as u16],
                spread_seconds: w.spread_seconds,
                gate: w.gate,
            });
        }
    }
    if errors.is_empty() {
        Ok(waves)
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(SpecErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::custom::check_waves;

    const GOOD: &str = "format_version: 1\nwaves:\n  - name: canary\n    opens_at: 2026-01-10T00:00:00Z\n    seeds: [0, 15]\n  - name: rest\n    opens_at: 2026-01-12T02:00:00+02:00\n    seeds: [16, 2047]\n";

    #[test]
    fn a_good_file_reads_in_utc() {
        let waves = parse(GOOD, "w.yaml").unwrap();
        assert_eq!(waves.len(), 2);
        assert_eq!(waves[1].opens_at.to_string(), "2026-01-12T00:00:00Z");
        assert_eq!(waves[1].seeds, [16, 2047]);
    }

    fn error_of(text: &str) -> String {
        parse(text, "w.yaml").unwrap_err().to_string()
    }

    #[test]
    fn bad_waves_name_their_line() {
        let overlap = GOOD.replace("[16, 2047]", "[15, 2047]");
        let e = error_of(&overlap);
        assert!(e.starts_with("w.yaml:8:"), "{e}");
        assert!(e.contains("overlaps wave `canary`"), "{e}");

        let e = error_of(&GOOD.replace("[16, 2047]", "[16, 2048]"));
        assert!(e.starts_with("w.yaml:8:") && e.contains("2047"), "{e}");

        let e = error_of(&GOOD.replace("2026-01-10T00:00:00Z", "tomorrow"));
        assert!(e.starts_with("w.yaml:4:") && e.contains("RFC 3339"), "{e}");

        let e = error_of(&GOOD.replace("2026-01-12T02:00:00+02:00", "2026-01-09T00:00:00Z"));
        assert!(e.starts_with("w.yaml:7:") && e.contains("order"), "{e}");

        let e = error_of(&GOOD.replace("name: rest", "name: canary"));
        assert!(
            e.starts_with("w.yaml:6:") && e.contains("first on line 3"),
            "{e}"
        );

        let e = error_of(&GOOD.replace("[0, 15]", "[0, 15, 16]"));
        assert!(e.starts_with("w.yaml:5:"), "{e}");

        let e = error_of(&GOOD.replace("seeds: [0, 15]", "seeds: [0, 15]\n    weight: 3"));
        assert!(e.starts_with("w.yaml:6:") && e.contains("weight"), "{e}");

        let e = error_of("format_version: 1\nwaves: []\n");
        assert!(e.contains("1 to 64 waves"), "{e}");

        let e = error_of(&GOOD.replace(
            "seeds: [0, 15]",
            "seeds: [0, 15]\n    spread_seconds: 2592001",
        ));
        assert!(e.starts_with("w.yaml:6:") && e.contains("2592000"), "{e}");

        // The canary wave's spread (200000 s) runs past the next wave's opening (2 days on).
        let e = error_of(&GOOD.replace(
            "seeds: [0, 15]",
            "seeds: [0, 15]\n    spread_seconds: 200000",
        ));
        assert!(
            e.starts_with("w.yaml:8:") && e.contains("end of wave `canary`'s spread"),
            "{e}"
        );
        // Exactly two days: the next wave opens as the last canary node's turn ends.
        parse(
            &GOOD.replace(
                "seeds: [0, 15]",
                "seeds: [0, 15]\n    spread_seconds: 172800",
            ),
            "w.yaml",
        )
        .unwrap();
    }

    #[test]
    fn a_gate_gates_a_later_wave_only_within_its_bounds() {
        let gated = GOOD.replace(
            "seeds: [16, 2047]",
            "seeds: [16, 2047]\n    gate: {min_healthy: 10, max_failed: 0}",
        );
        let waves = parse(&gated, "w.yaml").unwrap();
        assert_eq!(
            waves[1].gate,
            Some(Gate {
                min_healthy: 10,
                max_failed: 0
            })
        );
        assert!(check_waves(&waves).is_ok());
        assert!(waves[1]
            .describe()
            .ends_with("once the wave before has 10 healthy and at most 0 failed"));

        let e = error_of(&GOOD.replace(
            "seeds: [0, 15]",
            "seeds: [0, 15]\n    gate: {min_healthy: 1, max_failed: 0}",
        ));
        assert!(
            e.starts_with("w.yaml:6:") && e.contains("no gate on the first wave"),
            "{e}"
        );
        let e = error_of(&gated.replace("min_healthy: 10", "min_healthy: 0"));
        assert!(
            e.starts_with("w.yaml:9:") && e.contains("gate.min_healthy"),
            "{e}"
        );
        let e = error_of(&gated.replace("max_failed: 0", "max_failed: 100001"));
        assert!(
            e.contains("gate.max_failed") && e.contains("0 to 100000"),
            "{e}"
        );
        let e = error_of(&gated.replace("max_failed: 0", "max_failed: 0, quorum: 3"));
        assert!(e.starts_with("w.yaml:9:") && e.contains("quorum"), "{e}");
        // From metadata: a gate on the first wave is refused there too.
        let mut bad = waves.clone();
        bad[0].gate = bad[1].gate;
        assert!(check_waves(&bad).unwrap_err().contains("first wave"));
    }

    #[test]
    fn a_spread_wave_opens_for_each_seed_at_its_position_in_the_wave() {
        let text = GOOD.replace(
            "seeds: [16, 2047]",
            "seeds: [16, 2047]\n    spread_seconds: 2032",
        );
        let waves = parse(&text, "w.yaml").unwrap();
        let (canary, rest) = (&waves[0], &waves[1]);
        assert_eq!(canary.spread_seconds, 0);
        assert_eq!(canary.opens_for(15), canary.opens_at);
        let at = |secs: i64| rest.opens_at + jiff::SignedDuration::from_secs(secs);
        // 2032 seeds over 2032 s: a second each, counted from the wave's first seed (16).
        assert_eq!(rest.opens_for(16), at(0));
        assert_eq!(rest.opens_for(17), at(1));
        assert_eq!(rest.opens_for(1032), at(1016));
        assert_eq!(rest.opens_for(2047), at(2031));
        assert!(rest.describe().ends_with(", spread over 2032 s"));
    }
}
