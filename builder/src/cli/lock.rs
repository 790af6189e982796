//! `plinth lock`: resolve each OS's package closure against the signed Debian archive and write
//! `<os>/packages.lock`; with `--check`, only compare os.yaml with the lock (offline).

use super::{CheckFailed, Global, Output};
use crate::packages::archive::{Archive, Source};
use crate::packages::lockfile::{Lock, LockError, LockInputs};
use crate::packages::mirror::Mirrors;
use crate::packages::release::keyring_path;
use crate::packages::resolve::{self, Request};
use crate::packages::sources::lock_source;
use crate::spec::{self, OsSpec};
use crate::workspace::Workspace;
use anyhow::Context;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
The closure is what mmdebstrap installs for the spec's variant and packages,
resolved by apt from the signed indexes (InRelease verified with the keyring,
Packages checked against it). Same os.yaml and mirror state: same lock bytes.

Examples:
  plinth lock all                 lock every OS
  plinth lock guest-os --check    fail (exit 1) if os.yaml and the lock differ
  plinth lock host-os --mirror http://ftp.de.debian.org/debian";

/// Resolve and pin the exact Debian packages of each OS and profile.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// guest-os, host-os, setup-os or all.
    #[arg(default_value = "all", value_name = "OS")]
    pub os: String,
    /// Only check that the lock matches os.yaml; no network, nothing written.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub archive: ArchiveArgs,
}

/// Where packages come from and how they are verified.
#[derive(Debug, Clone, clap::Args)]
pub struct ArchiveArgs {
    #[command(flatten)]
    pub mirrors: super::MirrorArgs,
    /// OpenPGP keyring that signs the archive [env: PLINTH_KEYRING;
    /// default: Debian's archive keyring].
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    #[command(flatten)]
    pub cache: super::CacheArg,
}

pub fn run(g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let ws = Workspace::discover(g.root.as_deref())?;
    let oses = Workspace::select(&args.os)?;
    // Every spec is validated before anything is fetched or written.
    let mut specs = Vec::new();
    for os in &oses {
        let path = ws.spec_path(os);
        specs.push((*os, spec::load(&path, &ws.display(&path))?));
    }
    if args.check {
        check(&ws, out, &specs)
    } else {
        lock(&ws, out, &args.archive, &specs)
    }
}

#[derive(Serialize)]
struct CheckReport {
    ok: bool,
    locks: Vec<CheckEntry>,
}

#[derive(Serialize)]
struct CheckEntry {
    os: String,
    file: String,
    ok: bool,
    disagreements: Vec<String>,
}

fn check(ws: &Workspace, out: &Output, specs: &[(&str, OsSpec)]) -> anyhow::Result<()> {
    let mut report = CheckReport {
        ok: true,
        locks: Vec::new(),
    };
    for (os, spec) in specs {
        let path = ws.lock_path(os);
        let file = ws.display(&path);
        let disagreements = match Lock::read(&path, &file, os) {
            Ok(lock) => lock.disagreements(spec),
            Err(e @ LockError::Missing { .. }) => vec![e.to_string()],
            Err(e) => return Err(e.into()),
        };
        let ok = disagreements.is_empty();
        report.ok &= ok;
        if !out.json {
            if ok {
                out.info(format!("ok {file} matches {os}/os.yaml"));
            } else {
                for d in &disagreements {
                    eprintln!("{file}: {d}");
                }
            }
        }
        report.locks.push(CheckEntry {
            os: os.to_string(),
            file,
            ok,
            disagreements,
        });
    }
    if out.json {
        out.json_result(&report)?;
    }
    if report.ok {
        Ok(())
    } else {
        let oses: Vec<&str> = specs.iter().map(|(os, _)| *os).collect();
        Err(CheckFailed(format!(
            "the lock does not match os.yaml\n  hint: run `plinth lock {}` and commit the result",
            if oses.len() == 1 { oses[0] } else { "all" }
        ))
        .into())
    }
}

#[derive(Serialize)]
struct LockReport {
    locks: Vec<LockEntry>,
}

#[derive(Serialize)]
struct LockEntry {
    os: String,
    file: String,
    changed: bool,
    profiles: BTreeMap<String, ProfileSummary>,
}

#[derive(Serialize)]
struct ProfileSummary {
    packages: usize,
    bytes: u64,
}

