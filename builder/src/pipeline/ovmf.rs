//! The guest firmware stage: edk2's `OvmfPkg/AmdSev` (AmdSevX64) built from the locked Debian
//! source package with the locked toolchain, reproducibly.
//!
//! The toolchain (compiler, binutils, nasm, iasl, python3, quilt: their versions change the
//! firmware's bytes) is installed by the package stage from the lock's `firmware-toolchain`
//! set into a root of its own. The verified tarballs and `firmware/ovmf/` (the build script
//! and the patch that drops AmdSev's Grub prebuild) are copied to `/build` inside it, and
//! the script runs there under chroot in private mount, PID and network namespaces: no
//! network, and the tree always at `/build/edk2` (edk2's GenFw reserves space by the path's
//! length). The output is cached by the digests of exactly those inputs.

use super::rootfs;
use super::stage_cache::{StageCache, StageKey};
use super::tool;
use crate::packages::cache::{sha256_bytes, sha256_file, Cache};
use crate::packages::lockfile::{LockedPackage, LockedSource};
use crate::spec::Profile;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The firmware's file name in a release.
pub const FIRMWARE_FILE: &str = "OVMF-AmdSev.fd";
/// The recipe's directory in the source tree.
pub const RECIPE_DIR: &str = "firmware/ovmf";
/// The recipe files copied into the toolchain root, beside the tarballs.
const RECIPE_FILES: [&str; 2] = ["build.sh", "amdsev-without-grub.patch"];
/// Where the build happens inside the toolchain root (fixed: the bytes depend on it).
const BUILD_DIR: &str = "build";

/// Why the firmware could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error(transparent)]
    Packages(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Tool(#[from] tool::ToolError),
    #[error("{path}: {action}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("source {package} {version}: {message}\n  hint: run `plinth lock guest-os`; the recipe needs an `.orig.tar.*` and a `.debian.tar.*`")]
    Tarballs {
        package: String,
        version: String,
        message: String,
    },
    #[error("{file} of {package} {version} is not in the cache {cache}\n  hint: run `plinth fetch guest-os`")]
    NotCached {
        file: String,
        package: String,
        version: String,
        cache: String,
    },
    #[error(transparent)]
    StageCache(#[from] super::stage_cache::StageCacheError),
}

/// What the firmware stage needs.
pub struct FirmwarePlan<'a> {
    /// The plinth source tree (`firmware/ovmf/`).
    pub workspace: &'a Path,
    /// The toolchain as a package set (`OsSpec::firmware_toolchain`).
    pub toolchain: &'a Profile,
    /// The lock's packages of that set.
    pub packages: &'a [&'a LockedPackage],
    pub source: &'a LockedSource,
    pub cache: &'a Cache,
    pub epoch: i64,
    /// An empty directory this stage owns.
    pub work: &'a Path,
    /// Parallel jobs of the build (does not change the bytes).
    pub jobs: usize,
    pub stage_cache: Option<&'a StageCache>,
    pub log: &'a dyn Fn(&str),
}

/// The built firmware.
#[derive(Debug, Clone)]
pub struct Firmware {
    pub path: PathBuf,
    pub sha256: plinth_release::Sha256,
}

/// Build the firmware, or take it from the stage cache when its inputs are unchanged.
pub fn build(plan: &FirmwarePlan<'_>) -> Result<Firmware, FirmwareError> {
    let key = stage_key(plan)?;
    let Some(cache) = plan.stage_cache else {
        return compile_logged(plan);
    };
    cache.cached(
        &key,
        &format!("firmware {FIRMWARE_FILE}"),
        plan.log,
        |dir| {
            let built = compile_logged(plan)?;
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
            let dest = dir.join(FIRMWARE_FILE);
            std::fs::copy(&built.path, &dest).map_err(io("copying", &dest))?;
            Ok(())
        },
        |dir| {
            let path = dir.join(FIRMWARE_FILE);
            path.is_file().then(|| found(&path)).transpose()
        },
    )
}

/// Compile the firmware, logging how long it took.
fn compile_logged(plan: &FirmwarePlan<'_>) -> Result<Firmware, FirmwareError> {
    let start = std::time::Instant::now();
    let built = compile(plan)?;
    (plan.log)(&format!(
        "{}: firmware {FIRMWARE_FILE} built from {} {} in {:.1} s (sha256 {})",
        plan.toolchain.os,
        plan.source.package,
        plan.source.version,
        start.elapsed().as_secs_f64(),
        built.sha256
    ));
    Ok(built)
}

/// The stage's inputs: the toolchain's exact packages, the tarballs, the recipe files, the
/// host tools that install the toolchain. (Not the builder: it only orchestrates.)
fn stage_key(plan: &FirmwarePlan<'_>) -> Result<StageKey, FirmwareError> {
    let p = plan.toolchain;
    let debs: Vec<String> = plan
        .packages
        .iter()
        .map(|d| format!("{} {}", d.key(), d.sha256))
        .collect();
    let files: Vec<String> = plan
        .source
        .files
        .iter()
        .map(|f| format!("{} {}", f.name, f.sha256))
        .collect();
    let mut key = StageKey::new("firmware", &p.os, &p.profile)
        .with("toolchain", sha256_bytes(debs.join("\n").as_bytes()))
        .with(
            "source",
            format!(
                "{} {} {}",
                plan.source.package,
                plan.source.version,
                sha256_bytes(files.join("\n").as_bytes())
            ),
        )
        .with("base", format!("{} {}", p.base.release, p.base.variant))
        .with("build-dir", format!("/{BUILD_DIR}/edk2"))
        .with("host-tools", super::build::host_tools()?);
    for name in RECIPE_FILES {
        let path = plan.workspace.join(RECIPE_DIR).join(name);
        key = key.with(name, sha256_file(&path).map_err(io("reading", &path))?.0);
    }
    Ok(key)
}

