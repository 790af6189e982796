//! The disk stage: one sparse raw disk image with a GPT and every partition's content in place.
//!
//! Partitions come in os.yaml order; the first starts at 1 MiB and each starts on a 1 MiB
//! boundary. Names are the os.yaml names; type GUIDs follow the UAPI Discoverable Partitions
//! Specification for x86-64 ([`type_guid`]). Nothing is random: the disk GUID and every
//! partition's unique GUID come from [`IdSource`] (`disk-guid`, `<name>/part-guid`), so the same
//! inputs give the same bytes. Each partition may take a source image (an ext4, a FAT, a verity
//! tree), copied block by block; all-zero blocks are skipped, so the output stays sparse and a
//! partition without a source (the empty B slot) reads as zeros.
//!
//! GUIDs: GPT stores the first three fields of a GUID little-endian. The `gpt` crate does that
//! conversion from a `uuid::Uuid`, so a GUID built from our text form (`IdSource::uuid_string`)
//! is what `sgdisk -i N` prints.

use super::ids::IdSource;
use crate::spec::{Filesystem, Profile, Role};
use gpt::disk::LogicalBlockSize;
use gpt::mbr::ProtectiveMBR;
use gpt::partition::Partition as GptPartition;
use gpt::partition_types::Type;
use gpt::GptConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Bytes in one logical sector (LBA).
pub const SECTOR: u64 = 512;
/// Partition alignment: 1 MiB, the first partition starts here too.
pub const ALIGN: u64 = 1 << 20;
/// Entries in the GPT partition array (the usual 128 × 128 bytes = 32 sectors).
pub const MAX_PARTITIONS: usize = 128;
/// Sectors the GPT keeps at the end of the disk: the backup array (32) and backup header (1).
const BACKUP_SECTORS: u64 = 33;
/// Longest partition name GPT can hold, in UTF-16 code units.
const MAX_NAME_UNITS: usize = 36;
/// Granularity of the sparse copy: blocks of this size that are all zero are not written.
const BLOCK: usize = 4096;

/// DPS: EFI System Partition.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// DPS: root partition, x86-64.
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// DPS: root verity partition, x86-64.
pub const TYPE_ROOT_VERITY_X86_64: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";
/// DPS: generic Linux data partition.
pub const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// Linux LVM physical volume.
pub const TYPE_LVM: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

/// The partition type GUID (upper-case text, as the DPS writes it) for a partition's role and
/// filesystem. Raw data partitions hold an LVM physical volume.
pub fn type_guid(role: Role, filesystem: Filesystem) -> &'static str {
    match (role, filesystem) {
        (Role::Esp, _) => TYPE_ESP,
        (Role::Root, _) => TYPE_ROOT_X86_64,
        (Role::Verity, _) => TYPE_ROOT_VERITY_X86_64,
        (Role::Data, Filesystem::Raw) => TYPE_LVM,
        (Role::Config | Role::Data, _) => TYPE_LINUX_DATA,
    }
}

/// One partition to lay out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPartition {
    pub name: String,
    pub role: Role,
    pub filesystem: Filesystem,
    /// Size in bytes (rounded up to whole sectors on disk).
    pub size: u64,
    /// An image to copy into the partition; `None` leaves it zero.
    pub source: Option<PathBuf>,
}

/// The whole disk to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout<'a> {
    /// Where the disk and partition GUIDs come from.
    pub ids: IdSource<'a>,
    /// Size of the image in bytes; a whole number of sectors.
    pub size: u64,
    /// In on-disk order (partition 1 first).
    pub partitions: Vec<DiskPartition>,
}

