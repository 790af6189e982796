//! Comparing releases: `plinth verify` (a release against its rebuild) and `plinth diff` (two
//! releases). Both open release directories ([`release`]), compare artifact by artifact, and
//! where an archive differs go down to its partitions and members, and from a differing
//! filesystem to the paths that differ ([`contents`]).
//!
//! Releases are hostile input: filesystems are listed in user space (debugfs, mtools; no
//! mount, no root), and a PE image (a UKI) is read by a bounded read of its headers
//! ([`PE_HEADER_MAX`]) and section hashes streamed from the file with seeks, never whole. An
//! image that cannot be read so is an error naming it, not a note.

pub mod contents;
pub mod release;

use crate::pipeline::manifest::PartitionImage;
use contents::{Change, Listing};
use release::Release;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why two releases could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Release(#[from] release::ReleaseDirError),
    #[error(transparent)]
    Contents(#[from] contents::ContentsError),
    #[error(transparent)]
    Artifact(#[from] crate::pipeline::artifacts::ArtifactError),
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}: not a PE image plinth can compare: {problem}", path.display())]
    Pe { path: PathBuf, problem: String },
}

impl CompareError {
    /// Whether the error says a release is malformed or crafted (bad input, exit 2), rather
    /// than that something could not be read here.
    pub fn is_crafted(&self) -> bool {
        match self {
            CompareError::Release(r) => r.is_crafted(),
            CompareError::Artifact(a) => a.is_crafted(),
            CompareError::Contents(c) => c.is_crafted(),
            CompareError::Pe { .. } => true,
            CompareError::Io { .. } => false,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CompareError + '_ {
    move |e| CompareError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// One side's view of a file, member or partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Digest {
    pub sha256: plinth_release::Sha256,
    pub size: u64,
}

/// A release file on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactDiff {
    pub name: String,
    pub before: Option<Digest>,
    pub after: Option<Digest>,
    /// For archives: the partitions (disk) or members (update) that differ.
    pub parts: Vec<PartDiff>,
    /// For text files (SBOM, manifest, command lines): the first lines that differ.
    pub lines: Vec<String>,
}

impl ArtifactDiff {
    pub fn same(&self) -> bool {
        self.before.is_some() && self.before == self.after
    }
}

/// A partition of the disk image, or a member of the update archive, that differs.
#[derive(Debug, Clone, Serialize)]
pub struct PartDiff {
    /// `partition` or `member`.
    pub kind: &'static str,
    pub name: String,
    /// `ext4`, `vfat`, `pe` (a UKI), `raw` (verity tree, empty slot) or `absent`.
    pub format: &'static str,
    pub before: Option<Digest>,
    pub after: Option<Digest>,
    /// Paths that differ inside a filesystem (all of them; renderers cut).
    pub changes: Vec<Change>,
    /// PE sections that differ (UKIs).
    pub sections: Vec<String>,
    /// Why no paths are listed, when none are.
    pub note: Option<String>,
}

/// The comparison of two releases.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub artifacts: Vec<ArtifactDiff>,
}

impl Comparison {
    pub fn differing(&self) -> impl Iterator<Item = &ArtifactDiff> {
        self.artifacts.iter().filter(|a| !a.same())
    }
}

/// Compare every release file of `a` and `b`; archives that differ are unpacked below
/// `scratch` and compared down to files.
pub fn compare(a: &Release, b: &Release, scratch: &Path) -> Result<Comparison, CompareError> {
    let mut names: Vec<&str> = a
        .manifest
        .outputs
        .iter()
        .chain(&b.manifest.outputs)
        .map(|o| o.name.as_str())
        .collect();
    names.push(crate::pipeline::manifest::FILE_NAME);
    names.sort();
    names.dedup();
    let mut listings = Listings::default();
    let mut artifacts = Vec::new();
    for name in names {
        let (before, after) = (a.digest(name)?, b.digest(name)?);
        let mut diff = ArtifactDiff {
            name: name.to_string(),
            before,
            after,
            parts: Vec::new(),
            lines: Vec::new(),
        };
        if !diff.same() && diff.before.is_some() && diff.after.is_some() {
            if name == crate::pipeline::release::DISK_ARCHIVE {
                diff.parts = disk_parts(a, b, scratch, &mut listings)?;
            } else if name == crate::pipeline::release::UPDATE_ARCHIVE {
                diff.parts = update_members(a, b, scratch, &mut listings)?;
            } else if name.ends_with(".json") || name.ends_with(".txt") {
                diff.lines = text_lines(&a.dir.join(name), &b.dir.join(name))?;
            }
        }
        artifacts.push(diff);
    }
    Ok(Comparison { artifacts })
}

/// Filesystem listings by image sha256: the same root filesystem appears as a partition and
/// as an update member, and is listed once. A filesystem that cannot be listed (malformed, a
/// directory loop, over a bound) fails the comparison, naming it.
#[derive(Default)]
struct Listings(BTreeMap<String, Listing>);

impl Listings {
    fn get(
        &mut self,
        image: &Path,
        sha256: &str,
        format: &str,
    ) -> Result<Listing, contents::ContentsError> {
        if let Some(listing) = self.0.get(sha256) {
            return Ok(listing.clone());
        }
        let listing = match format {
            "ext4" => contents::list_ext4(image)?,
            _ => contents::list_fat(image)?,
        };
        self.0.insert(sha256.to_string(), listing.clone());
        Ok(listing)
    }
}

/// The filesystem in an image, from its magic numbers.
fn format_of(image: &Path) -> Result<&'static str, CompareError> {
    use std::io::Read;
    let mut head = vec![0u8; 2048];
    let mut f = std::fs::File::open(image).map_err(io(image))?;
    let n = f.read(&mut head).map_err(io(image))?;
    head.truncate(n);
    let ext_magic = head.get(1080..1082) == Some(&[0x53, 0xef][..]);
    let fat = head.get(510..512) == Some(&[0x55, 0xaa][..])
        && (head.get(54..57) == Some(b"FAT") || head.get(82..85) == Some(b"FAT"));
    let pe = head.get(..2) == Some(b"MZ");
    Ok(if ext_magic {
        "ext4"
    } else if fat {
        "vfat"
    } else if pe {
        "pe"
    } else {
        "raw"
    })
}

