//! One OS profile from its lock to a disk image: a flat list of stages, each a call into its
//! own module, read top to bottom (mkosi's shape). Packages → initrd → normalize → root ext4
//! → overlay and agent written into it → verity → UKI per slot → ESP → disk. Everything is
//! written below the build's own work directory; artifacts are assembled from [`Built`] by the
//! caller.
//!
//! With a stage cache, three keys are computed first ([`StageKeys`]): the package stage's
//! (lock, base, epoch, host tools, builder), the root image's (that plus the version, which
//! the filesystem's ids derive from, and the partition) and the whole build's (that plus the
//! overlay, the agent sources and the profile). A hit on the last reuses everything; a hit on
//! the first reuses the normalized root tree (read in place, never copied) and its initrd, and
//! one on the second also its ext4 image, so an overlay change only writes a few inodes into a
//! copy of that image and reruns what follows.

use super::stage_cache::{self, StageCache, StageKey};
use super::{
    agent, disk, esp, ext4, identity, ids::IdSource, initrd, normalize, overlay, rootfs, uki,
    users, verity,
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
}

/// File in a cached build's directory that records its [`Built`].
const BUILT_FILE: &str = "built.json";

/// Build the disk of `plan.profile`, reusing the stage cache where the inputs allow.
pub fn build(plan: &BuildPlan<'_>) -> Result<Built, BuildError> {
    let os = plan.profile.os.as_str();
    let failed = |stage: &'static str| {
        move |e: Box<dyn std::error::Error + Send + Sync>| BuildError::Stage {
            os: os.to_string(),
            stage,
            source: e,
        }
    };
    let Some(cache) = plan.stage_cache else {
        return run_stages(plan, None);
    };
    let keys = StageKeys::compute(plan).map_err(failed("cache"))?;
    if let Some(out) = cache.lookup(&keys.image) {
        let mut built = Built::load(&out).map_err(failed("cache"))?;
        // The release reads the root tree (package licenses) from the package stage's entry.
        if built.root_dir.is_dir() {
            built.earlier = cache.others(&keys.image);
            (plan.log)(&format!(
                "{os}: every stage reused from the stage cache ({})",
                &keys.image.digest()[..12]
            ));
            return Ok(built);
        }
        (plan.log)(&format!(
            "{os}: stage cache miss: the package stage entry of the cached build is gone"
        ));
    }
    for why in cache.changed_inputs(&keys.image) {
        (plan.log)(&format!("{os}: stage cache miss: {why}"));
    }
    let built = run_stages(plan, Some((cache, &keys)))?;
    // The finished work directory becomes the cache entry (moved, or copied across
    // filesystems); the build continues from there.
    cache
        .store(
            &keys.image,
            |out| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                if std::fs::rename(plan.work, out).is_err() {
                    stage_cache::copy_tree(plan.work, out)?;
                }
                // Paths relative to the entry: it is renamed into place after this.
                let relative = built.rebase(plan.work, Path::new(""));
                std::fs::write(out.join(BUILT_FILE), serde_json::to_vec_pretty(&relative)?)?;
                Ok(())
            },
        )
        .map_err(failed("cache"))?;
    let out = cache
        .lookup(&keys.image)
        .ok_or_else(|| failed("cache")("the entry just stored is missing".into()))?;
    let mut built = Built::load(&out).map_err(failed("cache"))?;
    built.earlier = cache.others(&keys.image);
    Ok(built)
}

/// File in a package stage cache entry: the initrd made from its root.
const INITRD_FILE: &str = "initrd.img";
/// File in a root image stage cache entry.
const ROOT_IMAGE_FILE: &str = "root.img";

