//! Fixed-size digests written as lower-case hex: [`Sha256`] (files, partitions, PCR values,
//! verity root hashes), the SEV-SNP launch [`Measurement`] and a git [`CommitId`]. Parsing is
//! validation: a value exists only with exactly its number of lower-case hex digits, so a
//! struct that deserializes holds no malformed digest. The one place plinth computes
//! SHA-256 ([`Sha256::of`], [`Sha256Writer`], [`Sha256::of_reader`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// A digest text that is not `N` bytes of lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{}`: expected {digits} lower-case hex digits", shown(.found))]
pub struct HexError {
    found: String,
    digits: usize,
}

/// At most 100 characters of `s`, escaped: the error of a crafted input stays readable.
fn shown(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(100)
        .collect::<String>()
        .escape_debug()
        .collect();
    if s.chars().count() > 100 {
        out.push('…');
    }
    out
}

fn parse_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let err = || HexError {
        found: s.to_string(),
        digits: 2 * N,
    };
    if s.len() != 2 * N || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(err());
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| err())?;
    Ok(out)
}

macro_rules! hex_digest {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub [u8; $len]);

        impl Default for $name {
            /// All zeros (a PCR's value before any extend).
            fn default() -> Self {
                $name([0; $len])
            }
        }

        impl $name {
            /// Its length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The lower-case hex text (also its `Display`).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl From<$name> for String {
            fn from(d: $name) -> String {
                d.to_hex()
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }
        }

        impl FromStr for $name {
            type Err = HexError;
            fn from_str(s: &str) -> Result<Self, HexError> {
                parse_hex(s).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = std::borrow::Cow::<'de, str>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                other.len() == 2 * $len && self.to_hex() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                *self == **other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                *self == **other
            }
        }
    };
}

hex_digest!(
    /// A SHA-256 digest: of a file, a partition's blocks, a UKI; a PCR value of the SHA-256
    /// bank; a dm-verity root hash.
    Sha256,
    32
);
hex_digest!(
    /// An SEV-SNP launch digest (the `MEASUREMENT` of an attestation report), 48 bytes.
    Measurement,
    48
);
hex_digest!(
    /// A git commit id (SHA-1), 20 bytes.
    CommitId,
    20
);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256 {
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// The digest and length of everything `reader` yields, read in 1 MiB steps.
    pub fn of_reader(reader: impl Read) -> io::Result<(Sha256, u64)> {
        let mut w = Sha256Writer::new(io::sink());
        let n = io::copy(&mut { reader }, &mut w)?;
        Ok((w.finish().1, n))
    }

    /// The digest and length of the file at `path`.
    pub fn of_file(path: &std::path::Path) -> io::Result<(Sha256, u64)> {
        Sha256::of_reader(std::fs::File::open(path)?)
    }
}

/// A writer that hashes and counts what passes through it on its way to `inner`.
pub struct Sha256Writer<W> {
    inner: W,
    hasher: sha2::Sha256,
    len: u64,
}

impl<W: Write> Sha256Writer<W> {
    pub fn new(inner: W) -> Self {
        Sha256Writer {
            inner,
            hasher: sha2::Sha256::new(),
            len: 0,
        }
    }

    /// The bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Nothing hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The inner writer, the digest and the byte count.
    pub fn finish(self) -> (W, Sha256, u64) {
        (self.inner, Sha256(self.hasher.finalize().into()), self.len)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_lower_case_hex_parses() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(Sha256::of(b"").to_string(), empty);
        assert_eq!(empty.parse::<Sha256>().unwrap(), Sha256::of(b""));
        for bad in [
            "",
            "00",
            &empty.to_uppercase(),
            &format!("{empty}0"),
            &format!("{}g", &empty[..63]),
            &format!(" {}", &empty[1..]),
        ] {
            let e = bad.parse::<Sha256>().unwrap_err().to_string();
            assert!(e.ends_with("expected 64 lower-case hex digits"), "{e}");
        }
        assert_eq!(
            "XYZ".parse::<Measurement>().unwrap_err().to_string(),
            "`XYZ`: expected 96 lower-case hex digits"
        );
        let long = "x"
            .repeat(5000)
            .parse::<CommitId>()
            .unwrap_err()
            .to_string();
        assert!(long.len() < 200, "{long}");
    }

    #[test]
    fn serde_is_the_hex_text() {
        let d = Sha256::of(b"abc");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Sha256>(&json).unwrap(), d);
        let e = serde_json::from_str::<Sha256>("\"AB\"").unwrap_err();
        assert!(e.to_string().contains("`AB`: expected 64"), "{e}");
        assert!(serde_json::from_str::<Sha256>("7").is_err());
    }

    #[test]
    fn the_writer_hashes_what_it_passes_on() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (inner, d, n) = w.finish();
        assert_eq!(
            (inner.as_slice(), d, n),
            (&b"abc"[..], Sha256::of(b"abc"), 3)
        );
        assert_eq!(Sha256::of_reader(&b"abc"[..]).unwrap(), (d, 3));
    }
}
