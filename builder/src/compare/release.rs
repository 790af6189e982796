//! A release directory as `plinth verify` and `plinth diff` read it: its manifest, its files
//! checked against the manifest, its archives unpacked on demand, and its package list from
//! the SBOM.
//!
//! Every archive member is bounded by what the manifest says about the disk
//! ([`Release::bounds`]): the disk image by where its partitions and backup GPT end, each
//! update member by the partition it is written to, plus [`artifacts::MEMBER_SLACK`]
//! ([`Manifest::archive_bounds`] computes them, next to the manifest). The bounds are checked
//! on each member's header before any of it is read or written, and the free space before it
//! is written (see [`artifacts`]).

use crate::pipeline::artifacts;
use crate::pipeline::manifest::{self, Manifest};
use plinth_release::{Sha256, Slot};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a release directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseDirError {
    #[error("{}: no such release directory or manifest\n  hint: pass a release directory (out/<os>/<version>) or its manifest.json", path.display())]
    Missing { path: PathBuf },
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("{}: the release's files do not match its manifest:\n{}\n  hint: the directory was altered or is incomplete; fetch the release again", dir.display(), problems.join("\n"))]
    Altered { dir: PathBuf, problems: Vec<String> },
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}: not an SPDX SBOM: {message}", path.display())]
    Sbom { path: PathBuf, message: String },
    #[error("{}: {message}\n  hint: the release does not agree with its manifest: it was crafted or damaged; fetch it again", path.display())]
    Inconsistent { path: PathBuf, message: String },
}

impl ReleaseDirError {
    /// Whether a release's file is at fault (a crafted or corrupt archive): bad input.
    pub fn is_crafted(&self) -> bool {
        match self {
            ReleaseDirError::Artifact(e) => e.is_crafted(),
            ReleaseDirError::Inconsistent { .. }
            | ReleaseDirError::Sbom { .. }
            | ReleaseDirError::Manifest(_) => true,
            ReleaseDirError::Missing { .. }
            | ReleaseDirError::Altered { .. }
            | ReleaseDirError::Io { .. } => false,
        }
    }
}

pub use plinth_release::manifest::UNPARTITIONED_LIMIT;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseDirError + '_ {
    move |e| ReleaseDirError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// An opened release directory.
#[derive(Debug, Clone)]
pub struct Release {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Release {
    /// Open `path` (a release directory or its `manifest.json`) and check that every file
    /// the manifest lists is there with its sha256 and size.
    pub fn open(path: &Path) -> Result<Release, ReleaseDirError> {
        let (dir, manifest_path) = if path.is_dir() {
            (path.to_path_buf(), path.join(manifest::FILE_NAME))
        } else if path.is_file() {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir, path.to_path_buf())
        } else {
            return Err(ReleaseDirError::Missing {
                path: path.to_path_buf(),
            });
        };
        let manifest = Manifest::read(&manifest_path)?;
        let mut problems = Vec::new();
        for o in &manifest.outputs {
            let file = dir.join(&o.name);
            // A regular file of the declared size, then hashed: a link, a device or a FIFO
            // planted in the release is named, never read.
            let hashed = artifacts::open_untrusted(&file).and_then(|f| {
                let size = f.metadata()?.len();
                if size == o.size {
                    Sha256::of_reader(f).map(|(d, n)| (Some(d), n))
                } else {
                    Ok((None, size))
                }
            });
            match hashed {
                Ok((Some(sha), size)) if sha == o.sha256 && size == o.size => {}
                Ok((sha, size)) => problems.push(format!(
                    "  {}: sha256 {} ({size} B), the manifest says {} ({} B)",
                    o.name,
                    sha.map_or_else(|| "(not read)".to_string(), |d| d.to_string()),
                    o.sha256,
                    o.size
                )),
                Err(e) => problems.push(format!("  {}: {e}", o.name)),
            }
        }
        if !problems.is_empty() {
            return Err(ReleaseDirError::Altered { dir, problems });
        }
        Ok(Release { dir, manifest })
    }

