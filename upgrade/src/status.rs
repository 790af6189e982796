//! `upgrade status`: what is on each slot, which one boots, and what happened last and why,
//! as lines for people and as a serde struct for `--json`.

use crate::slots::{Content, Failure, Outcome, OutcomeKind, State};
use plinth_release::{Slot, Version};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub active: Slot,
    pub slots: Vec<SlotStatus>,
    pub pending: Option<Slot>,
    pub tries_left: u8,
    pub last: Option<Outcome>,
    /// Versions that failed here, oldest first: not taken again unless asked for by name.
    pub failed: Vec<Failure>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlotStatus {
    pub slot: Slot,
    /// `active`, `pending` or `inactive`.
    pub role: &'static str,
    pub version: Option<Version>,
    /// `empty`, `installed`, `writing` or `written`.
    pub condition: &'static str,
}

/// The status of a slot state.
pub fn status(state: &State) -> Status {
    let slots = Slot::ALL
        .iter()
        .map(|&slot| {
            let content = state.content(slot);
            SlotStatus {
                slot,
                role: if slot == state.active {
                    "active"
                } else if state.pending == Some(slot) {
                    "pending"
                } else {
                    "inactive"
                },
                version: content.version().cloned(),
                condition: match content {
                    Content::Empty => "empty",
                    Content::Installed { .. } => "installed",
                    Content::Writing { .. } => "writing",
                    Content::Written { .. } => "written",
                },
            }
        })
        .collect();
    Status {
        active: state.active,
        slots,
        pending: state.pending,
        tries_left: state.tries_left,
        last: state.last.clone(),
        failed: state.failed.clone(),
    }
}

/// The status in words, one line each.
pub fn lines(s: &Status) -> Vec<String> {
    let mut out = Vec::new();
    for slot in &s.slots {
        let what = match (&slot.version, slot.condition) {
            (None, _) => "empty".to_string(),
            (Some(v), "writing") => format!("{v} (being written: not bootable)"),
            (Some(v), "written") => format!("{v} (written and read back)"),
            (Some(v), _) => v.to_string(),
        };
        let role = match slot.role {
            "pending" => format!("pending, {} tries left", s.tries_left),
            r => r.to_string(),
        };
        out.push(format!("slot {}: {what} ({role})", slot.slot));
    }
    match &s.last {
        None => out.push("last: nothing recorded".into()),
        Some(o) => {
            let version = o.version.as_ref().map_or("?", |v| v.as_str());
            let what = match o.kind {
                OutcomeKind::Initialized => {
                    format!("initialized with {version} on slot {}", o.slot)
                }
                OutcomeKind::Applied => format!("applied {version} to slot {}", o.slot),
                OutcomeKind::Committed => format!("committed {version} on slot {}", o.slot),
                OutcomeKind::RolledBack => format!("rolled back from {version} on slot {}", o.slot),
                OutcomeKind::Cancelled => {
                    format!("called off the flip to {version} on slot {}", o.slot)
                }
            };
            out.push(format!("last: {what} at {}: {}", o.at, o.reason));
        }
    }
    for f in &s.failed {
        out.push(format!(
            "failed here: {} at {}: {}",
            f.version, f.at, f.reason
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_what_is_where_and_why() {
        let t: jiff::Timestamp = "2026-02-01T00:00:00Z".parse().unwrap();
        let mut s = State::new(Slot::A, "1.0.0".parse().unwrap(), t);
        s.begin_write("1.1.0".parse().unwrap());
        s.written(plinth_release::Sha256::of(b"x"), vec![]).unwrap();
        s.flip(3, "upgrade from 1.0.0 to 1.1.0".into(), t).unwrap();
        let st = status(&s);
        let text = lines(&st).join("\n");
        assert!(text.contains("slot A: 1.0.0 (active)"), "{text}");
        assert!(
            text.contains("slot B: 1.1.0 (written and read back) (pending, 3 tries left)"),
            "{text}"
        );
        s.roll_back("health gate failed: plinth-guest.service".into(), t)
            .unwrap();
        let text = lines(&status(&s)).join("\n");
        assert!(
            text.contains("last: rolled back from 1.1.0 on slot B at 2026-02-01T00:00:00Z: health gate failed: plinth-guest.service"),
            "{text}"
        );
        let json = serde_json::to_value(status(&s)).unwrap();
        assert_eq!(json["slots"][1]["version"], "1.1.0");
        assert_eq!(json["last"]["kind"], "rolled-back");
        assert_eq!(
            json["last"]["reason"],
            "health gate failed: plinth-guest.service"
        );
    }
}
