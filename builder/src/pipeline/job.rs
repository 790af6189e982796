//! One OS profile built into a release directory: the image stages ([`build`]) and, for an OS
//! with a guest firmware, the firmware ([`ovmf`], CPU-bound, in its own root) on a second
//! thread beside them; then the release assembled from both ([`release`]). `plinth build` and
//! `plinth verify` both run it, once they have checked its locked inputs and fetched them.

use super::build::{self, BuildError};
use super::ovmf::{self, FirmwareError};
use super::release::{self, ReleaseError};
use super::stage_cache::StageCache;
use crate::packages::cache::Cache;
use crate::packages::lockfile::{LockedPackage, LockedSource};
use crate::spec::{OsSpec, Profile};
use plinth_release::manifest::Manifest;
use plinth_release::{CommitId, Sha256, Version};
use std::path::{Path, PathBuf};

/// Where and from what one release is built, beside its spec and packages: what
/// `plinth build` and `plinth verify` decide (version, epoch, caches, directories) and pass on
/// unchanged to [`Job`].
#[derive(Clone, Copy)]
pub struct Settings<'a> {
    pub version: &'a Version,
    /// SOURCE_DATE_EPOCH.
    pub epoch: i64,
    pub commit: CommitId,
    /// Whether the source tree differs from `commit`.
    pub dirty: bool,
    pub cache: &'a Cache,
    /// The stage cache of the image stages (`None`: built afresh, nothing recorded).
    pub image_cache: Option<&'a StageCache>,
    /// The stage cache of the firmware (keyed by its own inputs alone).
    pub firmware_cache: Option<&'a StageCache>,
    /// Where the agent is compiled (shared between builds; the result does not depend on it).
    pub agent_target: &'a Path,
    /// A directory this job owns (created, emptied by the caller).
    pub work: &'a Path,
    /// Where the release goes (replaced).
    pub release_dir: &'a Path,
    /// How an OS with sealed state signs its PCR policy.
    pub signing: &'a super::pcr_signing::Signing,
    /// The releases the OS carries on its data partition (os.yaml's `carries`), checked.
    pub carried: &'a [super::carried::Carried],
}

/// One OS profile to build into a release directory, its inputs in the package cache.
pub struct Job<'a> {
    /// The source tree: overlays, agent sources, the firmware recipe.
    pub workspace: &'a Path,
    pub spec: &'a OsSpec,
    pub profile: &'a Profile,
    /// The lock's packages of `profile`.
    pub packages: &'a [&'a LockedPackage],
    /// The guest firmware's locked inputs, for an OS that has one.
    pub firmware: Option<FirmwareInputs<'a>>,
    pub lock_sha256: Sha256,
    pub os_spec_sha256: Sha256,
    pub settings: Settings<'a>,
    /// Receives one line per finished stage, from both threads.
    pub log: &'a (dyn Fn(&str) + Sync),
}

/// What the firmware is built from: the lock's toolchain and source.
pub struct FirmwareInputs<'l> {
    pub toolchain: Profile,
    pub packages: Vec<&'l LockedPackage>,
    pub source: &'l LockedSource,
}

/// Why a release could not be built.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Firmware(#[from] FirmwareError),
    #[error("{os}: the state's key source: {source}")]
    State {
        os: String,
        source: super::state::StateError,
    },
    #[error("cannot prepare the firmware's work directory {}: {source}", path.display())]
    Work {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the release {}: {source}", dir.display())]
    Release {
        dir: PathBuf,
        #[source]
        source: Box<ReleaseError>,
    },
}

/// Build the images and the firmware side by side, then assemble the release.
pub fn run(job: &Job<'_>) -> Result<Manifest, JobError> {
    let set = &job.settings;
    let state =
        super::state::source(job.workspace, job.profile).map_err(|source| JobError::State {
            os: job.profile.os.clone(),
            source,
        })?;
    let plan = build::BuildPlan {
        workspace: job.workspace,
        profile: job.profile,
        packages: job.packages,
        cache: set.cache,
        agent_target: set.agent_target,
        version: set.version,
        epoch: set.epoch,
        work: &set.work.join("build"),
        log: job.log,
        stage_cache: set.image_cache,
        signing: set.signing,
        state: state.as_ref(),
        carried: set.carried,
    };
    let (built, firmware) = std::thread::scope(|s| {
        let firmware = job
            .firmware
            .as_ref()
            .map(|inputs| s.spawn(|| build_firmware(job, inputs)));
        let built = build::build(&plan);
        let firmware = firmware.map(|thread| {
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        (built, firmware)
    });
    let built = built?;
    let firmware = firmware.transpose()?;
    let edk2 = job
        .spec
        .firmware
        .as_ref()
        .map(|f| f.source.version.clone())
        .unwrap_or_default();
    let inputs = release::ReleaseInputs {
        profile: job.profile,
        version: set.version,
        epoch: set.epoch,
        source_commit: set.commit,
        source_dirty: set.dirty,
        lock_sha256: job.lock_sha256,
        os_spec_sha256: job.os_spec_sha256,
        packages: job.packages,
        firmware: firmware.as_ref().map(|f| release::ReleaseFirmware {
            firmware: f,
            edk2: &edk2,
            launches: job.spec.snp.as_ref().map(Into::into),
        }),
        carried: set.carried,
        log: job.log,
    };
    release::assemble(&built, &inputs, set.release_dir).map_err(|source| JobError::Release {
        dir: set.release_dir.to_path_buf(),
        source: Box::new(source),
    })
}

/// Build the guest firmware (or take it from the stage cache) in `<work>/firmware`.
fn build_firmware(job: &Job<'_>, inputs: &FirmwareInputs<'_>) -> Result<ovmf::Firmware, JobError> {
    let set = &job.settings;
    let work = set.work.join("firmware");
    let fresh = || -> std::io::Result<()> {
        if work.exists() {
            std::fs::remove_dir_all(&work)?;
        }
        std::fs::create_dir_all(&work)
    };
    fresh().map_err(|source| JobError::Work {
        path: work.clone(),
        source,
    })?;
    (job.log)(&format!(
        "{}: guest firmware from {} {} ({} toolchain packages), beside the image stages",
        job.spec.os,
        inputs.source.package,
        inputs.source.version,
        inputs.packages.len()
    ));
    let plan = ovmf::FirmwarePlan {
        workspace: job.workspace,
        toolchain: &inputs.toolchain,
        packages: &inputs.packages,
        source: inputs.source,
        cache: set.cache,
        epoch: set.epoch,
        work: &work,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        stage_cache: set.firmware_cache,
        log: job.log,
    };
    Ok(ovmf::build(&plan)?)
}
