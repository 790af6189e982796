//! The releases an OS carries on its ext4 `data` partition (os.yaml's `carries`; SetupOS
//! carries the HostOS and GuestOS it installs). Each is a release of the same version and
//! profile, built before it: found in a release root (`<out>/<os>/<version>`), read as
//! untrusted (its manifest through [`Manifest::read`], each carried file's sha256 and size
//! checked against the manifest's `outputs` while it is copied), and laid out as
//! `releases/<os>/` holding [`FILES`] in the tree the data filesystem is made from. The
//! build's manifest records each carried manifest's sha256 (`inputs.carried`), so a rebuild
//! that carries other bytes differs, and `plinth verify` checks what it is given.

use plinth_release::manifest::{CarriedInput, Manifest};
use plinth_release::{Os, Sha256};
use std::io;
use std::path::{Path, PathBuf};

/// What is carried of each release: what installing it needs.
pub const FILES: [&str; 3] = [
    plinth_release::manifest::FILE_NAME,
    "disk-img.tar.zst",
    "measurements.json",
];
/// The directory of the data filesystem that holds them.
pub const DIR: &str = "releases";
/// Where the carrying image's (verity) root pins them: [`pins`].
pub const PINS_IN_ROOT: &str = "usr/lib/plinth/carried.json";

/// The pin file: each carried release's os, version, profile and manifest sha256, as JSON
/// (one list, sorted as `carries` lists them). SetupOS installs a release only if its
/// manifest hashes to the pinned digest.
pub fn pins(carried: &[Carried], profile: &str) -> Vec<u8> {
    let list: Vec<serde_json::Value> = carried
        .iter()
        .map(|c| {
            serde_json::json!({
                "os": c.os.as_str(),
                "version": c.manifest.version.as_str(),
                "profile": profile,
                "manifest_sha256": c.manifest_sha256.to_hex(),
            })
        })
        .collect();
    let mut bytes = serde_json::to_vec_pretty(&list).expect("JSON of strings");
    bytes.push(b'\n');
    bytes
}

/// One carried release, checked.
#[derive(Debug, Clone)]
pub struct Carried {
    pub os: Os,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub manifest_sha256: Sha256,
}

impl Carried {
    /// What the carrying release's manifest records of it.
    pub fn input(&self) -> CarriedInput {
        CarriedInput {
            os: self.os,
            version: self.manifest.version.clone(),
            manifest_sha256: self.manifest_sha256,
        }
    }
}