fn lock(
    ws: &Workspace,
    out: &Output,
    archive_args: &ArchiveArgs,
    specs: &[(&str, OsSpec)],
) -> anyhow::Result<()> {
    let keyring = keyring_path(archive_args.keyring.as_deref());
    let index_cache =
        crate::packages::cache::Cache::resolve_root(archive_args.cache.cache.as_deref())?
            .join("indexes");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    // OSes with the same base and mirrors share one archive download.
    let mut archives: BTreeMap<String, Archive> = BTreeMap::new();
    let mut report = LockReport { locks: Vec::new() };
    for (os, spec) in specs {
        let mirrors = Mirrors::resolve(&spec.base, &archive_args.mirrors.overrides());
        let key = format!("{:?}{:?}", spec.base, mirrors);
        let source = Source {
            mirrors: &mirrors,
            keyring: &keyring,
            index_cache: &index_cache,
            now,
        };
        if !archives.contains_key(&key) {
            out.info(format!(
                "{os}: verifying {} from {} (keyring {})",
                spec.base.suites.join(", "),
                mirrors.main,
                keyring.display()
            ));
            let archive = runtime
                .block_on(Archive::load(&spec.base, source))
                .with_context(|| format!("loading the Debian archive for {os}"))?;
            for index in &archive.indexes {
                out.detail(format!(
                    "  {} {}: sha256 {} ({} packages)",
                    index.suite,
                    index.path,
                    index.sha256,
                    index.entries.len()
                ));
            }
            archives.insert(key.clone(), archive);
        }
        let archive = &archives[&key];
        let spec_path = ws.spec_path(os);
        let spec_display = ws.display(&spec_path);
        let spec_text = std::fs::read_to_string(&spec_path).unwrap_or_default();
        let mut profiles = BTreeMap::new();
        let mut sets = Vec::new();
        for name in spec.profile_names() {
            sets.push(spec.profile(name)?);
        }
        sets.extend(spec.firmware_toolchain());
        for profile in &sets {
            let name = profile.profile.as_str();
            out.info(format!(
                "{os} ({name}): resolving {} requested packages ({} variant) with apt",
                profile.packages.len(),
                profile.base.variant
            ));
            let work = tempfile::Builder::new()
                .prefix("plinth-lock-")
                .tempdir()
                .context("creating a temporary directory for apt")?;
            let locate = |package: &str| {
                let field = if name == spec::FIRMWARE_TOOLCHAIN {
                    spec.firmware
                        .as_ref()
                        .and_then(|f| f.toolchain.iter().position(|p| p.name == package))
                        .map(|i| format!("firmware.toolchain[{i}]"))
                        .unwrap_or_default()
                } else {
                    spec.package_path(name, package).unwrap_or_default()
                };
                match spec::locate(&spec_text, &field) {
                    Some((line, col)) => format!("{spec_display}:{line}:{col}: {field}"),
                    None => spec_display.clone(),
                }
            };
            let req = Request {
                os,
                profile: name,
                locate_request: &locate,
                base: &profile.base,
                packages: &profile.packages,
                keyring: &keyring,
            };
            let resolved = resolve::resolve(archive, &req, work.path())?;
            profiles.insert(name.to_string(), (LockInputs::of(profile), resolved));
        }
        let mut sources = Vec::new();
        if let Some(firmware) = &spec.firmware {
            let req = &firmware.source;
            out.info(format!(
                "{os}: locking source {} {} from {}'s signed Sources index",
                req.package, req.version, req.suite
            ));
            let client = crate::packages::http::client();
            let locked = runtime.block_on(lock_source(&client, req, &source, &spec_display))?;
            for f in &locked.files {
                out.detail(format!(
                    "  {} sha256 {} ({} bytes)",
                    f.name, f.sha256, f.size
                ));
            }
            sources.push(locked);
        }
        let lock = Lock::assemble(os, &spec.base, archive.digests(), profiles, sources);
        let path = ws.lock_path(os);
        let file = ws.display(&path);
        let bytes = lock.to_bytes();
        let changed = std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice());
        if changed {
            write_atomically(&path, &bytes).with_context(|| format!("writing {file}"))?;
        }
        let mut summary = BTreeMap::new();
        for name in lock.profiles.keys() {
            let pkgs = lock.profile_packages(name).unwrap_or_default();
            summary.insert(
                name.clone(),
                ProfileSummary {
                    packages: pkgs.len(),
                    bytes: pkgs.iter().map(|p| p.size).sum(),
                },
            );
        }
        out.info(format!(
            "{file}: {} ({})",
            if changed { "written" } else { "unchanged" },
            summary
                .iter()
                .map(|(n, s)| format!(
                    "{n}: {} packages, {:.1} MiB",
                    s.packages,
                    s.bytes as f64 / 1048576.0
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        report.locks.push(LockEntry {
            os: os.to_string(),
            file,
            changed,
            profiles: summary,
        });
    }
    if out.json {
        out.json_result(&report)?;
    }
    Ok(())
}

/// Write through a temporary file in the same directory and rename: a reader never sees a
/// half-written lock.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
