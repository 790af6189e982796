//! `sbom.spdx.json`: an SPDX 2.3 JSON document for one image: the image itself, one package per
//! locked `.deb` (name, version, sha256 of the `.deb`, purl, declared license), and the
//! relationships DOCUMENT DESCRIBES image, image CONTAINS each package.
//!
//! Nothing in it depends on the build host or the moment: `created` is SOURCE_DATE_EPOCH, the
//! document namespace is derived from OS, version, profile and lock sha256 (no random UUID),
//! packages are sorted, and SPDX ids come from package name, version and architecture.
//!
//! Licenses: Debian states them in `/usr/share/doc/<package>/copyright`. When that file is
//! machine-readable (DEP-5, `Format: …copyright-format/1.0/`), the `License:` short names of
//! its header and `Files` paragraphs become the declared license, mapped to SPDX ids where the
//! meaning is plain (`GPL-2+` → `GPL-2.0-or-later`, `Expat` → `MIT`, …, see [`dep5_license`]);
//! other names become `LicenseRef-<name>`, each listed under `hasExtractedLicensingInfos`.
//! Otherwise (no file, free-form text, no image root) the license is `NOASSERTION`.

use crate::packages::deb822;
use crate::packages::lockfile::LockedPackage;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The SBOM's file name in a release directory.
pub const FILE_NAME: &str = "sbom.spdx.json";
/// SPDX's word for "not stated".
pub const NOASSERTION: &str = "NOASSERTION";
/// The image's own SPDX id.
pub const IMAGE_ID: &str = "SPDXRef-Image";
/// Symlinks followed inside the image root before giving up.
const MAX_LINKS: usize = 40;

/// What one image's SBOM is made from.
#[derive(Debug, Clone, Copy)]
pub struct SbomInput<'a> {
    pub os: &'a str,
    pub version: &'a str,
    pub profile: &'a str,
    /// SOURCE_DATE_EPOCH: the document's creation time.
    pub source_date_epoch: i64,
    /// sha256 of the OS's `packages.lock`.
    pub lock_sha256: &'a str,
    /// The Debian release codename (`bookworm`), for the purl `distro` qualifier.
    pub release: &'a str,
    /// The profile's locked packages.
    pub packages: &'a [&'a LockedPackage],
    /// The installed root (the package stage's tree, before the overlay), where copyright
    /// files are read; `None`: every license is NOASSERTION.
    pub root: Option<&'a Path>,
}