/// Compare two images of one partition or member; both exist.
fn compare_images(
    kind: &'static str,
    name: &str,
    (a, b): (&Path, &Path),
    (before, after): (Digest, Digest),
    listings: &mut Listings,
) -> Result<PartDiff, CompareError> {
    let (fa, fb) = (format_of(a)?, format_of(b)?);
    let mut diff = PartDiff {
        kind,
        name: name.to_string(),
        format: if fa == fb { fa } else { "raw" },
        before: Some(before.clone()),
        after: Some(after.clone()),
        changes: Vec::new(),
        sections: Vec::new(),
        note: None,
    };
    match diff.format {
        "ext4" | "vfat" => {
            let la = listings.get(a, &before.sha256.to_hex(), diff.format)?;
            let lb = listings.get(b, &after.sha256.to_hex(), diff.format)?;
            diff.changes = contents::changes(&la, &lb);
            if diff.changes.is_empty() {
                diff.note = Some(
                    "same files, modes and owners: the filesystem's own metadata differs (times, layout, ids)"
                        .into(),
                );
            }
        }
        "pe" => diff.sections = pe_sections_differing(a, b)?,
        _ => {
            diff.note = Some(if fa != fb {
                format!("not the same kind of content ({fa} and {fb})")
            } else {
                "binary content (e.g. a verity hash tree: it follows its root filesystem)".into()
            })
        }
    }
    Ok(diff)
}

/// The DOS, PE and COFF headers and the section table of a PE image must lie in its first
/// this many bytes (a UKI's end by 4 KiB); only these are read to find the sections.
pub const PE_HEADER_MAX: u64 = 64 << 10;

