//! The names of the record's targets, built only from validated parts ([`Os`], [`Version`],
//! [`FileName`]) and read back only into them: an elected artifact is
//! `<os>/<version>/<file>` (`host-os/1.2.0/update-img.tar.zst`), an OS's policy (its
//! `max_version`) is `<os>/policy.json`. A name of any other shape in a targets file is not
//! one of ours and is refused where it is read.

use plinth_release::{FileName, Os, Version};
use std::fmt;
use std::str::FromStr;

/// The file name of an OS's policy target.
pub const POLICY_FILE: &str = "policy.json";

/// A target of the governance record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPath {
    /// An elected artifact of one release.
    Artifact {
        os: Os,
        version: Version,
        file: FileName,
    },
    /// The policy of one OS (`max_version`).
    Policy { os: Os },
}

impl TargetPath {
    /// The OS the target belongs to.
    pub fn os(&self) -> Os {
        match self {
            TargetPath::Artifact { os, .. } | TargetPath::Policy { os } => *os,
        }
    }

    /// The name as tough's [`tough::TargetName`] (always accepted: the parts are plain names).
    pub fn target_name(&self) -> tough::TargetName {
        tough::TargetName::new(self.to_string()).expect("validated names are safe target names")
    }
}

impl fmt::Display for TargetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPath::Artifact { os, version, file } => write!(f, "{os}/{version}/{file}"),
            TargetPath::Policy { os } => write!(f, "{os}/{POLICY_FILE}"),
        }
    }
}

impl FromStr for TargetPath {
    type Err = String;

    /// Parse a target name; anything but `<os>/<version>/<file>` and `<os>/policy.json` of
    /// legal parts is refused.
    fn from_str(s: &str) -> Result<TargetPath, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = |why: String| {
            format!(
                "target `{}`: {why}; expected <os>/<version>/<file> or <os>/{POLICY_FILE}",
                s.escape_debug()
            )
        };
        match parts.as_slice() {
            [os, file] if *file == POLICY_FILE => Ok(TargetPath::Policy {
                os: os.parse().map_err(bad)?,
            }),
            [os, version, file] => Ok(TargetPath::Artifact {
                os: os.parse().map_err(bad)?,
                version: version.parse().map_err(bad)?,
                file: file.parse().map_err(bad)?,
            }),
            _ => Err(bad("not a name of the governance record".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for good in ["host-os/1.2.0/update-img.tar.zst", "guest-os/policy.json"] {
            assert_eq!(good.parse::<TargetPath>().unwrap().to_string(), good);
        }
        for bad in [
            "host-os/../x/update-img.tar.zst",
            "/host-os/1.0/a",
            "host-os/1.0/a/b",
            "other-os/1.0/a",
            "host-os/1.0/.hidden",
            "host-os/x.json",
            "host-os",
            "",
        ] {
            assert!(bad.parse::<TargetPath>().is_err(), "{bad:?}");
        }
    }
}
