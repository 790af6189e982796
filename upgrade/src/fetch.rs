//! Downloading an elected payload into the staging directory (on the state partition, mode
//! 0700), checked against its signed length and sha256 before anything is written from it
//! (the archive check reads the bytes as they arrive, through a [`Tap`], with its own bounds;
//! its result counts only once the hash matched). The staged file is `<sha256>.part`: a download cut short (a dropped connection,
//! a killed agent) resumes where it stopped, with an HTTP `Range` request (or a seek, for
//! `file://`), after re-hashing what is already there. Mirrors are tried in order; on each,
//! a connection that drops mid-body is retried from where it stopped while it makes
//! progress. What a mirror serves is refused when it is shorter than the signed length
//! ([`UpgradeError::Truncated`]), longer ([`UpgradeError::TooLong`]) or of another sha256
//! ([`UpgradeError::WrongHash`]); the staged bytes are then dropped and the next mirror
//! tried. Memory is one fixed buffer (and reqwest's chunks), whatever the payload's size.
//! A [`Tap`] sees the staged bytes as they arrive (the archive check runs beside the
//! download). A mirror must also keep a pace ([`Pace`]): one that trickles bytes just inside
//! the read timeout is given up after a deadline set by the payload's length, its bytes kept
//! for the next mirror to resume from.

use crate::error::UpgradeError;
use plinth_release::Sha256;
use sha2::Digest;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use url::Url;

/// Retries of one mirror after a dropped connection that made progress.
pub const MAX_RETRIES: u32 = 8;
const BUFFER: usize = 1 << 20;

/// The payload wanted: its target name and what governance signed for it.
#[derive(Debug, Clone)]
pub struct Want {
    pub target: String,
    pub sha256: Sha256,
    pub length: u64,
    /// Whether the repository uses consistent snapshots (`targets/<sha256>.<name>`).
    pub consistent: bool,
}

impl Want {
    /// The payload's URL on a mirror.
    pub fn url(&self, mirror: &Url) -> Result<Url, UpgradeError> {
        let base = crate::repo::targets_base(&crate::repo::mirror_base(mirror)?)?;
        let name = if self.consistent {
            format!("{}.{}", self.sha256, self.target)
        } else {
            self.target.clone()
        };
        base.join(&name).map_err(|e| UpgradeError::Unreachable {
            mirror: mirror.to_string(),
            message: e.to_string(),
        })
    }
}

/// Where payloads are staged, how much space must stay free there, and the pace mirrors
/// must keep.
#[derive(Debug, Clone)]
pub struct Staging {
    pub dir: PathBuf,
    /// Bytes that must stay free on the staging file system after the payload.
    pub keep_free: u64,
    pub pace: Pace,
}

/// How slow an http(s) mirror may be: it must deliver the payload within `grace` plus its
/// length at `min_rate` bytes a second (the whole length, also when resuming: a mirror that
/// ignores the range starts again from the first byte), or it is given up (what it gave
/// stays staged) and the next mirror tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub min_rate: u64,
    pub grace: std::time::Duration,
}

impl Pace {
    /// 64 KiB/s after two minutes: a 1 GiB payload may take 4 h 35 min from one mirror.
    pub const DEFAULT: Pace = Pace {
        min_rate: 64 << 10,
        grace: std::time::Duration::from_secs(120),
    };

    /// The time a mirror has for `bytes`.
    pub fn deadline(&self, bytes: u64) -> std::time::Duration {
        self.grace + std::time::Duration::from_secs_f64(bytes as f64 / self.min_rate.max(1) as f64)
    }
}

impl Staging {
    /// The staged file of `sha256` (named by the digest only).
    pub fn path(&self, sha256: &Sha256) -> PathBuf {
        self.dir.join(format!("{sha256}.part"))
    }

    /// Remove staged files of other payloads.
    pub fn clean_except(&self, keep: Option<&Sha256>) {
        let keep = keep.map(|s| format!("{s}.part"));
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".part") && Some(&name) != keep.as_ref() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

/// What sees the staged bytes as they are staged, in order from the first byte (the
/// prefix a resumed download finds first): [`crate::apply`]'s check of the archive runs
/// beside the download this way. `restart` says the bytes so far are dropped and the
/// stream starts again from its first byte.
pub trait Tap {
    fn feed(&mut self, bytes: &[u8]);
    fn restart(&mut self);
}

/// A tap that sees nothing.
pub struct NoTap;

impl Tap for NoTap {
    fn feed(&mut self, _: &[u8]) {}
    fn restart(&mut self) {}
}

/// The open staged file and the hash of its bytes so far.
struct Staged<'t> {
    file: File,
    path: PathBuf,
    hasher: sha2::Sha256,
    pos: u64,
    tap: &'t mut dyn Tap,
}

