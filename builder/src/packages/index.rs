//! A suite's `Packages` index for one component and architecture: fetched (by hash when the
//! archive offers it), checked against the digest the signed `InRelease` lists, kept in a
//! content-addressed cache, decompressed and parsed into [`IndexEntry`]s.

use super::deb822;
use super::release::{ArchiveError, Release};
use plinth_release::Sha256;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// A signed index the lock was resolved from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexDigest {
    /// e.g. `bookworm-security`.
    pub suite: String,
    /// sha256 of the suite's `InRelease` file as fetched (signature included).
    pub inrelease_sha256: Sha256,
    /// Path below `dists/<suite>/`, e.g. `main/binary-amd64/Packages.xz`.
    pub path: String,
    pub sha256: Sha256,
    pub size: u64,
}

/// Fields of a Packages stanza that dependency resolution reads; they are kept so that an
/// installed set can be written as a dpkg status file.
const RESOLUTION_FIELDS: [&str; 12] = [
    "Package",
    "Version",
    "Architecture",
    "Multi-Arch",
    "Essential",
    "Priority",
    "Depends",
    "Pre-Depends",
    "Provides",
    "Conflicts",
    "Breaks",
    "Replaces",
];

/// One binary package version as an index lists it.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub filename: String,
    pub size: u64,
    pub sha256: Sha256,
    /// The stanza's resolution fields, in index order.
    pub fields: Vec<(String, String)>,
}

/// A verified, parsed Packages index.
#[derive(Debug, Clone)]
pub struct PackageIndex {
    pub suite: String,
    pub component: String,
    /// Below `dists/<suite>/`, e.g. `main/binary-amd64/Packages.xz`.
    pub path: String,
    pub sha256: Sha256,
    pub size: u64,
    /// The compressed file as signed (apt reads it from the private repository).
    pub xz: Vec<u8>,
    pub entries: Vec<IndexEntry>,
}

/// Fetch (or take from `cache_dir`) and verify the Packages.xz of `component`/`arch` listed
/// in `release`, then parse it.
pub async fn fetch_index(
    client: &reqwest::Client,
    mirror: &str,
    release: &Release,
    component: &str,
    arch: &str,
    cache_dir: &Path,
) -> Result<PackageIndex, ArchiveError> {
    let path = format!("{component}/binary-{arch}/Packages");
    let (text, signed) = fetch_signed_index(client, mirror, release, &path, cache_dir).await?;
    let (path, sha256, size, xz) = (signed.path, signed.sha256, signed.size, signed.xz);
    let url = format!("{mirror}/dists/{}/{path}", release.suite);
    let entries = parse_packages(&text).map_err(|message| ArchiveError::Malformed {
        suite: release.suite.clone(),
        url: url.clone(),
        message,
    })?;
    Ok(PackageIndex {
        suite: release.suite.clone(),
        component: component.to_string(),
        path,
        sha256,
        size,
        xz,
        entries,
    })
}

/// An index file as the signed release lists it.
pub struct SignedIndex {
    /// Path below `dists/<suite>/`, e.g. `main/source/Sources.xz`.
    pub path: String,
    pub sha256: Sha256,
    pub size: u64,
    /// The compressed file as fetched.
    pub xz: Vec<u8>,
}

/// Fetch `<plain>.xz` of `release` (e.g. `main/source/Sources`), check it against the signed
/// release (and the uncompressed text too when the release lists it), and return its text.
/// `cache_dir` keeps verified files by digest.
pub async fn fetch_signed_index(
    client: &reqwest::Client,
    mirror: &str,
    release: &Release,
    plain: &str,
    cache_dir: &Path,
) -> Result<(String, SignedIndex), ArchiveError> {
    let path = format!("{plain}.xz");
    let (sha256, size) = *release.digest(&path)?;
    let cached = cache_dir.join(format!("{sha256}.xz"));
    let url = format!("{mirror}/dists/{}/{path}", release.suite);
    let xz = match std::fs::read(&cached) {
        Ok(bytes) if Sha256::of(&bytes) == sha256 => bytes,
        _ => {
            let dir = plain.rsplit_once('/').map_or("", |(d, _)| d);
            let bytes = download(client, mirror, release, dir, &sha256, &url).await?;
            check_digest(&bytes, &sha256, size, &release.suite, &url)?;
            store(cache_dir, &cached, &bytes);
            bytes
        }
    };
    check_digest(&xz, &sha256, size, &release.suite, &url)?;
    let text = decompress(&xz).map_err(|message| ArchiveError::Decompress {
        suite: release.suite.clone(),
        url: url.clone(),
        message,
    })?;
    // The signed list also names the uncompressed file: check it too when present.
    if let Some((plain_sha, plain_size)) = release.files.get(plain) {
        check_digest(
            text.as_bytes(),
            plain_sha,
            *plain_size,
            &release.suite,
            &url,
        )?;
    }
    Ok((
        text,
        SignedIndex {
            path,
            sha256,
            size,
            xz,
        },
    ))
}

