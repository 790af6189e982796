//! The governance record's own readers of hostile bytes: the waves file governance writes by
//! hand (`elect --waves`), and a target's name and custom metadata as a node or `status`
//! reads them from a repository (after tough has checked the signatures, which a compromised
//! publisher or a voter's bad election does not stop). Neither may panic; waves they accept
//! obey the waves rules, and an entry they accept reads back the same from its own JSON.
//!
//! Also the health gate's readers: a node's report as `publish --health` reads it, and the
//! gates a snapshot carries as a node reads them (signed by the publisher's online key, so
//! hostile once that key is). Neither may panic; what they accept reads back the same, and a
//! gated wave never opens for a node before governance's time.
//!
//! Input: the first byte picks the reader (modulo 4: waves, target, report, gates); for a
//! target, the first line is its name and the rest its JSON (tough's `Target`); for gates,
//! the snapshot's extra fields as JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_governance::custom::{check_waves, read_entry, Entry, Gate, Wave, MAX_SEED};
use plinth_governance::health::{Gates, NodeReport, EXTRA_KEY, MAX_FAILED, MAX_OPENED};
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 4 {
        2 => return report(rest),
        3 => return gates(text),
        _ => {}
    }
    if which % 4 == 0 {
        if let Ok(waves) = plinth_governance::waves::parse(text, "waves.yaml") {
            assert!(check_waves(&waves).is_ok(), "accepted waves break the rules");
            // Every node's turn is within its wave's spread, and a wave's last node starts
            // no later than the next wave opens.
            for (i, w) in waves.iter().enumerate() {
                let (first, last) = (w.opens_for(w.seeds[0]), w.opens_for(w.seeds[1]));
                assert!(first == w.opens_at && first <= last, "a turn before its wave opens");
                if let Some(next) = waves.get(i + 1) {
                    assert!(last <= next.opens_at, "a spread runs into the next wave");
                }
            }
        }
        return;
    }
    let (name, json) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(target) = serde_json::from_str::<tough::schema::Target>(json) else {
        return;
    };
    if let Ok(entry) = read_entry(name, &target) {
        let again = serde_json::to_string(&target).expect("a target serializes");
        let target2: tough::schema::Target =
            serde_json::from_str(&again).expect("a serialized target reads back");
        let entry2 = read_entry(name, &target2).expect("an accepted target reads back");
        assert_eq!(entry, entry2);
        if let Entry::Artifact(a) = entry {
            assert!(check_waves(&a.waves).is_ok());
        }
    }
});

/// A node report: accepted ones read back the same from their own JSON.
fn report(bytes: &[u8]) {
    if let Ok(r) = NodeReport::parse(bytes) {
        let again = serde_json::to_vec(&r).expect("a report serializes");
        assert_eq!(NodeReport::parse(&again).expect("an accepted report reads back"), r);
        assert!(r.seed <= MAX_SEED && r.failed.len() <= MAX_FAILED);
    }
}

/// A snapshot's gates: accepted ones are bounded and read back the same; for every gated
/// wave of a fixed election, no node's turn comes before governance's.
fn gates(text: &str) {
    let Ok(extra) = serde_json::from_str::<HashMap<String, serde_json::Value>>(text) else {
        return;
    };
    let Ok(gates) = Gates::from_extra(&extra) else {
        return;
    };
    let count: usize = gates.0.values().map(|w| w.len()).sum();
    assert!(count <= MAX_OPENED);
    let again = HashMap::from([(
        EXTRA_KEY.to_string(),
        serde_json::to_value(&gates).expect("gates serialize"),
    )]);
    assert_eq!(Gates::from_extra(&again).expect("accepted gates read back"), gates);
    let wave = Wave {
        name: "rest".parse().expect("a name"),
        opens_at: "2026-01-12T00:00:00Z".parse().expect("a time"),
        seeds: [16, 2047],
        spread_seconds: 86400,
        gate: Some(Gate {
            min_healthy: 1,
            max_failed: 0,
        }),
    };
    for target in gates.0.keys() {
        for seed in [16, 1000, 2047] {
            if let Some(at) = gates.opens_for(target, &wave, seed) {
                assert!(at >= wave.opens_for(seed), "a gate opened a wave before its time");
            }
        }
    }
}
