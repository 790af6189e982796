//! `manifest.json`: what one release of one OS profile was built from and what came out, for
//! anyone comparing two builds or two releases (a voter, `plinth verify`, `plinth diff`).
//!
//! Inputs (source commit, SOURCE_DATE_EPOCH, lock and spec digests, builder version), the
//! artifacts with sha256 and size, every partition of the disk image with the block digest of
//! its span ([`super::blocks`]), and the boot measurements of each slot (verity root hash, UKI sha256, predicted
//! PCR 11). The file is pretty JSON with a trailing newline; field order is fixed by the types
//! and every list is sorted ([`Manifest::to_bytes`]), so equal manifests are equal bytes and a
//! plain `diff` of two manifests reads well. A change of meaning bumps [`FORMAT_VERSION`];
//! readers refuse versions they do not know and fields they do not know.
//!
//! Every name and digest is typed ([`crate::names`], [`crate::digest`]): a manifest that
//! parses holds only legal names and hex, and an error names the field (`outputs[1].sha256`).
//! What types cannot say (lists sorted, each entry once) is [`Manifest::parse`]'s check.

use crate::archive::{Bound, Bounds, DISK_ARCHIVE, MEMBER_SLACK, UPDATE_ARCHIVE};
use crate::digest::{CommitId, Sha256};
use crate::names::{uki_stem, FileName, Name, Os, Role, Version};
use crate::slot::Slot;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The manifest format this plinth reads and writes.
/// Version 2: partitions carry `blocks_sha256` (sha256 over their 1 MiB blocks' sha256s) in
/// place of version 1's plain `sha256` of the span. Version 3: slots carry `pcr4` and `pcr7`.
pub const FORMAT_VERSION: u32 = 4;
/// The manifest's file name in a release directory.
pub const FILE_NAME: &str = "manifest.json";
/// The largest manifest read: a real one is a few KiB (a GuestOS with every SNP launch
/// digest some tens of KiB).
pub const MAX_SIZE: u64 = 4 << 20;

/// The GPT's backup area at the end of a disk: partition array (32 sectors of 512 bytes) and
/// header (1), as the builder leaves them.
pub const GPT_BACKUP: u64 = 33 * 512;
/// Space a disk image may have after its last partition and backup GPT. The manifest does
/// not record the disk's size (os.yaml's `disk.size`), only its partitions, and a disk may
/// end well after its last partition (GuestOS's 64 GiB disk ends 1.6 GiB after it). That
/// space holds nothing (holes, which cost no space unpacked): the disk image's stored data
/// is bounded by the partitions' end plus the backup GPT and [`MEMBER_SLACK`].
pub const UNPARTITIONED_LIMIT: u64 = 64 << 30;
/// Where a disk's first partition may start (1 MiB alignment): the end of a disk without
/// partitions.
const FIRST_PARTITION: u64 = 1 << 20;

/// One release of one OS profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// `guest-os`, `host-os` or `setup-os`.
    pub os: Os,
    pub version: Version,
    /// `prod` or `test`.
    pub profile: Name,
    pub inputs: Inputs,
    /// The release files (archives, SBOM), sorted by name.
    pub outputs: Vec<OutputFile>,
    /// The disk image's partitions, in GPT order.
    pub partitions: Vec<PartitionImage>,
    pub measurements: Measurements,
}

/// Everything the build depends on; two builds with equal inputs must give equal outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inputs {
    /// The git commit of the plinth tree (40 hex digits).
    pub source_commit: CommitId,
    /// The tree had uncommitted changes: a rebuild from `source_commit` is not expected to
    /// match. Absent in older manifests (false).
    #[serde(default)]
    pub source_dirty: bool,
    /// SOURCE_DATE_EPOCH: every time in every image.
    pub source_date_epoch: i64,
    /// sha256 of the OS's `packages.lock`.
    pub lock_sha256: Sha256,
    /// sha256 of the OS's `os.yaml`.
    pub os_spec_sha256: Sha256,
    /// The plinth that built it (its version; the commit says the rest).
    pub builder_version: String,
    /// The public half of the release key that signed the UKIs' PCR policy (PEM), for an OS
    /// with sealed state built with one; each slot records its signature. A rebuild embeds
    /// both, once it checked them against its own predictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_public_key: Option<String>,
    /// The releases carried on the data partition (SetupOS: the HostOS and GuestOS it
    /// installs), by their manifests' sha256; empty for an OS that carries none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carried: Vec<CarriedInput>,
}