impl<'a> DiskLayout<'a> {
    /// The layout of a profile (disk size, partitions in os.yaml order), with no sources yet.
    pub fn from_profile(ids: IdSource<'a>, profile: &Profile) -> DiskLayout<'a> {
        DiskLayout {
            ids,
            size: profile.disk_size.bytes(),
            partitions: profile
                .partitions
                .iter()
                .map(|p| DiskPartition {
                    name: p.name.clone(),
                    role: p.role,
                    filesystem: p.filesystem,
                    size: p.size.bytes(),
                    source: None,
                })
                .collect(),
        }
    }

    /// Set the source image of partition `name`.
    pub fn with_source(
        mut self,
        name: &str,
        source: impl Into<PathBuf>,
    ) -> Result<DiskLayout<'a>, DiskError> {
        match self.partitions.iter_mut().find(|p| p.name == name) {
            Some(p) => {
                p.source = Some(source.into());
                Ok(self)
            }
            None => Err(DiskError::UnknownPartition {
                name: name.to_string(),
                known: self.partitions.iter().map(|p| p.name.clone()).collect(),
            }),
        }
    }
}

/// The unique GUID of partition `name` (lower-case text), as [`write_disk`] sets it; the kernel
/// command line names partitions by it (`PARTUUID=`).
pub fn part_guid(ids: &IdSource, name: &str) -> String {
    ids.uuid_string(&format!("{name}/part-guid"))
}

/// One partition as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenPartition {
    /// GPT partition number, from 1.
    pub number: u32,
    pub name: String,
    pub role: Role,
    /// Upper-case, as [`type_guid`] returns it.
    pub type_guid: String,
    /// Lower-case text form, derived from `<name>/part-guid`.
    pub part_guid: String,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    /// Byte offset of the partition in the image.
    pub offset: u64,
    /// Bytes the partition spans on disk.
    pub size: u64,
    /// Bytes copied from the source image, if the partition had one.
    pub source_size: Option<u64>,
}

/// What [`write_disk`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenDisk {
    /// Size of the image in bytes.
    pub size: u64,
    /// Lower-case text form, derived from `disk-guid`.
    pub disk_guid: String,
    pub partitions: Vec<WrittenPartition>,
}

/// Why a disk could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk size {size} bytes: expected a whole number of {SECTOR}-byte sectors, at least {min} bytes\n  hint: give disk.size in MiB or GiB in os.yaml")]
    BadDiskSize { size: u64, min: u64 },
    #[error("{count} partitions: expected at most {MAX_PARTITIONS}\n  hint: a GPT partition array has {MAX_PARTITIONS} entries")]
    TooManyPartitions { count: usize },
    #[error("partition `{name}` has size 0: expected at least one sector\n  hint: give it a size like `16MiB` in os.yaml")]
    EmptyPartition { name: String },
    #[error("partition name `{name}` is {units} UTF-16 units long: GPT holds at most {MAX_NAME_UNITS}\n  hint: use a shorter name in os.yaml")]
    NameTooLong { name: String, units: usize },
    #[error("partition name `{name}` appears twice\n  hint: partition names must be unique")]
    DuplicateName { name: String },
    #[error("partition `{name}` does not fit: it needs bytes {start}..{end}, but the disk ({disk_size} bytes) ends its usable space at byte {usable_end}\n  hint: grow disk.size or shrink partitions in os.yaml (the GPT keeps 1 MiB at the start and {BACKUP_SECTORS} sectors at the end)")]
    DoesNotFit {
        name: String,
        start: u64,
        end: u64,
        usable_end: u64,
        disk_size: u64,
    },
    #[error("no partition `{name}` (the layout has: {})\n  hint: name a partition of the os.yaml", known.join(", "))]
    UnknownPartition { name: String, known: Vec<String> },
    #[error("source {} for partition `{name}` is {source_size} bytes: expected at most the partition's {partition_size} bytes\n  hint: build a smaller image, or grow `{name}` in os.yaml", path.display())]
    SourceTooBig {
        name: String,
        path: PathBuf,
        source_size: u64,
        partition_size: u64,
    },
    #[error("source {} for partition `{name}` is the output image itself\n  hint: write the disk to another path", path.display())]
    SourceIsOutput { name: String, path: PathBuf },
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("{}: cannot write the GPT: {message}", path.display())]
    Gpt { path: PathBuf, message: String },
}

/// Where one partition goes, before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placed {
    first_lba: u64,
    last_lba: u64,
}