/// The package stage, the initrd made from its root and normalization, from the stage cache
/// when its key is there. The initrd depends on the installed packages alone (kernel,
/// modules, systemd and dracut are the image's; dracut runs with `--no-hostonly`, so no
/// configuration of the overlay reaches it), so it is made before the overlay and cached with
/// the packages: an overlay or agent change reuses both. The returned root is read, never
/// written, by what follows: with a stage cache it is the cache entry's own tree.
fn base_stages(
    rplan: &rootfs::Plan<'_>,
    plan: &BuildPlan<'_>,
    cache: Option<(&StageCache, &StageKey)>,
) -> Result<(PathBuf, initrd::Initrd), BuildError> {
    let os = rplan.profile.os.as_str();
    let stage = |name| StageRunner::start(os, name, plan.log);
    let work = plan.work;
    let initrd_path = work.join(INITRD_FILE);
    let make = || -> Result<(PathBuf, initrd::Initrd), BuildError> {
        let root = stage("packages").run(|| rootfs::install(rplan, work))?;
        let boot = stage("initrd").run(|| initrd::build(&root, plan.epoch, &initrd_path))?;
        stage("normalize").run(|| normalize::normalize(&root, os, plan.epoch))?;
        Ok((root, boot))
    };
    let Some((cache, key)) = cache else {
        return make();
    };
    // An entry without its initrd or root (removed by hand) counts as a miss.
    let entry = || {
        cache
            .lookup(key)
            .filter(|o| o.join(INITRD_FILE).is_file() && o.join("root").is_dir())
    };
    if let Some(out) = entry() {
        let root = out.join("root");
        let boot = stage("packages").run(|| {
            std::fs::create_dir_all(work)?;
            std::fs::copy(out.join(INITRD_FILE), &initrd_path)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(initrd::Initrd::existing(
                &root,
                &initrd_path,
            )?)
        })?;
        (plan.log)(&format!(
            "{os}: packages and initrd reused from the stage cache ({})",
            &key.digest()[..12]
        ));
        return Ok((root, boot));
    }
    let (root, boot) = make()?;
    stage("cache packages").run(|| {
        cache.store(
            key,
            |out| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                std::fs::create_dir_all(out)?;
                if std::fs::rename(&root, out.join("root")).is_err() {
                    stage_cache::copy_tree(&root, &out.join("root"))?;
                }
                std::fs::copy(&boot.initrd, out.join(INITRD_FILE))?;
                Ok(())
            },
        )
    })?;
    let out = entry().ok_or_else(|| BuildError::Stage {
        os: os.to_string(),
        stage: "cache packages",
        source: "the entry just stored is missing".into(),
    })?;
    let root = out.join("root");
    let boot = initrd::Initrd::existing(&root, &boot.initrd).map_err(|e| BuildError::Stage {
        os: os.to_string(),
        stage: "cache packages",
        source: Box::new(e),
    })?;
    Ok((root, boot))
}

