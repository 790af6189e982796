//! Debian source packages: one version of one source package found in a suite's signed
//! `Sources` index (InRelease → `main/source/Sources.xz` → the package's stanza), pinned in the
//! lock with the sha256 of each of its files. The guest firmware is built from edk2's.

use super::archive::Source;
use super::deb822;
use super::index::fetch_signed_index;
use super::index::IndexDigest;
use super::release::{fetch_release, ArchiveError};
use super::resolve::LockedPackage;
use crate::spec::SourceRequest;
use plinth_release::Sha256;
use serde::{Deserialize, Serialize};

/// One version of one Debian source package: the signed `Sources` index it was found in and
/// its files (orig and debian tarballs; the `.dsc` is left out, the build unpacks the
/// tarballs itself).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSource {
    pub package: String,
    pub version: String,
    pub index: IndexDigest,
    /// Sorted by name.
    pub files: Vec<SourceFile>,
}

/// A file of a source package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    pub name: String,
    /// Path below the mirror root, e.g. `pool/main/e/edk2/edk2_2025.02.orig.tar.xz`.
    pub filename: String,
    pub size: u64,
    pub sha256: Sha256,
}

impl LockedSource {
    /// The files as downloads the package fetcher and cache take (content-addressed by
    /// sha256, served by the mirror of the source's suite).
    pub fn downloads(&self) -> Vec<LockedPackage> {
        self.files
            .iter()
            .map(|f| LockedPackage {
                name: f.name.clone(),
                version: self.version.clone(),
                architecture: "source".into(),
                suite: self.index.suite.clone(),
                filename: f.filename.clone(),
                size: f.size,
                sha256: f.sha256,
            })
            .collect()
    }
}

/// Why a source package could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("{suite}: the Sources index lists no {package} {version} (it has: {found})\n  hint: set firmware.source.version in {spec} to a version the suite has")]
    NotListed {
        suite: String,
        package: String,
        version: String,
        found: String,
        spec: String,
    },
    #[error("{suite}: the Sources stanza of {package} {version} {message}")]
    Malformed {
        suite: String,
        package: String,
        version: String,
        message: String,
    },
}

/// Find `req` in its suite's signed Sources index (from the suite's mirror of `at`) and pin
/// its tarballs; `spec` names the spec in errors.
pub async fn lock_source(
    client: &reqwest::Client,
    req: &SourceRequest,
    at: &Source<'_>,
    spec: &str,
) -> Result<LockedSource, SourceError> {
    let mirror = at.mirrors.for_suite(&req.suite);
    let release = fetch_release(client, mirror, &req.suite, at.keyring, at.now).await?;
    let (text, signed) = fetch_signed_index(
        client,
        mirror,
        &release,
        "main/source/Sources",
        at.index_cache,
    )
    .await?;
    let mut versions = Vec::new();
    for para in deb822::paragraphs(&text) {
        if deb822::get(&para, "Package") != Some(req.package.as_str()) {
            continue;
        }
        let version = deb822::get(&para, "Version").unwrap_or_default();
        if version != req.version {
            versions.push(version.to_string());
            continue;
        }
        let files = stanza_files(&para).map_err(|message| SourceError::Malformed {
            suite: req.suite.clone(),
            package: req.package.clone(),
            version: req.version.clone(),
            message,
        })?;
        return Ok(LockedSource {
            package: req.package.clone(),
            version: req.version.clone(),
            index: IndexDigest {
                suite: req.suite.clone(),
                inrelease_sha256: release.raw_sha256,
                path: signed.path,
                sha256: signed.sha256,
                size: signed.size,
            },
            files,
        });
    }
    Err(SourceError::NotListed {
        suite: req.suite.clone(),
        package: req.package.clone(),
        version: req.version.clone(),
        found: if versions.is_empty() {
            "no version at all".into()
        } else {
            versions.join(", ")
        },
        spec: spec.to_string(),
    })
}

/// The tarballs of one stanza (`Checksums-Sha256` below `Directory`), sorted by name.
fn stanza_files(para: &[(String, String)]) -> Result<Vec<SourceFile>, String> {
    let dir = deb822::get(para, "Directory").ok_or("has no Directory field")?;
    let sums = deb822::get(para, "Checksums-Sha256").ok_or("has no Checksums-Sha256 field")?;
    if dir.contains("..") || dir.starts_with('/') {
        return Err(format!(
            "has Directory `{dir}`, not a path below the mirror root"
        ));
    }
    let mut files = Vec::new();
    for line in sums.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [sha256, size, name] = fields[..] else {
            return Err(format!(
                "has Checksums-Sha256 line `{line}`, expected `sha256 size name`"
            ));
        };
        let size: u64 = size
            .parse()
            .map_err(|_| format!("has size `{size}` for {name}, expected a number"))?;
        let sha256: plinth_release::Sha256 = match sha256.parse() {
            Ok(sha256) if !name.contains('/') => sha256,
            _ => return Err(format!("has Checksums-Sha256 line `{line}`")),
        };
        if name.ends_with(".dsc") {
            continue;
        }
        files.push(SourceFile {
            name: name.to_string(),
            filename: format!("{dir}/{name}"),
            size,
            sha256,
        });
    }
    if files.is_empty() {
        return Err("lists no tarballs".into());
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stanza_gives_its_tarballs_without_the_dsc() {
        let text = "Package: edk2\nVersion: 1-1\nDirectory: pool/main/e/edk2\nChecksums-Sha256:\n 9e2115e7d75a3930b082216ef3378cca040fde049c86f4547e8ed6da1515ffee 2656 edk2_1-1.dsc\n b63b6053d6d89c74d9291f9e96fde1584be99e6fb9c169ba9511505129d6b049 29646336 edk2_1.orig.tar.xz\n e2a7f6fc58640818416a028d6d5e9dfc255697a7cdc60c14566c236df6bd9b08 53652 edk2_1-1.debian.tar.xz\n";
        let para = &deb822::paragraphs(text)[0];
        let files = stanza_files(para).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["edk2_1-1.debian.tar.xz", "edk2_1.orig.tar.xz"]);
        assert_eq!(files[1].filename, "pool/main/e/edk2/edk2_1.orig.tar.xz");
        assert_eq!(files[1].size, 29646336);

        let bad = text.replace("29646336", "big");
        let e = stanza_files(&deb822::paragraphs(&bad)[0]).unwrap_err();
        assert!(e.contains("size `big`"), "{e}");
        let escape = text.replace("pool/main/e/edk2", "../etc");
        assert!(stanza_files(&deb822::paragraphs(&escape)[0]).is_err());
    }
}
