//! The governance record's own readers of hostile bytes: the waves file governance writes by
//! hand (`elect --waves`), and a target's name and custom metadata as a node or `status`
//! reads them from a repository (after tough has checked the signatures, which a compromised
//! publisher or a voter's bad election does not stop). Neither may panic; waves they accept
//! obey the waves rules, and an entry they accept reads back the same from its own JSON.
//!
//! Input: the first byte picks the reader; for a target, the first line is its name and the
//! rest its JSON (tough's `Target`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_governance::custom::{check_waves, read_entry, Entry};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if which % 2 == 0 {
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
