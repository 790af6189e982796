//! `plinth build`: build the images of one OS (or all) from their locks into
//! `out/<os>/<version>/`: disk and update archives, GuestOS direct-boot parts, SBOM, manifest
//! and SHA256SUMS.

use super::{BadInput, CheckFailed, Global, Output};
use crate::packages::cache::Cache;
use crate::packages::fetch::{fetch, FetchOptions};
use crate::packages::lockfile::{Lock, LockedPackage};
use crate::packages::mirror::Mirrors;
use crate::pipeline::pcr_signing::Signing;
use crate::pipeline::stage_cache::StageCache;
use crate::pipeline::{self, job::FirmwareInputs};
use crate::spec;
use crate::workspace::Workspace;
use anyhow::Context;
use plinth_firmware::pcr_policy::ReleaseKey;
use plinth_release::{CommitId, Sha256, Version};
use serde::Serialize;
use std::path::{Path, PathBuf};

const AFTER_HELP: &str = "\
Needs root (mmdebstrap, chroot, namespaces). Locked packages missing from the
cache are fetched first (sha256-verified) unless --offline; the build itself
uses no network. SOURCE_DATE_EPOCH is the source commit's time.
Stage outputs are cached by the hash of their inputs (<cache>/stages): with
nothing changed, a rebuild reuses everything; after an overlay change it
reuses the installed packages and their root filesystem. The guest firmware's
entry is keyed by its own inputs alone (toolchain, source, recipe), so a build
whose images change still reuses it. -v says why a stage was rebuilt.

Examples:
  plinth build                          every OS, prod profile, into out/
  plinth build guest-os --profile test  the small CI image
  plinth build all --out /srv/release --release-version 1.2.0
  plinth build host-os --no-cache       rebuild every stage afresh
  plinth build guest-os --rebuild images
                                        image stages afresh, the firmware
                                        from its cache entry
  plinth build host-os --release-key /secure/release.key
                                        sign HostOS's PCR policy (make a key:
                                        openssl genpkey -algorithm RSA
                                          -pkeyopt rsa_keygen_bits:2048)";

/// Build reproducible disk and update images from the locked packages.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// guest-os, host-os, setup-os or all.
    #[arg(default_value = "all", value_name = "OS")]
    pub os: String,
    /// Profile to build.
    #[arg(long, default_value = "prod", value_name = "NAME")]
    pub profile: String,
    /// Release directory root: images go to <OUT>/<os>/<version>/.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Version recorded in the release [default: the plinth version].
    #[arg(long, value_name = "VERSION")]
    pub release_version: Option<String>,
    /// Time of every file in the images [default: the commit time].
    #[arg(long, value_name = "SECONDS")]
    pub source_date_epoch: Option<i64>,
    /// Work directory, kept afterwards (with the stage cache, the built images move from it
    /// into the cache entry) [default: a temporary one].
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Do not fetch missing packages; fail if the cache lacks any.
    #[arg(long)]
    pub offline: bool,
    /// Build every stage afresh: neither read nor write the stage cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Build one part afresh, neither reading nor writing its stage cache entries:
    /// `images` (every image stage) or `firmware` (the guest firmware). Repeatable.
    #[arg(long, value_enum, value_name = "PART")]
    pub rebuild: Vec<Rebuild>,
    /// The release key (RSA 2048 PKCS#8 PEM) that signs the PCR policy of an OS with sealed
    /// state (HostOS): its state then opens with any later release this key signs. Without
    /// one, that state is sealed to this build's PCR values alone.
    #[arg(long, env = "PLINTH_RELEASE_KEY", value_name = "FILE")]
    pub release_key: Option<PathBuf>,
    #[command(flatten)]
    pub mirrors: super::MirrorArgs,
    #[command(flatten)]
    pub cache: super::CacheArg,
}

/// A part of a build that `--rebuild` builds afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rebuild {
    /// Every image stage: packages, initrd, root filesystem and all that follows.
    Images,
    /// The guest firmware (GuestOS).
    Firmware,
}

#[derive(Serialize)]
struct Report {
    releases: Vec<ReleaseSummary>,
}

#[derive(Serialize)]
struct ReleaseSummary {
    os: String,
    profile: String,
    version: String,
    dir: String,
    manifest: crate::pipeline::manifest::Manifest,
}

