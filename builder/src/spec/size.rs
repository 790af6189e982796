//! Sizes in os.yaml: `512MiB`, `4GiB`, `1TiB` (binary units only), stored in bytes.
//!
//! plinth aligns partitions to 1 MiB, so a size is a whole positive number of MiB, GiB or TiB.
//! Decimal units (`2GB`), fractions (`1.5GiB`), zero, bare numbers and YAML integers are
//! rejected with a message that says what to write instead. A size serializes back to its
//! shortest exact form (`4GiB`, `1536MiB`).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Bytes in one MiB.
pub const MIB: u64 = 1 << 20;
/// Bytes in one GiB.
pub const GIB: u64 = 1 << 30;
/// Bytes in one TiB.
pub const TIB: u64 = 1 << 40;

/// What the parser accepts, as error messages say it.
pub const SIZE_EXPECTED: &str = "a size with a binary unit like `512MiB` or `4GiB`";

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

/// Why a size string was refused: the parts of a [`super::SpecError`] message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected}, found {found}\n  hint: {hint}")]
pub struct SizeError {
    pub expected: String,
    pub found: String,
    pub hint: String,
}

impl Size {
    /// `n` MiB.
    pub const fn from_mib(n: u64) -> Size {
        Size(n * MIB)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The size in whole MiB (rounded down; sizes parsed from a spec are always whole MiB).
    pub const fn mib(self) -> u64 {
        self.0 / MIB
    }

    /// Whether the size is a whole number of MiB.
    pub const fn is_whole_mib(self) -> bool {
        self.0 % MIB == 0
    }

    /// Parse `<n>MiB`, `<n>GiB` or `<n>TiB` with an integer `n > 0`.
    pub fn parse(text: &str) -> Result<Size, SizeError> {
        let found = format!("`{text}`");
        let fail = |hint: String| SizeError {
            expected: SIZE_EXPECTED.to_string(),
            found: found.clone(),
            hint,
        };
        if text.trim().is_empty() {
            return Err(SizeError {
                found: "an empty string".into(),
                ..fail("write a whole number followed by MiB, GiB or TiB, e.g. `512MiB`".into())
            });
        }
        if text.chars().any(char::is_whitespace) {
            let squeezed: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            return Err(fail(format!(
                "write the number and the unit without spaces: `{squeezed}`"
            )));
        }
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        if number.is_empty() {
            return Err(fail(
                "write a whole number followed by MiB, GiB or TiB, e.g. `512MiB`".into(),
            ));
        }
        if unit.is_empty() {
            let n = number.split('.').next().unwrap_or(number);
            return Err(fail(format!(
                "a bare number has no unit; write the unit too, e.g. `{n}MiB` or `{n}GiB`"
            )));
        }
        let multiplier = match unit {
            "MiB" => MIB,
            "GiB" => GIB,
            "TiB" => TIB,
            _ => return Err(fail(unit_hint(number, unit))),
        };
        if number.contains('.') {
            let hint = match exact_mib(number, multiplier / MIB) {
                Some(mib) => format!("sizes are whole numbers of a unit; write `{mib}MiB`"),
                None => "sizes are whole numbers of MiB, GiB or TiB; \
                         plinth aligns partitions to 1 MiB"
                    .to_string(),
            };
            return Err(fail(hint));
        }
        let n: u64 = number
            .parse()
            .map_err(|_| fail("the number is too large".into()))?;
        if n == 0 {
            return Err(SizeError {
                expected: "a size greater than zero".into(),
                ..fail("give at least `1MiB`, or remove the entry".into())
            });
        }
        n.checked_mul(multiplier)
            .map(Size)
            .ok_or_else(|| fail("the size does not fit in 64 bits of bytes".into()))
    }
}

/// The hint for a unit that is not MiB, GiB or TiB.
fn unit_hint(number: &str, unit: &str) -> String {
    let lower = unit.to_ascii_lowercase();
    match lower.as_str() {
        "mib" | "gib" | "tib" => {
            let proper = format!("{}iB", unit[..1].to_ascii_uppercase());
            format!("units are case-sensitive: write `{number}{proper}`")
        }
        "m" | "mb" | "g" | "gb" | "t" | "tb" => {
            let letter = lower[..1].to_ascii_uppercase();
            let example = if number.contains('.') {
                let unit_mib = match letter.as_str() {
                    "M" => 1,
                    "G" => GIB / MIB,
                    _ => TIB / MIB,
                };
                exact_mib(number, unit_mib).map_or("512MiB".to_string(), |m| format!("{m}MiB"))
            } else {
                format!("{number}{letter}iB")
            };
            format!(
                "plinth aligns partitions to 1 MiB; write MiB, GiB or TiB \
                 (powers of 1024), e.g. `{example}`"
            )
        }
        "k" | "kb" | "kib" | "b" | "bytes" => {
            "plinth aligns partitions to 1 MiB; write the size in MiB, GiB or TiB".to_string()
        }
        _ => format!("`{unit}` is not a unit; write MiB, GiB or TiB, e.g. `{number}MiB`"),
    }
}

/// `number` (with a decimal point) times `unit_mib`, if that is a whole number of MiB.
fn exact_mib(number: &str, unit_mib: u64) -> Option<u64> {
    let (int, frac) = number.split_once('.')?;
    if frac.contains('.') || frac.len() > 12 {
        return None;
    }
    let scale = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
    let int: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac: u64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let scaled = int.checked_mul(scale)?.checked_add(frac)?;
    let total = scaled.checked_mul(unit_mib)?;
    (total % scale == 0 && total > 0).then_some(total / scale)
}

impl FromStr for Size {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Size, SizeError> {
        Size::parse(s)
    }
}

/// The shortest exact form: `4GiB`, `1536MiB`; sizes that are not whole MiB (which a spec
/// cannot contain) show as KiB or bytes.
impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (1 << 10, "KiB")] {
            if b != 0 && b % unit == 0 {
                return write!(f, "{}{name}", b / unit);
            }
        }
        write!(f, "{b}B")
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Accepts strings; turns YAML numbers into an error that says to write a unit. Errors are
/// raised inside the visitor so that serde_yaml marks them with the value's own position.
struct SizeVisitor;

