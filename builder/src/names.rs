//! The names plinth turns into paths: OS names, release versions, profile and partition names,
//! release file names. One rule each, used by what the build writes and by every reader of a
//! release (`verify`, `diff`, `measure`, `run`), which must not trust a downloaded manifest's
//! names more than `plinth build` trusts its own flags. [`under`] joins such names below a
//! root only when each is one plain path component.

use std::path::{Component, Path, PathBuf};

/// The longest release version.
pub const MAX_VERSION_LEN: usize = 64;
/// The longest release file name.
pub const MAX_FILE_NAME_LEN: usize = 128;

/// `os` is one of the OSes plinth builds.
pub fn check_os(os: &str) -> Result<(), String> {
    if crate::spec::OS_NAMES.contains(&os) {
        Ok(())
    } else {
        Err(format!(
            "`{}`: expected one of {}",
            os.escape_debug(),
            crate::spec::OS_NAMES.join(", ")
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