/// A release carried on another's data partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriedInput {
    pub os: Os,
    pub version: Version,
    /// sha256 of its manifest.json.
    pub manifest_sha256: Sha256,
}

/// A release file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    pub name: FileName,
    pub sha256: Sha256,
    pub size: u64,
}

/// A partition of the disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionImage {
    /// GPT partition number, from 1.
    pub number: u32,
    /// The os.yaml name, e.g. `root-a`.
    pub name: Name,
    /// The os.yaml role: `esp`, `root`, `verity`, `config` or `data`.
    pub role: Role,
    /// `A` or `B` for update slots, `null` otherwise.
    pub slot: Option<Slot>,
    /// Byte offset in the disk image.
    pub offset: u64,
    /// Bytes the partition spans.
    pub size: u64,
    /// The block digest of the partition's whole span in the disk image (`size` bytes from
    /// `offset`): sha256 over the sha256 of each 1 MiB block.
    pub blocks_sha256: Sha256,
}

/// What the boot chain measures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    /// One per boot slot, sorted by slot; a single entry with slot `null` for an OS without
    /// update slots.
    pub slots: Vec<SlotMeasurements>,
    /// For an OS launched as an SEV-SNP guest: the launch digest of every slot, vCPU count
    /// and vCPU type (measurements.json has the firmware and policy beside them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snp: Vec<crate::measurements::LaunchDigest>,
}

/// The measurements of one boot slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotMeasurements {
    /// `A`, `B` or `null`.
    pub slot: Option<Slot>,
    /// The dm-verity root hash of the slot's root filesystem (hex), as on its command line.
    pub verity_root_hash: Sha256,
    /// sha256 of the slot's UKI.
    pub uki_sha256: Sha256,
    /// The predicted PCR 4 (SHA-256 bank, hex) once the system is up (measurements.json has
    /// its events); absent for an OS without an ESP.
    pub pcr4: Option<Sha256>,
    /// The predicted PCR 7, likewise.
    pub pcr7: Option<Sha256>,
    /// The predicted PCR 11 (SHA-256 bank, hex) as systemd-stub leaves it, before the boot
    /// phases (measurements.json has the value once the system is up).
    pub pcr11: Sha256,
    /// The UKI's `.pcrsig`: the release key's signature of the PCR 11 and 12 values this
    /// slot leaves in the initrd (`tpm2-pcr-signature.json`), when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr_signature: Option<String>,
}

/// A manifest that cannot be read, or that is not one.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{}: line {line}, column {column}: not a valid manifest: {message}\n  hint: manifests are written by plinth; compare with a fresh `plinth build`, do not edit by hand", path.display())]
    Malformed {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: format_version is {found}, this plinth reads version {FORMAT_VERSION}\n  hint: use the plinth of the release's source commit", path.display())]
    Version { path: PathBuf, found: u32 },
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        /// The field's path, e.g. `outputs[1].sha256`.
        field: String,
        message: String,
    },
}

