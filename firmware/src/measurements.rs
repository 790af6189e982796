//! The predictions of `measurements.json` (its types are `plinth_release::measurements`):
//! the build computes each slot's PCR values from the events it expects ([`predict`]); the
//! booted agent checks the real PCRs and log against them ([`check`]) and explains any
//! difference event by event.

use crate::eventlog::{self, EventLog};
use crate::pcr::{self, Sha256Digest};
use crate::uefi::Expected;
use plinth_release::{Sha256, Slot};
use std::collections::BTreeMap;

pub use plinth_release::measurements::{
    Event, Measurements, NotPredicted, Platform, SlotPrediction, DISK_SERIAL, FILE_NAME,
    FORMAT_VERSION,
};

impl From<&eventlog::Event> for Event {
    fn from(e: &eventlog::Event) -> Event {
        Event {
            pcr: e.pcr,
            event_type: eventlog::type_name(e.event_type),
            sha256: Sha256(e.sha256),
            what: e.describe(),
        }
    }
}

impl From<&Expected> for Event {
    fn from(e: &Expected) -> Event {
        Event {
            pcr: e.pcr,
            event_type: eventlog::type_name(e.event_type),
            sha256: Sha256(e.sha256),
            what: e.what.clone(),
        }
    }
}

/// The prediction of one slot from its log events and later extends; the PCR values are
/// their replay, and `untouched` PCRs (no events at all) are predicted to stay zero.
pub fn predict(
    slot: Option<Slot>,
    uki_sha256: Sha256,
    events: &[Expected],
    later: &[Expected],
    untouched: &[u32],
) -> SlotPrediction {
    let mut values: BTreeMap<u32, Sha256Digest> = untouched.iter().map(|&n| (n, [0; 32])).collect();
    for e in events.iter().chain(later) {
        let v = values.entry(e.pcr).or_insert([0; 32]);
        *v = pcr::extend(*v, &e.sha256);
    }
    SlotPrediction {
        slot,
        uki_sha256,
        pcrs: values.into_iter().map(|(k, v)| (k, Sha256(v))).collect(),
        events: events.iter().map(Event::from).collect(),
        later: later.iter().map(Event::from).collect(),
    }
}

/// What differs between the prediction for a slot and a real boot: the live PCR values (as the
/// TPM reports them) and the firmware's event log. Empty when every predicted PCR matches.
pub fn check(
    slot: &SlotPrediction,
    live: &BTreeMap<u32, Sha256Digest>,
    log: Option<&EventLog>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (&n, expected) in &slot.pcrs {
        let Some(value) = live.get(&n) else {
            problems.push(format!("PCR {n} could not be read"));
            continue;
        };
        if value == expected.as_bytes() {
            continue;
        }
        let why = match log {
            Some(log) => explain(slot, n, value, log),
            None => "the event log could not be read to say why".into(),
        };
        problems.push(format!(
            "PCR {n} is {}, measurements.json says {expected}: {why}",
            hex::encode(value)
        ));
    }
    problems
}