pub fn run(g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let ws = Workspace::discover(g.root.as_deref())?;
    let oses = Workspace::select(&args.os)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(BadInput(
            "plinth build needs root: mmdebstrap installs packages in a chroot, and stages run in their own namespaces\n  hint: run it as root (CI runs as root)".into(),
        )
        .into());
    }
    let version: Version = args
        .release_version
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
        .parse()
        .map_err(|e| BadInput(format!("--release-version {e}")))?;
    let (commit, commit_time) = source_commit(&ws.root);
    let epoch = match (args.source_date_epoch, commit_time) {
        (Some(e), _) => e,
        (None, Some(t)) => t,
        (None, None) => {
            return Err(BadInput(format!(
                "{} is not a git checkout, so there is no commit time for SOURCE_DATE_EPOCH\n  hint: pass --source-date-epoch SECONDS",
                ws.root.display()
            ))
            .into())
        }
    };
    let cache = Cache::open(Cache::resolve_root(args.cache.cache.as_deref())?)?;
    let stage_cache = StageCache::new(cache.root().join("stages"));
    let dirty = source_dirty(&ws.root);
    if dirty {
        out.warn(format!(
            "{} has uncommitted changes: the manifest records commit {commit} with source_dirty = true, and a rebuild from that commit will differ",
            ws.root.display()
        ));
    }
    let signing = match &args.release_key {
        Some(path) => Signing::Key(
            ReleaseKey::read(path).map_err(|e| BadInput(format!("--release-key {e}")))?,
        ),
        None => {
            let sealed_under_signature = |os: &&str| {
                let path = ws.spec_path(os);
                spec::load(&path, &ws.display(&path))
                    .ok()
                    .and_then(|spec| spec.profile(&args.profile).ok())
                    .and_then(|p| pipeline::state::source(&ws.root, &p).ok().flatten())
                    .is_some_and(|s| pipeline::state::signs_pcr_policy(Some(&s)))
            };
            if oses.iter().any(sealed_under_signature) {
                out.warn("no --release-key: HostOS's sealed state will open only with this build's own PCR values, not after an upgrade");
            }
            Signing::Unsigned
        }
    };
    let mut report = Report {
        releases: Vec::new(),
    };
    for os in oses {
        let temp;
        let work = match &args.work {
            // Private (0700): the root tree built there has the setuid programs of its
            // packages, which no other user may reach.
            Some(w) => {
                let dir = w.join(format!("{os}-{}", args.profile));
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("clearing {}", dir.display()))?;
                }
                crate::pipeline::artifacts::private_dir(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                dir
            }
            None => {
                temp = crate::pipeline::artifacts::scratch_dir(&format!("plinth-build-{os}-"))
                    .context("creating a work directory")?;
                temp.path().to_path_buf()
            }
        };
        let dir = args.out.join(os).join(&version);
        let job = ReleaseJob {
            source: &ws,
            os,
            profile: &args.profile,
            settings: pipeline::job::Settings {
                version: &version,
                epoch,
                commit,
                dirty,
                cache: &cache,
                image_cache: (!args.no_cache && !args.rebuild.contains(&Rebuild::Images))
                    .then_some(&stage_cache),
                firmware_cache: (!args.no_cache && !args.rebuild.contains(&Rebuild::Firmware))
                    .then_some(&stage_cache),
                agent_target: &cache.root().join("agent-target"),
                work: &work,
                release_dir: &dir,
                signing: &signing,
                carried: &[],
            },
            carried_root: &args.out,
            offline: args.offline,
            mirrors: &args.mirrors,
        };
        let manifest = build_release(out, &job)?;
        out.info(format!("{os}: release written to {}", dir.display()));
        for f in &manifest.outputs {
            out.info(format!("  {}  {:>12}  {}", f.sha256, f.size, f.name));
        }
        report.releases.push(ReleaseSummary {
            os: os.to_string(),
            profile: args.profile.clone(),
            version: version.to_string(),
            dir: dir.display().to_string(),
            manifest,
        });
    }
    if out.json {
        out.json_result(&report)?;
    }
    Ok(())
}

/// One OS profile to build into a release directory (`plinth build`, `plinth verify`).
pub(super) struct ReleaseJob<'a> {
    /// The source tree: specs, locks, overlays, agent sources.
    pub source: &'a Workspace,
    pub os: &'a str,
    pub profile: &'a str,
    pub settings: pipeline::job::Settings<'a>,
    pub offline: bool,
    pub mirrors: &'a super::MirrorArgs,
    /// Where the releases the OS carries are found (`<root>/<os>/<version>`).
    pub carried_root: &'a Path,
}

