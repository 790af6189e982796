//! `plinth verify`: rebuild a release from the inputs its manifest records (the source commit,
//! exported from git into a fresh directory; SOURCE_DATE_EPOCH; profile; version) with no stage
//! cache, then compare every artifact byte for byte. On a mismatch it names the artifact, the
//! partition or archive member, and the paths inside that differ.

use super::build::{build_release, ReleaseJob};
use super::{BadInput, CheckFailed, Global, Output};
use crate::compare::release::{Release, ReleaseDirError};
use crate::compare::{self, Comparison};
use crate::packages::cache::Cache;
use crate::pipeline::artifacts;
use crate::pipeline::pcr_signing::{Recorded, Signing};
use crate::workspace::Workspace;
use anyhow::Context;
use plinth_firmware::pcr_policy::PublicKey;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

const AFTER_HELP: &str = "\
Needs root (it builds) and the git history holding the release's source
commit (--root, or the checkout around the current directory). Locked
packages missing from the cache are fetched (sha256-verified); no stage is
taken from the stage cache. Exit 0: every artifact reproduced; 1: something
differs (named down to files); 2: bad input.

Examples:
  plinth verify out/guest-os/0.1.0
  plinth verify /srv/releases/host-os/1.2.0/manifest.json --limit 0
  plinth verify out/setup-os/0.1.0 --json > verify.json";

/// Rebuild a release from source and compare it byte for byte.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// A release directory (out/<os>/<version>) or its manifest.json.
    #[arg(value_name = "RELEASE")]
    pub release: PathBuf,
    /// Work directory (kept afterwards) [default: a temporary one].
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Cargo target directory for rebuilding the agent [default: a fresh one in the work
    /// directory]. Several verifies may share one (its dependencies compile once); never
    /// point it at the original build's.
    #[arg(long, value_name = "DIR")]
    pub agent_target: Option<PathBuf>,
    /// Where the releases a carrying release (SetupOS) carries are, as `<DIR>/<os>/<version>`
    /// [default: beside the release: the directory above its OS's]. Each must be the one
    /// its manifest records (by sha256); verify them on their own.
    #[arg(long, value_name = "DIR")]
    pub carried_root: Option<PathBuf>,
    /// Paths listed per differing partition or member (0: all).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
    /// Do not fetch missing packages; fail if the cache lacks any.
    #[arg(long)]
    pub offline: bool,
    #[command(flatten)]
    pub mirrors: super::MirrorArgs,
    #[command(flatten)]
    pub cache: super::CacheArg,
}

#[derive(Serialize)]
struct Report<'a> {
    reproduced: bool,
    os: &'a str,
    version: &'a str,
    profile: &'a str,
    source_commit: plinth_release::CommitId,
    artifacts: &'a [compare::ArtifactDiff],
    /// Recorded PCR signatures that do not sign the rebuild's predicted PCR values.
    bad_pcr_signatures: &'a [String],
}

