//! `settle`: what a finished boot means for the slot state, run once per boot after the
//! boot's health gate (HostOS: `plinth-upgrade-settle.service`, ordered after
//! `boot-complete.target`, or after its failure with `--failed`).
//!
//! | state            | booted           | gate   | then                                        |
//! |------------------|------------------|--------|---------------------------------------------|
//! | nothing pending  | the active slot  | any    | nothing to do                               |
//! | nothing pending  | the other slot   | any    | refused: the state does not say why it runs |
//! | pending slot P   | P                | passed | commit: P becomes active                    |
//! | pending slot P   | P                | failed | roll back: P's version is remembered failed |
//! | pending slot P   | the active slot  | any    | roll back: the boot loader fell back        |
//!
//! A roll back leaves the active slot as it was and marks the failed version, which the node
//! never takes again unless asked by name; the reason is what `status` shows ("rolled back:
//! health gate failed: plinth-guest.service"). The state is written atomically; nothing else is
//! touched (the boot loader's own counting is HostOS's: docs/upgrades.md).

use crate::error::UpgradeError;
use crate::slots::SlotStore;
use plinth_release::{Slot, Version};
use serde::Serialize;

/// What `settle` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Settled {
    /// Nothing was pending: the booted slot is the active one.
    Nothing { active: Slot },
    /// The pending slot booted and passed its gate: now active.
    Committed {
        slot: Slot,
        version: Option<Version>,
    },
    /// The pending slot failed (or never came up): the active slot stays.
    RolledBack {
        failed: Slot,
        version: Option<Version>,
        active: Slot,
        reason: String,
    },
}

/// Settle the boot of `booted`; `gate_failed`: why the boot's health gate failed (none: it
/// passed).
pub fn settle(
    store: &mut SlotStore,
    booted: Slot,
    gate_failed: Option<&str>,
    now: jiff::Timestamp,
) -> Result<Settled, UpgradeError> {
    let _lock = store.lock()?;
    store.reload()?;
    let state = store.state().clone();
    let Some(pending) = state.pending else {
        if booted == state.active {
            return Ok(Settled::Nothing {
                active: state.active,
            });
        }
        return Err(UpgradeError::State {
            path: store.state_path().to_path_buf(),
            message: format!(
                "slot {booted} booted, but slot {} is active and no slot is pending",
                state.active
            ),
            hint: "someone chose the other slot by hand at the boot menu: reboot into the \
                   active slot (the state is left as it is)"
                .into(),
        });
    };
    let version = state.content(pending).version().cloned();
    let reason = match (booted == pending, gate_failed) {
        (true, None) => {
            store.update(|s| s.commit(now))?;
            store.persist()?;
            return Ok(Settled::Committed {
                slot: pending,
                version,
            });
        }
        (true, Some(why)) => format!("health gate failed: {why}"),
        (false, why) => format!(
            "slot {pending} did not pass a trial boot: the boot loader started slot {booted} \
             instead{}",
            why.map(|w| format!(" (and its gate: {w})"))
                .unwrap_or_default()
        ),
    };
    store.update(|s| s.roll_back(reason.clone(), now))?;
    store.persist()?;
    Ok(Settled::RolledBack {
        failed: pending,
        version,
        active: state.active,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{Content, Layout, Part, State};

    fn now() -> jiff::Timestamp {
        "2026-03-01T00:00:00Z".parse().unwrap()
    }

    /// A store with 1.0.0 active on A and 1.1.0 written and pending on B.
    fn pending_b(dir: &std::path::Path) -> SlotStore {
        std::fs::create_dir_all(dir).unwrap();
        let part = |name: &str| {
            let path = dir.join(name);
            std::fs::write(&path, [0u8; 16]).unwrap();
            Part {
                member: "root.img".into(),
                path,
            }
        };
        let layout = Layout {
            a: vec![part("a")],
            b: vec![part("b")],
        };
        let mut store = SlotStore::open_or_init(layout, &dir.join("slots.json"), || {
            State::new(Slot::A, "1.0.0".parse().unwrap(), now())
        })
        .unwrap();
        store
            .update(|s| {
                s.begin_write("1.1.0".parse().unwrap());
                s.written(plinth_release::Sha256::of(b"archive"), Vec::new())?;
                s.flip(3, "newer".into(), now())
            })
            .unwrap();
        store.persist().unwrap();
        store
    }

    #[test]
    fn each_boot_settles_as_the_table_says() {
        let dir = tempfile::tempdir().unwrap();
        // Passed on the pending slot: committed.
        let mut s = pending_b(&dir.path().join("pass"));
        let done = settle(&mut s, Slot::B, None, now()).unwrap();
        assert_eq!(
            done,
            Settled::Committed {
                slot: Slot::B,
                version: Some("1.1.0".parse().unwrap())
            }
        );
        assert_eq!((s.state().active, s.state().pending), (Slot::B, None));
        // Again: nothing pending, the active slot booted.
        assert_eq!(
            settle(&mut s, Slot::B, None, now()).unwrap(),
            Settled::Nothing { active: Slot::B }
        );
        // The other slot with nothing pending: refused, nothing written.
        let before = std::fs::read(s.state_path()).unwrap();
        let e = settle(&mut s, Slot::A, None, now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("slot A booted, but slot B is active"), "{e}");
        assert_eq!(std::fs::read(s.state_path()).unwrap(), before);

        // Failed on the pending slot: rolled back, the version remembered failed.
        let mut s = pending_b(&dir.path().join("fail"));
        let done = settle(&mut s, Slot::B, Some("plinth-guest.service"), now()).unwrap();
        assert!(
            matches!(&done, Settled::RolledBack { failed: Slot::B, active: Slot::A, reason, .. }
                if reason == "health gate failed: plinth-guest.service"),
            "{done:?}"
        );
        assert_eq!((s.state().active, s.state().pending), (Slot::A, None));
        assert_eq!(s.state().failed[0].version.as_str(), "1.1.0");
        assert!(matches!(
            s.state().content(Slot::B),
            Content::Written { .. }
        ));

        // The boot loader fell back to the active slot: rolled back too, saying so.
        let mut s = pending_b(&dir.path().join("fell-back"));
        let done = settle(&mut s, Slot::A, None, now()).unwrap();
        assert!(
            matches!(&done, Settled::RolledBack { reason, .. }
                if reason.starts_with("slot B did not pass a trial boot: the boot loader started slot A")),
            "{done:?}"
        );
        // What the state file says survives a reopen.
        let reopened = SlotStore::open(s.layout().clone(), s.state_path()).unwrap();
        assert_eq!(reopened.state().failed.len(), 1);
    }
}
