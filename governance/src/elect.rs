//! `elect`: stage a release as elected. The release directory is outside input: its
//! `manifest.json` is read by [`plinth_release::manifest`] (which refuses names that could
//! leave the directory), its `measurements.json` must be the one the manifest lists (sha256
//! and size) and describe the same OS and version, and each elected artifact is hashed while
//! it streams from disk (never read whole) and must match the manifest. Only then is a new
//! targets version staged (unsigned): one target per artifact with its custom metadata
//! ([`crate::custom::ArtifactCustom`]), and the OS's `max_version` raised to this version if
//! it is newer. Nothing is written on bad input.

use crate::custom::{self, ArtifactCustom, Entry, Kind, Wave};
use crate::error::GovernanceError;
use crate::names::TargetPath;
use crate::order;
use crate::staging;
use crate::workdir::{Source, Workdir};
use plinth_release::manifest::{self, Manifest};
use plinth_release::measurements::{self, Measurements};
use plinth_release::{FileName, Sha256};
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use tough::schema::{Hashes, Target};

/// The artifact elected by default: what an upgrade installs.
pub const DEFAULT_ARTIFACT: &str = plinth_release::archive::UPDATE_ARCHIVE;
/// The largest measurements.json read.
pub const MAX_MEASUREMENTS: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct ElectOptions {
    pub workdir: PathBuf,
    pub release: PathBuf,
    pub waves: PathBuf,
    /// The release files to elect (default: [`DEFAULT_ARTIFACT`]).
    pub artifacts: Vec<FileName>,
    pub targets_expires: jiff::Timestamp,
    pub now: jiff::Timestamp,
    /// Elect although some seeds are in no wave (those nodes never take the version).
    pub allow_uncovered: bool,
}

/// What was staged.
#[derive(Debug, Clone, Serialize)]
pub struct ElectReport {
    pub os: plinth_release::Os,
    pub version: plinth_release::Version,
    pub targets: Vec<String>,
    pub targets_version: u64,
    pub max_version: Option<plinth_release::Version>,
    pub waves: Vec<Wave>,
    pub dropped_signatures: usize,
    pub staged: PathBuf,
    /// Seed ranges no wave holds (only with `allow_uncovered`).
    pub uncovered: Vec<[u16; 2]>,
}