/// An SPDX 2.3 document (the subset plinth writes), in SPDX's JSON field order and names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    pub spdx_version: String,
    pub data_license: String,
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    pub name: String,
    pub document_namespace: String,
    pub creation_info: CreationInfo,
    pub packages: Vec<Package>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub has_extracted_licensing_infos: Vec<ExtractedLicense>,
    pub relationships: Vec<Relationship>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreationInfo {
    /// RFC 3339, UTC.
    pub created: String,
    pub creators: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Package {
    #[serde(rename = "SPDXID")]
    pub spdx_id: String,
    pub name: String,
    pub version_info: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package_file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier: Option<String>,
    pub download_location: String,
    pub files_analyzed: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<Checksum>,
    pub license_concluded: String,
    pub license_declared: String,
    pub copyright_text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_refs: Vec<ExternalRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_package_purpose: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checksum {
    pub algorithm: String,
    pub checksum_value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalRef {
    pub reference_category: String,
    pub reference_type: String,
    pub reference_locator: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractedLicense {
    pub license_id: String,
    pub name: String,
    pub extracted_text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relationship {
    pub spdx_element_id: String,
    pub relationship_type: String,
    pub related_spdx_element: String,
}

/// Why the SBOM could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("SOURCE_DATE_EPOCH {epoch} is negative\n  hint: use the release commit's time (`git log -1 --format=%ct`)")]
    BadEpoch { epoch: i64 },
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> SbomError + 'a {
    move |source| SbomError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// The SBOM of one image.
pub fn sbom(input: &SbomInput) -> Result<Document, SbomError> {
    if input.source_date_epoch < 0 {
        return Err(SbomError::BadEpoch {
            epoch: input.source_date_epoch,
        });
    }
    let mut debs: Vec<&LockedPackage> = input.packages.to_vec();
    debs.sort();
    debs.dedup();
    let distro = purl_distro(input.release);
    let mut ids = BTreeSet::new();
    let mut refs: BTreeMap<String, String> = BTreeMap::new();
    let mut packages = vec![Package {
        spdx_id: IMAGE_ID.to_string(),
        name: input.os.to_string(),
        version_info: input.version.to_string(),
        package_file_name: None,
        supplier: None,
        download_location: NOASSERTION.to_string(),
        files_analyzed: false,
        checksums: Vec::new(),
        license_concluded: NOASSERTION.to_string(),
        license_declared: NOASSERTION.to_string(),
        copyright_text: NOASSERTION.to_string(),
        comment: Some(format!(
            "plinth image {} {}, profile {}",
            input.os, input.version, input.profile
        )),
        external_refs: Vec::new(),
        primary_package_purpose: Some("OPERATING-SYSTEM".to_string()),
    }];
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".to_string(),
        relationship_type: "DESCRIBES".to_string(),
        related_spdx_element: IMAGE_ID.to_string(),
    }];
    for deb in debs {
        let mut id = spdx_id(&format!(
            "Package-deb-{}-{}-{}",
            deb.name, deb.version, deb.architecture
        ));
        if !ids.insert(id.clone()) {
            // Two keys sanitized alike: tell them apart by a digest of the exact key.
            let key = format!("{}={}:{}", deb.name, deb.version, deb.architecture);
            id = format!(
                "{id}-{}",
                &crate::packages::cache::sha256_bytes(key.as_bytes())[..12]
            );
            ids.insert(id.clone());
        }
        let license = match input.root {
            Some(root) if !root.is_dir() => {
                return Err(io_err(root, "read licenses from")(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "the installed root is missing",
                )))
            }
            Some(root) => package_license(root, &deb.name)?,
            None => None,
        };
        if let Some(expr) = &license {
            for token in expr.split([' ', '(', ')']) {
                if token.starts_with("LicenseRef-") {
                    refs.entry(token.to_string())
                        .or_insert_with(|| deb.name.clone());
                }
            }
        }
        packages.push(Package {
            spdx_id: id.clone(),
            name: deb.name.clone(),
            version_info: deb.version.clone(),
            package_file_name: deb.filename.rsplit('/').next().map(str::to_string),
            supplier: Some("Organization: Debian".to_string()),
            download_location: NOASSERTION.to_string(),
            files_analyzed: false,
            checksums: vec![Checksum {
                algorithm: "SHA256".to_string(),
                checksum_value: deb.sha256.to_hex(),
            }],
            license_concluded: NOASSERTION.to_string(),
            license_declared: license.unwrap_or_else(|| NOASSERTION.to_string()),
            copyright_text: NOASSERTION.to_string(),
            comment: Some(format!("{} from suite {}", deb.filename, deb.suite)),
            external_refs: vec![ExternalRef {
                reference_category: "PACKAGE-MANAGER".to_string(),
                reference_type: "purl".to_string(),
                reference_locator: format!(
                    "pkg:deb/debian/{}@{}?arch={}&distro={distro}",
                    purl_encode(&deb.name),
                    purl_encode(&deb.version),
                    purl_encode(&deb.architecture)
                ),
            }],
            primary_package_purpose: None,
        });
        relationships.push(Relationship {
            spdx_element_id: IMAGE_ID.to_string(),
            relationship_type: "CONTAINS".to_string(),
            related_spdx_element: id,
        });
    }
    let has_extracted_licensing_infos = refs
        .into_iter()
        .map(|(id, first)| {
            let short = id.trim_start_matches("LicenseRef-").to_string();
            ExtractedLicense {
                extracted_text: format!(
                    "A license Debian's machine-readable copyright files name `{short}` (first \
                     found in package {first}); its text is in /usr/share/doc/<package>/copyright \
                     of each package that declares it."
                ),
                name: short,
                license_id: id,
            }
        })
        .collect();
    Ok(Document {
        spdx_version: "SPDX-2.3".to_string(),
        data_license: "CC0-1.0".to_string(),
        spdx_id: "SPDXRef-DOCUMENT".to_string(),
        name: format!("{}-{}-{}", input.os, input.version, input.profile),
        document_namespace: format!(
            "https://spdx.org/spdxdocs/plinth/{}/{}/{}-{}",
            input.os, input.version, input.profile, input.lock_sha256
        ),
        creation_info: CreationInfo {
            created: rfc3339_utc(input.source_date_epoch),
            creators: vec![format!("Tool: plinth-{}", env!("CARGO_PKG_VERSION"))],
        },
        packages,
        has_extracted_licensing_infos,
        relationships,
    })
}

/// The document's file bytes: pretty JSON and a trailing newline.
pub fn to_bytes(doc: &Document) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(doc).expect("an SBOM always serializes");
    out.push(b'\n');
    out
}

/// Make the SBOM and write it to `out`; returns the document.
pub fn write_sbom(input: &SbomInput, out: &Path) -> Result<Document, SbomError> {
    let doc = sbom(input)?;
    std::fs::write(out, to_bytes(&doc)).map_err(io_err(out, "write"))?;
    Ok(doc)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
fn rfc3339_utc(t: i64) -> String {
    let s = crate::packages::release::format_unix(t); // `YYYY-MM-DD HH:MM:SS UTC`
    format!("{}T{}Z", &s[..10], &s[11..19])
}

/// An SPDX id: `SPDXRef-` and `tail` with every character outside `[A-Za-z0-9.-]` as `-`.
fn spdx_id(tail: &str) -> String {
    format!("SPDXRef-{}", sanitize(tail))
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// A `LicenseRef-` id for a license name: `+` spelled `-plus`, other characters outside
/// `[A-Za-z0-9.-]` as `-`, runs of `-` collapsed.
fn license_ref(name: &str) -> String {
    let spelled = sanitize(&name.trim().replace('+', "-plus"));
    let mut out = String::from("LicenseRef-");
    for c in spelled.chars() {
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    if out.ends_with('-') {
        out.pop();
    }
    if out == "LicenseRef" {
        out.push_str("-unnamed");
    }
    out
}

/// Percent-encoding of a purl component: everything but `[A-Za-z0-9.-_~]`.
fn purl_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"._-~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The purl `distro` qualifier for a Debian codename: `debian-12` for bookworm.
pub fn purl_distro(release: &str) -> String {
    match release {
        "buster" => "debian-10".to_string(),
        "bullseye" => "debian-11".to_string(),
        "bookworm" => "debian-12".to_string(),
        "trixie" => "debian-13".to_string(),
        other => format!("debian-{other}"),
    }
}

/// The declared license of package `name` from its copyright file in `root`, if machine-readable.
fn package_license(root: &Path, name: &str) -> Result<Option<String>, SbomError> {
    let rel = format!("usr/share/doc/{name}/copyright");
    let Some(path) = resolve_in_root(root, &rel).map_err(io_err(&root.join(&rel), "resolve"))?
    else {
        return Ok(None);
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => return Ok(None),
        Err(e) => return Err(io_err(&path, "read")(e)),
    };
    Ok(dep5_license(&String::from_utf8_lossy(&bytes)))
}

/// `rel` inside `root`, following symlinks as if `root` were `/` (absolute targets restart at
/// `root`, `..` stops at it): never a path outside the image. `None` if something is missing
/// or links loop.
fn resolve_in_root(root: &Path, rel: &str) -> std::io::Result<Option<PathBuf>> {
    let mut pending: Vec<String> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let mut path = root.to_path_buf();
        path.extend(&resolved);
        path.push(&c);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Ok(None);
            }
            let target = std::fs::read_link(&path)?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                resolved.clear();
            }
            pending.extend(
                target
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .rev()
                    .map(str::to_string),
            );
        } else {
            resolved.push(c);
        }
    }
    let mut path = root.to_path_buf();
    path.extend(&resolved);
    Ok(Some(path))
}