/// Why PCR `n` differs: the first log event that is not the predicted one, or else the
/// extends after the log.
fn explain(slot: &SlotPrediction, n: u32, value: &Sha256Digest, log: &EventLog) -> String {
    let expected: Vec<&Event> = slot.events.iter().filter(|e| e.pcr == n).collect();
    let seen: Vec<&eventlog::Event> = log.of_pcr(n).collect();
    for i in 0..expected.len().max(seen.len()) {
        match (expected.get(i), seen.get(i)) {
            (Some(e), Some(s)) if e.sha256.0 == s.sha256 => continue,
            (Some(e), Some(s)) => {
                return format!(
                    "event {} of PCR {n} in the log is `{}` with sha256 {}, the prediction is `{}` {} with sha256 {}",
                    i + 1,
                    s.describe(),
                    hex::encode(s.sha256),
                    e.event_type,
                    e.what,
                    e.sha256
                )
            }
            (Some(e), None) => {
                return format!(
                    "the log has {} events for PCR {n}, the prediction {}; the first missing is `{}` {}",
                    seen.len(),
                    expected.len(),
                    e.event_type,
                    e.what
                )
            }
            (None, Some(s)) => {
                return format!(
                    "the log has {} events for PCR {n}, the prediction {}; the first extra is `{}` with sha256 {}",
                    seen.len(),
                    expected.len(),
                    s.describe(),
                    hex::encode(s.sha256)
                )
            }
            (None, None) => unreachable!("i is below the longer length"),
        }
    }
    let replayed = log.replay().get(&n).copied().unwrap_or([0; 32]);
    let later: Vec<&Event> = slot.later.iter().filter(|e| e.pcr == n).collect();
    let with_later = later
        .iter()
        .fold(replayed, |v, e| pcr::extend(v, &e.sha256.0));
    if with_later == *value {
        "the log's events are the predicted ones, yet the value differs (a changed prediction?)"
            .into()
    } else {
        let words: Vec<&str> = later.iter().map(|e| e.what.as_str()).collect();
        format!(
            "the log's events are the predicted ones (they replay to {}); what was extended after the log differs from the prediction ({})",
            hex::encode(replayed),
            if words.is_empty() {
                "nothing".to_string()
            } else {
                words.join(", ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventlog::{self, types};
    use crate::uefi;

    fn expected(pcr: u32, data: &[u8], what: &str) -> Expected {
        Expected {
            pcr,
            event_type: types::EV_IPL,
            sha256: pcr::digest(data),
            what: what.into(),
        }
    }

    #[test]
    fn a_matching_boot_passes_and_a_changed_event_is_named() {
        let events = vec![
            expected(11, b".cmdline\0", ".cmdline name"),
            expected(11, b"ro quiet", ".cmdline data"),
        ];
        let later = vec![expected(11, b"ready", "ready")];
        let slot = predict(Some(Slot::A), Sha256::default(), &events, &later, &[12]);
        let log_bytes = eventlog::tests::synth(&[
            (11, types::EV_IPL, b".cmdline\0"),
            (11, types::EV_IPL, b"ro quiet"),
        ]);
        let log = eventlog::parse(&log_bytes).unwrap();
        let live: BTreeMap<u32, Sha256Digest> =
            [(11, pcr::extend(log.replay()[&11], &pcr::digest(b"ready")))].into();
        assert_eq!(
            check(&slot, &live, Some(&log)),
            ["PCR 12 could not be read"],
            "an untouched PCR is published as zero and checked"
        );
        let mut live = live;
        live.insert(12, [0; 32]);
        assert!(check(&slot, &live, Some(&log)).is_empty());

        let tampered_bytes = eventlog::tests::synth(&[
            (11, types::EV_IPL, b".cmdline\0"),
            (11, types::EV_IPL, b"ro quiet init=/bin/sh"),
        ]);
        let tampered = eventlog::parse(&tampered_bytes).unwrap();
        let live: BTreeMap<u32, Sha256Digest> = [
            (
                11,
                pcr::extend(tampered.replay()[&11], &pcr::digest(b"ready")),
            ),
            (12, [0; 32]),
        ]
        .into();
        let problems = check(&slot, &live, Some(&tampered));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("PCR 11 is "), "{}", problems[0]);
        assert!(
            problems[0].contains("event 2 of PCR 11 in the log is `EV_IPL ro quiet init=/bin/sh`"),
            "{}",
            problems[0]
        );
        assert!(
            problems[0].contains("`EV_IPL` .cmdline data"),
            "{}",
            problems[0]
        );

        // The log as predicted, but nothing extended after it.
        let live: BTreeMap<u32, Sha256Digest> = [(11, log.replay()[&11]), (12, [0; 32])].into();
        let problems = check(&slot, &live, Some(&log));
        assert!(
            problems[0].contains("extended after the log differs"),
            "{}",
            problems[0]
        );
        assert_eq!(
            check(&slot, &BTreeMap::new(), None),
            ["PCR 11 could not be read", "PCR 12 could not be read"]
        );
    }

    #[test]
    fn round_trip_and_refusals() {
        let m = Measurements {
            format_version: FORMAT_VERSION,
            os: plinth_release::Os::HostOs,
            version: "1.0.0".parse().unwrap(),
            platform: Platform {
                firmware: "OVMF".into(),
                secure_boot: false,
                bank: "sha256".into(),
            },
            slots: vec![predict(
                None,
                Sha256::default(),
                &uefi::pcr7_secure_boot_off(),
                &[],
                &[],
            )],
            snp: None,
            not_predicted: vec![NotPredicted {
                pcr: 0,
                why: "firmware".into(),
            }],
        };
        let text = serde_json::to_string_pretty(&m).unwrap();
        assert_eq!(Measurements::parse(&text, "m.json").unwrap(), m);
        assert_eq!(
            m.slot(None).unwrap().pcrs[&7],
            "65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068"
        );
        let bad = text.replace(
            &format!("\"format_version\": {FORMAT_VERSION}"),
            "\"format_version\": 9",
        );
        assert!(Measurements::parse(&bad, "m.json")
            .unwrap_err()
            .contains("format_version 9"));
        let bad = text.replace("65caf8dd", "zz");
        assert!(Measurements::parse(&bad, "m.json")
            .unwrap_err()
            .contains("PCR 7"));
        assert!(Measurements::parse("{}", "m.json")
            .unwrap_err()
            .starts_with("m.json: not a plinth"));
    }
}
