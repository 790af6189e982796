//! When each role's metadata expires: a default per role ([`Expiry::default_for`]: root a
//! year, targets 90 days, snapshot a week, timestamp a day), or a flag's value, either a
//! duration from now (`90d`, `12h`, `30m`, `45s`) or an RFC 3339 time. TUF clients refuse
//! expired metadata (TUF 5.3.10, 5.4.4, 5.5.6, 5.6.6), so the publisher re-publishes the
//! timestamp (and snapshot) well within a day.

use std::fmt;
use std::str::FromStr;

/// The current time (what expiries count from).
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// The four TUF roles, for expiry defaults and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleKind {
    Root,
    Targets,
    Snapshot,
    Timestamp,
}

/// An expiry as given: after a duration, or at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    After(jiff::SignedDuration),
    At(jiff::Timestamp),
}

const DAY: i64 = 24 * 3600;

impl Expiry {
    /// The default for `role`.
    pub fn default_for(role: RoleKind) -> Expiry {
        let days = match role {
            RoleKind::Root => 365,
            RoleKind::Targets => 90,
            RoleKind::Snapshot => 7,
            RoleKind::Timestamp => 1,
        };
        Expiry::After(jiff::SignedDuration::from_secs(days * DAY))
    }

    /// The time it names, counted from `now`, to whole seconds.
    pub fn at(&self, now: jiff::Timestamp) -> jiff::Timestamp {
        let t = match self {
            Expiry::After(d) => now.checked_add(*d).unwrap_or(jiff::Timestamp::MAX),
            Expiry::At(t) => *t,
        };
        jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
    }
}

impl FromStr for Expiry {
    type Err = String;
    fn from_str(s: &str) -> Result<Expiry, String> {
        let bad = || {
            format!(
                "`{}`: expected a duration like `90d`, `12h`, `30m`, `45s` or an RFC 3339 time like `2027-01-01T00:00:00Z`",
                s.escape_debug()
            )
        };
        if let Some(unit) = s.chars().last().filter(|c| "dhms".contains(*c)) {
            let n: i64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
            let secs = match unit {
                'd' => n.checked_mul(DAY),
                'h' => n.checked_mul(3600),
                'm' => n.checked_mul(60),
                _ => Some(n),
            }
            .filter(|s| *s > 0 && *s < 100 * 365 * DAY)
            .ok_or_else(bad)?;
            return Ok(Expiry::After(jiff::SignedDuration::from_secs(secs)));
        }
        s.parse::<jiff::Timestamp>()
            .map(Expiry::At)
            .map_err(|_| bad())
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expiry::After(d) => write!(f, "{}s", d.as_secs()),
            Expiry::At(t) => write!(f, "{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<Expiry>().unwrap().at(now).to_string();
        assert_eq!(at("90d"), "2026-04-01T00:00:00Z");
        assert_eq!(at("12h"), "2026-01-01T12:00:00Z");
        assert_eq!(at("2000-01-01T00:00:00Z"), "2000-01-01T00:00:00Z");
        assert_eq!(
            Expiry::default_for(RoleKind::Timestamp).at(now).to_string(),
            "2026-01-02T00:00:00Z"
        );
        for bad in ["", "d", "-1d", "0d", "1w", "soon", "99999999999d"] {
            assert!(bad.parse::<Expiry>().is_err(), "{bad:?}");
        }
    }
}