/// The section table of the PE image at `path`, read by the one PE reader
/// ([`plinth_firmware::pe`]) from a bounded read of its headers: every header in the first
/// [`PE_HEADER_MAX`] bytes, every section's data in the file, and no section zero-filled past
/// its data by more than [`plinth_firmware::pe::MAX_ZERO_FILL`].
fn pe_section_table(path: &Path) -> Result<Vec<plinth_firmware::pe::PeSection>, CompareError> {
    use std::io::Read;
    let bad = |problem: String| CompareError::Pe {
        path: path.to_path_buf(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    let mut head = Vec::new();
    file.take(PE_HEADER_MAX)
        .read_to_end(&mut head)
        .map_err(io(path))?;
    let sections = plinth_firmware::pe::parse_headers(&head, len)
        .map_err(|e| bad(e.to_string()))?
        .sections;
    for s in &sections {
        s.check_zero_fill().map_err(|e| bad(e.to_string()))?;
    }
    Ok(sections)
}

/// Section name → sha256 of the section's `VirtualSize` bytes as a loader maps them (its data,
/// zero-filled past `SizeOfRawData`), streamed from the file with seeks.
fn pe_section_hashes(path: &Path) -> Result<BTreeMap<String, String>, CompareError> {
    use sha2::{Digest as _, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 1 << 16];
    for s in pe_section_table(path)? {
        let mut hasher = Sha256::new();
        let from_file = u64::from(s.virtual_size.min(s.raw_size));
        if from_file > 0 {
            file.seek(SeekFrom::Start(u64::from(s.raw_offset)))
                .map_err(io(path))?;
            let mut left = from_file;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = file.read(&mut buf[..want]).map_err(io(path))?;
                if n == 0 {
                    return Err(CompareError::Pe {
                        path: path.to_path_buf(),
                        problem: format!("section {:?}: the file ends inside its data", s.name),
                    });
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
        }
        let zeros = [0u8; 1 << 12];
        let mut left = u64::from(s.virtual_size) - from_file;
        while left > 0 {
            let n = zeros.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            hasher.update(&zeros[..n]);
            left -= n as u64;
        }
        out.insert(s.name, hex::encode(hasher.finalize()));
    }
    Ok(out)
}

/// Names of the PE sections whose data differ, or that only one side has.
fn pe_sections_differing(a: &Path, b: &Path) -> Result<Vec<String>, CompareError> {
    let (ma, mb) = (pe_section_hashes(a)?, pe_section_hashes(b)?);
    let mut names: Vec<String> = ma
        .keys()
        .chain(mb.keys())
        .filter(|n| ma.get(*n) != mb.get(*n))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        names.push("PE headers (no section differs)".into());
    }
    Ok(names)
}

/// Partitions of the two disk images that differ, with their differing paths.
fn disk_parts(
    a: &Release,
    b: &Release,
    scratch: &Path,
    listings: &mut Listings,
) -> Result<Vec<PartDiff>, CompareError> {
    let disk_a = a.extract_member(
        crate::pipeline::release::DISK_ARCHIVE,
        "disk.img",
        &scratch.join("a"),
    )?;
    let disk_b = b.extract_member(
        crate::pipeline::release::DISK_ARCHIVE,
        "disk.img",
        &scratch.join("b"),
    )?;
    // Every partition the manifests place must lie in its disk image.
    for (r, disk) in [(a, &disk_a), (b, &disk_b)] {
        let len = std::fs::metadata(disk).map_err(io(disk))?.len();
        for p in &r.manifest.partitions {
            if p.offset.checked_add(p.size).is_none_or(|end| end > len) {
                return Err(CompareError::Release(
                    release::ReleaseDirError::Inconsistent {
                        path: r.dir.join(crate::pipeline::release::DISK_ARCHIVE),
                        message: format!(
                            "partition `{}` ({} bytes from offset {}) lies past the end of disk.img ({len} bytes)",
                            p.name, p.size, p.offset
                        ),
                    },
                ));
            }
        }
    }
    let mut names: Vec<&str> = a
        .manifest
        .partitions
        .iter()
        .chain(&b.manifest.partitions)
        .map(|p| p.name.as_str())
        .collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for name in names {
        let pa = a.manifest.partitions.iter().find(|p| p.name == name);
        let pb = b.manifest.partitions.iter().find(|p| p.name == name);
        let (Some(pa), Some(pb)) = (pa, pb) else {
            out.push(PartDiff {
                kind: "partition",
                name: name.to_string(),
                format: "absent",
                before: pa.map(|p| Digest {
                    sha256: p.blocks_sha256,
                    size: p.size,
                }),
                after: pb.map(|p| Digest {
                    sha256: p.blocks_sha256,
                    size: p.size,
                }),
                changes: Vec::new(),
                sections: Vec::new(),
                note: Some(format!(
                    "only in {}",
                    if pa.is_some() {
                        "the first"
                    } else {
                        "the second"
                    }
                )),
            });
            continue;
        };
        // Hash the real spans: the manifests' claims are not evidence.
        let span_digest = |disk: &Path, p: &PartitionImage| -> Result<Digest, CompareError> {
            let sha256 =
                crate::pipeline::blocks::blocks_sha256(disk, p.offset, p.size).map_err(io(disk))?;
            Ok(Digest {
                sha256,
                size: p.size,
            })
        };
        let (da, db) = (span_digest(&disk_a, pa)?, span_digest(&disk_b, pb)?);
        if da != db {
            let img_a = release::copy_span(
                &disk_a,
                pa.offset,
                pa.size,
                &scratch.join(format!("a-{name}.img")),
            )?;
            let img_b = release::copy_span(
                &disk_b,
                pb.offset,
                pb.size,
                &scratch.join(format!("b-{name}.img")),
            )?;
            out.push(compare_images(
                "partition",
                name,
                (&img_a, &img_b),
                (da, db),
                listings,
            )?);
            let _ = std::fs::remove_file(&img_a);
            let _ = std::fs::remove_file(&img_b);
        }
    }
    let _ = std::fs::remove_file(&disk_a);
    let _ = std::fs::remove_file(&disk_b);
    Ok(out)
}

/// Members of the two update archives that differ.
fn update_members(
    a: &Release,
    b: &Release,
    scratch: &Path,
    listings: &mut Listings,
) -> Result<Vec<PartDiff>, CompareError> {
    let name = crate::pipeline::release::UPDATE_ARCHIVE;
    let (da, db) = (scratch.join("update-a"), scratch.join("update-b"));
    let mut members = a.extract_all(name, &da)?;
    members.extend(b.extract_all(name, &db)?);
    members.sort();
    members.dedup();
    let mut out = Vec::new();
    for m in members {
        let (pa, pb) = (da.join(&m), db.join(&m));
        let digest = |p: &Path| -> Result<Option<Digest>, CompareError> {
            if !p.is_file() {
                return Ok(None);
            }
            let (sha256, size) = plinth_release::Sha256::of_file(p).map_err(io(p))?;
            Ok(Some(Digest { sha256, size }))
        };
        match (digest(&pa)?, digest(&pb)?) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                out.push(compare_images("member", &m, (&pa, &pb), (x, y), listings)?)
            }
            (x, y) => out.push(PartDiff {
                kind: "member",
                name: m.clone(),
                format: "absent",
                note: Some(format!(
                    "only in {}",
                    if x.is_some() {
                        "the first"
                    } else {
                        "the second"
                    }
                )),
                before: x,
                after: y,
                changes: Vec::new(),
                sections: Vec::new(),
            }),
        }
    }
    let _ = std::fs::remove_dir_all(&da);
    let _ = std::fs::remove_dir_all(&db);
    Ok(out)
}