/// By-hash first when the archive offers it (immune to a mirror update between InRelease and
/// the index), the plain path otherwise or when the by-hash copy is missing.
async fn download(
    client: &reqwest::Client,
    mirror: &str,
    release: &Release,
    dir: &str,
    sha256: &Sha256,
    url: &str,
) -> Result<Vec<u8>, ArchiveError> {
    if release.acquire_by_hash {
        let by_hash = format!(
            "{mirror}/dists/{}/{dir}/by-hash/SHA256/{sha256}",
            release.suite
        );
        match super::http::get(client, &by_hash).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) if e.is_not_found() => {}
            Err(source) => {
                return Err(ArchiveError::Download {
                    suite: release.suite.clone(),
                    url: by_hash,
                    source,
                })
            }
        }
    }
    super::http::get(client, url)
        .await
        .map_err(|source| ArchiveError::Download {
            suite: release.suite.clone(),
            url: url.to_string(),
            source,
        })
}

fn check_digest(
    data: &[u8],
    sha256: &Sha256,
    size: u64,
    suite: &str,
    url: &str,
) -> Result<(), ArchiveError> {
    let actual = Sha256::of(data);
    if actual != *sha256 || data.len() as u64 != size {
        return Err(ArchiveError::DigestMismatch {
            suite: suite.to_string(),
            url: url.to_string(),
            expected: sha256.to_hex(),
            expected_size: size,
            actual: actual.to_hex(),
            actual_size: data.len() as u64,
        });
    }
    Ok(())
}

/// Best effort: a cache that cannot be written only costs a download next time.
fn store(dir: &Path, path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let ok = std::fs::create_dir_all(dir).is_ok()
        && std::fs::write(&tmp, bytes).is_ok()
        && std::fs::rename(&tmp, path).is_ok();
    if !ok {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn decompress(xz: &[u8]) -> Result<String, String> {
    let mut text = String::new();
    xz2::read::XzDecoder::new(xz)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// Parse Packages text into entries; a stanza without the fields a lock needs is an error.
pub fn parse_packages(text: &str) -> Result<Vec<IndexEntry>, String> {
    let mut entries = Vec::new();
    for para in deb822::paragraphs(text) {
        let field = |k: &str| {
            deb822::get(&para, k).ok_or_else(|| {
                format!(
                    "a stanza (Package: {}) has no {k} field",
                    deb822::get(&para, "Package").unwrap_or("?")
                )
            })
        };
        let size = field("Size")?;
        entries.push(IndexEntry {
            name: field("Package")?.to_string(),
            version: field("Version")?.to_string(),
            architecture: field("Architecture")?.to_string(),
            filename: field("Filename")?.to_string(),
            size: size.parse().map_err(|_| {
                format!("bad Size `{size}` for {}", field("Package").unwrap_or("?"))
            })?,
            sha256: {
                let sha256 = field("SHA256")?;
                sha256.parse().map_err(|_| {
                    format!(
                        "bad SHA256 `{sha256}` for {}: expected 64 lower-case hex digits",
                        field("Package").unwrap_or("?")
                    )
                })?
            },
            fields: para
                .iter()
                .filter(|(k, _)| RESOLUTION_FIELDS.iter().any(|f| f.eq_ignore_ascii_case(k)))
                .cloned()
                .collect(),
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stanzas_and_keeps_resolution_fields() {
        let text = "Package: bash\nVersion: 5.2.15-2+b7\nArchitecture: amd64\nEssential: yes\nPre-Depends: libc6 (>= 2.36)\nDescription: GNU shell\n more\nFilename: pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb\nSize: 1491\nSHA256: 0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b0a1b\n";
        let e = parse_packages(text).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].size, 1491);
        let keys: Vec<&str> = e[0].fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Package",
                "Version",
                "Architecture",
                "Essential",
                "Pre-Depends"
            ]
        );
        let bad = parse_packages("Package: x\nVersion: 1\n").unwrap_err();
        assert!(bad.contains("(Package: x) has no Size field"), "{bad}");
        let bad = parse_packages(&text.replace("SHA256: 0a1b", "SHA256: ../")).unwrap_err();
        assert!(bad.starts_with("bad SHA256 `../"), "{bad}");
    }
}
