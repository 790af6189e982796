//! One OS profile from its lock to a disk image: a flat list of stages (`run_stages`), each
//! a call into its own module, read top to bottom (mkosi's shape). Packages → initrd →
//! normalize → root ext4 → overlay and agent written into it → the state's initrd appendix
//! (an image that keeps state) → verity → UKI per slot → ESP → disk. Everything is written below the build's own work directory, whose files are named
//! in one place (`WorkPaths`); the release is assembled from [`Built`] by [`super::job`].
//!
//! With a stage cache, three keys are computed first ([`StageKeys`]): the package stage's
//! (lock, base, epoch, host tools, builder), the root image's (that plus the version, which
//! the filesystem's ids derive from, and the partition) and the whole build's (that plus the
//! overlay, the agent sources and the profile). A hit on the last reuses everything; a hit on
//! the first reuses the normalized root tree (read in place, never copied) and its initrd, and
//! one on the second also its ext4 image, so an overlay change only writes a few inodes into a
//! copy of that image and reruns what follows. Each of the three goes through
//! [`StageCache::cached`].

use super::stage_cache::{self, StageCache, StageCacheError, StageKey};
use super::{
    agent, boot_entries, carried, disk, esp, ext4, identity, ids::IdSource, initrd, measure,
    normalize, overlay, pcr_signing::Signing, rootfs, state, uki, users, verity,
};
use crate::packages::cache::Cache;
use crate::packages::lockfile::LockedPackage;
use crate::spec::{BootLoader, Partition, Profile, Role, Slot};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where systemd-stub and systemd-boot are inside the image root (package systemd-boot-efi):
/// the UKI's stub and the boot loader come from the locked packages, not from the build host.
pub const STUB_IN_ROOT: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
pub const BOOTLOADER_IN_ROOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";

/// What one build needs.
pub struct BuildPlan<'a> {
    /// The plinth source tree (overlay and agent sources).
    pub workspace: &'a Path,
    pub profile: &'a Profile,
    /// The lock's packages of this profile.
    pub packages: &'a [&'a LockedPackage],
    pub cache: &'a Cache,
    /// Where the agent is compiled (shared between builds; the result does not depend on it).
    pub agent_target: &'a Path,
    pub version: &'a str,
    /// SOURCE_DATE_EPOCH.
    pub epoch: i64,
    /// An empty directory this build owns.
    pub work: &'a Path,
    /// Receives one line per finished stage.
    pub log: &'a dyn Fn(&str),
    /// Reuse and record stage outputs here; `None` builds everything afresh.
    pub stage_cache: Option<&'a StageCache>,
    /// How the UKIs of an OS with sealed state sign their PCR policy (ignored for others).
    pub signing: &'a Signing,
    /// The key source of the profile's sealed state ([`state::source`]); `None`: no state.
    pub state: Option<&'a plinth_state::key::KeySource>,
    /// The releases written into the data partition ([`carried`]).
    pub carried: &'a [carried::Carried],
}

/// The outputs of one boot slot (or of the single slot of an OS without A/B).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SlotBuild {
    pub slot: Option<Slot>,
    pub root_partition: String,
    pub verity_partition: String,
    pub cmdline: String,
    pub uki: PathBuf,
    /// PCR 11 after systemd-stub measured this UKI (hex).
    pub pcr11: plinth_release::Sha256,
    /// The UKI's `.pcrsig` (`tpm2-pcr-signature.json`), when signed.
    #[serde(default)]
    pub pcr_signature: Option<String>,
}

/// Everything a build produced, for the artifact stage.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Built {
    pub root_dir: PathBuf,
    pub kernel: PathBuf,
    pub kernel_release: String,
    pub initrd: PathBuf,
    pub root_image: PathBuf,
    pub verity_image: PathBuf,
    pub root_hash: plinth_release::Sha256,
    pub slots: Vec<SlotBuild>,
    pub esp_image: Option<PathBuf>,
    pub disk: PathBuf,
    pub written: disk::WrittenDisk,
    /// The stage cache entry holding this build, if any: the release keeps its archives there.
    #[serde(skip)]
    pub cache_entry: Option<PathBuf>,
    /// Stage cache entries of earlier builds of the same OS and profile, newest first: the
    /// release reuses the compressed frames of their archives.
    #[serde(skip)]
    pub earlier: Vec<PathBuf>,
}