/// Place the partitions: first at 1 MiB, each at the next 1 MiB boundary after the previous.
fn place(layout: &DiskLayout) -> Result<Vec<Placed>, DiskError> {
    let min = ALIGN + BACKUP_SECTORS * SECTOR + SECTOR;
    if layout.size % SECTOR != 0 || layout.size < min {
        return Err(DiskError::BadDiskSize {
            size: layout.size,
            min,
        });
    }
    if layout.partitions.len() > MAX_PARTITIONS {
        return Err(DiskError::TooManyPartitions {
            count: layout.partitions.len(),
        });
    }
    let total = layout.size / SECTOR;
    // Last LBA (inclusive) a partition may use: before the backup array and header.
    let last_usable = total - BACKUP_SECTORS - 1;
    let align = ALIGN / SECTOR;
    let mut next = align;
    let mut placed = Vec::with_capacity(layout.partitions.len());
    for (i, p) in layout.partitions.iter().enumerate() {
        if p.size == 0 {
            return Err(DiskError::EmptyPartition {
                name: p.name.clone(),
            });
        }
        let units = p.name.encode_utf16().count();
        if units > MAX_NAME_UNITS {
            return Err(DiskError::NameTooLong {
                name: p.name.clone(),
                units,
            });
        }
        if layout.partitions[..i].iter().any(|q| q.name == p.name) {
            return Err(DiskError::DuplicateName {
                name: p.name.clone(),
            });
        }
        let first = next.div_ceil(align) * align;
        let sectors = p.size.div_ceil(SECTOR);
        let last = first + sectors - 1;
        if last > last_usable {
            return Err(DiskError::DoesNotFit {
                name: p.name.clone(),
                start: first * SECTOR,
                end: (last + 1) * SECTOR,
                usable_end: (last_usable + 1) * SECTOR,
                disk_size: layout.size,
            });
        }
        placed.push(Placed {
            first_lba: first,
            last_lba: last,
        });
        next = last + 1;
    }
    Ok(placed)
}