/// The root filesystem made from the package stage's tree (before the overlay) into `image`,
/// from the stage cache when its key is there (copied: the build writes into its own copy).
fn root_image_stage(
    ext4_plan: &ext4::Ext4Plan<'_>,
    plan: &BuildPlan<'_>,
    cache: Option<(&StageCache, &StageKey)>,
) -> Result<(), BuildError> {
    let os = plan.profile.os.as_str();
    let stage = |name| StageRunner::start(os, name, plan.log);
    let image = ext4_plan.image;
    let Some((cache, key)) = cache else {
        return stage("ext4").run(|| ext4::make(ext4_plan));
    };
    if let Some(out) = cache
        .lookup(key)
        .filter(|o| o.join(ROOT_IMAGE_FILE).is_file())
    {
        let cached = out.join(ROOT_IMAGE_FILE);
        stage("ext4").run(|| super::blocks::copy_span_sparse(&cached, 0, ext4_plan.size, image))?;
        (plan.log)(&format!(
            "{os}: root image reused from the stage cache ({})",
            &key.digest()[..12]
        ));
        return Ok(());
    }
    stage("ext4").run(|| ext4::make(ext4_plan))?;
    stage("cache root image").run(|| {
        cache.store(
            key,
            |out| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                std::fs::create_dir_all(out)?;
                super::blocks::copy_span_sparse(
                    image,
                    0,
                    ext4_plan.size,
                    &out.join(ROOT_IMAGE_FILE),
                )?;
                Ok(())
            },
        )
    })?;
    Ok(())
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
                    "dracut --add '{}', zstd {}",
                    initrd::MODULES,
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
            .with(
                "overlay",
                stage_cache::tree_digest(&plan.workspace.join(&p.os).join("rootfs"), &[])?,
            );
        if agent::agent_for(&p.os).is_some() {
            image = image.with("agent-sources", agent::source_digest(plan.workspace)?);
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
    cmd.args(["-W", "-f", "${Package}=${Version} "])
        .args(HOST_TOOL_PACKAGES);
    let out = super::tool::run("dpkg-query", "dpkg", &mut cmd)?;
    Ok(out.stdout_text().trim().to_string())
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

/// Every stage, in order; the package stage and the root image through `cache` when given.
fn run_stages(
    plan: &BuildPlan<'_>,
    cache: Option<(&StageCache, &StageKeys)>,
) -> Result<Built, BuildError> {
    let p = plan.profile;
    let os = p.os.as_str();
    let ids = IdSource {
        os,
        version: plan.version,
    };
    let slots = slot_partitions(p)?;
    let stage = |name| StageRunner::start(os, name, plan.log);

    let rplan = rootfs::Plan {
        profile: p,
        packages: plan.packages,
        cache: plan.cache,
        epoch: plan.epoch,
    };
    let (root, boot) = base_stages(&rplan, plan, cache.map(|(c, k)| (c, &k.packages)))?;
    // One root image and hash tree serve every slot: their ids do not name a slot.
    let (first_root, first_verity) = (&slots[0].0, &slots[0].1);
    let root_image = plan.work.join("root.img");
    root_image_stage(
        &ext4::Ext4Plan {
            root: &root,
            image: &root_image,
            size: first_root.size.bytes(),
            uuid: &ids.uuid_string("root/fs-uuid"),
            hash_seed: &ids.uuid_string("root/hash-seed"),
            label: "root",
            epoch: plan.epoch,
        },
        plan,
        cache.map(|(c, k)| (c, &k.root_image)),
    )?;
    let overlay_dir = plan.workspace.join(os).join("rootfs");
    let mut changes = stage("overlay").run(|| overlay::plan(&overlay_dir, &root))?;
    if let Some(name) = agent::agent_for(os) {
        let bin = stage("agent").run(|| agent::build(plan.workspace, name, plan.agent_target))?;
        overlay::put_file(&mut changes, &root, &format!("usr/bin/{name}"), &bin, 0o755);
    }
    // The image names itself in os-release (read by the boot report; the UKI's .osrel).
    let osrel = overlay::read_file(&changes, &root, identity::OS_RELEASE)
        .map(|base| identity::os_release(&base, os, plan.version))
        .map_err(|e| BuildError::Stage {
            os: os.to_string(),
            stage: "overlay",
            source: Box::new(e),
        })?;
    let osrel_path = plan.work.join("os-release");
    std::fs::write(&osrel_path, &osrel).map_err(|e| BuildError::Stage {
        os: os.to_string(),
        stage: "overlay",
        source: Box::new(e),
    })?;
    overlay::put_file(
        &mut changes,
        &root,
        identity::OS_RELEASE,
        &osrel_path,
        0o644,
    );
    // The overlay's system users go into /etc at build time: the root is read-only.
    if !users::conf_files(&changes).is_empty() {
        let scratch = plan.work.join("sysusers");
        stage("system users").run(|| users::apply(&mut changes, &root, &scratch, plan.epoch))?;
    }
    stage("write overlay").run(|| ext4::apply(&root_image, &changes, plan.epoch))?;
    // Kept outside the root: the UKI carries them, and the stub and boot loader come from the
    // image's own packages.
    let kernel = plan.work.join("vmlinuz");
    let stub = plan.work.join("linuxx64.efi.stub");
    let bootloader = plan.work.join("systemd-bootx64.efi");
    for (from, to) in [
        (boot.kernel.clone(), &kernel),
        (root.join(STUB_IN_ROOT), &stub),
        (root.join(BOOTLOADER_IN_ROOT), &bootloader),
    ] {
        std::fs::copy(&from, to).map_err(|_| BuildError::NotInImage {
            os: os.to_string(),
            path: from
                .strip_prefix(&root)
                .unwrap_or(&from)
                .display()
                .to_string(),
        })?;
    }

    let verity_image = plan.work.join("verity.img");
    let tree = stage("verity").run(|| {
        verity::format(
            &root_image,
            &verity_image,
            &ids.hex("root/verity-salt"),
            &ids.uuid_string("root/verity-uuid"),
            first_verity.size.bytes(),
        )
    })?;

    let stub_bytes = read(os, "uki", &stub)?;
    let linux = read(os, "uki", &kernel)?;
    let initrd_bytes = read(os, "uki", &boot.initrd)?;
    let mut slot_builds = Vec::new();
    for (root_part, verity_part) in &slots {
        let slot_arg = match root_part.slot {
            Some(slot) => format!(" {}", identity::slot_arg(slot)),
            None => String::new(),
        };
        let cmdline = format!(
            "{}{slot_arg} roothash={} systemd.verity_root_data=PARTUUID={} systemd.verity_root_hash=PARTUUID={} root=/dev/mapper/root ro",
            p.cmdline.join(" "),
            tree.root_hash,
            disk::part_guid(&ids, &root_part.name),
            disk::part_guid(&ids, &verity_part.name),
        );
        let sections = uki::UkiSections {
            osrel: &osrel,
            cmdline: &cmdline,
            uname: &boot.kernel_release,
            linux: &linux,
            initrd: &initrd_bytes,
        };
        let path = plan
            .work
            .join(format!("{}.efi", uki_name(os, root_part.slot)));
        let pcr11 = stage("uki").run(|| {
            let bytes = uki::build_uki(&stub_bytes, &sections)?;
            std::fs::write(&path, &bytes)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(plinth_release::Sha256(
                plinth_firmware::systemd_stub::predict_pcr11(&bytes)?,
            ))
        })?;
        slot_builds.push(SlotBuild {
            slot: root_part.slot,
            root_partition: root_part.name.clone(),
            verity_partition: verity_part.name.clone(),
            cmdline,
            uki: path,
            pcr11,
        });
    }

    // A fresh disk boots slot A (or the only slot); slot B stays empty until an update.
    let first = &slot_builds[0];
    let esp_part = p.partitions.iter().find(|q| q.role == Role::Esp);
    let esp_image = match esp_part {
        Some(part) => {
            let image = plan.work.join("esp.img");
            let entry = format!("{}.efi", uki_name(os, first.slot));
            let files = match p.boot_loader {
                BootLoader::SystemdBoot => {
                    let loader_conf = plan.work.join("loader.conf");
                    std::fs::write(&loader_conf, format!("timeout 0\ndefault {entry}\n")).map_err(
                        |e| BuildError::Stage {
                            os: os.to_string(),
                            stage: "esp",
                            source: Box::new(e),
                        },
                    )?;
                    vec![
                        esp::FatFile::new(super::measure::LOADER_PATH, &bootloader),
                        esp::FatFile::new("EFI/systemd/systemd-bootx64.efi", &bootloader),
                        esp::FatFile::new(format!("EFI/Linux/{entry}"), &first.uki),
                        esp::FatFile::new("loader/loader.conf", &loader_conf),
                    ]
                }
                // The firmware starts the UKI itself: no loader, no loader.conf.
                BootLoader::None => {
                    vec![esp::FatFile::new(super::measure::LOADER_PATH, &first.uki)]
                }
            };
            let opts = esp::FatOptions {
                size: part.size.bytes(),
                volume_id: esp::volume_id(&ids, "esp/volume-id"),
                label: "ESP".into(),
                epoch: plan.epoch,
            };
            stage("esp").run(|| esp::write_fat(&image, &opts, &files))?;
            Some(image)
        }
        None => None,
    };

    let empty = stage("filesystems").run(|| empty_filesystems(p, &ids, plan.epoch, plan.work))?;

    let disk_path = plan.work.join("disk.img");
    let written = stage("disk").run(|| {
        let mut layout = disk::DiskLayout::from_profile(ids, p)
            .with_source(&first.root_partition, &root_image)?
            .with_source(&first.verity_partition, &verity_image)?;
        if let (Some(part), Some(image)) = (esp_part, &esp_image) {
            layout = layout.with_source(&part.name, image)?;
        }
        for (name, image) in &empty {
            layout = layout.with_source(name, image)?;
        }
        disk::write_disk(&layout, &disk_path)
    })?;
    Ok(Built {
        root_dir: root,
        kernel,
        kernel_release: boot.kernel_release,
        initrd: boot.initrd,
        root_image,
        verity_image,
        root_hash: tree.root_hash,
        slots: slot_builds,
        esp_image,
        disk: disk_path,
        written,
        cache_entry: None,
        earlier: Vec::new(),
    })
}

/// Empty filesystems for the config and data partitions that name one (ext4 or vfat), so
/// that the installer and the OS find them formatted: ids derived like every other, label
/// the partition's name. Returns (partition, image) pairs.
fn empty_filesystems(
    p: &Profile,
    ids: &IdSource,
    epoch: i64,
    work: &Path,
) -> Result<Vec<(String, PathBuf)>, Box<dyn std::error::Error + Send + Sync>> {
    use crate::spec::Filesystem;
    let mut out = Vec::new();
    let empty_dir = work.join("empty");
    for part in &p.partitions {
        if !matches!(part.role, Role::Config | Role::Data) {
            continue;
        }
        let image = work.join(format!("{}.img", part.name));
        match part.filesystem {
            Filesystem::Ext4 => {
                std::fs::create_dir_all(&empty_dir)?;
                ext4::make(&ext4::Ext4Plan {
                    root: &empty_dir,
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