/// Seed ranges as `0-15, 2000-2047`.
pub fn seed_ranges(ranges: &[[u16; 2]]) -> String {
    ranges
        .iter()
        .map(|[a, b]| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Check the release and stage its election.
pub fn elect(opts: &ElectOptions) -> Result<ElectReport, GovernanceError> {
    let workdir = Workdir::open(&opts.workdir)?;
    let waves = crate::waves::read(&opts.waves).map_err(GovernanceError::Waves)?;
    let uncovered = crate::waves::uncovered(&waves);
    if !uncovered.is_empty() && !opts.allow_uncovered {
        return Err(GovernanceError::refused(
            format!(
                "{}: the seeds {} are in no wave: nodes with them would never take this version",
                opts.waves.display(),
                seed_ranges(&uncovered)
            ),
            "extend the waves to cover every seed (0-2047), or elect with --allow-uncovered \
             to reach part of the fleet on purpose",
        ));
    }
    let release = read_release(&opts.release)?;
    let m = &release.manifest;
    let artifacts: Vec<FileName> = if opts.artifacts.is_empty() {
        vec![DEFAULT_ARTIFACT.parse().expect("a legal file name")]
    } else {
        opts.artifacts.clone()
    };
    let mut checked = Vec::new();
    for file in &artifacts {
        let (sha256, length, path) = check_artifact(&opts.release, m, file)?;
        checked.push((file.clone(), sha256, length, path));
    }

    let mut draft = staging::start(&workdir, opts.targets_expires)?;
    // One version names one build: a second election of it must carry the same bytes.
    for (path, entry) in draft.entries()? {
        if let (TargetPath::Artifact { os, version, file }, Entry::Artifact(a)) = (&path, entry) {
            if *os != m.os || *version != m.version {
                continue;
            }
            if let Some((_, sha256, _, _)) = checked.iter().find(|(f, ..)| f == file) {
                if a.sha256 != *sha256 {
                    return Err(GovernanceError::refused(
                        format!(
                            "{os} {version}: {file} is elected already with sha256 {}, this release's is {sha256}",
                            a.sha256
                        ),
                        "a version names one build: revoke it first, or build another version",
                    ));
                }
            }
        }
    }
    let mut sources = workdir.sources()?;
    let mut names = Vec::new();
    for (file, sha256, length, path) in &checked {
        let target_path = TargetPath::Artifact {
            os: m.os,
            version: m.version.clone(),
            file: file.clone(),
        };
        let custom = ArtifactCustom {
            format_version: custom::FORMAT_VERSION,
            kind: Kind::Artifact,
            os: m.os,
            version: m.version.clone(),
            file: file.clone(),
            sha256: *sha256,
            length: *length,
            manifest_sha256: release.manifest_sha256,
            elected_at: jiff::Timestamp::from_second(opts.now.as_second()).unwrap_or(opts.now),
            waves: waves.clone(),
            measurements: release.measurements.clone(),
        };
        draft.targets.targets.insert(
            target_path.target_name(),
            Target {
                length: *length,
                hashes: Hashes {
                    sha256: sha256.as_bytes().to_vec().into(),
                    _extra: HashMap::new(),
                },
                custom: custom::to_custom(&custom),
                _extra: HashMap::new(),
            },
        );
        sources.insert(
            target_path.to_string(),
            Source {
                path: std::path::absolute(path).unwrap_or_else(|_| path.clone()),
                sha256: *sha256,
                length: *length,
            },
        );
        names.push(target_path.to_string());
    }
    let current = draft.policy(m.os)?.and_then(|p| p.max_version);
    let max_version = order::newest(current.iter().chain([&m.version])).cloned();
    draft.set_policy(m.os, max_version.clone());
    let dropped_signatures = draft.dropped_signatures;
    let targets_version = draft.targets.version.get();
    // Sources first: an extra source is harmless, a staged target without one is not.
    workdir.write_sources(&sources)?;
    draft.stage(&workdir)?;
    Ok(ElectReport {
        os: m.os,
        version: m.version.clone(),
        targets: names,
        targets_version,
        max_version,
        waves,
        dropped_signatures,
        staged: workdir.staged_path(crate::workdir::StagedRole::Targets),
        uncovered,
    })
}

/// A release's manifest and measurements, checked.
pub struct Release {
    pub manifest: Manifest,
    pub manifest_sha256: Sha256,
    pub measurements: Measurements,
}

fn release_error(path: &Path, message: impl Into<String>, hint: &str) -> GovernanceError {
    GovernanceError::Release {
        path: path.to_path_buf(),
        message: message.into(),
        hint: hint.into(),
    }
}

const REBUILD: &str = "elect the release as plinth build wrote it; compare it with plinth verify";

/// Read `dir`'s manifest.json and measurements.json.
pub fn read_release(dir: &Path) -> Result<Release, GovernanceError> {
    let manifest_path = dir.join(manifest::FILE_NAME);
    let bytes = plinth_release::untrusted::read_untrusted(&manifest_path, manifest::MAX_SIZE)
        .map_err(|e| {
            release_error(
                &manifest_path,
                format!("cannot read: {e}"),
                "pass a release directory (out/<os>/<version>)",
            )
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| release_error(&manifest_path, "not UTF-8 text", REBUILD))?;
    let manifest = Manifest::parse(text, &manifest_path).map_err(|e| {
        release_error(
            &manifest_path,
            strip_path(&e.to_string(), &manifest_path),
            REBUILD,
        )
    })?;
    let manifest_sha256 = Sha256::of(&bytes);

    let m_path = dir.join(measurements::FILE_NAME);
    let listed = manifest.output(measurements::FILE_NAME).ok_or_else(|| {
        release_error(
            &manifest_path,
            "lists no measurements.json among its outputs",
            REBUILD,
        )
    })?;
    let m_bytes = plinth_release::untrusted::read_untrusted(&m_path, MAX_MEASUREMENTS)
        .map_err(|e| release_error(&m_path, format!("cannot read: {e}"), REBUILD))?;
    let found = Sha256::of(&m_bytes);
    if found != listed.sha256 || m_bytes.len() as u64 != listed.size {
        return Err(release_error(
            &m_path,
            format!(
                "sha256 {found} ({} bytes), the manifest says {} ({} bytes)",
                m_bytes.len(),
                listed.sha256,
                listed.size
            ),
            REBUILD,
        ));
    }
    let m_text = std::str::from_utf8(&m_bytes)
        .map_err(|_| release_error(&m_path, "not UTF-8 text", REBUILD))?;
    let measurements = Measurements::parse(m_text, &m_path.display().to_string())
        .map_err(|e| release_error(&m_path, strip_path(&e, &m_path), REBUILD))?;
    if measurements.os != manifest.os || measurements.version != manifest.version {
        return Err(release_error(
            &m_path,
            format!(
                "measures {} {}, the manifest is of {} {}",
                measurements.os, measurements.version, manifest.os, manifest.version
            ),
            REBUILD,
        ));
    }
    Ok(Release {
        manifest,
        manifest_sha256,
        measurements,
    })
}

/// `message` without a leading `<path>: ` (the error names the path itself).
fn strip_path(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_string()
}

/// Stream release file `file` of `dir` through sha256 and compare it with the manifest.
fn check_artifact(
    dir: &Path,
    m: &Manifest,
    file: &FileName,
) -> Result<(Sha256, u64, PathBuf), GovernanceError> {
    let manifest_path = dir.join(manifest::FILE_NAME);
    let listed = m.output(file).ok_or_else(|| {
        release_error(
            &manifest_path,
            format!("lists no `{file}` among its outputs"),
            "elect a file the release has (--artifact NAME)",
        )
    })?;
    let path = plinth_release::names::under(dir, &[file.as_str()])
        .map_err(|e| release_error(dir, e, REBUILD))?;
    let f = plinth_release::untrusted::open_untrusted(&path)
        .map_err(|e| release_error(&path, format!("cannot read: {e}"), REBUILD))?;
    // At most one byte more than listed: a longer file is refused without reading it all.
    let (sha256, length) = Sha256::of_reader(f.take(listed.size.saturating_add(1)))
        .map_err(|e| release_error(&path, format!("cannot read: {e}"), REBUILD))?;
    if sha256 != listed.sha256 || length != listed.size {
        return Err(release_error(
            &path,
            format!(
                "sha256 {sha256} ({length}{} bytes), the manifest says {} ({} bytes)",
                if length > listed.size { " or more" } else { "" },
                listed.sha256,
                listed.size
            ),
            REBUILD,
        ));
    }
    Ok((sha256, length, path))
}
