//! The names plinth turns into paths: OS names, release versions, profile and partition names,
//! release file names. One rule each, used by what the build writes and by every reader of a
//! release (`verify`, `diff`, `measure`, `run`), which must not trust a downloaded manifest's
//! names more than `plinth build` trusts its own flags. [`under`] joins such names below a
//! root only when each is one plain path component.
//!
//! The types ([`Os`], [`Version`], [`Name`], [`FileName`], [`Role`]) exist only with a legal
//! value: their `FromStr` and `Deserialize` apply the rule, so a manifest that deserializes
//! names nothing that could leave its directory.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// The OSes plinth builds, by name.
pub const OS_NAMES: [&str; 3] = ["guest-os", "host-os", "setup-os"];

/// One of the OSes plinth builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Os {
    GuestOs,
    HostOs,
    SetupOs,
}

impl Os {
    /// Every OS, in name order.
    pub const ALL: [Os; 3] = [Os::GuestOs, Os::HostOs, Os::SetupOs];

    /// `guest-os`, `host-os` or `setup-os`.
    pub fn as_str(self) -> &'static str {
        match self {
            Os::GuestOs => OS_NAMES[0],
            Os::HostOs => OS_NAMES[1],
            Os::SetupOs => OS_NAMES[2],
        }
    }
}

impl PartialEq<str> for Os {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Os {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Os {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Os {
    type Err = String;
    fn from_str(s: &str) -> Result<Os, String> {
        check_os(s)?;
        Ok(Os::ALL[OS_NAMES.iter().position(|n| *n == s).unwrap_or(0)])
    }
}

impl AsRef<str> for Os {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<Path> for Os {
    fn as_ref(&self) -> &Path {
        Path::new(self.as_str())
    }
}

/// The role of a partition (os.yaml's `role`, a manifest's partitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The EFI system partition (systemd-boot and the UKIs).
    Esp,
    /// A root filesystem (verity-protected).
    Root,
    /// The dm-verity hash tree of the root in the same slot.
    Verity,
    /// Node configuration written at install time.
    Config,
    /// Persistent data (e.g. the replica's state, LVM for GuestOS disks).
    Data,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Esp,
        Role::Root,
        Role::Verity,
        Role::Config,
        Role::Data,
    ];

    /// Its name in os.yaml and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Esp => "esp",
            Role::Root => "root",
            Role::Verity => "verity",
            Role::Config => "config",
            Role::Data => "data",
        }
    }
}