pub fn run(g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    // The release first: a crafted one is refused, naming the field, before anything else.
    let release = open_release(&args.release)?;
    // The recorded PCR policy too: a key that is not one is refused before any work.
    let signing = recorded_signing(&release)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(BadInput(
            "plinth verify needs root: it rebuilds the release (mmdebstrap, chroot, namespaces)\n  hint: run it as root".into(),
        )
        .into());
    }
    let m = &release.manifest;
    let repo = Workspace::discover(g.root.as_deref())?;
    let commit = m.inputs.source_commit.to_hex();
    if m.inputs.source_commit == plinth_release::CommitId::default() {
        return Err(BadInput(format!(
            "{}: the manifest records no source commit (inputs.source_commit is all zeros)\n  hint: only releases built from a git checkout can be rebuilt",
            release.dir.display()
        ))
        .into());
    }
    if m.inputs.source_dirty {
        out.warn(format!(
            "{} was built from a tree with uncommitted changes to {commit}: expect differences",
            release.dir.display()
        ));
    }
    // The manifest's names were checked when it was read (`Manifest::check`); the OS is
    // taken from plinth's own list, so no path below is built from the manifest's text.
    let os = Workspace::select(m.os.as_str())
        .map_err(|e| BadInput(format!("{}: os: {e}", release.dir.display())))?[0];
    let temp;
    let work = match &args.work {
        Some(w) => {
            if w.exists() {
                std::fs::remove_dir_all(w).with_context(|| format!("clearing {}", w.display()))?;
            }
            private_dir(w)?;
            w.clone()
        }
        None => {
            temp = artifacts::scratch_dir("plinth-verify-").context("creating a work directory")?;
            temp.path().to_path_buf()
        }
    };
    out.info(format!(
        "{} {} ({}): rebuilding from commit {commit}, SOURCE_DATE_EPOCH={}",
        m.os, m.version, m.profile, m.inputs.source_date_epoch
    ));
    let source = export_commit(&repo.root, &commit, &work.join("source"))?;
    check_source_inputs(&source, os, &release)?;

    let carried_root = match &args.carried_root {
        Some(dir) => dir.clone(),
        None => release
            .dir
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    };
    check_carried(&release, &carried_root)?;
    let cache = Cache::open(Cache::resolve_root(args.cache.cache.as_deref())?)?;
    let rebuilt_dir = crate::names::under(&work, &["rebuilt", os, &m.version])
        .map_err(|e| BadInput(format!("{}: version: {e}", release.dir.display())))?;
    let job = ReleaseJob {
        source: &source,
        os,
        profile: &m.profile,
        settings: crate::pipeline::job::Settings {
            version: &m.version,
            epoch: m.inputs.source_date_epoch,
            commit: m.inputs.source_commit,
            dirty: false,
            cache: &cache,
            image_cache: None,
            firmware_cache: None,
            agent_target: &args
                .agent_target
                .clone()
                .unwrap_or_else(|| work.join("agent-target")),
            work: &work.join("work"),
            release_dir: &rebuilt_dir,
            signing: &signing,
            carried: &[],
        },
        offline: args.offline,
        mirrors: &args.mirrors,
        carried_root: &carried_root,
    };
    build_release(out, &job)?;
    let rebuilt = Release::open(&rebuilt_dir)?;
    let scratch = work.join("compare");
    private_dir(&scratch)?;
    let comparison =
        compare::compare(&release, &rebuilt, &scratch).map_err(super::compare_error)?;
    // A recorded PCR signature that does not sign what the rebuild predicts fails the
    // verify even when every byte matched: the release would unseal for other PCR values.
    let bad_signatures = match &signing {
        Signing::Recorded(r) => r.mismatches(),
        _ => Vec::new(),
    };
    report(out, &release, &comparison, &bad_signatures, args.limit)
}

/// The releases a carrying release records (`inputs.carried`) are under `root`, each the one
/// recorded (its manifest's sha256): the rebuild carries them, so anything else would differ.
fn check_carried(release: &Release, root: &Path) -> anyhow::Result<()> {
    let m = &release.manifest;
    for c in &m.inputs.carried {
        let dir = root.join(c.os.as_str()).join(c.version.as_str());
        let found =
            crate::pipeline::carried::open(&dir, c.os.as_str(), c.version.as_str(), &m.profile)
                .map_err(|e| {
                    BadInput(format!("{}: carried {}: {e}", release.dir.display(), c.os))
                })?;
        if found.manifest_sha256 != c.manifest_sha256 {
            return Err(BadInput(format!(
                "{}: carries {} {} with manifest sha256 {}, but {} holds {}\n  hint: give the carried releases it was built with (--carried-root)",
                release.dir.display(),
                c.os,
                c.version,
                c.manifest_sha256,
                dir.display(),
                found.manifest_sha256
            ))
            .into());
        }
    }
    Ok(())
}

/// The release's signed PCR policy, as its manifest records it: the rebuild has no private
/// key, so it embeds the recorded public key and signatures once it has checked each against
/// the PCR values it predicts itself. A key that is not one is bad input.
fn recorded_signing(release: &Release) -> anyhow::Result<Signing> {
    let m = &release.manifest;
    let Some(pem) = &m.inputs.pcr_public_key else {
        return Ok(Signing::Unsigned);
    };
    let public = PublicKey::from_pem(pem, "inputs.pcr_public_key").map_err(|e| {
        BadInput(format!(
            "{}: {e}",
            release
                .dir
                .join(plinth_release::manifest::FILE_NAME)
                .display()
        ))
    })?;
    let signatures = m
        .measurements
        .slots
        .iter()
        .filter_map(|s| s.pcr_signature.clone().map(|sig| (s.slot, sig)))
        .collect();
    Ok(Signing::Recorded(Recorded::new(public, signatures)))
}

/// Open the release; a malformed manifest is bad input, altered files a failed check.
pub(super) fn open_release(path: &Path) -> anyhow::Result<Release> {
    match Release::open(path) {
        Ok(r) => Ok(r),
        Err(e @ ReleaseDirError::Altered { .. }) => Err(CheckFailed(e.to_string()).into()),
        Err(e) => Err(BadInput(e.to_string()).into()),
    }
}

/// Create `dir` (and its parents) with mode 0700: nobody but its owner can reach what is
/// unpacked or built inside.
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    artifacts::private_dir(dir).with_context(|| format!("creating {} (mode 0700)", dir.display()))
}

