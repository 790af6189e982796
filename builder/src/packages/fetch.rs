//! Downloads locked `.deb` files into the [`Cache`]: in parallel, streamed through sha256 and
//! size checks, resumed with HTTP Range requests, retried with exponential backoff and jitter,
//! with a stall timeout, and with progress on stderr.
//!
//! Failure handling, per package: more bytes than the locked size ends the attempt at once; a
//! connection that closes early, stalls or answers 5xx/429 is retried (resuming where it
//! stopped); a complete file whose hash differs is deleted and retried from zero (the mirror
//! may have served a bad copy); 404 and other 4xx fail at once. Every package is attempted even
//! when others fail, and [`FetchError::Failed`] lists every failure. Nothing reaches the cache
//! unverified (see [`super::cache`]).

use super::cache::{Cache, CacheError, Partial};
use super::lockfile::LockedPackage;
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use plinth_release::Sha256;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde::Serialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How progress is shown on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Nothing (quiet, tests).
    Hidden,
    /// A plain status line at most every [`LINE_INTERVAL`], plus retry notes.
    Lines,
    /// indicatif bars: a total bar and one per active download.
    Bars,
}

/// Interval of the plain progress lines.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Tuning of one [`fetch`] run.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Downloads in flight at once.
    pub jobs: usize,
    /// Attempts per package (the first one included).
    pub attempts: u32,
    /// An attempt fails when no byte arrives for this long (headers included).
    pub stall_timeout: Duration,
    /// Limit for establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Backoff before retry `n` is `retry_base_delay * 2^(n-1)`, capped at `retry_max_delay`,
    /// then jittered down by up to half.
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// No network: only report which packages the cache lacks.
    pub offline: bool,
    pub progress: Progress,
    /// Honour `http_proxy`/`https_proxy`/`no_proxy` from the environment.
    pub proxy_from_env: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            jobs: 8,
            attempts: 5,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            retry_base_delay: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(30),
            offline: false,
            progress: Progress::Hidden,
            proxy_from_env: true,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchReport {
    /// Packages downloaded and verified by this run.
    pub fetched: usize,
    /// Their total size.
    pub bytes: u64,
    /// Packages that were already in the cache.
    pub cached: usize,
    /// Packages absent from the cache (offline runs only).
    pub missing: Vec<MissingPackage>,
    /// Packages that could not be downloaded, sorted by name.
    pub failed: Vec<PackageFailure>,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// A package the cache lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingPackage {
    pub name: String,
    pub version: String,
    pub sha256: Sha256,
    pub size: u64,
}

/// A package that could not be downloaded, and the last error.
#[derive(Debug, Clone, Serialize)]
pub struct PackageFailure {
    pub name: String,
    pub version: String,
    pub sha256: Sha256,
    pub url: String,
    pub attempts: u32,
    #[serde(serialize_with = "as_display")]
    pub error: DownloadError,
}

impl std::fmt::Display for PackageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tries = if self.attempts == 1 {
            "1 attempt".to_string()
        } else {
            format!("{} attempts", self.attempts)
        };
        write!(
            f,
            "{} {} from {} (after {tries}): {}",
            self.name, self.version, self.url, self.error
        )
    }
}

fn as_display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Why one download attempt of one package failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DownloadError {
    #[error("HTTP {status}: the mirror does not have this file\n    hint: the lock may be older than the mirror (run `plinth lock`), or pick a mirror that keeps old versions with --mirror URL")]
    NotFound { status: u16 },
    #[error("HTTP {status}: the mirror refused the request")]
    Refused { status: u16 },
    #[error("HTTP {status}: server error")]
    ServerError { status: u16 },
    #[error("sha256 mismatch: expected {expected}, got {actual}\n    hint: the mirror served a different file than the lock names; try another mirror with --mirror URL, or re-lock")]
    Mismatch { expected: Sha256, actual: Sha256 },
    #[error("the server sent more than the locked size of {expected} bytes ({received} or more)")]
    TooLarge { expected: u64, received: u64 },
    #[error("connection closed after {received} of {expected} bytes{detail}")]
    Truncated {
        received: u64,
        expected: u64,
        detail: String,
    },
    #[error("no data for {seconds} s at {received} of {expected} bytes")]
    Stalled {
        seconds: u64,
        received: u64,
        expected: u64,
    },
    #[error("network error: {message}")]
    Network { message: String },
    #[error("bad response: {message}")]
    Protocol { message: String },
    #[error("cache: {message}")]
    Cache { message: String },
    #[error("cannot read the mirror's file: {message}")]
    LocalFile { message: String },
}