    /// sha256 and size of a release file, `None` if the release has none of that name.
    /// Files the manifest lists were hashed and checked by [`Release::open`]; only the others
    /// (the manifest itself) are hashed here.
    pub fn digest(&self, name: &str) -> Result<Option<super::Digest>, ReleaseDirError> {
        if let Some(o) = self.manifest.outputs.iter().find(|o| o.name == name) {
            return Ok(Some(super::Digest {
                sha256: o.sha256,
                size: o.size,
            }));
        }
        let path = self.dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(None);
        }
        let file = artifacts::open_untrusted(&path).map_err(io(&path))?;
        let (sha256, size) =
            Sha256::of_reader(file.take(artifacts::MAX_TEXT + 1)).map_err(io(&path))?;
        if size > artifacts::MAX_TEXT {
            return Err(ReleaseDirError::Inconsistent {
                path,
                message: format!(
                    "larger than the {} bytes a release's text file may hold",
                    artifacts::MAX_TEXT
                ),
            });
        }
        Ok(Some(super::Digest { sha256, size }))
    }

    /// Where the disk's last partition ends, plus the backup GPT
    /// ([`Manifest::disk_end`]).
    pub fn disk_end(&self) -> u64 {
        self.manifest.disk_end()
    }

    /// What the members of archive `name` may declare, from the manifest
    /// ([`Manifest::archive_bounds`]).
    pub fn bounds(&self, name: &str) -> artifacts::Bounds {
        self.manifest.archive_bounds(name)
    }

    /// The update archive's member holding the UKI of `slot`: `<os>-a.efi`, or `<os>.efi`
    /// without slots (as [`crate::pipeline::build::uki_name`] names them).
    pub fn uki_member(&self, slot: Option<Slot>) -> String {
        self.manifest.uki_member(slot)
    }

    /// Unpack every member of archive `name` into `dest` (made 0700), each within
    /// [`Release::bounds`]; their names.
    pub fn extract_all(&self, name: &str, dest: &Path) -> Result<Vec<String>, ReleaseDirError> {
        let names = artifacts::extract_bounded(&self.dir.join(name), dest, &self.bounds(name))
            .map_err(artifacts::ArtifactError::from)?;
        Ok(names)
    }

    /// Unpack archive `name` into `dest` and return the path of its member `member`.
    pub fn extract_member(
        &self,
        name: &str,
        member: &str,
        dest: &Path,
    ) -> Result<PathBuf, ReleaseDirError> {
        let names = self.extract_all(name, dest)?;
        if !names.iter().any(|n| n == member) {
            return Err(ReleaseDirError::Inconsistent {
                path: self.dir.join(name),
                message: format!("has no member `{member}` (it has: {})", names.join(", ")),
            });
        }
        Ok(dest.join(member))
    }

    /// Package name → version, from the SBOM (the image itself is not a package).
    pub fn packages(&self) -> Result<BTreeMap<String, String>, ReleaseDirError> {
        let path = self.dir.join(crate::pipeline::release::SBOM);
        let bad = |message: String| ReleaseDirError::Sbom {
            path: path.clone(),
            message,
        };
        let text = artifacts::read_untrusted(&path, artifacts::MAX_TEXT)
            .map_err(|e| bad(e.to_string()))?;
        let doc: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
        let packages = doc["packages"]
            .as_array()
            .ok_or_else(|| bad("no `packages` list".into()))?;
        let mut out = BTreeMap::new();
        for p in packages {
            if p["SPDXID"] == crate::pipeline::sbom::IMAGE_ID {
                continue;
            }
            let (Some(name), Some(version)) = (p["name"].as_str(), p["versionInfo"].as_str())
            else {
                return Err(bad(format!("a package without name or versionInfo: {p}")));
            };
            out.insert(name.to_string(), version.to_string());
        }
        Ok(out)
    }
}

/// Copy `len` bytes from `offset` of `disk` into a new file `out`, leaving all-zero blocks as
/// holes (and not reading the disk's holes); returns `out`.
pub fn copy_span(
    disk: &Path,
    offset: u64,
    len: u64,
    out: &Path,
) -> Result<PathBuf, ReleaseDirError> {
    crate::pipeline::blocks::copy_span_sparse(disk, offset, len, out).map_err(io(disk))?;
    Ok(out.to_path_buf())
}
