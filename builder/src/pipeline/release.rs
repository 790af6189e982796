//! The release directory `out/<os>/<version>/` of one build: the disk archive, the update
//! archive (what an upgrade writes into a slot), GuestOS's direct-boot parts, the SBOM, the
//! manifest (inputs, outputs, partitions, measurements) and SHA256SUMS. Everything is written
//! to a sibling `.partial` directory and renamed into place last: nothing partial reaches
//! `out/`.

use super::artifacts::{self, Compression, OutputFile, TarEntry};
use super::build::{uki_name, Built};
use super::frames::FramePool;
use super::manifest::{Inputs, Manifest, Measurements, PartitionImage, SlotMeasurements};
use super::measure;
use super::sbom;
use crate::packages::lockfile::LockedPackage;
use crate::spec::Profile;
use plinth_release::{CommitId, Os, Sha256, Version};
use std::path::{Path, PathBuf};

/// File names in a release directory.
pub const DISK_ARCHIVE: &str = artifacts::DISK_ARCHIVE;
pub const UPDATE_ARCHIVE: &str = artifacts::UPDATE_ARCHIVE;
pub const SBOM: &str = "sbom.spdx.json";
pub const MEASUREMENTS: &str = plinth_firmware::measurements::FILE_NAME;

/// What a release records besides the build's outputs.
pub struct ReleaseInputs<'a> {
    pub profile: &'a Profile,
    pub version: &'a Version,
    pub epoch: i64,
    pub source_commit: CommitId,
    /// The source tree had uncommitted changes.
    pub source_dirty: bool,
    pub lock_sha256: Sha256,
    pub os_spec_sha256: Sha256,
    pub packages: &'a [&'a LockedPackage],
    /// The guest firmware built with the OS (GuestOS), and the SEV-SNP launches whose
    /// digests are published.
    pub firmware: Option<ReleaseFirmware<'a>>,
    /// The releases carried on the data partition.
    pub carried: &'a [super::carried::Carried],
    /// Receives one line per archive and one for the rest.
    pub log: &'a dyn Fn(&str),
}

/// The guest firmware of a release and what its launches are measured for.
pub struct ReleaseFirmware<'a> {
    pub firmware: &'a super::ovmf::Firmware,
    /// The Debian edk2 version it was built from.
    pub edk2: &'a str,
    pub launches: Option<super::snp::Launches>,
}

