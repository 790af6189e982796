//! The order of release versions, which `max_version` and "newest" depend on (the upgrade
//! agent compares with the same function). Versions are plinth [`Version`]s (letters, digits,
//! `. - + _`), ordered like semantic versions without requiring them:
//!
//! - everything after the first `+` is build metadata: it orders only as a last tie-break;
//! - the rest splits at the first `-` into the release and a pre-release: `1.2.0-rc1` comes
//!   before `1.2.0`;
//! - each part is a list of identifiers split at `.` and `_`; numeric identifiers compare as
//!   numbers (`1.10` after `1.9`), come before alphanumeric ones, which compare as text; a
//!   shorter list that is a prefix of a longer one comes first.
//!
//! The order is total: two versions compare equal only if they are the same text.

use plinth_release::Version;
use std::cmp::Ordering;

/// Compare two versions (see the module's rules).
pub fn compare(a: &Version, b: &Version) -> Ordering {
    compare_str(a.as_str(), b.as_str())
}

/// The newest of `versions`, if any.
pub fn newest<'a>(versions: impl IntoIterator<Item = &'a Version>) -> Option<&'a Version> {
    versions.into_iter().max_by(|a, b| compare(a, b))
}

fn compare_str(a: &str, b: &str) -> Ordering {
    let (a_main, a_build) = a.split_once('+').unwrap_or((a, ""));
    let (b_main, b_build) = b.split_once('+').unwrap_or((b, ""));
    let (a_rel, a_pre) = split_pre(a_main);
    let (b_rel, b_pre) = split_pre(b_main);
    identifiers(a_rel, b_rel)
        .then_with(|| match (a_pre, b_pre) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => identifiers(x, y),
        })
        .then_with(|| identifiers(a_build, b_build))
        .then_with(|| a.cmp(b))
}

fn split_pre(s: &str) -> (&str, Option<&str>) {
    match s.split_once('-') {
        Some((rel, pre)) => (rel, Some(pre)),
        None => (s, None),
    }
}

fn identifiers(a: &str, b: &str) -> Ordering {
    let mut xs = a.split(['.', '_']).filter(|p| !p.is_empty());
    let mut ys = b.split(['.', '_']).filter(|p| !p.is_empty());
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = identifier(x, y);
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

fn identifier(x: &str, y: &str) -> Ordering {
    let numeric = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    match (numeric(x), numeric(y)) {
        (true, true) => {
            // Compare as numbers of any length: strip leading zeros, then length, then text.
            let x = x.trim_start_matches('0');
            let y = y.trim_start_matches('0');
            x.len().cmp(&y.len()).then_with(|| x.cmp(y))
        }
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => x.cmp(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn versions_order_like_semver() {
        let sorted = [
            "0.9",
            "1.0.0-alpha",
            "1.0.0-rc1",
            "1.0.0-rc2",
            "1.0.0",
            "1.0.0+b1",
            "1.0.1",
            "1.2",
            "1.9.0",
            "1.10.0",
            "2026.12.05",
            "99999999999999999999999",
        ];
        for pair in sorted.windows(2) {
            assert_eq!(
                compare(&v(pair[0]), &v(pair[1])),
                Ordering::Less,
                "{pair:?}"
            );
            assert_eq!(
                compare(&v(pair[1]), &v(pair[0])),
                Ordering::Greater,
                "{pair:?}"
            );
        }
        assert_eq!(compare(&v("1.0"), &v("1.0")), Ordering::Equal);
        assert_ne!(compare(&v("1.01"), &v("1.1")), Ordering::Equal);
        let all: Vec<Version> = sorted.iter().map(|s| v(s)).collect();
        assert_eq!(newest(&all).unwrap().as_str(), "99999999999999999999999");
    }
}
