//! `plinth-bench`: drives plinth's own fetch and sha256 code for `ci/bench`.
//!
//! `manifest` describes a directory of files as locked packages (JSON on stdout); `fetch`
//! downloads such a manifest from a URL into an empty cache with the library's `fetch` (no
//! progress bars) and prints the seconds taken; `sha256` hashes a file with the streaming hash
//! the cache uses and prints the digest and the seconds taken.

use anyhow::{bail, ensure, Context};
use clap::{Parser, Subcommand};
use plinth::packages::cache::{sha256_file, Cache};
use plinth::packages::fetch::{fetch, FetchOptions, Progress};
use plinth::packages::lockfile::LockedPackage;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Benchmark driver for plinth's fetcher and hash.
#[derive(Debug, Parser)]
#[command(
    name = "plinth-bench",
    after_help = "Example:\n  plinth-bench manifest --dir files > m.json\n  \
                  plinth-bench fetch --manifest m.json --url http://127.0.0.1:8080 \
                  --cache c"
)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the files below DIR as a JSON list of locked packages.
    Manifest {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Fetch a manifest's packages from URL into an empty cache; print the seconds.
    Fetch {
        #[arg(long, value_name = "FILE")]
        manifest: PathBuf,
        #[arg(long, value_name = "URL")]
        url: String,
        #[arg(long, value_name = "DIR")]
        cache: PathBuf,
        #[arg(long, default_value_t = 8)]
        jobs: usize,
    },
    /// Hash FILE with plinth's streaming sha256; print the digest and the seconds.
    Sha256 { file: PathBuf },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().cmd {
        Cmd::Manifest { dir } => manifest(&dir),
        Cmd::Fetch {
            manifest,
            url,
            cache,
            jobs,
        } => run_fetch(&manifest, &url, &cache, jobs),
        Cmd::Sha256 { file } => {
            let start = Instant::now();
            let (digest, _) =
                sha256_file(&file).with_context(|| format!("hash {}", file.display()))?;
            println!("{digest} {:.3}", start.elapsed().as_secs_f64());
            Ok(())
        }
    }
}

fn manifest(dir: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut packages = Vec::new();
    for rel in files {
        let path = dir.join(&rel);
        let (sha256, size) = sha256_file(&path).with_context(|| format!("hash {rel}"))?;
        packages.push(LockedPackage {
            name: rel.rsplit('/').next().unwrap_or(&rel).to_string(),
            version: "1".into(),
            architecture: "amd64".into(),
            suite: "bench".into(),
            filename: rel,
            size,
            sha256,
        });
    }
    println!("{}", serde_json::to_string_pretty(&packages)?);
    Ok(())
}

/// Relative paths (with `/`) of the regular files below `dir`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else if path.is_file() {
            let rel = path
                .strip_prefix(root)?
                .to_string_lossy()
                .replace('\\', "/");
            out.push(rel);
        }
    }
    Ok(())
}

fn run_fetch(manifest: &Path, url: &str, cache_dir: &Path, jobs: usize) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest).context("read the manifest")?;
    let packages: Vec<LockedPackage> = serde_json::from_str(&text).context("parse the manifest")?;
    let cache = Cache::open(cache_dir).context("open the cache")?;
    ensure!(
        cache.list().context("list the cache")?.is_empty(),
        "the cache {} is not empty",
        cache_dir.display()
    );
    let options = FetchOptions {
        jobs,
        progress: Progress::Hidden,
        proxy_from_env: false,
        ..FetchOptions::default()
    };
    let start = Instant::now();
    let report = fetch(&packages, |_| url.to_string(), &cache, &options).context("fetch")?;
    let secs = start.elapsed().as_secs_f64();
    if report.fetched != packages.len() {
        bail!("fetched {} of {} packages", report.fetched, packages.len());
    }
    println!("{secs:.3}");
    Ok(())
}