/// Check the lock against the spec, fetch what the cache lacks, then build the release
/// ([`pipeline::job`]).
pub(super) fn build_release(
    out: &Output,
    job: &ReleaseJob<'_>,
) -> anyhow::Result<crate::pipeline::manifest::Manifest> {
    let (ws, os) = (job.source, job.os);
    let spec_path = ws.spec_path(os);
    let spec_display = ws.display(&spec_path);
    let spec = spec::load(&spec_path, &spec_display)?;
    let profile = spec.profile(job.profile)?;
    let lock_path = ws.lock_path(os);
    let lock_display = ws.display(&lock_path);
    let lock = Lock::read(&lock_path, &lock_display, os)?;
    let disagreements = lock.disagreements(&spec);
    if !disagreements.is_empty() {
        return Err(CheckFailed(format!(
            "{lock_display} does not match {spec_display}: {}\n  hint: run `plinth lock {os}` and commit the result",
            disagreements.join("; ")
        ))
        .into());
    }
    let packages = lock
        .profile_packages(job.profile)
        .context("the lock has no such profile")?;
    ensure_cached(out, job, &spec, &packages)?;
    let firmware = match spec.firmware_toolchain() {
        Some(toolchain) => Some(firmware_inputs(out, job, &spec, &lock, toolchain)?),
        None => None,
    };
    let digest = |path: &Path| {
        Sha256::of_file(path)
            .map(|(d, _)| d)
            .with_context(|| format!("reading {}", path.display()))
    };
    out.info(format!(
        "{os} ({}): building version {}, SOURCE_DATE_EPOCH={}, in {}",
        job.profile,
        job.settings.version,
        job.settings.epoch,
        job.settings.work.display()
    ));
    let carried = pipeline::carried::find(
        job.carried_root,
        &profile.carries,
        job.settings.version.as_str(),
        job.profile,
    )
    .map_err(|e| BadInput(e.to_string()))?;
    for c in &carried {
        out.info(format!(
            "{os}: carries {} {} (manifest sha256 {})",
            c.os, c.manifest.version, c.manifest_sha256
        ));
    }
    let settings = pipeline::job::Settings {
        carried: &carried,
        ..job.settings
    };
    let log = |line: &str| out.info(format!("  {line}"));
    Ok(pipeline::job::run(&pipeline::job::Job {
        workspace: &ws.root,
        spec: &spec,
        profile: &profile,
        packages: &packages,
        firmware,
        lock_sha256: digest(&lock_path)?,
        os_spec_sha256: digest(&spec_path)?,
        settings,
        log: &log,
    })?)
}

/// The guest firmware's locked inputs (`firmware` in os.yaml), fetched into the package cache.
fn firmware_inputs<'l>(
    out: &Output,
    job: &ReleaseJob<'_>,
    spec: &spec::OsSpec,
    lock: &'l Lock,
    toolchain: spec::Profile,
) -> anyhow::Result<FirmwareInputs<'l>> {
    let packages = lock
        .profile_packages(spec::FIRMWARE_TOOLCHAIN)
        .context("the lock has no firmware toolchain")?;
    let source = lock
        .sources
        .first()
        .context("the lock has no firmware source")?;
    let downloads = source.downloads();
    let mut wanted: Vec<&LockedPackage> = packages.clone();
    wanted.extend(downloads.iter());
    ensure_cached(out, job, spec, &wanted)?;
    Ok(FirmwareInputs {
        toolchain,
        packages,
        source,
    })
}

/// Fetch the profile's locked packages the cache lacks (verified), or fail offline.
fn ensure_cached(
    out: &Output,
    job: &ReleaseJob<'_>,
    spec: &spec::OsSpec,
    packages: &[&LockedPackage],
) -> anyhow::Result<()> {
    let cache = job.settings.cache;
    let missing: Vec<LockedPackage> = packages
        .iter()
        .filter(|p| !cache.contains(&p.sha256, p.size))
        .map(|p| (*p).clone())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mirrors = Mirrors::resolve(&spec.base, &job.mirrors.overrides());
    out.info(format!(
        "{}: fetching {} packages missing from the cache",
        spec.os,
        missing.len()
    ));
    let options = FetchOptions {
        offline: job.offline,
        progress: out.download_progress(),
        ..FetchOptions::default()
    };
    fetch(
        &missing,
        |p| mirrors.for_suite(&p.suite).to_string(),
        cache,
        &options,
    )?;
    Ok(())
}

/// Whether the git checkout at `root` has uncommitted changes (untracked files included).
pub(super) fn source_dirty(root: &Path) -> bool {
    std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false)
}

/// The source tree's commit and its time, when it is a git checkout (all zeros otherwise:
/// `plinth verify` refuses to rebuild such a release).
pub(super) fn source_commit(root: &Path) -> (CommitId, Option<i64>) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["log", "-1", "--format=%H %ct"])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let mut words = text.split_whitespace();
            let commit = words
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or_default();
            (commit, words.next().and_then(|t| t.parse().ok()))
        }
        _ => (CommitId::default(), None),
    }
}