/// The declared license (an SPDX expression) of a Debian copyright file, if it is
/// machine-readable (DEP-5) and names any: the `License:` short names of its header and `Files`
/// paragraphs, each mapped by [`spdx_expression`], joined with AND (sorted, each once).
pub fn dep5_license(copyright: &str) -> Option<String> {
    let paragraphs = deb822::paragraphs(copyright);
    let header = paragraphs.first()?;
    let format =
        deb822::get(header, "Format").or_else(|| deb822::get(header, "Format-Specification"))?;
    let lower = format.to_ascii_lowercase();
    if !(lower.contains("copyright-format") || lower.contains("dep5") || lower.contains("dep-5")) {
        return None;
    }
    let mut exprs = BTreeSet::new();
    for (i, para) in paragraphs.iter().enumerate() {
        if i > 0 && deb822::get(para, "Files").is_none() {
            continue; // a stand-alone license text, not a statement about files
        }
        let Some(license) = deb822::get(para, "License") else {
            continue;
        };
        let short = license.lines().next().unwrap_or("").trim();
        if !short.is_empty() {
            exprs.insert(spdx_expression(short));
        }
    }
    match exprs.len() {
        0 => None,
        1 => exprs.pop_first(),
        _ => Some(
            exprs
                .iter()
                .map(|e| {
                    if e.contains(" OR ") {
                        format!("({e})")
                    } else {
                        e.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" AND "),
        ),
    }
}

/// DEP-5 short names (lower-case) and their SPDX expressions, plus the SPDX spellings of the
/// GNU licenses. Only names whose meaning is plain are here; the rest become `LicenseRef-`.
const LICENSES: &[(&str, &str)] = &[
    ("0bsd", "0BSD"),
    ("afl-2.0", "AFL-2.0"),
    ("afl-2.1", "AFL-2.1"),
    ("agpl-3", "AGPL-3.0-only"),
    ("agpl-3+", "AGPL-3.0-or-later"),
    ("agpl-3.0-only", "AGPL-3.0-only"),
    ("agpl-3.0-or-later", "AGPL-3.0-or-later"),
    ("apache-1.0", "Apache-1.0"),
    ("apache-1.1", "Apache-1.1"),
    ("apache-2", "Apache-2.0"),
    ("apache-2-llvm-exceptions", "Apache-2.0 WITH LLVM-exception"),
    ("apache-2.0", "Apache-2.0"),
    ("artistic", "Artistic-1.0-Perl"),
    ("artistic-1.0", "Artistic-1.0"),
    ("artistic-2.0", "Artistic-2.0"),
    ("beerware", "Beerware"),
    ("boost-1.0", "BSL-1.0"),
    ("bsd-1-clause", "BSD-1-Clause"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("bsd-4-clause-uc", "BSD-4-Clause-UC"),
    ("bsl-1.0", "BSL-1.0"),
    ("bzip2-1.0.6", "bzip2-1.0.6"),
    ("cc-by-3.0", "CC-BY-3.0"),
    ("cc-by-4.0", "CC-BY-4.0"),
    ("cc-by-sa-3.0", "CC-BY-SA-3.0"),
    ("cc-by-sa-4.0", "CC-BY-SA-4.0"),
    ("cc0", "CC0-1.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("cddl-1.0", "CDDL-1.0"),
    ("cpl-1.0", "CPL-1.0"),
    ("curl", "curl"),
    ("epl-1.0", "EPL-1.0"),
    ("epl-2.0", "EPL-2.0"),
    ("expat", "MIT"),
    ("fsfap", "FSFAP"),
    ("fsful", "FSFUL"),
    ("fsfullr", "FSFULLR"),
    ("gfdl-1.1", "GFDL-1.1-only"),
    ("gfdl-1.1+", "GFDL-1.1-or-later"),
    ("gfdl-1.2", "GFDL-1.2-only"),
    ("gfdl-1.2+", "GFDL-1.2-or-later"),
    ("gfdl-1.3", "GFDL-1.3-only"),
    ("gfdl-1.3+", "GFDL-1.3-or-later"),
    ("gfdl-niv-1.2", "GFDL-1.2-no-invariants-only"),
    ("gfdl-niv-1.2+", "GFDL-1.2-no-invariants-or-later"),
    ("gfdl-niv-1.3", "GFDL-1.3-no-invariants-only"),
    ("gfdl-niv-1.3+", "GFDL-1.3-no-invariants-or-later"),
    ("gpl", "GPL-1.0-or-later"),
    ("gpl-1", "GPL-1.0-only"),
    ("gpl-1+", "GPL-1.0-or-later"),
    ("gpl-1.0-only", "GPL-1.0-only"),
    ("gpl-1.0-or-later", "GPL-1.0-or-later"),
    ("gpl-2", "GPL-2.0-only"),
    ("gpl-2+", "GPL-2.0-or-later"),
    ("gpl-2.0", "GPL-2.0-only"),
    ("gpl-2.0+", "GPL-2.0-or-later"),
    ("gpl-2.0-only", "GPL-2.0-only"),
    ("gpl-2.0-or-later", "GPL-2.0-or-later"),
    ("gpl-3", "GPL-3.0-only"),
    ("gpl-3+", "GPL-3.0-or-later"),
    ("gpl-3.0", "GPL-3.0-only"),
    ("gpl-3.0+", "GPL-3.0-or-later"),
    ("gpl-3.0-only", "GPL-3.0-only"),
    ("gpl-3.0-or-later", "GPL-3.0-or-later"),
    ("hpnd", "HPND"),
    ("ijg", "IJG"),
    ("isc", "ISC"),
    ("latex2e", "Latex2e"),
    ("lgpl", "LGPL-2.0-or-later"),
    ("lgpl-2", "LGPL-2.0-only"),
    ("lgpl-2+", "LGPL-2.0-or-later"),
    ("lgpl-2.0", "LGPL-2.0-only"),
    ("lgpl-2.0+", "LGPL-2.0-or-later"),
    ("lgpl-2.0-only", "LGPL-2.0-only"),
    ("lgpl-2.0-or-later", "LGPL-2.0-or-later"),
    ("lgpl-2.1", "LGPL-2.1-only"),
    ("lgpl-2.1+", "LGPL-2.1-or-later"),
    ("lgpl-2.1-only", "LGPL-2.1-only"),
    ("lgpl-2.1-or-later", "LGPL-2.1-or-later"),
    ("lgpl-3", "LGPL-3.0-only"),
    ("lgpl-3+", "LGPL-3.0-or-later"),
    ("lgpl-3.0", "LGPL-3.0-only"),
    ("lgpl-3.0+", "LGPL-3.0-or-later"),
    ("lgpl-3.0-only", "LGPL-3.0-only"),
    ("lgpl-3.0-or-later", "LGPL-3.0-or-later"),
    ("libpng", "Libpng"),
    ("linux-man-pages-copyleft", "Linux-man-pages-copyleft"),
    ("mit", "MIT"),
    ("mit-cmu", "MIT-CMU"),
    ("mpl-1.0", "MPL-1.0"),
    ("mpl-1.1", "MPL-1.1"),
    ("mpl-2.0", "MPL-2.0"),
    ("ntp", "NTP"),
    ("ofl-1.1", "OFL-1.1"),
    ("oldap-2.8", "OLDAP-2.8"),
    ("openldap-2.8", "OLDAP-2.8"),
    ("openssl", "OpenSSL"),
    ("postgresql", "PostgreSQL"),
    ("psf-2", "PSF-2.0"),
    ("python-2.0", "Python-2.0"),
    ("sleepycat", "Sleepycat"),
    ("tcl", "TCL"),
    ("unicode-dfs-2016", "Unicode-DFS-2016"),
    ("unlicense", "Unlicense"),
    ("vim", "Vim"),
    ("w3c", "W3C"),
    ("wtfpl", "WTFPL"),
    ("x11", "X11"),
    ("zlib", "Zlib"),
    ("zpl-2.1", "ZPL-2.1"),
];

/// `with <name> exception` names and their SPDX exception ids (keys lower-case).
const EXCEPTIONS: &[(&str, &str)] = &[
    ("autoconf", "Autoconf-exception-2.0"),
    ("autoconf-2.0", "Autoconf-exception-2.0"),
    ("autoconf-3.0", "Autoconf-exception-3.0"),
    ("bison", "Bison-exception-2.2"),
    ("bison-2.2", "Bison-exception-2.2"),
    ("classpath", "Classpath-exception-2.0"),
    ("classpath-2.0", "Classpath-exception-2.0"),
    ("font", "Font-exception-2.0"),
    ("gcc-3.1", "GCC-exception-3.1"),
    ("gcc-exception-3.1", "GCC-exception-3.1"),
    ("libtool", "Libtool-exception"),
    ("linux-syscall-note", "Linux-syscall-note"),
    ("llvm", "LLVM-exception"),
    ("texinfo", "Texinfo-exception"),
];

fn lookup(table: &[(&str, &'static str)], key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    table.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// One DEP-5 `License:` short line (`GPL-2+ or Artistic, and BSD-3-clause`,
/// `GPL-3+ with Bison exception`) as an SPDX expression. Known names map to SPDX ids, others
/// to `LicenseRef-<name>`; a line that does not parse as DEP-5's grammar becomes one
/// `LicenseRef-` of the whole line.
pub fn spdx_expression(short: &str) -> String {
    parse_short(short).unwrap_or_else(|| license_ref(short))
}

fn parse_short(short: &str) -> Option<String> {
    // Comma-separated groups, each `term (op term)*`; a group after a comma starts with its
    // operator. A comma binds loosest, so each group of several terms gets parentheses.
    let mut groups: Vec<(Option<&str>, String, usize)> = Vec::new();
    for (gi, group) in short.split(',').enumerate() {
        let mut words = group.split_whitespace().peekable();
        let joiner = if gi == 0 {
            None
        } else {
            Some(operator(words.next()?)?)
        };
        let mut expr = String::new();
        let mut terms = 0;
        loop {
            let name = words.next()?;
            if operator(name).is_some() {
                return None;
            }
            let mut term = lookup(LICENSES, name)
                .map(str::to_string)
                .unwrap_or_else(|| license_ref(name));
            if words.peek().is_some_and(|w| w.eq_ignore_ascii_case("with")) {
                words.next();
                let mut exception = Vec::new();
                for w in words.by_ref() {
                    if w.eq_ignore_ascii_case("exception") {
                        break;
                    }
                    exception.push(w);
                }
                let exception = exception.join("-");
                if exception.is_empty() {
                    return None;
                }
                term = match (
                    term.starts_with("LicenseRef-"),
                    lookup(EXCEPTIONS, &exception),
                ) {
                    (false, Some(id)) if !term.contains(' ') => format!("{term} WITH {id}"),
                    _ => license_ref(&format!("{name}-with-{exception}-exception")),
                };
            }
            expr.push_str(&term);
            terms += 1;
            match words.next() {
                None => break,
                Some(op) => {
                    expr.push(' ');
                    expr.push_str(operator(op)?);
                    expr.push(' ');
                }
            }
        }
        groups.push((joiner, expr, terms));
    }
    let many = groups.len() > 1;
    let mut out = String::new();
    for (joiner, expr, terms) in groups {
        if let Some(op) = joiner {
            out.push(' ');
            out.push_str(op);
            out.push(' ');
        }
        if many && terms > 1 {
            out.push_str(&format!("({expr})"));
        } else {
            out.push_str(&expr);
        }
    }
    Some(out)
}

fn operator(word: &str) -> Option<&'static str> {
    if word.eq_ignore_ascii_case("and") {
        Some("AND")
    } else if word.eq_ignore_ascii_case("or") {
        Some("OR")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_map_to_spdx() {
        for (dep5, spdx) in [
            ("GPL-2+", "GPL-2.0-or-later"),
            ("LGPL-2.1+", "LGPL-2.1-or-later"),
            ("BSD-3-clause", "BSD-3-Clause"),
            ("Expat", "MIT"),
            ("Apache-2.0", "Apache-2.0"),
            ("public-domain", "LicenseRef-public-domain"),
            (
                "GPL-2+ or Artistic",
                "GPL-2.0-or-later OR Artistic-1.0-Perl",
            ),
            (
                "GPL-2+ or Artistic-2.0, and BSD-3-clause",
                "(GPL-2.0-or-later OR Artistic-2.0) AND BSD-3-Clause",
            ),
            (
                "GPL-3+ with Bison exception",
                "GPL-3.0-or-later WITH Bison-exception-2.2",
            ),
            (
                "GPL-2+ with OpenSSL exception",
                "LicenseRef-GPL-2-plus-with-OpenSSL-exception",
            ),
            ("GPL-2+ or", "LicenseRef-GPL-2-plus-or"),
            ("()", "LicenseRef-unnamed"),
        ] {
            assert_eq!(spdx_expression(dep5), spdx, "{dep5}");
        }
    }

    #[test]
    fn rfc3339_of_epoch() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn ids_and_purls_are_clean() {
        assert_eq!(
            spdx_id("Package-deb-libc6-2.36-9+deb12u4-amd64"),
            "SPDXRef-Package-deb-libc6-2.36-9-deb12u4-amd64"
        );
        assert_eq!(purl_encode("1:2.3+dfsg~1"), "1%3A2.3%2Bdfsg~1");
    }
}