impl PartialEq<str> for Role {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Role {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string type that holds only what its rule accepts.
macro_rules! checked_name {
    ($(#[$doc:meta])* $name:ident, $check:path) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                $check(s)?;
                Ok($name(s.to_string()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                $check(&s)?;
                Ok($name(s))
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<Path> for $name {
            fn as_ref(&self) -> &Path {
                Path::new(&self.0)
            }
        }

        impl AsRef<std::ffi::OsStr> for $name {
            fn as_ref(&self) -> &std::ffi::OsStr {
                std::ffi::OsStr::new(&self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::try_from(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

checked_name!(
    /// A release version ([`check_version`]): it names a directory, `out/<os>/<version>`.
    Version,
    check_version
);
checked_name!(
    /// A profile or partition name ([`check_simple_name`]).
    Name,
    check_simple_name
);
checked_name!(
    /// A release file name ([`check_file_name`]): one plain path component.
    FileName,
    check_file_name
);

/// The longest release version.
pub const MAX_VERSION_LEN: usize = 64;
/// The longest release file name.
pub const MAX_FILE_NAME_LEN: usize = 128;

/// `os` is one of the OSes plinth builds.
pub fn check_os(os: &str) -> Result<(), String> {
    if OS_NAMES.contains(&os) {
        Ok(())
    } else {
        Err(format!(
            "`{}`: expected one of {}",
            os.escape_debug(),
            OS_NAMES.join(", ")
        ))
    }
}

/// A release version: letters, digits and `. - + _`, not starting with `.` or `-`, at most
/// [`MAX_VERSION_LEN`] characters. It names a directory (`out/<os>/<version>`), so `.`, `..`
/// and anything with `/` are refused by the charset and the first character.
pub fn check_version(version: &str) -> Result<(), String> {
    let ok = !version.is_empty()
        && version.len() <= MAX_VERSION_LEN
        && !version.starts_with(['.', '-'])
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-+_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}`: expected letters, digits and . - + _ only, not starting with . or -, at most {MAX_VERSION_LEN} characters",
            version.escape_debug()
        ))
    }
}

/// A profile or partition name: `[a-z][a-z0-9-]*`.
pub fn is_simple_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A profile or partition name, as an error message when it is not [`is_simple_name`].
pub fn check_simple_name(name: &str) -> Result<(), String> {
    if is_simple_name(name) && name.len() <= MAX_FILE_NAME_LEN {
        Ok(())
    } else {
        Err(format!(
            "`{}`: expected lower-case letters, digits and `-`, starting with a letter",
            name.escape_debug()
        ))
    }
}

/// A release file name: one plain path component of letters, digits and `. _ + -`, not
/// starting with `.` or `-`, at most [`MAX_FILE_NAME_LEN`] characters.
pub fn check_file_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FILE_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}`: expected one file name of letters, digits and . _ + - (no `/`, not starting with . or -), at most {MAX_FILE_NAME_LEN} characters",
            name.escape_debug()
        ))
    }
}

/// The name of a slot's UKI without `.efi` (on the ESP, in the update archive, in the
/// release's `cmdline-<stem>.txt`): `guest-os-a` for slot A, `setup-os` without slots.
pub fn uki_stem(os: &str, slot: Option<crate::Slot>) -> String {
    match slot {
        Some(s) => format!("{os}-{}", s.file_suffix()),
        None => os.to_string(),
    }
}

/// `root` joined with `parts`, each of which must be exactly one normal path component (no
/// `/`, `.`, `..`, root or prefix): the result is always below `root`.
pub fn under(root: &Path, parts: &[&str]) -> Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    for part in parts {
        let mut components = Path::new(part).components();
        match (components.next(), components.next()) {
            (Some(Component::Normal(c)), None) if c == std::ffi::OsStr::new(part) => path.push(c),
            _ => {
                return Err(format!(
                    "`{}` is not a single plain path component: it would lead outside {}",
                    part.escape_debug(),
                    root.display()
                ))
            }
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for good in ["0.1.0", "1.2.3-rc1", "2026.12.05+abc", "0.0.0-ci", "v1_2"] {
            assert!(check_version(good).is_ok(), "{good}");
        }
        for bad in [
            "", ".", "..", "../../x", "/etc", "a/b", ".hidden", "-x", "a b", "x\n", "é",
        ] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        assert!(check_version(&"1".repeat(MAX_VERSION_LEN + 1)).is_err());
    }

    #[test]
    fn oses_and_simple_names() {
        assert!(check_os("host-os").is_ok());
        for os in Os::ALL {
            assert_eq!(os.as_str().parse::<Os>().unwrap(), os);
            assert_eq!(serde_json::to_string(&os).unwrap(), format!("\"{os}\""));
        }
        assert!("/etc".parse::<Os>().is_err());
        for role in Role::ALL {
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        let v: Version = serde_json::from_str("\"1.2.3\"").unwrap();
        assert_eq!((v.as_str(), v.to_string()), ("1.2.3", "1.2.3".to_string()));
        let e = serde_json::from_str::<Version>("\"../x\"")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("`../x`: expected letters"), "{e}");
        assert!(serde_json::from_str::<FileName>("\"a/b\"").is_err());
        assert!(serde_json::from_str::<Name>("\"Root\"").is_err());
        for bad in ["/etc", "../host-os", "host-os/..", "HOST-OS", ""] {
            assert!(check_os(bad).is_err(), "{bad:?}");
        }
        assert!(check_simple_name("root-a").is_ok());
        for bad in ["", "Root", "a/b", "..", "-a", "a_b"] {
            assert!(check_simple_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names() {
        for good in [
            "disk-img.tar.zst",
            "SHA256SUMS",
            "OVMF-AmdSev.fd",
            "sbom.spdx.json",
        ] {
            assert!(check_file_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/etc/passwd",
            ".x",
            "-rf",
            "a\0b",
            "a b",
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn under_stays_under() {
        let root = Path::new("/work");
        assert_eq!(
            under(root, &["rebuilt", "host-os", "1.0"]).unwrap(),
            Path::new("/work/rebuilt/host-os/1.0")
        );
        for bad in ["..", "/etc", "a/b", ".", "", "a/"] {
            assert!(under(root, &["x", bad]).is_err(), "{bad:?}");
        }
    }
}