/// At most this many lines describe a differing text file.
const TEXT_LINES: usize = 20;

/// What differs between two text files, at most [`TEXT_LINES`] lines: JSON files field by
/// field (`inputs.source_dirty: absent → false`), other text line by line.
fn text_lines(a: &Path, b: &Path) -> Result<Vec<String>, CompareError> {
    let text = |p: &Path| -> Result<String, CompareError> {
        let bytes =
            crate::pipeline::artifacts::read_untrusted(p, crate::pipeline::artifacts::MAX_TEXT)
                .map_err(io(p))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    let (ta, tb) = (text(a)?, text(b)?);
    let json = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
    let (fa, fb) = match (json(&ta), json(&tb)) {
        (Some(x), Some(y)) => {
            let (mut fa, mut fb) = (BTreeMap::new(), BTreeMap::new());
            flatten(&x, String::new(), &mut fa);
            flatten(&y, String::new(), &mut fb);
            (fa, fb)
        }
        _ => {
            let lines = |t: &str| -> BTreeMap<String, String> {
                t.lines()
                    .enumerate()
                    .map(|(i, l)| (format!("line {:>5}", i + 1), l.to_string()))
                    .collect()
            };
            (lines(&ta), lines(&tb))
        }
    };
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| fa.get(*k) != fb.get(*k))
        .collect();
    let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "absent".into());
    let mut out: Vec<String> = differing
        .iter()
        .take(TEXT_LINES)
        .map(|k| format!("{}: {} → {}", k.trim(), show(fa.get(*k)), show(fb.get(*k))))
        .collect();
    if differing.len() > TEXT_LINES {
        out.push(format!("… and {} more", differing.len() - TEXT_LINES));
    }
    Ok(out)
}

