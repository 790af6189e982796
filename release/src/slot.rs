//! The A/B update slot: `A` or `B` in os.yaml, manifests and measurements.json, `plinth.slot=A`
//! on a slot's kernel command line, `a` in its file names (`guest-os-a.efi`). An OS without
//! slots has `Option<Slot>` `None` (JSON `null`, `slot=none` in the boot report).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of the two update slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

/// The kernel command line key that names the booted slot.
pub const CMDLINE_KEY: &str = "plinth.slot";

impl Slot {
    /// Both, in order.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The other slot: where an upgrade goes, and where a rollback returns.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// `A` or `B`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// Its form in file names: `a` or `b`.
    pub fn file_suffix(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// Its kernel command line argument: `plinth.slot=A`.
    pub fn cmdline_arg(self) -> String {
        format!("{CMDLINE_KEY}={self}")
    }
}

/// `A`, `B`, or `none` for an OS without slots (as the boot report and messages say it).
/// The slot `plinth.slot=` names on a kernel command line (the last one counts, as for the
/// kernel); `None` without one.
pub fn from_cmdline(cmdline: &str) -> Result<Option<Slot>, SlotError> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(CMDLINE_KEY)?.strip_prefix('='))
        .next_back()
        .map(str::parse::<Slot>)
        .transpose()
}

pub fn or_none(slot: Option<Slot>) -> &'static str {
    slot.map_or("none", Slot::as_str)
}

/// Its letter, so that `Option<Slot>::as_deref()` reads as `Option<&str>`.
impl std::ops::Deref for Slot {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text that is not a slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}`: expected A or B", .0.escape_debug())]
pub struct SlotError(pub String);

impl FromStr for Slot {
    type Err = SlotError;
    fn from_str(s: &str) -> Result<Slot, SlotError> {
        match s {
            "A" => Ok(Slot::A),
            "B" => Ok(Slot::B),
            _ => Err(SlotError(s.chars().take(64).collect())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_a_command_line() {
        assert_eq!(from_cmdline("ro plinth.slot=A x=1").unwrap(), Some(Slot::A));
        assert_eq!(
            from_cmdline("plinth.slot=A plinth.slot=B").unwrap(),
            Some(Slot::B)
        );
        assert_eq!(from_cmdline("ro plinth.slotx=A").unwrap(), None);
        assert!(from_cmdline("plinth.slot=C").is_err());
    }

    #[test]
    fn forms() {
        assert_eq!(Slot::A.other(), Slot::B);
        assert_eq!(Slot::B.other(), Slot::A);
        assert_eq!(Slot::B.cmdline_arg(), "plinth.slot=B");
        assert_eq!(Slot::A.file_suffix(), "a");
        assert_eq!("B".parse::<Slot>().unwrap(), Slot::B);
        assert_eq!(
            "a".parse::<Slot>().unwrap_err().to_string(),
            "`a`: expected A or B"
        );
        assert_eq!(serde_json::to_string(&Some(Slot::A)).unwrap(), "\"A\"");
        assert_eq!(serde_json::to_string(&None::<Slot>).unwrap(), "null");
        assert!(serde_json::from_str::<Slot>("\"C\"").is_err());
    }
}