/// Why a release directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Artifact(#[from] artifacts::ArtifactError),
    #[error(transparent)]
    Sbom(#[from] sbom::SbomError),
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
    #[error(transparent)]
    Snp(#[from] super::snp::SnpError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |e| ReleaseError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Write the release of `built` into `dir` (replacing it); returns its manifest.
pub fn assemble(
    built: &Built,
    inputs: &ReleaseInputs<'_>,
    dir: &Path,
) -> Result<Manifest, ReleaseError> {
    let p = inputs.profile;
    let os = p.os.as_str();
    let os_id: Os = os.parse().map_err(|message| ReleaseError::Io {
        path: dir.display().to_string(),
        message,
    })?;
    let staging = PathBuf::from(format!("{}.partial", dir.display()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;

    // Frames of the archives of earlier builds of this OS and profile: what did not change
    // is copied, not compressed again. The update archive reuses the disk archive's frames of
    // the root partition (framed alike: the disk's windows start at its partitions).
    let mut pool = FramePool::for_level(Compression::RELEASE.level);
    for dir in &built.earlier {
        for name in [DISK_ARCHIVE, UPDATE_ARCHIVE] {
            pool.add_saved(&dir.join(name));
        }
    }
    let mut outputs: Vec<OutputFile> = Vec::new();
    let disk = TarEntry::new("disk.img", &built.disk)
        .with_anchors(built.written.partitions.iter().map(|w| w.offset));
    outputs.push(archive(
        built,
        &staging,
        DISK_ARCHIVE,
        &[disk],
        inputs,
        &mut pool,
    )?);
    let mut update = vec![
        TarEntry::new("root.img", &built.root_image),
        TarEntry::new("verity.img", &built.verity_image),
    ];
    for s in &built.slots {
        update.push(TarEntry::new(
            format!("{}.efi", uki_name(os, s.slot)),
            &s.uki,
        ));
    }
    outputs.push(archive(
        built,
        &staging,
        UPDATE_ARCHIVE,
        &update,
        inputs,
        &mut pool,
    )?);
    // GuestOS boots under SEV-SNP by direct kernel boot: kernel, initrd and each slot's
    // command line are measured separately.
    if os == "guest-os" {
        let mut extras = vec![
            ("vmlinuz".to_string(), built.kernel.clone()),
            ("initrd.img".to_string(), built.initrd.clone()),
        ];
        for s in &built.slots {
            let name = format!("cmdline-{}.txt", uki_name(os, s.slot));
            let path = staging.join(&name);
            std::fs::write(&path, format!("{}\n", s.cmdline)).map_err(io(&path))?;
            extras.push((name, path));
        }
        if let Some(f) = &inputs.firmware {
            extras.push((
                super::ovmf::FIRMWARE_FILE.to_string(),
                f.firmware.path.clone(),
            ));
        }
        for (name, source) in extras {
            let dest = staging.join(&name);
            if source != dest {
                std::fs::copy(&source, &dest).map_err(io(&dest))?;
            }
            outputs.push(artifact(&dest, &name)?);
        }
    }
    let start = std::time::Instant::now();
    let mut measured = measurements(built, os_id, inputs.version)?;
    if let (Some(m), Some(f)) = (measured.as_mut(), &inputs.firmware) {
        if let Some(launches) = &f.launches {
            m.snp = Some(snp_expected(built, f, launches, &staging)?);
            (inputs.log)(&format!(
                "{os}: {} SEV-SNP launch digests computed",
                m.snp.as_ref().map_or(0, |s| s.launch_digests.len())
            ));
        }
    }
    if let Some(m) = &measured {
        let path = staging.join(MEASUREMENTS);
        let mut text = serde_json::to_string_pretty(m).map_err(|e| ReleaseError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        text.push('\n');
        std::fs::write(&path, text).map_err(io(&path))?;
        outputs.push(artifact(&path, MEASUREMENTS)?);
    }
    let sbom_path = staging.join(SBOM);
    sbom::write_sbom(
        &sbom::SbomInput {
            os,
            version: inputs.version,
            profile: &p.profile,
            source_date_epoch: inputs.epoch,
            lock_sha256: &inputs.lock_sha256.to_hex(),
            release: &p.base.release,
            packages: inputs.packages,
            root: Some(&built.root_dir),
        },
        &sbom_path,
    )?;
    outputs.push(artifact(&sbom_path, SBOM)?);
    outputs.sort();

    let mut partitions = Vec::new();
    for w in &built.written.partitions {
        let spec = p.partitions.iter().find(|q| q.name == w.name);
        partitions.push(PartitionImage {
            number: w.number,
            name: w.name.parse().map_err(|message| ReleaseError::Io {
                path: built.disk.display().to_string(),
                message,
            })?,
            role: w.role,
            slot: spec.and_then(|q| q.slot),
            offset: w.offset,
            size: w.size,
            blocks_sha256: super::blocks::blocks_sha256(&built.disk, w.offset, w.size)
                .map_err(io(&built.disk))?,
        });
    }
    let mut slots = Vec::new();
    for s in &built.slots {
        let slot = s.slot;
        let predicted = measured
            .as_ref()
            .and_then(|m| m.slot(slot))
            .map(|p| &p.pcrs);
        let pcr = |n: u32| predicted.and_then(|p| p.get(&n)).copied();
        slots.push(SlotMeasurements {
            slot,
            verity_root_hash: built.root_hash,
            uki_sha256: Sha256::of_file(&s.uki).map_err(io(&s.uki))?.0,
            pcr4: pcr(4),
            pcr7: pcr(7),
            pcr11: s.pcr11,
            pcr_signature: s.pcr_signature.clone(),
        });
    }
    // The signed PCR policy's public key, as the UKIs carry it (`.pcrpkey`).
    let pcr_public_key = match built.slots.first() {
        Some(s) if s.pcr_signature.is_some() => {
            let uki = std::fs::read(&s.uki).map_err(io(&s.uki))?;
            plinth_firmware::systemd_stub::section(&uki, ".pcrpkey")
                .ok()
                .map(|pem| String::from_utf8_lossy(&pem).into_owned())
        }
        _ => None,
    };
    let manifest = Manifest {
        format_version: super::manifest::FORMAT_VERSION,
        os: os_id,
        version: inputs.version.clone(),
        profile: p.profile.parse().map_err(|message| ReleaseError::Io {
            path: dir.display().to_string(),
            message,
        })?,
        inputs: Inputs {
            source_commit: inputs.source_commit,
            source_dirty: inputs.source_dirty,
            source_date_epoch: inputs.epoch,
            lock_sha256: inputs.lock_sha256,
            os_spec_sha256: inputs.os_spec_sha256,
            builder_version: env!("CARGO_PKG_VERSION").to_string(),
            pcr_public_key,
            carried: inputs.carried.iter().map(|c| c.input()).collect(),
        },
        outputs: outputs.clone(),
        partitions,
        measurements: Measurements {
            slots,
            snp: measured
                .as_ref()
                .and_then(|m| m.snp.as_ref())
                .map(|s| s.launch_digests.clone())
                .unwrap_or_default(),
        },
    };
    let manifest_path = staging.join(super::manifest::FILE_NAME);
    manifest.write(&manifest_path)?;
    outputs.push(artifact(&manifest_path, super::manifest::FILE_NAME)?);
    outputs.sort();
    let sums = staging.join(artifacts::SHA256SUMS);
    std::fs::write(&sums, artifacts::format_sha256sums(&outputs)).map_err(io(&sums))?;
    (inputs.log)(&format!(
        "{os}: sbom, manifest and sums done in {:.1} s",
        start.elapsed().as_secs_f64()
    ));

    // Release files are world-readable whatever the umask or the source's mode, and on disk
    // before the release appears under its name.
    let mut syncs = Vec::new();
    for entry in std::fs::read_dir(&staging).map_err(io(&staging))? {
        let path = entry.map_err(io(&staging))?.path();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .map_err(io(&path))?;
        syncs.push(std::thread::spawn(move || {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| (path, e))
        }));
    }
    for sync in syncs {
        let (path, e) = match sync.join() {
            Ok(Ok(())) => continue,
            Ok(Err(failed)) => failed,
            Err(_) => (
                staging.clone(),
                std::io::Error::other("a sync thread panicked"),
            ),
        };
        return Err(io(&path)(e));
    }
    std::fs::File::open(&staging)
        .and_then(|d| d.sync_all())
        .map_err(io(&staging))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io(dir))?;
    Ok(manifest)
}

/// The SEV-SNP launch digests of every slot with the release's firmware (its copy in
/// `staging`), computed in a scratch directory below `staging` that is removed after.
fn snp_expected(
    built: &Built,
    f: &ReleaseFirmware<'_>,
    launches: &super::snp::Launches,
    staging: &Path,
) -> Result<plinth_firmware::snp::SnpExpected, ReleaseError> {
    let mut ukis = Vec::new();
    for s in &built.slots {
        ukis.push((s.slot, std::fs::read(&s.uki).map_err(io(&s.uki))?));
    }
    let slots: Vec<super::snp::SlotUki> = ukis
        .iter()
        .map(|(slot, uki)| super::snp::SlotUki { slot: *slot, uki })
        .collect();
    let firmware = staging.join(super::ovmf::FIRMWARE_FILE);
    let scratch = staging.join(".snp-scratch");
    let expected = super::snp::expected(
        &super::snp::FirmwareFile {
            path: &firmware,
            name: super::ovmf::FIRMWARE_FILE,
            sha256: f.firmware.sha256,
            edk2: f.edk2,
        },
        launches,
        &slots,
        &scratch,
    );
    let expected = expected?;
    std::fs::remove_dir_all(&scratch).map_err(io(&scratch))?;
    Ok(expected)
}

/// What booting each slot measures (see [`measure`]), from the boot loader on the ESP and
/// each slot's UKI; `None` for an OS without an ESP.
fn measurements(
    built: &Built,
    os: Os,
    version: &Version,
) -> Result<Option<plinth_firmware::measurements::Measurements>, ReleaseError> {
    let Some(esp) = &built.esp_image else {
        return Ok(None);
    };
    let failed = |message: String| ReleaseError::Io {
        path: esp.display().to_string(),
        message,
    };
    let loader =
        super::esp::read_fat_file(esp, measure::LOADER_PATH).map_err(|e| failed(e.to_string()))?;
    let mut ukis = Vec::new();
    for s in &built.slots {
        ukis.push((s, std::fs::read(&s.uki).map_err(io(&s.uki))?));
    }
    let slots: Vec<measure::SlotFiles> = ukis
        .iter()
        .map(|(s, bytes)| measure::SlotFiles {
            slot: s.slot,
            uki_path: format!("EFI/Linux/{}.efi", uki_name(os.as_str(), s.slot)),
            uki: bytes,
        })
        .collect();
    measure::predict(os, version, &loader, &slots)
        .map(Some)
        .map_err(|e| failed(e.to_string()))
}

/// Write archive `name` into `staging`, or take it from the build's stage cache entry, where
/// an earlier release of the same build left it (the archive depends only on the built
/// images and SOURCE_DATE_EPOCH, both part of the entry's key). Its frames join `pool`.
fn archive(
    built: &Built,
    staging: &Path,
    name: &str,
    entries: &[TarEntry],
    inputs: &ReleaseInputs<'_>,
    pool: &mut FramePool,
) -> Result<OutputFile, ReleaseError> {
    let start = std::time::Instant::now();
    let dest = staging.join(name);
    let cached = built.cache_entry.as_ref().map(|d| d.join(name));
    if let Some(cached) = &cached {
        if cached.is_file() && link_or_copy(cached, &dest).is_ok() {
            pool.add_saved(cached);
            return artifact(&dest, name);
        }
    }
    let written =
        artifacts::write_tar_zst_with(&dest, entries, inputs.epoch, Compression::RELEASE, pool)?;
    pool.add(&dest, &written.frames);
    // Start writing it back while the release goes on; the final sync waits for the rest.
    let early = dest.clone();
    std::thread::spawn(move || std::fs::File::open(early).and_then(|f| f.sync_all()));
    let raw: u64 = written.frames.frames.iter().map(|f| f.raw_size).sum();
    (inputs.log)(&format!(
        "{}: {name} done in {:.1} s ({} of {} MiB from frames of earlier archives)",
        inputs.profile.os,
        start.elapsed().as_secs_f64(),
        written.reused >> 20,
        raw >> 20
    ));
    if let Some(cached) = &cached {
        // Best effort: without it the next release compresses again.
        let partial = cached.with_extension("partial");
        if written.frames.save_for(cached).is_ok() && link_or_copy(&dest, &partial).is_ok() {
            let _ = std::fs::rename(&partial, cached);
        }
    }
    Ok(written.file)
}

/// A hard link where the filesystem allows, else a copy.
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(to);
    std::fs::hard_link(from, to).or_else(|_| std::fs::copy(from, to).map(|_| ()))
}

fn artifact(path: &Path, name: &str) -> Result<OutputFile, ReleaseError> {
    let (sha256, size) = Sha256::of_file(path).map_err(io(path))?;
    let name = name.parse().map_err(|message| ReleaseError::Io {
        path: path.display().to_string(),
        message,
    })?;
    Ok(OutputFile { name, sha256, size })
}