impl Staged<'_> {
    fn reset(&mut self) -> Result<(), UpgradeError> {
        self.file
            .set_len(0)
            .map_err(UpgradeError::io(&self.path, "truncate"))?;
        self.hasher = sha2::Sha256::new();
        self.pos = 0;
        self.tap.restart();
        Ok(())
    }

    fn append(&mut self, bytes: &[u8], want: &Want, url: &Url) -> Result<(), UpgradeError> {
        if self.pos + bytes.len() as u64 > want.length {
            return Err(UpgradeError::TooLong {
                url: url.to_string(),
                expected: want.length,
            });
        }
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(bytes, self.pos)
            .map_err(UpgradeError::io(&self.path, "write the staged payload"))?;
        self.hasher.update(bytes);
        self.tap.feed(bytes);
        self.pos += bytes.len() as u64;
        Ok(())
    }
}

/// Download `want` into the staging directory from the first mirror that gives it whole and
/// right; returns the staged file's path (fsynced, its sha256 checked).
pub async fn download(
    client: &reqwest::Client,
    mirrors: &[Url],
    want: &Want,
    staging: &Staging,
) -> Result<PathBuf, UpgradeError> {
    download_with(client, mirrors, want, staging, &mut NoTap).await
}

/// [`download`], with every staged byte shown to `tap` as it is staged.
pub async fn download_with(
    client: &reqwest::Client,
    mirrors: &[Url],
    want: &Want,
    staging: &Staging,
    tap: &mut dyn Tap,
) -> Result<PathBuf, UpgradeError> {
    plinth_release::archive::private_dir(&staging.dir).map_err(UpgradeError::io(
        &staging.dir,
        "create the staging directory",
    ))?;
    staging.clean_except(Some(&want.sha256));
    let path = staging.path(&want.sha256);
    let mut staged = open_staged(&path, want.length, tap)?;
    let needed = want.length - staged.pos;
    let free = plinth_release::archive::free_bytes(&staging.dir).map_err(UpgradeError::io(
        &staging.dir,
        "find the free space (statvfs) of",
    ))?;
    if needed.saturating_add(staging.keep_free) > free {
        return Err(UpgradeError::NoSpace {
            path: staging.dir.clone(),
            what: format!(
                "staging the payload of {} with {} bytes kept free",
                want.target, staging.keep_free
            ),
            needed: needed.saturating_add(staging.keep_free),
            available: free,
            hint: "free space on the state partition; nothing was written".into(),
        });
    }
    let mut tried = Vec::new();
    for mirror in mirrors {
        let url = want.url(mirror)?;
        let resumed = staged.pos > 0;
        let mut result = paced(client, &url, want, &mut staged, staging.pace)
            .await
            .and_then(|()| finish(&mut staged, want, &url));
        if resumed && matches!(result, Err(UpgradeError::WrongHash { .. })) {
            // What was staged may have come from another mirror or run: once more from the
            // start.
            staged.reset()?;
            result = paced(client, &url, want, &mut staged, staging.pace)
                .await
                .and_then(|()| finish(&mut staged, want, &url));
        }
        match result {
            Ok(()) => return Ok(path),
            Err(e) => {
                if !e.is_transport() {
                    staged.reset()?;
                }
                tried.push(e);
            }
        }
    }
    // Only transport failures: what was staged is a prefix of what some mirror served, kept
    // for the next run to resume (a slow link gets there over several runs); after any
    // other failure it was already dropped.
    if !tried.iter().all(UpgradeError::is_transport) {
        staged.reset()?;
        drop(staged);
        let _ = std::fs::remove_file(&path);
    }
    if tried.len() == 1 {
        return Err(tried.remove(0));
    }
    Err(UpgradeError::NoMirror {
        target: want.target.clone(),
        tried,
    })
}

/// Open (or create) the staged file and hash what it holds; more than `length` bytes, and
/// it starts over.
fn open_staged<'t>(
    path: &Path,
    length: u64,
    tap: &'t mut dyn Tap,
) -> Result<Staged<'t>, UpgradeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(UpgradeError::io(path, "open the staged payload"))?;
    let meta = file.metadata().map_err(UpgradeError::io(path, "stat"))?;
    if !meta.file_type().is_file() {
        return Err(UpgradeError::Layout {
            path: path.to_path_buf(),
            message: "the staged payload is not a regular file".into(),
            hint: "remove it; the staging directory holds only the agent's files".into(),
        });
    }
    let mut staged = Staged {
        file: file.try_clone().map_err(UpgradeError::io(path, "open"))?,
        path: path.to_path_buf(),
        hasher: sha2::Sha256::new(),
        pos: 0,
        tap,
    };
    if meta.len() > length {
        staged.reset()?;
        return Ok(staged);
    }
    let mut buf = vec![0u8; BUFFER];
    let mut left = meta.len();
    file.seek(SeekFrom::Start(0))
        .map_err(UpgradeError::io(path, "seek"))?;
    while left > 0 {
        let n = left.min(BUFFER as u64) as usize;
        file.read_exact(&mut buf[..n])
            .map_err(UpgradeError::io(path, "read the staged payload"))?;
        staged.hasher.update(&buf[..n]);
        staged.tap.feed(&buf[..n]);
        left -= n as u64;
    }
    staged.pos = meta.len();
    Ok(staged)
}