/// Write the disk image `out` (replacing any file there): a protective MBR, the primary and
/// backup GPT, and each partition's source. Checks every size before writing anything.
pub fn write_disk(layout: &DiskLayout, out: &Path) -> Result<WrittenDisk, DiskError> {
    let placed = place(layout)?;
    // Creating the output truncates it: it must not be one of the sources.
    let out_canonical = out.canonicalize().ok();
    let mut source_sizes = Vec::with_capacity(layout.partitions.len());
    for p in &layout.partitions {
        let size = match &p.source {
            None => None,
            Some(path) => {
                if out_canonical.is_some() && path.canonicalize().ok() == out_canonical {
                    return Err(DiskError::SourceIsOutput {
                        name: p.name.clone(),
                        path: path.clone(),
                    });
                }
                let size = std::fs::metadata(path)
                    .map_err(|e| io_error(path, "read the metadata of", e))?
                    .len();
                if size > p.size {
                    return Err(DiskError::SourceTooBig {
                        name: p.name.clone(),
                        path: path.clone(),
                        source_size: size,
                        partition_size: p.size,
                    });
                }
                Some(size)
            }
        };
        source_sizes.push(size);
    }

    let disk_guid = layout.ids.uuid_string("disk-guid");
    let mut written = Vec::with_capacity(layout.partitions.len());
    let mut table = BTreeMap::new();
    for (i, (p, at)) in layout.partitions.iter().zip(&placed).enumerate() {
        let number = i as u32 + 1;
        let type_guid = type_guid(p.role, p.filesystem);
        let part_guid = part_guid(&layout.ids, &p.name);
        table.insert(
            number,
            GptPartition {
                part_type_guid: Type::from_str(type_guid)
                    .expect("the DPS type GUID constants are well-formed"),
                part_guid: part_guid
                    .parse()
                    .expect("IdSource::uuid_string gives a well-formed UUID"),
                first_lba: at.first_lba,
                last_lba: at.last_lba,
                flags: 0,
                name: p.name.clone(),
            },
        );
        written.push(WrittenPartition {
            number,
            name: p.name.clone(),
            role: p.role,
            type_guid: type_guid.to_string(),
            part_guid,
            first_lba: at.first_lba,
            last_lba: at.last_lba,
            offset: at.first_lba * SECTOR,
            size: (at.last_lba - at.first_lba + 1) * SECTOR,
            source_size: None,
        });
    }

    // A fresh file of the full size is one hole: everything not written below reads as zero.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| io_error(out, "create", e))?;
    file.set_len(layout.size)
        .map_err(|e| io_error(out, "set the size of", e))?;

    let gpt_error = |e: gpt::GptError| DiskError::Gpt {
        path: out.to_path_buf(),
        message: e.to_string(),
    };
    let mut gdisk = GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(
            file,
            Some(
                disk_guid
                    .parse()
                    .expect("IdSource::uuid_string gives a well-formed UUID"),
            ),
        )
        .map_err(gpt_error)?;
    gdisk.update_partitions(table).map_err(gpt_error)?;
    let mut file = gdisk.write().map_err(gpt_error)?;
    // The protective MBR covers the whole disk after LBA 0 (or all it can express).
    let mbr_sectors = u32::try_from(layout.size / SECTOR - 1).unwrap_or(u32::MAX);
    ProtectiveMBR::with_lb_size(mbr_sectors)
        .overwrite_lba0(&mut file)
        .map_err(|e| DiskError::Gpt {
            path: out.to_path_buf(),
            message: format!("protective MBR: {e}"),
        })?;

    for ((p, w), expected) in layout.partitions.iter().zip(&mut written).zip(source_sizes) {
        if let Some(source) = &p.source {
            let copied = copy_sparse(source, &file, out, w.offset, p.size)?;
            if Some(copied) != expected {
                // The source changed between the size check and the copy.
                return Err(DiskError::Io {
                    path: source.clone(),
                    action: "copy (it changed size while being read)",
                    source: io::Error::other(format!(
                        "expected {} bytes, read {copied}",
                        expected.unwrap_or(0)
                    )),
                });
            }
            w.source_size = Some(copied);
        }
    }

    Ok(WrittenDisk {
        size: layout.size,
        disk_guid,
        partitions: written,
    })
}