/// JSON as `path = value` pairs; array elements with a `name` (or `SPDXID`) are keyed by it,
/// so that an added element does not shift every later one.
fn flatten(v: &serde_json::Value, path: String, out: &mut BTreeMap<String, String>) {
    use serde_json::Value;
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let key = ["name", "SPDXID"]
                    .iter()
                    .find_map(|f| item.get(*f).and_then(Value::as_str))
                    .map(|n| format!("[{n}]"))
                    .unwrap_or_else(|| format!("[{i}]"));
                flatten(item, format!("{path}{key}"), out);
            }
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

/// Text lines for one differing artifact: its hashes, then its parts with at most `limit`
/// paths each (0: all), then a count of the rest. `labels` name the two sides.
pub fn render_artifact(d: &ArtifactDiff, labels: (&str, &str), limit: usize) -> Vec<String> {
    let short = |x: &Option<Digest>| match x {
        Some(d) => format!("{} ({} B)", &d.sha256.to_hex()[..16], d.size),
        None => "absent".to_string(),
    };
    let mut out = vec![format!(
        "{}: {} {} ≠ {} {}",
        d.name,
        labels.0,
        short(&d.before),
        labels.1,
        short(&d.after)
    )];
    for p in &d.parts {
        let mut head = format!("  {} {} ({})", p.kind, p.name, p.format);
        if !p.changes.is_empty() {
            let n = p.changes.len();
            head.push_str(&if n == 1 {
                ": 1 path differs".to_string()
            } else {
                format!(": {n} paths differ")
            });
        } else if !p.sections.is_empty() {
            head.push_str(&format!(": sections {} differ", p.sections.join(", ")));
        } else if let Some(note) = &p.note {
            head.push_str(&format!(": {note}"));
        }
        out.push(head);
        let shown = if limit == 0 {
            p.changes.len()
        } else {
            limit.min(p.changes.len())
        };
        for c in &p.changes[..shown] {
            out.push(format!("    {}", c.line()));
        }
        if shown < p.changes.len() {
            out.push(format!("    … and {} more", p.changes.len() - shown));
        }
    }
    for l in &d.lines {
        out.push(format!("  {l}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_differences_are_named_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(
            &a,
            r#"{"inputs":{"epoch":1},"packages":[{"name":"zsh","v":"1"},{"name":"bash","v":"5"}]}"#,
        )
        .unwrap();
        std::fs::write(
            &b,
            r#"{"inputs":{"epoch":1,"dirty":false},"packages":[{"name":"apt","v":"2"},{"name":"zsh","v":"1"},{"name":"bash","v":"6"}]}"#,
        )
        .unwrap();
        assert_eq!(
            text_lines(&a, &b).unwrap(),
            vec![
                "inputs.dirty: absent → false",
                "packages[apt].name: absent → \"apt\"",
                "packages[apt].v: absent → \"2\"",
                "packages[bash].v: \"5\" → \"6\"",
            ]
        );
        // Plain text: by line number.
        let (c, d) = (dir.path().join("c.txt"), dir.path().join("d.txt"));
        std::fs::write(&c, "one\ntwo\n").unwrap();
        std::fs::write(&d, "one\nTWO\nthree\n").unwrap();
        assert_eq!(
            text_lines(&c, &d).unwrap(),
            vec!["line     2: two → TWO", "line     3: absent → three"]
        );
    }

    use plinth_firmware::pe::testing::image as pe;

    #[test]
    fn pe_sections_stream_as_the_loader_maps_them() {
        use crate::pipeline::uki::read_sections;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.efi");
        // Exact, shorter than its raw data, zero-filled past it, empty.
        let image = pe(
            &[
                (".linux", 0x300, 0x400, 0x400),
                (".osrel", 0x10, 0x800, 0x200),
                (".bss", 0x3000, 0xa00, 0x200),
                (".empty", 0, 0, 0),
            ],
            0xc00,
        );
        std::fs::write(&path, &image).unwrap();
        let want: BTreeMap<String, String> = read_sections(&image)
            .unwrap()
            .iter()
            .map(|s| {
                let data = s.data(&image).unwrap();
                (s.name.clone(), crate::packages::cache::sha256_bytes(&data))
            })
            .collect();
        assert_eq!(pe_section_hashes(&path).unwrap(), want);
        assert_eq!(
            pe_sections_differing(&path, &path).unwrap(),
            ["PE headers (no section differs)"]
        );

        // Absurd claims are named errors, nothing read or allocated for them.
        for (sections, len, problem) in [
            (
                vec![(".linux", 0xffff_fe00, 0x400, 0xffff_fe00)],
                0x800,
                "lies outside the file",
            ),
            (
                vec![(".linux", 0xffff_0000, 0x400, 0x200)],
                0x800,
                "by more than",
            ),
            (vec![], 0x30, "DOS header ends at byte 64"),
        ] {
            std::fs::write(&path, &pe(&sections, len.max(0x400))[..len]).unwrap();
            let err = pe_section_hashes(&path).unwrap_err().to_string();
            assert!(err.contains(problem), "{err}");
        }
        let mut many = pe(&[], 0x800);
        many[0x46..0x48].copy_from_slice(&97u16.to_le_bytes());
        std::fs::write(&path, &many).unwrap();
        let err = pe_section_hashes(&path).unwrap_err().to_string();
        assert!(err.contains("97 sections"), "{err}");
        let mut far = pe(&[], 0x800);
        far[0x3c..0x40].copy_from_slice(&0x2_0000u32.to_le_bytes());
        far.resize(0x3_0000, 0);
        std::fs::write(&path, &far).unwrap();
        let err = pe_section_hashes(&path).unwrap_err().to_string();
        assert!(err.contains("beyond the first 65536 bytes"), "{err}");
    }

    #[test]
    fn formats_are_told_by_magic() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("x");
        let mut head = vec![0u8; 2048];
        std::fs::write(&img, &head).unwrap();
        assert_eq!(format_of(&img).unwrap(), "raw");
        head[1080] = 0x53;
        head[1081] = 0xef;
        std::fs::write(&img, &head).unwrap();
        assert_eq!(format_of(&img).unwrap(), "ext4");
        let mut fat = vec![0u8; 2048];
        fat[510] = 0x55;
        fat[511] = 0xaa;
        fat[82..85].copy_from_slice(b"FAT");
        std::fs::write(&img, &fat).unwrap();
        assert_eq!(format_of(&img).unwrap(), "vfat");
        std::fs::write(&img, b"MZ\x90\x00").unwrap();
        assert_eq!(format_of(&img).unwrap(), "pe");
    }
}
