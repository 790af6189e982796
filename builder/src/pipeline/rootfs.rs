//! The root filesystem tree of one OS profile: mmdebstrap installs exactly the locked `.deb`s
//! from a private repository built from the verified cache, with no network (its own network
//! namespace), then the installed set is checked against the lock.
//!
//! Overlay, agent and normalization are later stages; this one only installs packages.

use crate::packages::cache::Cache;
use crate::packages::lockfile::LockedPackage;
use crate::spec::Profile;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why the package stage failed.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{count} locked packages of {os} ({profile}) are not in the cache {cache}: {}\n  hint: run `plinth fetch {os} --profile {profile}`", missing.join(", "))]
    NotCached {
        os: String,
        profile: String,
        cache: String,
        count: usize,
        missing: Vec<String>,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tool(#[from] super::tool::ToolError),
    #[error("{os} ({profile}): the installed packages differ from the lock\n  installed but not locked: {}\n  locked but not installed: {}\n  hint: the lock no longer matches how apt resolves; run `plinth lock {os}`", extra.join(", "), absent.join(", "))]
    Mismatch {
        os: String,
        profile: String,
        extra: Vec<String>,
        absent: Vec<String>,
    },
}

/// What the package stage needs.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'a> {
    pub profile: &'a Profile,
    /// The lock's packages of this profile.
    pub packages: &'a [&'a LockedPackage],
    pub cache: &'a Cache,
    /// SOURCE_DATE_EPOCH.
    pub epoch: i64,
}

/// Install the profile's packages into `work/root` (created); `work` must be empty or absent.
pub fn install(plan: &Plan<'_>, work: &Path) -> Result<PathBuf, RootfsError> {
    let repo = work.join("repo");
    let root = work.join("root");
    local_repository(plan, &repo)?;
    mmdebstrap(plan, &repo, &root)?;
    check_installed(plan, &root)?;
    Ok(root)
}

/// A flat repository holding exactly the locked packages (hard links into the cache), its
/// index made by apt-ftparchive. Unsigned: every file was verified against the lock when it
/// entered the cache, and apt reads it only through `copy:`.
fn local_repository(plan: &Plan<'_>, repo: &Path) -> Result<(), RootfsError> {
    let p = plan.profile;
    let missing: Vec<String> = plan
        .packages
        .iter()
        .filter(|pkg| !plan.cache.contains(&pkg.sha256, pkg.size))
        .map(|pkg| pkg.key())
        .collect();
    if !missing.is_empty() {
        return Err(RootfsError::NotCached {
            os: p.os.clone(),
            profile: p.profile.clone(),
            cache: plan.cache.root().display().to_string(),
            count: missing.len(),
            missing,
        });
    }
    let pool = repo.join("pool");
    mkdir(&pool)?;
    for pkg in plan.packages {
        let dest = pool.join(format!("{}.deb", pkg.sha256));
        let src = plan.cache.deb_path(&pkg.sha256);
        if std::fs::hard_link(&src, &dest).is_err() {
            std::fs::copy(&src, &dest).map_err(io("copying", &dest))?;
        }
    }
    let dist = repo.join("dists").join(&p.base.release);
    let index_dir = dist
        .join("main")
        .join(format!("binary-{}", p.base.architecture));
    mkdir(&index_dir)?;
    let packages = run(
        "apt-ftparchive",
        "apt-utils",
        Command::new("apt-ftparchive")
            .current_dir(repo)
            .args(["packages", "pool"]),
    )?;
    let index = index_dir.join("Packages");
    std::fs::write(&index, packages).map_err(io("writing", &index))?;
    let release = run(
        "apt-ftparchive",
        "apt-utils",
        Command::new("apt-ftparchive")
            .current_dir(&dist)
            .arg("-o")
            .arg(format!(
                "APT::FTPArchive::Release::Codename={}",
                p.base.release
            ))
            .arg("-o")
            .arg(format!(
                "APT::FTPArchive::Release::Suite={}",
                p.base.release
            ))
            .args(["release", "."]),
    )?;
    let release_path = dist.join("Release");
    std::fs::write(&release_path, release).map_err(io("writing", &release_path))
}

/// mmdebstrap in its own network namespace, from the local repository only.
fn mmdebstrap(plan: &Plan<'_>, repo: &Path, root: &Path) -> Result<(), RootfsError> {
    let p = plan.profile;
    // The local repository holds one version of each package: no suite qualifiers needed.
    let names: Vec<&str> = p.packages.iter().map(|r| r.name.as_str()).collect();
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--", "sh", "-c", "umask 022 && exec \"$@\"", "sh"])
        .arg("mmdebstrap")
        .args(["--mode=root", "--format=directory", "--quiet"])
        .arg(format!("--variant={}", p.base.variant))
        .arg(format!("--architectures={}", p.base.architecture))
        .args(["--aptopt=Acquire::Languages \"none\""])
        // No fsync per file: a failed build is thrown away whole (normalize removes the
        // option from the image).
        .arg("--dpkgopt=force-unsafe-io")
        .arg(format!("--include={}", names.join(",")))
        .arg(&p.base.release)
        .arg(root)
        .arg(format!(
            "deb [trusted=yes] copy://{} {} main",
            repo.display(),
            p.base.release
        ))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("SOURCE_DATE_EPOCH", plan.epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .env("TZ", "UTC")
        .env("HOME", "/root")
        // The kernel's postinst would run dracut for an initrd nobody uses: the initrd stage
        // makes the image's own.
        .env("INITRD", "No");
    run("mmdebstrap", "mmdebstrap", &mut cmd).map(|_| ())
}

/// The installed set must be exactly the locked set.
fn check_installed(plan: &Plan<'_>, root: &Path) -> Result<(), RootfsError> {
    let out = run(
        "dpkg-query",
        "dpkg",
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args(["-W", "-f", "${Package}=${Version}\\n"]),
    )?;
    let installed: BTreeSet<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect();
    let locked: BTreeSet<String> = plan.packages.iter().map(|p| p.key()).collect();
    if installed != locked {
        return Err(RootfsError::Mismatch {
            os: plan.profile.os.clone(),
            profile: plan.profile.profile.clone(),
            extra: installed.difference(&locked).cloned().collect(),
            absent: locked.difference(&installed).cloned().collect(),
        });
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), RootfsError> {
    std::fs::create_dir_all(path).map_err(io("creating", path))
}

/// Run a tool; its stdout.
fn run(
    tool: &'static str,
    package: &'static str,
    cmd: &mut Command,
) -> Result<Vec<u8>, RootfsError> {
    Ok(super::tool::run(tool, package, cmd)?.stdout)
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.display().to_string();
    move |source| RootfsError::Io {
        action,
        path,
        source,
    }
}