impl DownloadError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            DownloadError::NotFound { .. }
                | DownloadError::Refused { .. }
                | DownloadError::Cache { .. }
                | DownloadError::LocalFile { .. }
        )
    }
}

impl From<CacheError> for DownloadError {
    fn from(e: CacheError) -> Self {
        DownloadError::Cache {
            message: e.to_string(),
        }
    }
}

/// A run that did not leave every package in the cache.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{} of {total} packages could not be downloaded:\n{}", .report.failed.len(), list_failures(.report))]
    Failed { report: FetchReport, total: usize },
    #[error("offline: {} of {total} packages are missing from the cache {}:\n{}\n  hint: run the same command without --offline where the mirror is reachable", .report.missing.len(), .cache.display(), list_missing(.report))]
    Missing {
        report: FetchReport,
        total: usize,
        cache: PathBuf,
    },
    #[error("cannot set up the HTTP client: {message}")]
    Client { message: String },
    #[error("cannot start the async runtime: {source}")]
    Runtime { source: std::io::Error },
}

impl FetchError {
    /// The run's report, when the run got that far.
    pub fn report(&self) -> Option<&FetchReport> {
        match self {
            FetchError::Failed { report, .. } | FetchError::Missing { report, .. } => Some(report),
            _ => None,
        }
    }
}

fn list_failures(r: &FetchReport) -> String {
    let lines: Vec<String> = r.failed.iter().map(|f| format!("  {f}")).collect();
    lines.join("\n")
}

fn list_missing(r: &FetchReport) -> String {
    let lines: Vec<String> = r
        .missing
        .iter()
        .map(|m| format!("  {} {} {}", m.name, m.version, m.sha256))
        .collect();
    lines.join("\n")
}

/// The URL of a package below a mirror base URL.
pub fn package_url(base: &str, pkg: &LockedPackage) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        pkg.filename.trim_start_matches('/')
    )
}

/// Make sure every package is in `cache`, downloading what is missing from
/// `base_url_for(pkg) + "/" + pkg.filename` (e.g. `|p| mirrors.for_suite(&p.suite).into()`).
/// Blocking: runs its own tokio runtime.
pub fn fetch<F>(
    packages: &[LockedPackage],
    base_url_for: F,
    cache: &Cache,
    options: &FetchOptions,
) -> Result<FetchReport, FetchError>
where
    F: Fn(&LockedPackage) -> String,
{
    if options.offline {
        return check_offline(packages, cache);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| FetchError::Runtime { source })?;
    rt.block_on(download_missing(packages, &base_url_for, cache, options))
}