impl SizeVisitor {
    fn number<E: de::Error>(shown: String, whole: Option<String>) -> E {
        let example = whole.unwrap_or_else(|| "512".into());
        E::custom(SizeError {
            expected: SIZE_EXPECTED.to_string(),
            found: format!("the YAML number `{shown}` (no unit)"),
            hint: format!("write the unit too, e.g. `{example}MiB` or `4GiB`"),
        })
    }
}

impl Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SIZE_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
        Size::parse(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
        Err(Self::number(v.to_string(), Some(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
        Err(Self::number(v.to_string(), None))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Size, E> {
        Err(Self::number(v.to_string(), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_units() {
        assert_eq!(Size::parse("512MiB").unwrap(), Size(512 * MIB));
        assert_eq!(Size::parse("4GiB").unwrap(), Size(4 * GIB));
        assert_eq!(Size::parse("2TiB").unwrap(), Size(2 * TIB));
        assert_eq!(Size::parse("1MiB").unwrap().mib(), 1);
        assert_eq!(Size::parse("4GiB").unwrap().bytes(), 4 << 30);
        assert_eq!(Size::parse("4GiB").unwrap().mib(), 4096);
        assert_eq!("10GiB".parse::<Size>().unwrap(), Size::from_mib(10240));
    }

    #[test]
    fn displays_the_shortest_exact_form() {
        assert_eq!(Size::from_mib(4096).to_string(), "4GiB");
        assert_eq!(Size::from_mib(1536).to_string(), "1536MiB");
        assert_eq!(Size::from_mib(1024 * 1024).to_string(), "1TiB");
        assert_eq!(Size(1536 << 10).to_string(), "1536KiB");
        assert_eq!(Size(1000).to_string(), "1000B");
        assert_eq!(Size(0).to_string(), "0B");
        for s in ["1MiB", "1536MiB", "4GiB", "3TiB"] {
            assert_eq!(Size::parse(s).unwrap().to_string(), s);
        }
    }

    fn hint(s: &str) -> SizeError {
        Size::parse(s).expect_err(s)
    }

    #[test]
    fn rejects_with_a_helpful_hint() {
        let e = hint("2GB");
        assert_eq!(e.found, "`2GB`");
        assert_eq!(e.expected, SIZE_EXPECTED);
        assert!(e.hint.contains("`2GiB`"), "{}", e.hint);
        assert!(hint("1.5GiB").hint.contains("`1536MiB`"));
        assert!(hint("0.3MiB").hint.contains("whole numbers"));
        assert_eq!(hint("0MiB").expected, "a size greater than zero");
        assert!(hint("abc").hint.contains("MiB"));
        assert!(hint("4096").hint.contains("`4096MiB`"));
        assert!(hint("4gib").hint.contains("`4GiB`"));
        assert!(hint("4 GiB").hint.contains("`4GiB`"));
        assert!(hint("4KiB").hint.contains("1 MiB"));
        assert!(hint("4XB").hint.contains("not a unit"));
        assert!(hint("1.5GB").hint.contains("`1536MiB`"));
        assert_eq!(hint("").found, "an empty string");
        assert!(hint("99999999999999999999MiB").hint.contains("too large"));
        assert!(hint("99999999TiB").hint.contains("64 bits"));
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Holder {
        size: Size,
    }

    #[test]
    fn round_trips_through_yaml() {
        let h: Holder = serde_yaml::from_str("size: 1536MiB").unwrap();
        assert_eq!(h.size, Size::from_mib(1536));
        assert_eq!(serde_yaml::to_string(&h).unwrap(), "size: 1536MiB\n");
        let h: Holder = serde_yaml::from_str("size: \"2GiB\"").unwrap();
        assert_eq!(h.size.to_string(), "2GiB");
    }

    #[test]
    fn yaml_numbers_ask_for_a_unit() {
        let e = serde_yaml::from_str::<Holder>("size: 4096").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("the YAML number `4096`"), "{msg}");
        assert!(msg.contains("`4096MiB`"), "{msg}");
        assert_eq!(e.location().map(|l| (l.line(), l.column())), Some((1, 7)));
        let e = serde_yaml::from_str::<Holder>("size: 2GB").unwrap_err();
        assert!(e.to_string().starts_with("size: expected"), "{e}");
    }
}