impl Manifest {
    /// Read and check a manifest file.
    /// Releases are downloaded: the file is opened as [`crate::untrusted::open_untrusted`]
    /// says (a regular file, not through a link) and refused past [`MAX_SIZE`] bytes.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let io = |source| ManifestError::Io {
            path: path.to_path_buf(),
            action: "read",
            source,
        };
        let bytes = crate::untrusted::read_untrusted(path, MAX_SIZE).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not UTF-8 text ({e})"),
            ))
        })?;
        Self::parse(&text, path)
    }

    /// Parse and check manifest text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        // The version first, so that a newer format is refused as such, not as unknown fields.
        #[derive(Deserialize)]
        struct Format {
            format_version: u32,
        }
        if let Ok(v) = serde_json::from_str::<Format>(text) {
            if v.format_version != FORMAT_VERSION {
                return Err(ManifestError::Version {
                    path: path.to_path_buf(),
                    found: v.format_version,
                });
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let malformed = |e: serde_json::Error| ManifestError::Malformed {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        };
        let manifest: Manifest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let field = e.path().to_string();
            let e = e.into_inner();
            if e.is_data() && field != "." {
                // A field's value broke its type's rule: name the field.
                let at = format!(" at line {} column {}", e.line(), e.column());
                let message = e.to_string();
                ManifestError::Invalid {
                    path: path.to_path_buf(),
                    field,
                    message: format!(
                        "{}\n  {NAMES_HINT}",
                        message.strip_suffix(&at).unwrap_or(&message)
                    ),
                }
            } else {
                malformed(e)
            }
        })?;
        de.end().map_err(malformed)?;
        manifest
            .check()
            .map_err(|(field, message)| ManifestError::Invalid {
                path: path.to_path_buf(),
                field,
                message,
            })?;
        Ok(manifest)
    }

    /// The file's bytes: pretty JSON, lists sorted, a trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut m = self.clone();
        m.outputs.sort();
        m.partitions.sort_by_key(|p| p.number);
        m.measurements.slots.sort_by_key(|s| s.slot);
        let mut out = serde_json::to_vec_pretty(&m).expect("a manifest always serializes");
        out.push(b'\n');
        out
    }

    /// Write [`Manifest::to_bytes`] to `path`.
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        std::fs::write(path, self.to_bytes()).map_err(|source| ManifestError::Io {
            path: path.to_path_buf(),
            action: "write",
            source,
        })
    }

    /// The first list that is out of order or names an entry twice, as (field path, what
    /// is wrong): what the types cannot say.
    fn check(&self) -> Result<(), (String, String)> {
        for (i, o) in self.outputs.iter().enumerate().skip(1) {
            if self.outputs[i - 1].name >= o.name {
                return Err((
                    format!("outputs[{i}].name"),
                    format!("`{}`: outputs must be sorted by name, each once", o.name),
                ));
            }
        }
        for (i, p) in self.partitions.iter().enumerate().skip(1) {
            if self.partitions[i - 1].number >= p.number {
                return Err((
                    format!("partitions[{i}].number"),
                    format!("{}: partitions must be in GPT order", p.number),
                ));
            }
        }
        for (i, s) in self.measurements.slots.iter().enumerate().skip(1) {
            if self.measurements.slots[i - 1].slot >= s.slot {
                return Err((
                    format!("measurements.slots[{i}].slot"),
                    "slots must be sorted, each once".to_string(),
                ));
            }
        }
        Ok(())
    }

    /// The slot measurements of `slot`.
    pub fn slot(&self, slot: Option<Slot>) -> Option<&SlotMeasurements> {
        self.measurements.slots.iter().find(|s| s.slot == slot)
    }

    /// The output file named `name`.
    pub fn output(&self, name: &str) -> Option<&OutputFile> {
        self.outputs.iter().find(|o| o.name == name)
    }

    /// Where the disk's last partition ends, plus the backup GPT: the least the disk image
    /// holds (saturating: a crafted manifest's offsets may overflow).
    pub fn disk_end(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.offset.saturating_add(p.size))
            .max()
            .unwrap_or(FIRST_PARTITION)
            .saturating_add(GPT_BACKUP)
    }

    /// The largest partition of `role` (slots A and B are alike): (its name, size).
    fn largest_partition(&self, role: Role) -> Option<(&str, u64)> {
        self.partitions
            .iter()
            .filter(|p| p.role == role)
            .max_by_key(|p| p.size)
            .map(|p| (p.name.as_str(), p.size))
    }

    /// What the members of the release's archive `name` may declare, from this manifest: the
    /// disk archive's `disk.img` no more data than [`Manifest::disk_end`] plus
    /// [`MEMBER_SLACK`] (and a real size of at most that plus [`UNPARTITIONED_LIMIT`]); the
    /// update archive's `root.img` and `verity.img` the size of their partitions, each slot's
    /// UKI the ESP's, plus the slack. Any other member, or any member of another archive, is
    /// refused.
    pub fn archive_bounds(&self, name: &str) -> Bounds {
        let slack = MEMBER_SLACK;
        let plus = |size: u64, what: String| {
            Bound::new(
                size.saturating_add(slack),
                format!("{what} plus {slack} bytes of slack, from manifest.json"),
            )
        };
        let mut bounds = Bounds::default();
        if name == DISK_ARCHIVE {
            let end = self.disk_end();
            bounds = bounds.member(
                "disk.img",
                Bound {
                    size: end.saturating_add(UNPARTITIONED_LIMIT),
                    data: end.saturating_add(slack),
                    why: format!(
                        "the disk's partitions and backup GPT end at byte {end}; its data may have {slack} bytes of slack, its size {UNPARTITIONED_LIMIT} bytes of unpartitioned space (from manifest.json)"
                    ),
                },
            );
        } else if name == UPDATE_ARCHIVE {
            for (member, role) in [("root.img", Role::Root), ("verity.img", Role::Verity)] {
                if let Some((part, size)) = self.largest_partition(role) {
                    let why = format!("the {role} partition `{part}`'s {size} bytes");
                    bounds = bounds.member(member, plus(size, why));
                }
            }
            let esp = self.largest_partition(Role::Esp).map(|(part, size)| {
                plus(
                    size,
                    format!("the ESP `{part}`'s {size} bytes (a UKI must fit on it)"),
                )
            });
            if let Some(esp) = esp {
                for s in &self.measurements.slots {
                    bounds = bounds.member(self.uki_member(s.slot), esp.clone());
                }
            }
        }
        bounds
    }

    /// The update archive's member holding the UKI of `slot`: `<os>-a.efi`, or `<os>.efi`
    /// without slots.
    pub fn uki_member(&self, slot: Option<Slot>) -> String {
        format!("{}.efi", uki_stem(self.os.as_str(), slot))
    }
}