/// A carried release that is missing or is not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum CarriedError {
    #[error("{os} {version} ({profile}) is not built: {} has no manifest.json\n  hint: build the OSes in order, e.g. `plinth build all --profile {profile}`", dir.display())]
    Missing {
        os: String,
        version: String,
        profile: String,
        dir: PathBuf,
    },
    #[error("{}: {message}", dir.display())]
    Manifest { dir: PathBuf, message: String },
    #[error("{}: {field} is {found}, expected {expected} (the carrying release's)", dir.display())]
    Mismatch {
        dir: PathBuf,
        field: &'static str,
        found: String,
        expected: String,
    },
    #[error("{}: {file}: {message}", dir.display())]
    File {
        dir: PathBuf,
        file: &'static str,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Find and check the releases `carries` names under `root` (`<root>/<os>/<version>`).
pub fn find(
    root: &Path,
    carries: &[String],
    version: &str,
    profile: &str,
) -> Result<Vec<Carried>, CarriedError> {
    carries
        .iter()
        .map(|os| {
            let dir = root.join(os).join(version);
            if !dir.join(plinth_release::manifest::FILE_NAME).is_file() {
                return Err(CarriedError::Missing {
                    os: os.clone(),
                    version: version.into(),
                    profile: profile.into(),
                    dir,
                });
            }
            open(&dir, os, version, profile)
        })
        .collect()
}

/// Read and check one release directory as a carried `os` of `version` and `profile`.
pub fn open(dir: &Path, os: &str, version: &str, profile: &str) -> Result<Carried, CarriedError> {
    let path = dir.join(plinth_release::manifest::FILE_NAME);
    let manifest = Manifest::read(&path).map_err(|e| CarriedError::Manifest {
        dir: dir.into(),
        message: e.to_string(),
    })?;
    let mismatch = |field, found: &str, expected: &str| CarriedError::Mismatch {
        dir: dir.into(),
        field,
        found: found.into(),
        expected: expected.into(),
    };
    if manifest.os.as_str() != os {
        return Err(mismatch("os", manifest.os.as_str(), os));
    }
    if manifest.version.as_str() != version {
        return Err(mismatch("version", manifest.version.as_str(), version));
    }
    if manifest.profile.as_str() != profile {
        return Err(mismatch("profile", manifest.profile.as_str(), profile));
    }
    let (manifest_sha256, _) =
        Sha256::of_file(&path).map_err(|source| CarriedError::Io { path, source })?;
    Ok(Carried {
        os: manifest.os,
        dir: dir.into(),
        manifest,
        manifest_sha256,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CarriedError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        CarriedError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Copy each carried release's [`FILES`] into `tree/releases/<os>/` (directories 0755,
/// files 0644, whatever the umask; every time clamped to `epoch`, as the image's own tree:
/// mke2fs copies modification times), each checked against
/// its manifest (sha256 and size) as it is copied.
pub fn stage(carried: &[Carried], tree: &Path, epoch: i64) -> Result<(), CarriedError> {
    for c in carried {
        let dest = tree.join(DIR).join(c.os.as_str());
        std::fs::create_dir_all(&dest).map_err(|source| CarriedError::Io {
            path: dest.clone(),
            source,
        })?;
        // Modes fixed here, not left to the umask: they land in the image's data partition.
        for dir in [tree.to_path_buf(), tree.join(DIR), dest.clone()] {
            set_mode(&dir, 0o755)?;
        }
        for file in FILES {
            let from = c.dir.join(file);
            let to = dest.join(file);
            let bad = |message: String| CarriedError::File {
                dir: c.dir.clone(),
                file,
                message,
            };
            let src = plinth_release::untrusted::open_untrusted(&from)
                .map_err(|e| bad(format!("cannot open: {e}")))?;
            let out = std::fs::File::create(&to).map_err(|source| CarriedError::Io {
                path: to.clone(),
                source,
            })?;
            let mut writer = plinth_release::digest::Sha256Writer::new(out);
            let expected = if file == plinth_release::manifest::FILE_NAME {
                Some((c.manifest_sha256, None))
            } else {
                c.manifest
                    .outputs
                    .iter()
                    .find(|o| o.name.as_str() == file)
                    .map(|o| (o.sha256, Some(o.size)))
            };
            let Some((sha256, size)) = expected else {
                return Err(bad("not among the manifest's outputs".into()));
            };
            // Never more than the manifest declares (plus one byte, to see a longer file).
            let cap = size.unwrap_or(plinth_release::manifest::MAX_SIZE) + 1;
            io::copy(&mut io::Read::take(src, cap), &mut writer).map_err(|source| {
                CarriedError::Io {
                    path: to.clone(),
                    source,
                }
            })?;
            let (file_out, got, len) = writer.finish();
            set_mode(&to, 0o644)?;
            file_out.sync_all().map_err(|source| CarriedError::Io {
                path: to.clone(),
                source,
            })?;
            if got != sha256 || size.is_some_and(|s| s != len) {
                return Err(bad(format!(
                    "sha256 {got} ({len} bytes), the manifest says {sha256}{}",
                    size.map(|s| format!(" ({s} bytes)")).unwrap_or_default()
                )));
            }
        }
    }
    super::normalize::clamp_times(tree, epoch).map_err(|e| CarriedError::Io {
        path: tree.to_path_buf(),
        source: io::Error::other(e.to_string()),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A release directory of `os` whose manifest lists the carried files it holds.
    fn release(dir: &Path, os: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let mut outputs = Vec::new();
        for (name, bytes) in [
            ("disk-img.tar.zst", &b"disk"[..]),
            ("measurements.json", b"{}"),
        ] {
            std::fs::write(dir.join(name), bytes).unwrap();
            outputs.push(plinth_release::manifest::OutputFile {
                name: name.parse().unwrap(),
                sha256: Sha256::of(bytes),
                size: bytes.len() as u64,
            });
        }
        let text = format!(
            r#"{{"format_version":{},"os":"{os}","version":"1.0.0","profile":"test","inputs":{{"source_commit":"{c}","source_date_epoch":1,"lock_sha256":"{h}","os_spec_sha256":"{h}","builder_version":"0.1.0"}},"outputs":{},"partitions":[{{"number":1,"name":"root","role":"root","slot":null,"offset":1048576,"size":1048576,"blocks_sha256":"{h}"}}],"measurements":{{"slots":[{{"slot":null,"verity_root_hash":"{h}","uki_sha256":"{h}","pcr4":null,"pcr7":null,"pcr11":"{h}"}}]}}}}"#,
            plinth_release::manifest::FORMAT_VERSION,
            serde_json::to_string(&outputs).unwrap(),
            c = "c".repeat(40),
            h = "1".repeat(64),
        );
        std::fs::write(dir.join("manifest.json"), text).unwrap();
    }

    #[test]
    fn carried_files_get_fixed_modes_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        release(&dir.path().join("out/host-os/1.0.0"), "host-os");
        let carried = find(
            &dir.path().join("out"),
            &["host-os".into()],
            "1.0.0",
            "test",
        )
        .unwrap();
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let staged = stage(&carried, &dir.path().join("tree"), 1_700_000_000);
        nix::sys::stat::umask(old);
        staged.unwrap();
        let mode = |p: &str| {
            std::fs::metadata(dir.path().join("tree").join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("releases"), 0o755);
        assert_eq!(mode("releases/host-os"), 0o755);
        for f in FILES {
            assert_eq!(mode(&format!("releases/host-os/{f}")), 0o644, "{f}");
        }
        // Modification times are the epoch's (mke2fs copies them into the image).
        use std::os::unix::fs::MetadataExt;
        for p in [
            "",
            "releases",
            "releases/host-os",
            "releases/host-os/manifest.json",
        ] {
            let meta = std::fs::metadata(dir.path().join("tree").join(p)).unwrap();
            assert_eq!(meta.mtime(), 1_700_000_000, "{p}");
        }
        // A carried file that is not what its manifest says is refused.
        std::fs::write(
            dir.path().join("out/host-os/1.0.0/measurements.json"),
            "{ }",
        )
        .unwrap();
        let err = stage(&carried, &dir.path().join("tree2"), 1_700_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("measurements.json") && err.contains("the manifest says"),
            "{err}"
        );
    }
}