/// A stage that failed; the message names the stage and the cause.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{os}: stage {stage}: {source}")]
    Stage {
        os: String,
        stage: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{os}: root partition `{root}` has no verity partition in the same slot\n  hint: add a partition with `role: verity` (filesystem raw) next to it in os.yaml")]
    NoVerity { os: String, root: String },
    #[error("{os}: no partition with `role: root` in this profile\n  hint: os.yaml needs a root partition (or an A/B pair)")]
    NoRoot { os: String },
    #[error("{os}: {path} is not in the image\n  hint: the package systemd-boot-efi must be in os.yaml's packages")]
    NotInImage { os: String, path: String },
    #[error(transparent)]
    Cache(#[from] StageCacheError),
}

/// File in a cached build's directory that records its [`Built`].
const BUILT_FILE: &str = "built.json";
/// File in a package stage cache entry (and the work directory): the initrd made from its root.
const INITRD_FILE: &str = "initrd.img";
/// File in a root image stage cache entry (and the work directory).
const ROOT_IMAGE_FILE: &str = "root.img";

/// Build the disk of `plan.profile`, reusing the stage cache where the inputs allow.
pub fn build(plan: &BuildPlan<'_>) -> Result<Built, BuildError> {
    let b = Build::new(plan);
    let Some(cache) = plan.stage_cache else {
        return run_stages(&b, None);
    };
    let keys = StageKeys::compute(plan).map_err(b.fail("cache"))?;
    cache.cached(
        &keys.image,
        "every stage",
        plan.log,
        |out| {
            for why in cache.changed_inputs(&keys.image) {
                (plan.log)(&format!("{}: stage cache miss: {why}", b.os));
            }
            let built = run_stages(&b, Some((cache, &keys)))?;
            // The finished work directory becomes the cache entry, with paths relative to it.
            let record = serde_json::to_vec_pretty(&built.rebase(plan.work, Path::new("")))
                .map_err(b.fail("cache"))?;
            stage_cache::move_tree(plan.work, out).map_err(b.fail("cache"))?;
            std::fs::write(out.join(BUILT_FILE), record).map_err(b.fail("cache"))
        },
        |out| {
            let mut built = Built::load(out).map_err(b.fail("cache"))?;
            // The release reads the root tree (package licenses) and the initrd from the
            // package stage's entry.
            if !(built.root_dir.is_dir() && built.initrd.is_file()) {
                (plan.log)(&format!(
                    "{}: stage cache miss: the package stage entry of the cached build is gone",
                    b.os
                ));
                return Ok(None);
            }
            built.earlier = cache.others(&keys.image);
            Ok(Some(built))
        },
    )
}

/// Every stage, in order; the package stage and the root image through `cache` when given.
fn run_stages(
    b: &Build<'_>,
    cache: Option<(&StageCache, &StageKeys)>,
) -> Result<Built, BuildError> {
    let (plan, work) = (b.plan, &b.work);
    let slots = slot_partitions(plan.profile)?;
    // The package stage from the cache writes nothing here: the root image is the first.
    std::fs::create_dir_all(plan.work).map_err(b.fail("packages"))?;
    let (root, boot) = base_stages(b, cache.map(|(c, k)| (c, &k.packages)))?;
    // One root image and hash tree serve every slot: their ids do not name a slot.
    let (first_root, first_verity) = (&slots[0].0, &slots[0].1);
    root_image_stage(b, &root, first_root, cache.map(|(c, k)| (c, &k.root_image)))?;
    let (changes, osrel) = overlay_stage(b, &root)?;
    b.stage("write overlay")
        .run(|| ext4::apply(&work.root_image(), &changes, plan.epoch))?;
    let boot = state_stage(b, boot)?;
    boot_files(b, &root, &boot)?;
    let tree = b.stage("verity").run(|| {
        verity::format(
            &work.root_image(),
            &work.verity_image(),
            &b.ids.hex("root/verity-salt"),
            &b.ids.uuid_string("root/verity-uuid"),
            first_verity.size.bytes(),
        )
    })?;
    let slot_builds = uki_stage(b, &slots, &osrel, &boot, &tree.root_hash)?;
    let esp_image = esp_stage(b, &slot_builds[0])?;
    let empty = b
        .stage("filesystems")
        .run(|| empty_filesystems(plan.profile, &b.ids, plan.epoch, plan.work, plan.carried))?;
    let written = disk_stage(b, &slot_builds[0], esp_image.as_deref(), &empty)?;
    Ok(Built {
        root_dir: root,
        kernel: work.kernel(),
        kernel_release: boot.kernel_release,
        initrd: boot.initrd,
        root_image: work.root_image(),
        verity_image: work.verity_image(),
        root_hash: tree.root_hash,
        slots: slot_builds,
        esp_image,
        disk: work.disk(),
        written,
        cache_entry: None,
        earlier: Vec::new(),
    })
}

/// The package stage, the initrd made from its root and normalization, from the stage cache
/// when its key is there. dracut's initrd depends on the installed packages and on what the
/// image asks of it ([`initrd::Extras`]: for an image that keeps state, the crypt modules and
/// tools; part of the key) alone: the kernel, modules, systemd and dracut are the image's, and
/// dracut runs with `--no-hostonly`, so no other overlay file reaches it. It is made before the
/// overlay and cached with the packages: an overlay or agent change reuses both (the state's
/// own files follow it as an appendix, [`state_stage`]). The returned root is read, never
/// written, by what follows: with a stage cache it is the cache entry's own tree, and the
/// initrd the entry's own file.
fn base_stages(
    b: &Build<'_>,
    cache: Option<(&StageCache, &StageKey)>,
) -> Result<(PathBuf, initrd::Initrd), BuildError> {
    let plan = b.plan;
    let initrd_path = b.work.initrd();
    let make = || -> Result<(PathBuf, initrd::Initrd), BuildError> {
        let rplan = rootfs::Plan {
            profile: plan.profile,
            packages: plan.packages,
            cache: plan.cache,
            epoch: plan.epoch,
        };
        let root = b
            .stage("packages")
            .run(|| rootfs::install(&rplan, plan.work))?;
        let boot = b
            .stage("initrd")
            .run(|| initrd::build(&root, plan.epoch, &b.initrd_extras(), &initrd_path))?;
        b.stage("normalize")
            .run(|| normalize::normalize(&root, b.os, plan.epoch))?;
        Ok((root, boot))
    };
    let Some((cache, key)) = cache else {
        return make();
    };
    cache.cached(
        key,
        "packages and initrd",
        plan.log,
        |out| {
            let (root, boot) = make()?;
            b.stage("cache packages").run(|| {
                std::fs::create_dir_all(out)?;
                stage_cache::move_tree(&root, &out.join("root"))?;
                stage_cache::move_tree(&boot.initrd, &out.join(INITRD_FILE))?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        },
        |out| {
            // Both are read in place, like the root: nothing writes to them.
            let (root, initrd) = (out.join("root"), out.join(INITRD_FILE));
            if !(root.is_dir() && initrd.is_file()) {
                return Ok(None);
            }
            initrd::Initrd::existing(&root, &initrd)
                .map(|boot| Some((root, boot)))
                .map_err(b.fail("packages"))
        },
    )
}

/// The root filesystem made from the package stage's tree (before the overlay), from the
/// stage cache when its key is there (copied: the build writes into its own copy).
fn root_image_stage(
    b: &Build<'_>,
    root: &Path,
    partition: &Partition,
    cache: Option<(&StageCache, &StageKey)>,
) -> Result<(), BuildError> {
    let image = b.work.root_image();
    let ext4_plan = ext4::Ext4Plan {
        root,
        image: &image,
        size: partition.size.bytes(),
        uuid: &b.ids.uuid_string("root/fs-uuid"),
        hash_seed: &b.ids.uuid_string("root/hash-seed"),
        label: "root",
        epoch: b.plan.epoch,
    };
    let Some((cache, key)) = cache else {
        return b.stage("ext4").run(|| ext4::make(&ext4_plan));
    };
    cache
        .cached(
            key,
            "root image",
            b.plan.log,
            |out| {
                b.stage("ext4").run(|| {
                    std::fs::create_dir_all(out)?;
                    ext4::make(&ext4::Ext4Plan {
                        image: &out.join(ROOT_IMAGE_FILE),
                        ..ext4_plan
                    })?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
                })
            },
            |out| {
                let cached = out.join(ROOT_IMAGE_FILE);
                if !cached.is_file() {
                    return Ok(None);
                }
                super::blocks::copy_span_sparse(&cached, 0, ext4_plan.size, &image)
                    .map(Some)
                    .map_err(b.fail("ext4"))
            },
        )
        .map(|_| ())
}

/// The overlay's files, the agent, the image's own os-release and the overlay's system users,
/// as changes to write into the root image; and that os-release (the UKI's `.osrel`).
fn overlay_stage(
    b: &Build<'_>,
    root: &Path,
) -> Result<(Vec<overlay::Change>, Vec<u8>), BuildError> {
    let (plan, os) = (b.plan, b.os);
    let overlay_dirs = overlay::dirs(plan.workspace, plan.profile);
    let mut changes = b
        .stage("overlay")
        .run(|| overlay::plan_layers(&overlay_dirs, root))?;
    if let Some(name) = agent::agent_for(os) {
        let bin = b
            .stage("agent")
            .run(|| agent::build(plan.workspace, name, plan.agent_target))?;
        overlay::put_file(&mut changes, root, &format!("usr/bin/{name}"), &bin, 0o755);
    }
    // The image names itself in os-release (read by the boot report; the UKI's .osrel).
    let osrel = overlay::read_file(&changes, root, identity::OS_RELEASE)
        .map(|base| identity::os_release(&base, os, plan.version))
        .map_err(b.fail("overlay"))?;
    let osrel_path = b.work.os_release();
    std::fs::write(&osrel_path, &osrel).map_err(b.fail("overlay"))?;
    overlay::put_file(&mut changes, root, identity::OS_RELEASE, &osrel_path, 0o644);
    // The releases it carries, pinned in the verity root: the installer takes only these
    // (the data partition that holds them is not covered by verity).
    if !plan.carried.is_empty() {
        let pins = carried::pins(plan.carried, &plan.profile.profile);
        let path = b.work.carried_pins();
        std::fs::write(&path, pins).map_err(b.fail("overlay"))?;
        overlay::put_dir(&mut changes, root, "usr/lib/plinth");
        overlay::put_file(&mut changes, root, carried::PINS_IN_ROOT, &path, 0o644);
    }
    // The overlay's system users go into /etc at build time: the root is read-only.
    if !users::conf_files(&changes).is_empty() {
        let scratch = b.work.sysusers();
        b.stage("system users")
            .run(|| users::apply(&mut changes, root, &scratch, plan.epoch))?;
    }
    Ok((changes, osrel))
}

/// An image that keeps state boots an initrd with the state's appendix after dracut's; any
/// other boots dracut's as it is.
fn state_stage(b: &Build<'_>, boot: initrd::Initrd) -> Result<initrd::Initrd, BuildError> {
    let plan = b.plan;
    if plan.state.is_none() {
        return Ok(boot);
    }
    let (appendix, combined) = (b.work.state_appendix(), b.work.boot_initrd());
    let initrd = b.stage("state").run(|| {
        state::appendix(plan.workspace, plan.agent_target, plan.epoch, &appendix)?;
        state::combine(&boot.initrd, &appendix, &combined)
    })?;
    Ok(initrd::Initrd { initrd, ..boot })
}

/// The kernel, systemd-stub and systemd-boot copied out of the image's root: the UKI carries
/// the kernel, and the stub and boot loader come from the image's own packages.
fn boot_files(b: &Build<'_>, root: &Path, boot: &initrd::Initrd) -> Result<(), BuildError> {
    for (from, to) in [
        (boot.kernel.clone(), b.work.kernel()),
        (root.join(STUB_IN_ROOT), b.work.stub()),
        (root.join(BOOTLOADER_IN_ROOT), b.work.bootloader()),
    ] {
        std::fs::copy(&from, to).map_err(|_| BuildError::NotInImage {
            os: b.os.to_string(),
            path: from
                .strip_prefix(root)
                .unwrap_or(&from)
                .display()
                .to_string(),
        })?;
    }
    Ok(())
}

/// One UKI per slot: the stub with the kernel, initrd, os-release and the slot's command line;
/// and PCR 11 as systemd-stub will leave it.
fn uki_stage(
    b: &Build<'_>,
    slots: &[(Partition, Partition)],
    osrel: &[u8],
    boot: &initrd::Initrd,
    root_hash: &plinth_release::Sha256,
) -> Result<Vec<SlotBuild>, BuildError> {
    let stub = read(b.os, "uki", &b.work.stub())?;
    let linux = read(b.os, "uki", &b.work.kernel())?;
    let initrd_bytes = read(b.os, "uki", &boot.initrd)?;
    // Only an OS whose state is sealed under a signed PCR policy signs one.
    let pcrpkey = if state::signs_pcr_policy(b.plan.state) {
        b.plan.signing.public_pem().map_err(b.fail("uki"))?
    } else {
        None
    };
    let mut built = Vec::new();
    for (root_part, verity_part) in slots {
        let cmdline = identity::cmdline(
            &b.plan.profile.cmdline,
            root_part.slot,
            root_hash,
            &disk::part_guid(&b.ids, &root_part.name),
            &disk::part_guid(&b.ids, &verity_part.name),
        );
        let sections = uki::UkiSections {
            osrel,
            cmdline: &cmdline,
            uname: &boot.kernel_release,
            linux: &linux,
            initrd: &initrd_bytes,
            pcrpkey: pcrpkey.as_deref().unwrap_or_default().as_bytes(),
            pcrsig: &[],
        };
        let path = b.work.uki(&uki_name(b.os, root_part.slot));
        let loader = b.plan.profile.boot_loader != BootLoader::None;
        let (pcr11, pcr_signature) = b.stage("uki").run(|| {
            let unsigned = uki::build_uki(&stub, &sections)?;
            let signature = match &pcrpkey {
                Some(_) => b
                    .plan
                    .signing
                    .signature(root_part.slot, &measure::initrd_pcrs(&unsigned, loader)?)?,
                None => None,
            };
            let bytes = match &signature {
                Some(sig) => uki::build_uki(
                    &stub,
                    &uki::UkiSections {
                        pcrsig: sig.as_bytes(),
                        ..sections
                    },
                )?,
                None => unsigned,
            };
            std::fs::write(&path, &bytes)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((
                plinth_release::Sha256(plinth_firmware::systemd_stub::predict_pcr11(&bytes)?),
                signature,
            ))
        })?;
        built.push(SlotBuild {
            slot: root_part.slot,
            root_partition: root_part.name.clone(),
            verity_partition: verity_part.name.clone(),
            cmdline,
            uki: path,
            pcr11,
            pcr_signature,
        });
    }
    Ok(built)
}

/// The ESP, when the profile has one: it boots `first` (slot A, or the only slot); slot B
/// stays out of it until an update.
fn esp_stage(b: &Build<'_>, first: &SlotBuild) -> Result<Option<PathBuf>, BuildError> {
    let p = b.plan.profile;
    let Some(part) = p.partitions.iter().find(|q| q.role == Role::Esp) else {
        return Ok(None);
    };
    let image = b.work.esp_image();
    let entry = format!("{}.efi", uki_name(b.os, first.slot));
    let layout = boot_entries::EspLayout {
        boot_loader: &p.boot_loader,
        entry: &entry,
        uki: &first.uki,
        loader: &b.work.bootloader(),
        loader_conf: &b.work.loader_conf(),
    };
    let opts = esp::FatOptions {
        size: part.size.bytes(),
        volume_id: esp::volume_id(&b.ids, "esp/volume-id"),
        label: "ESP".into(),
        epoch: b.plan.epoch,
    };
    b.stage("esp").run(|| {
        let files = layout.files()?;
        esp::write_fat(&image, &opts, &files)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })?;
    Ok(Some(image))
}

/// The disk: the GPT, `first`'s root and verity, the ESP and the empty filesystems.
fn disk_stage(
    b: &Build<'_>,
    first: &SlotBuild,
    esp_image: Option<&Path>,
    empty: &[(String, PathBuf)],
) -> Result<disk::WrittenDisk, BuildError> {
    let p = b.plan.profile;
    let (root_image, verity_image) = (b.work.root_image(), b.work.verity_image());
    b.stage("disk").run(|| {
        let mut layout = disk::DiskLayout::from_profile(b.ids, p)
            .with_source(&first.root_partition, &root_image)?
            .with_source(&first.verity_partition, &verity_image)?;
        let esp_part = p.partitions.iter().find(|q| q.role == Role::Esp);
        if let (Some(part), Some(image)) = (esp_part, esp_image) {
            layout = layout.with_source(&part.name, image)?;
        }
        for (name, image) in empty {
            layout = layout.with_source(name, image)?;
        }
        disk::write_disk(&layout, &b.work.disk())
    })
}

/// The stage cache keys of one build.
pub struct StageKeys {
    /// The package stage: what mmdebstrap installs, its initrd, normalized.
    pub packages: StageKey,
    /// The root filesystem made from that tree (before the overlay).
    pub root_image: StageKey,
    /// The whole build.
    pub image: StageKey,
}

impl StageKeys {
    pub fn compute(
        plan: &BuildPlan<'_>,
    ) -> Result<StageKeys, Box<dyn std::error::Error + Send + Sync>> {
        use crate::packages::cache::{sha256_bytes, sha256_file};
        let p = plan.profile;
        let debs: Vec<String> = plan
            .packages
            .iter()
            .map(|d| format!("{} {}", d.key(), d.sha256))
            .collect();
        let requests: Vec<&str> = p.packages.iter().map(|r| r.name.as_str()).collect();
        let builder = sha256_file(&std::env::current_exe()?)?.0;
        let tools = host_tools()?;
        let common = |stage: &str| {
            StageKey::new(stage, &p.os, &p.profile)
                .with("epoch", plan.epoch.to_string())
                .with("host-tools", tools.clone())
        };
        let packages = common("packages")
            .with("debs", sha256_bytes(debs.join("\n").as_bytes()))
            .with("requests", requests.join(","))
            .with(
                "base",
                format!(
                    "{} {} {}",
                    p.base.release, p.base.variant, p.base.architecture
                ),
            )
            .with(
                "initrd",
                format!(
                    "{}, zstd {}",
                    state::initrd_extras(plan.state, signed(plan)).describe(),
                    initrd::ZSTD_LEVEL
                ),
            )
            .with("builder", builder);
        let root_partition = p.partitions.iter().find(|q| q.role == Role::Root);
        let root_image = common("root-image")
            .with("packages", packages.digest())
            .with("builder", builder)
            .with("version", plan.version)
            .with("partition", format!("{root_partition:?}"));
        let mut image = common("image")
            .with("packages", packages.digest())
            .with("root-image", root_image.digest())
            .with("builder", builder)
            .with("profile", sha256_bytes(format!("{p:?}").as_bytes()))
            .with("version", plan.version)
            .with("overlay", {
                let mut digests = Vec::new();
                for dir in overlay::dirs(plan.workspace, p) {
                    digests.push(stage_cache::tree_digest(&dir, &[])?);
                }
                digests.join(" ")
            });
        if !plan.carried.is_empty() {
            let carried: Vec<String> = plan
                .carried
                .iter()
                .map(|c| format!("{} {}", c.os, c.manifest_sha256))
                .collect();
            image = image.with("carried", carried.join(", "));
        }
        if agent::agent_for(&p.os).is_some() {
            image = image.with("agent-sources", agent::source_digest(plan.workspace)?);
        }
        if state::signs_pcr_policy(plan.state) {
            image = image.with("pcr-signing", plan.signing.describe()?);
        }
        Ok(StageKeys {
            packages,
            root_image,
            image,
        })
    }
}

/// The versions of the host tools whose output lands in images, as one line. A tool whose
/// version cannot be read is an error (dpkg-query names it), never a guess in a cache key.
pub(super) fn host_tools() -> Result<String, super::tool::ToolError> {
    let mut cmd = std::process::Command::new("dpkg-query");
    cmd.args(["-W", "-f", "${db:Status-Status} ${Package}=${Version}\\n"])
        .args(HOST_TOOL_PACKAGES);
    let out = cmd
        .output()
        .map_err(|source| super::tool::ToolError::Missing {
            tool: "dpkg-query",
            package: "dpkg",
            source,
        })?;
    // Exit 1: a package unknown to dpkg (the output still lists the others); more is a failure.
    if !matches!(out.status.code(), Some(0 | 1)) {
        return Err(super::tool::ToolError::Failed {
            tool: "dpkg-query",
            status: out.status.to_string(),
            command: format!("{cmd:?}"),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    installed_versions(&String::from_utf8_lossy(&out.stdout), HOST_TOOL_PACKAGES)
}

/// `package=version` of each of `wanted`, space-separated, from dpkg-query's
/// `<status> <package>=<version>` lines; every package not installed is named, with its dpkg
/// state when dpkg knows it (`half-configured`, `config-files`, …).
fn installed_versions(listing: &str, wanted: &[&str]) -> Result<String, super::tool::ToolError> {
    let entries: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once(' ')).collect();
    let state = |w: &str| {
        entries
            .iter()
            .find(|(_, e)| e.split_once('=').map(|(p, _)| p) == Some(w))
            .map(|(s, _)| *s)
    };
    let (mut packages, mut shown) = (Vec::new(), Vec::new());
    for w in wanted {
        match state(w) {
            Some("installed") => continue,
            Some(other) => shown.push(format!("{w} ({other})")),
            None => shown.push(w.to_string()),
        }
        packages.push(w.to_string());
    }
    if !packages.is_empty() {
        return Err(super::tool::ToolError::NotInstalled { packages, shown });
    }
    let installed: Vec<&str> = entries
        .iter()
        .filter(|(s, _)| *s == "installed")
        .map(|(_, e)| *e)
        .collect();
    Ok(installed.join(" "))
}

/// The Debian packages of the host tools the stages run.
const HOST_TOOL_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "apt",
    "dpkg",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "coreutils",
    // systemd-sysusers: the overlay's system users in /etc/passwd and friends.
    "systemd",
];

impl Built {
    /// The same build with every path below `from` moved below `to`.
    pub fn rebase(&self, from: &Path, to: &Path) -> Built {
        let mv = |p: &PathBuf| match p.strip_prefix(from) {
            Ok(rel) => to.join(rel),
            Err(_) => p.clone(),
        };
        let mut b = self.clone();
        b.root_dir = mv(&b.root_dir);
        b.kernel = mv(&b.kernel);
        b.initrd = mv(&b.initrd);
        b.root_image = mv(&b.root_image);
        b.verity_image = mv(&b.verity_image);
        b.disk = mv(&b.disk);
        b.esp_image = b.esp_image.as_ref().map(mv);
        for s in &mut b.slots {
            s.uki = mv(&s.uki);
        }
        b
    }

    /// Read a cached build's record from its directory.
    fn load(dir: &Path) -> Result<Built, Box<dyn std::error::Error + Send + Sync>> {
        let path = dir.join(BUILT_FILE);
        let built: Built = serde_json::from_slice(&std::fs::read(&path)?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut built = built.rebase(Path::new(""), dir);
        built.cache_entry = Some(dir.to_path_buf());
        Ok(built)
    }
}

/// The filesystems of the config and data partitions that name one (ext4 or vfat), so
/// that the installer and the OS find them formatted: ids derived like every other, label
/// the partition's name. They are empty but for the releases an ext4 data partition
/// carries ([`carried`]). Returns (partition, image) pairs.
fn empty_filesystems(
    p: &Profile,
    ids: &IdSource,
    epoch: i64,
    work: &Path,
    carried: &[carried::Carried],
) -> Result<Vec<(String, PathBuf)>, Box<dyn std::error::Error + Send + Sync>> {
    use crate::spec::Filesystem;
    let mut out = Vec::new();
    let empty_dir = work.join("empty");
    let carried_dir = work.join("carried");
    if !carried.is_empty() {
        carried::stage(carried, &carried_dir, epoch)?;
    }
    for part in &p.partitions {
        if !matches!(part.role, Role::Config | Role::Data) {
            continue;
        }
        let image = work.join(format!("{}.img", part.name));
        match part.filesystem {
            Filesystem::Ext4 => {
                std::fs::create_dir_all(&empty_dir)?;
                let carries = part.role == Role::Data && !carried.is_empty();
                ext4::make(&ext4::Ext4Plan {
                    root: if carries { &carried_dir } else { &empty_dir },
                    image: &image,
                    size: part.size.bytes(),
                    uuid: &ids.uuid_string(&format!("{}/fs-uuid", part.name)),
                    hash_seed: &ids.uuid_string(&format!("{}/hash-seed", part.name)),
                    label: &part.name,
                    epoch,
                })?;
            }
            Filesystem::Vfat => {
                let opts = esp::FatOptions {
                    size: part.size.bytes(),
                    volume_id: esp::volume_id(ids, &format!("{}/volume-id", part.name)),
                    label: part
                        .name
                        .to_uppercase()
                        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
                        .chars()
                        .take(11)
                        .collect(),
                    epoch,
                };
                esp::write_fat(&image, &opts, &[])?;
            }
            Filesystem::Raw => continue,
        }
        out.push((part.name.clone(), image));
    }
    Ok(out)
}

/// Whether the UKIs carry a signed PCR policy: the state is sealed under one and the build
/// signs.
fn signed(plan: &BuildPlan<'_>) -> bool {
    state::signs_pcr_policy(plan.state) && !matches!(plan.signing, Signing::Unsigned)
}

/// `guest-os-a` for slot A, `setup-os` for a single-slot OS.
pub use plinth_release::names::uki_stem as uki_name;

/// (root, verity) partitions per slot, slot A first.
fn slot_partitions(p: &Profile) -> Result<Vec<(Partition, Partition)>, BuildError> {
    let mut out = Vec::new();
    for root in p.partitions.iter().filter(|q| q.role == Role::Root) {
        let verity = p
            .partitions
            .iter()
            .find(|q| q.role == Role::Verity && q.slot == root.slot)
            .ok_or_else(|| BuildError::NoVerity {
                os: p.os.clone(),
                root: root.name.clone(),
            })?;
        out.push((root.clone(), verity.clone()));
    }
    out.sort_by_key(|(r, _)| r.slot);
    if out.is_empty() {
        return Err(BuildError::NoRoot { os: p.os.clone() });
    }
    Ok(out)
}

fn read(os: &str, stage: &'static str, path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|e| BuildError::Stage {
        os: os.to_string(),
        stage,
        source: format!("reading {}: {e}", path.display()).into(),
    })
}

/// One build under way: its plan, the ids its filesystems derive from and its work paths.
struct Build<'p> {
    plan: &'p BuildPlan<'p>,
    os: &'p str,
    ids: IdSource<'p>,
    work: WorkPaths,
}

impl<'p> Build<'p> {
    fn new(plan: &'p BuildPlan<'p>) -> Build<'p> {
        let os = plan.profile.os.as_str();
        Build {
            plan,
            os,
            ids: IdSource {
                os,
                version: plan.version,
            },
            work: WorkPaths(plan.work.to_path_buf()),
        }
    }

    /// What this OS's initrd carries beyond dracut's defaults.
    fn initrd_extras(&self) -> initrd::Extras {
        state::initrd_extras(self.plan.state, self.signed())
    }

    /// Whether this OS's UKIs carry a signed PCR policy.
    fn signed(&self) -> bool {
        signed(self.plan)
    }

    /// Start the stage `name`: it logs its time and is named in its error.
    fn stage(&self, name: &'static str) -> StageRunner<'_> {
        StageRunner::start(self.os, name, self.plan.log)
    }

    /// An error of the stage `stage`, for `map_err`.
    fn fail<E>(&self, stage: &'static str) -> impl Fn(E) -> BuildError + '_
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        move |e| BuildError::Stage {
            os: self.os.to_string(),
            stage,
            source: e.into(),
        }
    }
}

/// The files a build writes in its work directory, by what they are.
struct WorkPaths(PathBuf);

/// One method of [`WorkPaths`] a file: `what => file name`.
macro_rules! work_files {
    ($($(#[$doc:meta])* $what:ident => $file:expr;)*) => {
        impl WorkPaths {
            $($(#[$doc])* fn $what(&self) -> PathBuf { self.0.join($file) })*
        }
    };
}

work_files! {
    initrd => INITRD_FILE;
    root_image => ROOT_IMAGE_FILE;
    /// The image's os-release, as the overlay writes it into the root.
    os_release => "os-release";
    /// Scratch space of `systemd-sysusers`.
    sysusers => "sysusers";
    /// The pins of the carried releases ([`carried::pins`]), as written into the root.
    carried_pins => "carried.json";
    /// The state's files appended to dracut's initrd ([`state::appendix`]).
    state_appendix => "state-appendix.cpio.zst";
    /// The UKI's initrd when the image keeps state: dracut's, then the appendix.
    boot_initrd => "boot-initrd.img";
    kernel => "vmlinuz";
    stub => "linuxx64.efi.stub";
    bootloader => "systemd-bootx64.efi";
    verity_image => "verity.img";
    esp_image => "esp.img";
    loader_conf => "loader.conf";
    disk => "disk.img";
}

impl WorkPaths {
    /// A slot's UKI, named by [`uki_name`].
    fn uki(&self, stem: &str) -> PathBuf {
        self.0.join(format!("{stem}.efi"))
    }
}

/// Runs one stage: logs its name and time, and names it in its error.
struct StageRunner<'a> {
    os: &'a str,
    name: &'static str,
    log: &'a dyn Fn(&str),
    start: Instant,
}

impl<'a> StageRunner<'a> {
    fn start(os: &'a str, name: &'static str, log: &'a dyn Fn(&str)) -> StageRunner<'a> {
        StageRunner {
            os,
            name,
            log,
            start: Instant::now(),
        }
    }

    fn run<T, E>(self, f: impl FnOnce() -> Result<T, E>) -> Result<T, BuildError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let result = f().map_err(|e| BuildError::Stage {
            os: self.os.to_string(),
            stage: self.name,
            source: e.into(),
        });
        if result.is_ok() {
            (self.log)(&format!(
                "{}: {} done in {:.1} s",
                self.os,
                self.name,
                self.start.elapsed().as_secs_f64()
            ));
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_tools_not_installed_are_named() {
        let listing =
            "installed mmdebstrap=1.3.5-7\nconfig-files dosfstools=4.2-1\ninstalled apt=2.6.1\n";
        let wanted = ["mmdebstrap", "apt", "dosfstools", "mtools"];
        let err = super::installed_versions(listing, &wanted)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "host tools not installed: dosfstools (config-files), mtools\n  hint: run ci/setup, or `apt-get install dosfstools mtools`"
        );
        assert_eq!(
            super::installed_versions(listing, &["apt", "mmdebstrap"]).unwrap(),
            "mmdebstrap=1.3.5-7 apt=2.6.1"
        );
    }

    #[test]
    fn every_host_tool_has_its_version_in_the_key() {
        let line = super::host_tools().expect("ci/setup installs the host tools");
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words.len(), super::HOST_TOOL_PACKAGES.len(), "{line}");
        for package in super::HOST_TOOL_PACKAGES {
            let version = words
                .iter()
                .find_map(|w| w.strip_prefix(&format!("{package}=")))
                .unwrap_or("");
            assert!(!version.is_empty(), "{package} has no version in {line}");
        }
    }
}