/// Install the toolchain, copy the inputs in and run the build script.
fn compile(plan: &FirmwarePlan<'_>) -> Result<Firmware, FirmwareError> {
    let (orig, debian) = tarballs(plan.source)?;
    let os = &plan.toolchain.os;
    let start = std::time::Instant::now();
    let root = rootfs::install(
        &rootfs::Plan {
            profile: plan.toolchain,
            packages: plan.packages,
            cache: plan.cache,
            epoch: plan.epoch,
        },
        &plan.work.join("toolchain"),
    )?;
    (plan.log)(&format!(
        "{os}: firmware toolchain root ({} packages) installed in {:.1} s",
        plan.packages.len(),
        start.elapsed().as_secs_f64()
    ));
    let build_dir = root.join(BUILD_DIR);
    let src = build_dir.join("src");
    std::fs::create_dir_all(&src).map_err(io("creating", &src))?;
    for f in &plan.source.files {
        let cached = plan.cache.deb_path(&f.sha256);
        if !plan.cache.contains(&f.sha256, f.size) {
            return Err(FirmwareError::NotCached {
                file: f.name.clone(),
                package: plan.source.package.clone(),
                version: plan.source.version.clone(),
                cache: plan.cache.root().display().to_string(),
            });
        }
        let dest = src.join(&f.name);
        std::fs::copy(&cached, &dest).map_err(io("copying", &dest))?;
    }
    for name in RECIPE_FILES {
        let from = plan.workspace.join(RECIPE_DIR).join(name);
        let dest = build_dir.join(name);
        std::fs::copy(&from, &dest).map_err(io("copying", &from))?;
    }
    let log = plan.work.join("firmware-build.log");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "--net", "--", "sh", "-c"])
        .arg(BUILD_IN_NAMESPACES)
        .arg("sh")
        .arg(&root)
        .arg(&log)
        .args(["sh", &format!("/{BUILD_DIR}/build.sh")])
        .arg(orig)
        .arg(debian)
        .arg(plan.jobs.max(1).to_string())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    let start = std::time::Instant::now();
    tool::run("unshare", "util-linux", &mut cmd)?;
    // The same steps as edk2's own build (unpack, patch, BaseTools, `build`): what
    // ci/bench-images compares with it.
    (plan.log)(&format!(
        "{os}: firmware edk2 build (unpack, patches, BaseTools, build) in {:.1} s",
        start.elapsed().as_secs_f64()
    ));
    let built = build_dir.join("out").join(FIRMWARE_FILE_IN_BUILD);
    let dest = plan.work.join(FIRMWARE_FILE);
    std::fs::copy(&built, &dest).map_err(io("copying", &built))?;
    // The toolchain root is half a gigabyte: gone once the firmware is out.
    std::fs::remove_dir_all(plan.work.join("toolchain"))
        .map_err(io("removing", &plan.work.join("toolchain")))?;
    found(&dest)
}

/// Run in fresh mount, PID and network namespaces: `sh -c THIS sh ROOT LOG COMMAND...`. The
/// root gets its own /proc and a /dev of only null, zero, full, random, urandom and a /dev/shm
/// (Python's multiprocessing, which edk2's build uses); the build's whole output goes to LOG,
/// and a failure prints its last lines.
const BUILD_IN_NAMESPACES: &str = r#"set -e
root=$1 log=$2
shift 2
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755,nosuid dev "$root/dev"
for d in null zero full random urandom; do
  : >"$root/dev/$d"
  mount --bind "/dev/$d" "$root/dev/$d"
done
mkdir "$root/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$root/dev/shm"
rc=0
chroot "$root" "$@" >"$log" 2>&1 || rc=$?
[ "$rc" -eq 0 ] && exit 0
tail -n 40 "$log" >&2
echo "the firmware build failed (exit $rc); plinth build --work DIR keeps its whole log" >&2
exit "$rc""#;

/// The name build.sh gives its output.
const FIRMWARE_FILE_IN_BUILD: &str = "OVMF.fd";

/// The orig and debian tarballs of a `3.0 (quilt)` source.
fn tarballs(source: &LockedSource) -> Result<(&str, &str), FirmwareError> {
    let find = |part: &str| {
        source
            .files
            .iter()
            .find(|f| f.name.contains(part))
            .map(|f| f.name.as_str())
    };
    match (find(".orig.tar."), find(".debian.tar.")) {
        (Some(orig), Some(debian)) => Ok((orig, debian)),
        _ => Err(FirmwareError::Tarballs {
            package: source.package.clone(),
            version: source.version.clone(),
            message: format!(
                "the lock lists {}",
                source
                    .files
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

fn found(path: &Path) -> Result<Firmware, FirmwareError> {
    let sha256 = plinth_release::Sha256::of_file(path)
        .map_err(io("reading", path))?
        .0;
    Ok(Firmware {
        path: path.to_path_buf(),
        sha256,
    })
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FirmwareError {
    let path = path.display().to_string();
    move |source| FirmwareError::Io {
        action,
        path,
        source,
    }
}