/// The downloads of [`fetch`], at most `options.jobs` at a time.
async fn download_missing(
    packages: &[LockedPackage],
    base_url_for: &dyn Fn(&LockedPackage) -> String,
    cache: &Cache,
    options: &FetchOptions,
) -> Result<FetchReport, FetchError> {
    let start = Instant::now();
    let unique = dedupe(packages);
    let total = unique.len();
    let (cached, mut todo): (Vec<&LockedPackage>, Vec<&LockedPackage>) = unique
        .into_iter()
        .partition(|p| cache.contains(&p.sha256, p.size));
    let mut report = FetchReport {
        cached: cached.len(),
        ..FetchReport::default()
    };
    if todo.is_empty() {
        report.elapsed = start.elapsed();
        return Ok(report);
    }
    // Largest first: the long downloads start early and the tail is short.
    todo.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));

    let client = build_client(options)?;
    let ui = Ui::new(
        options.progress,
        todo.iter().map(|p| p.size).sum(),
        todo.len(),
    );
    let ticker = ui.start_ticker();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(options.jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for pkg in todo {
        let job = Job {
            url: package_url(&base_url_for(pkg), pkg),
            pkg: pkg.clone(),
            client: client.clone(),
            cache: cache.clone(),
            options: options.clone(),
            ui: ui.clone(),
        };
        let semaphore = semaphore.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let size = job.pkg.size;
            job.run().await.map(|()| size)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(size)) => {
                report.fetched += 1;
                report.bytes += size;
            }
            Ok(Err(failure)) => report.failed.push(*failure),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => unreachable!("download tasks are never cancelled: {e}"),
        }
    }
    if let Some(t) = ticker {
        t.abort();
    }
    ui.finish();
    report
        .failed
        .sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    report.elapsed = start.elapsed();
    if report.failed.is_empty() {
        Ok(report)
    } else {
        Err(FetchError::Failed { report, total })
    }
}

/// The offline run: no network, only the cache's view.
fn check_offline(packages: &[LockedPackage], cache: &Cache) -> Result<FetchReport, FetchError> {
    let start = Instant::now();
    let unique = dedupe(packages);
    let total = unique.len();
    let mut report = FetchReport::default();
    for p in unique {
        if cache.contains(&p.sha256, p.size) {
            report.cached += 1;
        } else {
            report.missing.push(MissingPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                sha256: p.sha256,
                size: p.size,
            });
        }
    }
    report
        .missing
        .sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    report.elapsed = start.elapsed();
    if report.missing.is_empty() {
        Ok(report)
    } else {
        Err(FetchError::Missing {
            report,
            total,
            cache: cache.root().to_path_buf(),
        })
    }
}

/// One entry per sha256, first occurrence wins.
fn dedupe(packages: &[LockedPackage]) -> Vec<&LockedPackage> {
    let mut seen = HashSet::new();
    packages.iter().filter(|p| seen.insert(p.sha256)).collect()
}

fn build_client(options: &FetchOptions) -> Result<reqwest::Client, FetchError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .pool_max_idle_per_host(options.jobs.max(1))
        .user_agent(concat!("plinth/", env!("CARGO_PKG_VERSION")));
    if !options.proxy_from_env {
        b = b.no_proxy();
    }
    b.build().map_err(|e| FetchError::Client {
        message: super::http::error_chain(&e),
    })
}

/// Everything one package's download needs, owned so it can run as a task.
struct Job {
    pkg: LockedPackage,
    url: String,
    client: reqwest::Client,
    cache: Cache,
    options: FetchOptions,
    ui: Ui,
}