/// Copy `source` into `dst` at `offset`, writing only the `BLOCK`-sized blocks that hold a
/// non-zero byte (runs of them in one write). Never writes more than `limit` bytes.
fn copy_sparse(
    source: &Path,
    dst: &File,
    dst_path: &Path,
    offset: u64,
    limit: u64,
) -> Result<u64, DiskError> {
    static ZERO: [u8; BLOCK] = [0; BLOCK];
    let src = File::open(source).map_err(|e| io_error(source, "open", e))?;
    let len = src
        .metadata()
        .map_err(|e| io_error(source, "read the metadata of", e))?
        .len();
    if len > limit {
        return Err(DiskError::Io {
            path: source.to_path_buf(),
            action: "copy",
            source: io::Error::other(format!("more than the partition's {limit} bytes")),
        });
    }
    // The source's holes are skipped unread; in its data, maximal runs of non-zero blocks
    // are written.
    super::blocks::for_each_block(&src, 0, len, |block| {
        let Some(data) = block.data else {
            return Ok(());
        };
        let n = data.len();
        let mut run: Option<usize> = None;
        let mut at = 0;
        while at <= n {
            let zero = at == n || data[at..(at + BLOCK).min(n)] == ZERO[..(n - at).min(BLOCK)];
            match (zero, run) {
                (false, None) => run = Some(at),
                (true, Some(start)) => {
                    dst.write_all_at(&data[start..at], offset + block.at + start as u64)?;
                    run = None;
                }
                _ => {}
            }
            at += BLOCK;
        }
        // A short last block skips `at == n`: its run is still open.
        if let Some(start) = run {
            dst.write_all_at(&data[start..], offset + block.at + start as u64)?;
        }
        Ok(())
    })
    .map_err(|e| io_error(dst_path, "copy into", e))?;
    Ok(len)
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> DiskError {
    DiskError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: IdSource<'static> = IdSource {
        os: "guest-os",
        version: "1.0.0",
    };

    fn part(name: &str, size: u64) -> DiskPartition {
        DiskPartition {
            name: name.into(),
            role: Role::Data,
            filesystem: Filesystem::Ext4,
            size,
            source: None,
        }
    }

    #[test]
    fn type_guids_follow_the_dps_and_parse() {
        assert_eq!(type_guid(Role::Esp, Filesystem::Vfat), TYPE_ESP);
        assert_eq!(type_guid(Role::Root, Filesystem::Ext4), TYPE_ROOT_X86_64);
        assert_eq!(
            type_guid(Role::Verity, Filesystem::Raw),
            TYPE_ROOT_VERITY_X86_64
        );
        assert_eq!(type_guid(Role::Config, Filesystem::Vfat), TYPE_LINUX_DATA);
        assert_eq!(type_guid(Role::Data, Filesystem::Ext4), TYPE_LINUX_DATA);
        assert_eq!(type_guid(Role::Data, Filesystem::Raw), TYPE_LVM);
        for role in [
            Role::Esp,
            Role::Root,
            Role::Verity,
            Role::Config,
            Role::Data,
        ] {
            for fs in [Filesystem::Vfat, Filesystem::Ext4, Filesystem::Raw] {
                let t = Type::from_str(type_guid(role, fs)).unwrap();
                assert!(t.guid.to_string().eq_ignore_ascii_case(type_guid(role, fs)));
            }
        }
    }

    #[test]
    fn partitions_start_at_1mib_and_align() {
        let layout = DiskLayout {
            ids: IDS,
            size: 8 * ALIGN,
            partitions: vec![part("a", ALIGN), part("b", 1000), part("c", 2 * ALIGN)],
        };
        let placed = place(&layout).unwrap();
        assert_eq!(
            placed,
            vec![
                Placed {
                    first_lba: 2048,
                    last_lba: 4095
                },
                Placed {
                    first_lba: 4096,
                    last_lba: 4097
                },
                Placed {
                    first_lba: 6144,
                    last_lba: 10239
                },
            ]
        );
    }

    #[test]
    fn a_partition_past_the_usable_end_is_refused() {
        // 4 MiB disk: 1 MiB lead-in, 33 sectors of backup GPT at the end.
        let layout = DiskLayout {
            ids: IDS,
            size: 4 * ALIGN,
            partitions: vec![part("big", 3 * ALIGN)],
        };
        match place(&layout) {
            Err(DiskError::DoesNotFit {
                name, usable_end, ..
            }) => {
                assert_eq!(name, "big");
                assert_eq!(usable_end, 4 * ALIGN - 33 * SECTOR);
            }
            other => panic!("expected DoesNotFit, got {other:?}"),
        }
        let fits = DiskLayout {
            ids: IDS,
            size: 4 * ALIGN,
            partitions: vec![part("big", 3 * ALIGN - 33 * SECTOR)],
        };
        assert!(place(&fits).is_ok());
    }

    #[test]
    fn bad_sizes_and_names_are_refused() {
        let l = |size, partitions| DiskLayout {
            ids: IDS,
            size,
            partitions,
        };
        assert!(matches!(
            place(&l(8 * ALIGN + 1, vec![])),
            Err(DiskError::BadDiskSize { .. })
        ));
        assert!(matches!(
            place(&l(8 * ALIGN, vec![part("z", 0)])),
            Err(DiskError::EmptyPartition { .. })
        ));
        assert!(matches!(
            place(&l(8 * ALIGN, vec![part(&"n".repeat(37), ALIGN)])),
            Err(DiskError::NameTooLong { units: 37, .. })
        ));
        assert!(matches!(
            place(&l(8 * ALIGN, vec![part("d", ALIGN), part("d", ALIGN)])),
            Err(DiskError::DuplicateName { .. })
        ));
    }
}