/// What a name or digest error in a manifest means for its reader.
const NAMES_HINT: &str = "hint: a release's names and digests come from `plinth build`; this manifest was crafted or damaged: do not use the release";

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(partitions: &[(&str, Role, Option<Slot>, u64, u64)]) -> Manifest {
        let h = |c: char| c.to_string().repeat(64).parse::<Sha256>().unwrap();
        Manifest {
            format_version: FORMAT_VERSION,
            os: Os::HostOs,
            version: "1.0.0".parse().unwrap(),
            profile: "test".parse().unwrap(),
            inputs: Inputs {
                source_commit: "c".repeat(40).parse().unwrap(),
                source_dirty: false,
                source_date_epoch: 0,
                lock_sha256: h('1'),
                os_spec_sha256: h('2'),
                builder_version: "0.1.0".into(),
                pcr_public_key: None,
                carried: Vec::new(),
            },
            outputs: Vec::new(),
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(i, &(name, role, slot, offset, size))| PartitionImage {
                    number: i as u32 + 1,
                    name: name.parse().unwrap(),
                    role,
                    slot,
                    offset,
                    size,
                    blocks_sha256: h('3'),
                })
                .collect(),
            measurements: Measurements {
                slots: [Slot::A, Slot::B]
                    .into_iter()
                    .map(|s| SlotMeasurements {
                        slot: Some(s),
                        verity_root_hash: h('4'),
                        uki_sha256: h('5'),
                        pcr4: None,
                        pcr7: None,
                        pcr11: h('6'),
                        pcr_signature: None,
                    })
                    .collect(),
                snp: Vec::new(),
            },
        }
    }

    #[test]
    fn archive_bounds_follow_the_partitions() {
        const MIB: u64 = 1 << 20;
        let m = manifest(&[
            ("esp-a", Role::Esp, Some(Slot::A), MIB, 100 * MIB),
            ("root-a", Role::Root, Some(Slot::A), 101 * MIB, 500 * MIB),
            ("root-b", Role::Root, Some(Slot::B), 601 * MIB, 600 * MIB),
            ("verity-a", Role::Verity, Some(Slot::A), 1201 * MIB, 8 * MIB),
        ]);
        let end = 1209 * MIB + GPT_BACKUP;
        assert_eq!(m.disk_end(), end);
        let disk = m.archive_bounds(DISK_ARCHIVE);
        let img = disk.get("disk.img").unwrap();
        assert_eq!(img.data, end + MEMBER_SLACK);
        assert_eq!(img.size, end + UNPARTITIONED_LIMIT);
        assert!(disk.get("other").is_none());
        let update = m.archive_bounds(UPDATE_ARCHIVE);
        assert_eq!(
            update.get("root.img").unwrap().size,
            600 * MIB + MEMBER_SLACK
        );
        assert_eq!(
            update.get("verity.img").unwrap().size,
            8 * MIB + MEMBER_SLACK
        );
        for slot in [Slot::A, Slot::B] {
            let uki = m.uki_member(Some(slot));
            assert_eq!(update.get(&uki).unwrap().size, 100 * MIB + MEMBER_SLACK);
        }
        assert!(update.get("disk.img").is_none());
        assert!(m.archive_bounds("sbom.spdx.json").get("disk.img").is_none());
        // A crafted manifest's offsets saturate instead of wrapping.
        let crafted = manifest(&[("data", Role::Data, None, u64::MAX - 1, 10)]);
        assert_eq!(crafted.disk_end(), u64::MAX);
        assert_eq!(manifest(&[]).disk_end(), MIB + GPT_BACKUP);
    }
}