/// `git archive` of `commit` unpacked into `dest`: the source exactly as committed.
fn export_commit(repo: &Path, commit: &str, dest: &Path) -> anyhow::Result<Workspace> {
    if !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BadInput(format!(
            "inputs.source_commit `{}`: expected hex digits",
            commit.escape_debug()
        ))
        .into());
    }
    private_dir(dest)?;
    let archive = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["archive", "--format=tar", commit])
        .output()
        .context("running git archive")?;
    if !archive.status.success() {
        return Err(BadInput(format!(
            "the source commit {commit} is not in the git repository at {}: {}\n  hint: fetch it (`git fetch origin {commit}`), or pass --root with a clone that has it",
            repo.display(),
            String::from_utf8_lossy(&archive.stderr).trim()
        ))
        .into());
    }
    let mut tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(dest)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running tar")?;
    use std::io::Write;
    tar.stdin
        .take()
        .context("tar's stdin")?
        .write_all(&archive.stdout)?;
    anyhow::ensure!(
        tar.wait()?.success(),
        "tar could not unpack git archive's output"
    );
    Ok(Workspace::discover(Some(dest))?)
}

/// The exported source must hold the lock and spec the manifest names, as regular files
/// inside the export (never a link leading out of it).
fn check_source_inputs(source: &Workspace, os: &str, release: &Release) -> anyhow::Result<()> {
    let m = &release.manifest;
    let mut problems = Vec::new();
    for (path, want, field) in [
        (
            source.lock_path(os),
            &m.inputs.lock_sha256,
            "inputs.lock_sha256",
        ),
        (
            source.spec_path(os),
            &m.inputs.os_spec_sha256,
            "inputs.os_spec_sha256",
        ),
    ] {
        let inside = std::fs::canonicalize(&path)
            .ok()
            .zip(std::fs::canonicalize(&source.root).ok())
            .is_some_and(|(p, root)| p.starts_with(root));
        let regular = std::fs::symlink_metadata(&path).is_ok_and(|md| md.file_type().is_file());
        if !inside || !regular {
            return Err(CheckFailed(format!(
                "{}: not a regular file inside the source exported from commit {}\n  hint: the commit does not hold a plinth tree for {os}",
                source.display(&path),
                m.inputs.source_commit
            ))
            .into());
        }
        let (have, _) = plinth_release::Sha256::of_file(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if have != *want {
            problems.push(format!(
                "  {}: sha256 {have} at commit {}, the manifest's {field} is {want}",
                source.display(&path),
                m.inputs.source_commit
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(CheckFailed(format!(
        "{}: the source commit does not hold the inputs the manifest records:\n{}\n  hint: the manifest names the wrong commit, or was edited",
        release.dir.display(),
        problems.join("\n")
    ))
    .into())
}

fn report(
    out: &Output,
    release: &Release,
    c: &Comparison,
    bad_signatures: &[String],
    limit: usize,
) -> anyhow::Result<()> {
    let m = &release.manifest;
    let differing: Vec<&compare::ArtifactDiff> = c.differing().collect();
    if out.json {
        out.json_result(&Report {
            reproduced: differing.is_empty() && bad_signatures.is_empty(),
            os: m.os.as_str(),
            version: &m.version,
            profile: &m.profile,
            source_commit: m.inputs.source_commit,
            artifacts: &c.artifacts,
            bad_pcr_signatures: bad_signatures,
        })?;
    } else if !bad_signatures.is_empty() {
        println!(
            "NOT reproduced: the release's PCR policy signs other PCR values than its rebuild's ({} {}, {})",
            m.os, m.version, m.profile
        );
        for b in bad_signatures {
            println!("  {b}");
        }
    }
    if !out.json && differing.is_empty() && bad_signatures.is_empty() {
        println!("reproduced {} artifacts", c.artifacts.len());
        for a in &c.artifacts {
            if let Some(d) = &a.before {
                println!("  {}  {:>12}  {}", d.sha256, d.size, a.name);
            }
        }
    } else if !out.json && !differing.is_empty() {
        println!(
            "NOT reproduced: {} of {} artifacts differ ({} {}, {})",
            differing.len(),
            c.artifacts.len(),
            m.os,
            m.version,
            m.profile
        );
        for a in &differing {
            for line in compare::render_artifact(a, ("release", "rebuilt"), limit) {
                println!("  {line}");
            }
        }
    }
    if !bad_signatures.is_empty() {
        return Err(CheckFailed(format!(
            "{}: {}",
            release.dir.display(),
            bad_signatures.join("; ")
        ))
        .into());
    }
    if differing.is_empty() {
        Ok(())
    } else {
        Err(CheckFailed(format!(
            "{}: {} of {} artifacts differ from the rebuild: {}",
            release.dir.display(),
            differing.len(),
            c.artifacts.len(),
            differing
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into())
    }
}