impl Job {
    async fn run(self) -> Result<(), Box<PackageFailure>> {
        let attempts = self.options.attempts.max(1);
        let mut credited = 0u64;
        let bar = self.ui.file_bar(&self.pkg);
        let mut attempt = 1;
        let result = loop {
            match self.attempt(&mut credited, bar.as_ref()).await {
                Ok(()) => break Ok(()),
                Err(e) if !e.is_retryable() || attempt >= attempts => break Err((attempt, e)),
                Err(e) => {
                    self.ui.note(format!(
                        "{} {}: {e}; retrying ({attempt}/{attempts})",
                        self.pkg.name, self.pkg.version
                    ));
                    tokio::time::sleep(backoff(&self.options, attempt)).await;
                    attempt += 1;
                }
            }
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        match result {
            Ok(()) => {
                self.ui.done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err((attempts, error)) => {
                // The bytes of a failed package do not count towards the total.
                self.ui.credit(credited, 0);
                self.ui
                    .total_bytes
                    .fetch_sub(self.pkg.size, Ordering::Relaxed);
                if let Some(t) = &self.ui.total_bar {
                    t.dec_length(self.pkg.size);
                }
                Err(Box::new(PackageFailure {
                    name: self.pkg.name.clone(),
                    version: self.pkg.version.clone(),
                    sha256: self.pkg.sha256,
                    url: self.url.clone(),
                    attempts,
                    error,
                }))
            }
        }
    }

    /// Open (or resume) the partial file off the async threads.
    async fn open_partial(&self) -> Result<Partial, DownloadError> {
        let cache = self.cache.clone();
        let sha = self.pkg.sha256;
        let size = self.pkg.size;
        tokio::task::spawn_blocking(move || cache.partial(&sha, size))
            .await
            .map_err(|e| DownloadError::Cache {
                message: e.to_string(),
            })?
            .map_err(DownloadError::from)
    }

    /// One attempt: resume the partial file, request the rest, stream it in, verify, commit.
    async fn attempt(
        &self,
        credited: &mut u64,
        bar: Option<&ProgressBar>,
    ) -> Result<(), DownloadError> {
        if let Some(path) = self.url.strip_prefix("file://") {
            return self.attempt_file(PathBuf::from(path), credited, bar).await;
        }
        let size = self.pkg.size;
        let mut partial = self.open_partial().await?;
        let sync = |partial: &Partial, credited: &mut u64| {
            self.ui.credit(*credited, partial.len());
            *credited = partial.len();
            if let Some(b) = bar {
                b.set_position(partial.len());
            }
        };
        sync(&partial, credited);
        if partial.len() < size {
            let offset = partial.len();
            let mut req = self.client.get(&self.url);
            if offset > 0 {
                req = req.header(RANGE, format!("bytes={offset}-"));
            }
            let stall = self.options.stall_timeout;
            let stalled = |received| DownloadError::Stalled {
                seconds: stall.as_secs().max(1),
                received,
                expected: size,
            };
            let resp = match tokio::time::timeout(stall, req.send()).await {
                Err(_) => return Err(stalled(offset)),
                Ok(Err(e)) => {
                    return Err(DownloadError::Network {
                        message: super::http::error_chain(&e),
                    })
                }
                Ok(Ok(r)) => r,
            };
            let status = resp.status();
            match status {
                StatusCode::PARTIAL_CONTENT if offset > 0 => {
                    check_content_range(&resp, offset, size).inspect_err(|_| {
                        let _ = partial.reset();
                    })?;
                }
                StatusCode::OK => {
                    if offset > 0 {
                        // The server ignored Range: take the whole file from the start.
                        partial.reset()?;
                        sync(&partial, credited);
                    }
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    partial.reset()?;
                    sync(&partial, credited);
                    return Err(DownloadError::Protocol {
                        message: format!(
                            "HTTP 416 for bytes {offset}- of a {size}-byte file; restarting"
                        ),
                    });
                }
                s if s == StatusCode::NOT_FOUND || s == StatusCode::GONE => {
                    return Err(DownloadError::NotFound { status: s.as_u16() })
                }
                s if s.is_server_error()
                    || s == StatusCode::TOO_MANY_REQUESTS
                    || s == StatusCode::REQUEST_TIMEOUT =>
                {
                    return Err(DownloadError::ServerError { status: s.as_u16() })
                }
                s => return Err(DownloadError::Refused { status: s.as_u16() }),
            }
            if let Some(len) = resp.content_length() {
                if partial.len() + len > size {
                    let received = partial.len() + len;
                    partial.reset()?;
                    sync(&partial, credited);
                    return Err(DownloadError::TooLarge {
                        expected: size,
                        received,
                    });
                }
            }
            let mut body = resp.bytes_stream();
            loop {
                let chunk = match tokio::time::timeout(stall, body.next()).await {
                    Err(_) => return Err(stalled(partial.len())),
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        return Err(DownloadError::Truncated {
                            received: partial.len(),
                            expected: size,
                            detail: format!(" ({})", super::http::error_chain(&e)),
                        })
                    }
                    Ok(Some(Ok(chunk))) => chunk,
                };
                if partial.len() + chunk.len() as u64 > size {
                    let received = partial.len() + chunk.len() as u64;
                    partial.reset()?;
                    sync(&partial, credited);
                    return Err(DownloadError::TooLarge {
                        expected: size,
                        received,
                    });
                }
                partial.write(&chunk)?;
                self.ui.credit(*credited, partial.len());
                *credited = partial.len();
                if let Some(b) = bar {
                    b.set_position(partial.len());
                }
            }
            if partial.len() < size {
                return Err(DownloadError::Truncated {
                    received: partial.len(),
                    expected: size,
                    detail: String::new(),
                });
            }
        }
        let finished = tokio::task::spawn_blocking(move || partial.finish())
            .await
            .map_err(|e| DownloadError::Cache {
                message: e.to_string(),
            })?;
        match finished {
            Ok(_) => Ok(()),
            Err(CacheError::Mismatch {
                expected, actual, ..
            }) => {
                // The partial file is gone: the next attempt starts from zero.
                self.ui.credit(*credited, 0);
                *credited = 0;
                Err(DownloadError::Mismatch { expected, actual })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One attempt from a `file://` mirror: copy through the hash, off the async threads.
    async fn attempt_file(
        &self,
        path: PathBuf,
        credited: &mut u64,
        bar: Option<&ProgressBar>,
    ) -> Result<(), DownloadError> {
        let cache = self.cache.clone();
        let sha = self.pkg.sha256;
        let size = self.pkg.size;
        let copied = tokio::task::spawn_blocking(move || -> Result<(), DownloadError> {
            let local = |e: std::io::Error| DownloadError::LocalFile {
                message: format!("{}: {e}", path.display()),
            };
            let mut src = std::fs::File::open(&path).map_err(local)?;
            let mut partial = cache.partial(&sha, size)?;
            partial.reset()?;
            let mut buf = vec![0u8; super::cache::HASH_BUF_SIZE];
            loop {
                let n = std::io::Read::read(&mut src, &mut buf).map_err(local)?;
                if n == 0 {
                    break;
                }
                if partial.len() + n as u64 > size {
                    let received = partial.len() + n as u64;
                    partial.discard();
                    return Err(DownloadError::TooLarge {
                        expected: size,
                        received,
                    });
                }
                partial.write(&buf[..n])?;
            }
            if partial.len() < size {
                let received = partial.len();
                partial.discard();
                return Err(DownloadError::Truncated {
                    received,
                    expected: size,
                    detail: " (the mirror's file is shorter)".into(),
                });
            }
            match partial.finish() {
                Ok(_) => Ok(()),
                Err(CacheError::Mismatch {
                    expected, actual, ..
                }) => Err(DownloadError::Mismatch { expected, actual }),
                Err(e) => Err(e.into()),
            }
        })
        .await
        .map_err(|e| DownloadError::Cache {
            message: e.to_string(),
        })?;
        let now = if copied.is_ok() { size } else { 0 };
        self.ui.credit(*credited, now);
        *credited = now;
        if let Some(b) = bar {
            b.set_position(now);
        }
        copied
    }
}

/// A 206 must continue exactly where the partial file ends, for a file of the locked size.
fn check_content_range(
    resp: &reqwest::Response,
    offset: u64,
    size: u64,
) -> Result<(), DownloadError> {
    let value = resp
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bad = |why: &str| DownloadError::Protocol {
        message: format!("206 with Content-Range `{value}` for bytes {offset}-: {why}"),
    };
    let (range, total) = value
        .strip_prefix("bytes ")
        .and_then(|r| r.split_once('/'))
        .ok_or_else(|| bad("malformed"))?;
    let start: u64 = range
        .split_once('-')
        .and_then(|(s, _)| s.trim().parse().ok())
        .ok_or_else(|| bad("malformed"))?;
    if start != offset {
        return Err(bad("wrong start"));
    }
    if let Ok(total) = total.trim().parse::<u64>() {
        if total > size {
            return Err(DownloadError::TooLarge {
                expected: size,
                received: total,
            });
        }
    }
    Ok(())
}

/// The delay before attempt `attempt + 1`: exponential, capped, jittered down by up to half.
fn backoff(options: &FetchOptions, attempt: u32) -> Duration {
    let exp = options
        .retry_base_delay
        .saturating_mul(1u32 << (attempt - 1).min(20));
    let delay = exp.min(options.retry_max_delay);
    let half = delay / 2;
    half + half.mul_f64(jitter())
}

/// A number in [0, 1) that differs between calls (no cryptographic quality needed).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Progress display shared by all download tasks.
#[derive(Clone)]
struct Ui {
    mode: Progress,
    multi: Option<MultiProgress>,
    total_bar: Option<ProgressBar>,
    bytes: Arc<AtomicU64>,
    total_bytes: Arc<AtomicU64>,
    done: Arc<AtomicUsize>,
    files: usize,
    start: Instant,
}

impl Ui {
    fn new(mode: Progress, total_bytes: u64, files: usize) -> Ui {
        let (multi, total_bar) = if mode == Progress::Bars {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let bar = multi.add(
                ProgressBar::new(total_bytes).with_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:25}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                ),
            );
            bar.set_prefix("fetching");
            (Some(multi), Some(bar))
        } else {
            (None, None)
        };
        Ui {
            mode,
            multi,
            total_bar,
            bytes: Arc::new(AtomicU64::new(0)),
            total_bytes: Arc::new(AtomicU64::new(total_bytes)),
            done: Arc::new(AtomicUsize::new(0)),
            files,
            start: Instant::now(),
        }
    }

    /// A bar for one active download (bars mode only).
    fn file_bar(&self, pkg: &LockedPackage) -> Option<ProgressBar> {
        let multi = self.multi.as_ref()?;
        let bar = multi.add(
            ProgressBar::new(pkg.size).with_style(
                ProgressStyle::with_template("  {msg:36!} [{bar:20}] {bytes}/{total_bytes}")
                    .expect("valid template")
                    .progress_chars("=> "),
            ),
        );
        bar.set_message(format!("{} {}", pkg.name, pkg.version));
        Some(bar)
    }

    /// A package's bytes on disk went from `old` to `new`.
    fn credit(&self, old: u64, new: u64) {
        if new >= old {
            self.bytes.fetch_add(new - old, Ordering::Relaxed);
            if let Some(b) = &self.total_bar {
                b.inc(new - old);
            }
        } else {
            self.bytes.fetch_sub(old - new, Ordering::Relaxed);
            if let Some(b) = &self.total_bar {
                b.dec(old - new);
            }
        }
    }

    /// A message about one package (retries).
    fn note(&self, msg: String) {
        match (&self.mode, &self.multi) {
            (Progress::Bars, Some(m)) => {
                let _ = m.println(msg);
            }
            (Progress::Lines, _) => eprintln!("{msg}"),
            _ => {}
        }
    }

    /// In lines mode, a task printing the status every [`LINE_INTERVAL`].
    fn start_ticker(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.mode != Progress::Lines {
            return None;
        }
        let ui = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(LINE_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!("{}", ui.status_line());
            }
        }))
    }

    fn status_line(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        format!(
            "fetching: {}/{} packages, {:.1} of {:.1} MiB, {:.1} MiB/s",
            self.done.load(Ordering::Relaxed),
            self.files,
            mib(bytes),
            mib(self.total_bytes.load(Ordering::Relaxed)),
            mib(bytes) / secs
        )
    }

    fn finish(&self) {
        if let Some(b) = &self.total_bar {
            b.finish_and_clear();
        }
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters_down() {
        let o = FetchOptions {
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(1),
            ..FetchOptions::default()
        };
        for attempt in 1..30 {
            let full = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                .min(Duration::from_secs(1));
            let d = backoff(&o, attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
    }

    #[test]
    fn urls_join_with_one_slash() {
        let pkg = LockedPackage {
            name: "a".into(),
            version: "1".into(),
            architecture: "amd64".into(),
            suite: "bookworm".into(),
            filename: "pool/main/a/a_1_amd64.deb".into(),
            size: 1,
            sha256: Sha256::default(),
        };
        assert_eq!(
            package_url("http://m.example/debian/", &pkg),
            "http://m.example/debian/pool/main/a/a_1_amd64.deb"
        );
    }
}
