//! `plinth fetch`: download the locked packages of one OS (or all) into the verified cache,
//! or with `--offline` only report which of them the cache lacks.

use super::{Global, Output};
use crate::packages::cache::Cache;
use crate::packages::fetch::{fetch, FetchOptions};
use crate::packages::lockfile::{Lock, LockedPackage};
use crate::packages::mirror::Mirrors;
use crate::spec::UnknownProfile;
use crate::workspace::Workspace;
use std::collections::{HashMap, HashSet};

const AFTER_HELP: &str = "\
Files enter the cache (debs/<sha256>.deb) only after their sha256 matched the
lock. Downloads resume where they stopped and are retried with backoff.

Examples:
  plinth fetch                        every OS's packages (same as `all`)
  plinth fetch guest-os               download what the cache lacks
  plinth fetch all --jobs 16          every OS, 16 downloads at once
  plinth fetch host-os --offline      list missing packages, no network";

/// Download the locked .deb packages of an OS into the verified cache.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// guest-os, host-os, setup-os or all.
    #[arg(default_value = "all", value_name = "OS")]
    pub os: String,
    /// Only this profile's packages (default: those of every profile).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// No network: list the locked packages missing from the cache; fail if any.
    #[arg(long)]
    pub offline: bool,
    /// Downloads in flight at once.
    #[arg(
        short,
        long,
        value_name = "N",
        default_value_t = 8,
        value_parser = clap::value_parser!(u16).range(1..=64)
    )]
    pub jobs: u16,
    #[command(flatten)]
    pub mirrors: super::MirrorArgs,
    #[command(flatten)]
    pub cache: super::CacheArg,
}

pub fn run(g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let ws = Workspace::discover(g.root.as_deref())?;
    let oses = Workspace::select(&args.os)?;
    let overrides = args.mirrors.overrides();

    // The packages to fetch, deduplicated across OSes; the first OS's mirror serves each.
    let mut packages: Vec<LockedPackage> = Vec::new();
    let mut base_urls: HashMap<plinth_release::Sha256, String> = HashMap::new();
    let mut seen = HashSet::new();
    for os in oses {
        let lock_path = ws.lock_path(os);
        let lock = Lock::read(&lock_path, &ws.display(&lock_path), os)?;
        let selected: Vec<&LockedPackage> = match &args.profile {
            Some(p) => lock.profile_packages(p).ok_or_else(|| UnknownProfile {
                os: os.to_string(),
                name: p.clone(),
                known: lock.profiles.keys().cloned().collect(),
            })?,
            None => lock.packages.iter().collect(),
        };
        let spec_path = ws.spec_path(os);
        let spec = crate::spec::load(&spec_path, &ws.display(&spec_path))?;
        let disagreements = lock.disagreements(&spec);
        if !disagreements.is_empty() {
            out.warn(format!(
                "{} does not match {os}/os.yaml ({}); fetching what the lock says\n  hint: run `plinth lock {os}`",
                ws.display(&lock_path),
                disagreements.join("; ")
            ));
        }
        let mirrors = (!args.offline).then(|| Mirrors::resolve(&spec.base, &overrides));
        out.detail(format!("{os}: {} locked packages", selected.len()));
        for pkg in selected {
            if seen.insert(pkg.sha256) {
                if let Some(m) = &mirrors {
                    base_urls.insert(pkg.sha256, m.for_suite(&pkg.suite).to_string());
                }
                packages.push(pkg.clone());
            }
        }
    }

    let root = Cache::resolve_root(args.cache.cache.as_deref())?;
    let cache = Cache::open(&root)?;
    out.detail(format!("cache: {}", root.display()));
    let options = FetchOptions {
        jobs: usize::from(args.jobs),
        offline: args.offline,
        progress: out.download_progress(),
        ..FetchOptions::default()
    };
    let result = fetch(
        &packages,
        |p| base_urls.get(&p.sha256).cloned().unwrap_or_default(),
        &cache,
        &options,
    );

    let report = match &result {
        Ok(r) => Some(r),
        Err(e) => e.report(),
    };
    if let Some(r) = report {
        if out.json {
            out.json_result(r)?;
        }
        if args.offline {
            if r.missing.is_empty() {
                out.info(format!(
                    "all {} packages are in the cache {}",
                    r.cached,
                    root.display()
                ));
            }
        } else {
            out.info(format!(
                "fetched {} packages ({:.1} MiB) in {:.1} s, {} already cached",
                r.fetched,
                r.bytes as f64 / (1024.0 * 1024.0),
                r.elapsed.as_secs_f64(),
                r.cached
            ));
        }
    }
    result.map(|_| ()).map_err(anyhow::Error::from)
}