/// The staged bytes are whole: check the hash, fsync.
fn finish(staged: &mut Staged<'_>, want: &Want, url: &Url) -> Result<(), UpgradeError> {
    if staged.pos < want.length {
        return Err(UpgradeError::Truncated {
            url: url.to_string(),
            got: staged.pos,
            expected: want.length,
        });
    }
    let found = Sha256(staged.hasher.clone().finalize().into());
    if found != want.sha256 {
        return Err(UpgradeError::WrongHash {
            url: url.to_string(),
            expected: want.sha256.to_string(),
            found: found.to_string(),
        });
    }
    staged
        .file
        .sync_all()
        .map_err(UpgradeError::io(&staged.path, "fsync the staged payload"))
}

/// [`from_mirror`] within the [`Pace`]'s deadline for the payload; a mirror too slow is a
/// transport failure (the staged bytes are kept, the next mirror or run resumes from them).
async fn paced(
    client: &reqwest::Client,
    url: &Url,
    want: &Want,
    staged: &mut Staged<'_>,
    pace: Pace,
) -> Result<(), UpgradeError> {
    let started = std::time::Instant::now();
    let deadline = pace.deadline(want.length);
    match tokio::time::timeout(deadline, from_mirror(client, url, want, staged)).await {
        Ok(result) => result,
        Err(_) => Err(UpgradeError::Unreachable {
            mirror: url.to_string(),
            message: format!(
                "too slow: {} of {} bytes staged after {:.0} s, below the {} KiB/s (after {} s) \
                 a mirror must keep; the bytes stay staged for the next mirror or run",
                staged.pos,
                want.length,
                started.elapsed().as_secs_f64(),
                pace.min_rate >> 10,
                pace.grace.as_secs()
            ),
        }),
    }
}

/// Fetch what is missing of the payload from one mirror; `Ok` when `length` bytes are
/// staged (not yet hash-checked).
async fn from_mirror(
    client: &reqwest::Client,
    url: &Url,
    want: &Want,
    staged: &mut Staged<'_>,
) -> Result<(), UpgradeError> {
    match url.scheme() {
        "file" => from_file(url, want, staged),
        _ => {
            let mut retries = 0;
            loop {
                let before = staged.pos;
                match from_http(client, url, want, staged).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_transport() && staged.pos > before && retries < MAX_RETRIES => {
                        retries += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

fn from_file(url: &Url, want: &Want, staged: &mut Staged<'_>) -> Result<(), UpgradeError> {
    let unreachable = |message: String| UpgradeError::Unreachable {
        mirror: url.to_string(),
        message,
    };
    let path = url
        .to_file_path()
        .map_err(|_| unreachable("not a local path".into()))?;
    let mut file =
        plinth_release::untrusted::open_untrusted(&path).map_err(|e| unreachable(e.to_string()))?;
    file.seek(SeekFrom::Start(staged.pos))
        .map_err(|e| unreachable(e.to_string()))?;
    let mut buf = vec![0u8; BUFFER];
    loop {
        // One byte past the signed length is enough to tell a longer file.
        let want_n = ((want.length + 1 - staged.pos).min(BUFFER as u64)) as usize;
        let n = file
            .read(&mut buf[..want_n])
            .map_err(|e| unreachable(e.to_string()))?;
        if n == 0 {
            return Ok(());
        }
        staged.append(&buf[..n], want, url)?;
    }
}

async fn from_http(
    client: &reqwest::Client,
    url: &Url,
    want: &Want,
    staged: &mut Staged<'_>,
) -> Result<(), UpgradeError> {
    let unreachable = |message: String| UpgradeError::Unreachable {
        mirror: url.to_string(),
        message,
    };
    if staged.pos == want.length {
        return Ok(());
    }
    let mut request = client.get(url.clone());
    if staged.pos > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={}-", staged.pos));
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = response.status();
    match status {
        reqwest::StatusCode::PARTIAL_CONTENT => {
            let range = response
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !range.starts_with(&format!("bytes {}-", staged.pos)) {
                return Err(unreachable(format!(
                    "asked for bytes from {}, the mirror answered `{range}`",
                    staged.pos
                )));
            }
        }
        reqwest::StatusCode::OK => {
            // The mirror ignores ranges: start over.
            staged.reset()?;
        }
        reqwest::StatusCode::RANGE_NOT_SATISFIABLE => {
            return Err(UpgradeError::Truncated {
                url: url.to_string(),
                got: staged.pos,
                expected: want.length,
            })
        }
        s => return Err(unreachable(format!("HTTP status {s}"))),
    }
    while let Some(chunk) = response.chunk().await.map_err(|e| {
        unreachable(format!(
            "the connection dropped after byte {}: {e}",
            staged.pos
        ))
    })? {
        staged.append(&chunk, want, url)?;
    }
    Ok(())
}
