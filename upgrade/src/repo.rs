//! Loading the governance record as a node: tough's `RepositoryLoader` from the node's
//! newest trusted root (TUF 5.2: the one its OS image ships, or the newest one a load has
//! verified since, kept atomically in the datastore as [`NEWEST_ROOT`], so that keys a
//! root rotation retired have no say over the node any more), with every role's signatures,
//! thresholds, versions and expiry enforced (`ExpirationEnforcement::Safe`), bounded sizes
//! ([`plinth_governance::status::limits`]), and a datastore directory the caller keeps (on
//! the state partition in production) so that what was once trusted stays trusted: an older
//! timestamp or snapshot served later is a replay, refused (TUF 5.4.3, 5.5.5). tough loads
//! in a copy of the datastore, copied back file by file atomically after a load succeeded:
//! tough rewrites its files in place, and a torn file would read to it as no file at all.
//!
//! Mirrors are an ordered list of base URLs (`file://`, `http://` for tests on 127.0.0.1,
//! `https://` in production), each a whole published repository (`timestamp.json` at its
//! base, payloads under `targets/`). They are tried in order: a mirror that cannot be
//! reached, or that serves metadata tough refuses, is passed over for the next; if none
//! loads, the error is the first refusal (a security finding outranks a network failure),
//! else the last network failure.
//!
//! The transport ([`MirrorTransport`]) adds only what is needed to tough's: http(s) through
//! one reqwest client with timeouts, each file read whole below a cap (metadata is small and
//! tough bounds it again); `file://` through tough's own filesystem transport.

use crate::error::UpgradeError;
use plinth_release::untrusted::read_untrusted;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tough::schema::RoleType;
use tough::{
    ExpirationEnforcement, FilesystemTransport, RepositoryLoader, Transport, TransportError,
    TransportErrorKind, TransportStream,
};
use url::Url;

/// The largest trusted root read.
pub const MAX_ROOT: u64 = 1 << 20;
/// The largest metadata file the transport reads (tough's own limits are smaller or equal).
pub const MAX_METADATA: u64 = 16 << 20;
/// Connect and read timeouts of http(s) mirrors.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The newest root a load verified, in the datastore directory (written by this crate,
/// atomically; tough's own `root.json` there is neither atomic nor read back).
pub const NEWEST_ROOT: &str = "newest-root.json";

/// Where and how to load the record.
#[derive(Debug, Clone)]
pub struct RepoOptions {
    /// Base URLs, tried in order.
    pub mirrors: Vec<Url>,
    /// The trusted root.json the node starts from.
    pub trusted_root: PathBuf,
    /// tough's datastore: kept between loads (rollback and freeze protection).
    pub datastore: PathBuf,
}

/// A mirror's base URL as given, with a trailing `/` so that names join below it; only
/// `file`, `http` and `https`.
pub fn mirror_base(url: &Url) -> Result<Url, UpgradeError> {
    let bad = |message: String| UpgradeError::Unreachable {
        mirror: url.to_string(),
        message,
    };
    if !matches!(url.scheme(), "file" | "http" | "https") {
        return Err(bad(format!(
            "a {}:// mirror is not supported (file, http, https)",
            url.scheme()
        )));
    }
    let mut s = url.to_string();
    if !s.ends_with('/') {
        s.push('/');
    }
    Url::parse(&s).map_err(|e| bad(e.to_string()))
}

/// The targets base URL of a mirror.
pub fn targets_base(base: &Url) -> Result<Url, UpgradeError> {
    base.join(&format!("{}/", plinth_governance::publish::TARGETS_DIR))
        .map_err(|e| UpgradeError::Unreachable {
            mirror: base.to_string(),
            message: e.to_string(),
        })
}

/// The HTTP client every http(s) fetch uses.
pub fn http_client() -> Result<reqwest::Client, UpgradeError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        // A redirect may not leave https (a mirror's configured scheme is checked once, in
        // the node's configuration; a redirect must not undo it), nor go on for long.
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let from_https = attempt.previous().iter().any(|u| u.scheme() == "https");
            if attempt.previous().len() > 5 {
                attempt.error("more than 5 redirects")
            } else if from_https && attempt.url().scheme() != "https" {
                attempt.error("a redirect from https to another scheme")
            } else if attempt.url().scheme() == "http"
                && !matches!(
                    attempt.url().host(),
                    Some(url::Host::Ipv4(ip)) if ip.is_loopback()
                )
                && !matches!(
                    attempt.url().host(),
                    Some(url::Host::Ipv6(ip)) if ip.is_loopback()
                )
            {
                attempt.error("a redirect to plain http off this machine")
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| UpgradeError::Unreachable {
            mirror: "(http client)".into(),
            message: e.to_string(),
        })
}

/// tough's transport for our mirrors.
#[derive(Debug, Clone)]
pub struct MirrorTransport {
    client: reqwest::Client,
}

impl MirrorTransport {
    pub fn new(client: reqwest::Client) -> MirrorTransport {
        MirrorTransport { client }
    }
}

#[tough::async_trait]
impl Transport for MirrorTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => FilesystemTransport.fetch(url).await,
            "http" | "https" => {
                let fail = |e: reqwest::Error| {
                    TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e)
                };
                let mut response = self.client.get(url.clone()).send().await.map_err(fail)?;
                let status = response.status();
                if status == reqwest::StatusCode::NOT_FOUND
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    return Err(TransportError::new(TransportErrorKind::FileNotFound, url));
                }
                if !status.is_success() {
                    return Err(TransportError::new_with_cause(
                        TransportErrorKind::Other,
                        url.clone(),
                        std::io::Error::other(format!("HTTP status {status}")),
                    ));
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await.map_err(fail)? {
                    if (body.len() + chunk.len()) as u64 > MAX_METADATA {
                        return Err(TransportError::new_with_cause(
                            TransportErrorKind::Other,
                            url.clone(),
                            std::io::Error::other(format!(
                                "more than {MAX_METADATA} bytes of metadata"
                            )),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                let once = futures_util::stream::once(async move {
                    Ok::<_, TransportError>(tough::Bytes::from(body))
                });
                Ok(Box::pin(once))
            }
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                url,
            )),
        }
    }
}

/// A loaded record and the mirror it came from.
#[derive(Debug)]
pub struct Loaded {
    pub repo: tough::Repository,
    pub mirror: Url,
    /// The mirrors after it, for the payload's fallback (it first).
    pub mirrors: Vec<Url>,
}

/// Load the record from the first mirror that gives a repository tough accepts.
pub async fn load(opts: &RepoOptions, client: &reqwest::Client) -> Result<Loaded, UpgradeError> {
    plinth_release::archive::private_dir(&opts.datastore).map_err(UpgradeError::io(
        &opts.datastore,
        "create the datastore directory",
    ))?;
    let (root, root_path, kept_version) = starting_root(opts)?;
    check_datastore(&opts.datastore)?;
    if opts.mirrors.is_empty() {
        return Err(UpgradeError::Unreachable {
            mirror: "(none)".into(),
            message: "no mirror is configured".into(),
        });
    }
    let mut errors = Vec::new();
    let work = opts.datastore.join(WORK_DIR);
    for (i, mirror) in opts.mirrors.iter().enumerate() {
        copy_datastore(&opts.datastore, &work, true)?;
        match load_one(&root, &root_path, mirror, &work, client).await {
            Ok(repo) => {
                copy_datastore(&work, &opts.datastore, false)?;
                let _ = std::fs::remove_dir_all(&work);
                if repo.root().signed.version.get() > kept_version {
                    keep_newest_root(opts, &repo)?;
                }
                return Ok(Loaded {
                    repo,
                    mirror: mirror.clone(),
                    mirrors: opts.mirrors[i..].to_vec(),
                });
            }
            Err(e) => errors.push(e),
        }
    }
    let first_refusal = errors.iter().position(|e| !e.is_transport());
    let i = first_refusal.unwrap_or(errors.len() - 1);
    Err(errors.swap_remove(i))
}

/// The root a load starts from: the one kept from an earlier load ([`NEWEST_ROOT`]) when
/// its version is at least the image's, else the image's; with the file it came from and the
/// kept root's version (0 without one), which a load that ends on a newer root replaces.
fn starting_root(opts: &RepoOptions) -> Result<(Vec<u8>, PathBuf, u64), UpgradeError> {
    let read = |path: &Path| -> Result<Option<(Vec<u8>, u64)>, UpgradeError> {
        let bad = |message: String| UpgradeError::TrustedRoot {
            path: path.to_path_buf(),
            message: if path.starts_with(&opts.datastore) {
                format!(
                    "{message} (the newest root this node verified; it is written atomically, \
                     so something else altered it: restore it from a node of the same fleet \
                     or from the repository's newest N.root.json, after checking it)"
                )
            } else {
                message
            },
        };
        let bytes = match read_untrusted(path, MAX_ROOT) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(e.to_string())),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let version = value["signed"]["version"]
            .as_u64()
            .ok_or_else(|| bad("no signed.version".into()))?;
        Ok(Some((bytes, version)))
    };
    let image = read(&opts.trusted_root)?.ok_or_else(|| UpgradeError::TrustedRoot {
        path: opts.trusted_root.clone(),
        message: "no such file".into(),
    })?;
    let kept_path = opts.datastore.join(NEWEST_ROOT);
    match read(&kept_path)? {
        Some((bytes, version)) if version >= image.1 => Ok((bytes, kept_path, version)),
        Some((_, version)) => Ok((image.0, opts.trusted_root.clone(), version)),
        None => Ok((image.0, opts.trusted_root.clone(), 0)),
    }
}

/// The datastore's files must parse: tough treats one it cannot parse as absent, and so
/// would skip its rollback check against it. They are written atomically (tough loads in a
/// copy, [`WORK_DIR`]), so one that does not parse was altered: refused, with what to do.
fn check_datastore(datastore: &Path) -> Result<(), UpgradeError> {
    for name in [
        "timestamp.json",
        "snapshot.json",
        "targets.json",
        "latest_known_time.json",
    ] {
        let path = datastore.join(name);
        let bytes = match read_untrusted(&path, MAX_METADATA) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(UpgradeError::io(&path, "read the trusted metadata")(e)),
        };
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
            return Err(UpgradeError::State {
                path,
                message: "the trusted metadata kept from the last load does not parse (it is \
                          written atomically: something else altered it); loading without it \
                          would lose rollback protection"
                    .into(),
                hint: "check that the mirrors serve the current record, then remove this file; \
                       the next load trusts what the newest root signs again"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Keep the root tough verified on this load, atomically, as the next load's start.
fn keep_newest_root(opts: &RepoOptions, repo: &tough::Repository) -> Result<(), UpgradeError> {
    let path = opts.datastore.join(NEWEST_ROOT);
    let mut bytes =
        serde_json::to_vec_pretty(repo.root()).map_err(|e| UpgradeError::TrustedRoot {
            path: path.clone(),
            message: format!("the verified root does not serialize: {e}"),
        })?;
    bytes.push(b'\n');
    plinth_release::atomic::write_atomic(&path, &bytes, 0o600)
        .map_err(UpgradeError::io(&path, "write the newest trusted root to"))
}

/// The directory below the datastore where tough loads: a copy of the datastore's files,
/// copied back (each atomically) only after a load succeeded. tough rewrites its files in
/// place, so a kill or power loss mid-write tears only this copy.
const WORK_DIR: &str = ".load";

/// The metadata files of a datastore directory (`*.json` but [`NEWEST_ROOT`]).
fn metadata_files(dir: &Path) -> Result<Vec<std::ffi::OsString>, UpgradeError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(UpgradeError::io(dir, "list"))? {
        let entry = entry.map_err(UpgradeError::io(dir, "list"))?;
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if entry.file_type().is_ok_and(|t| t.is_file())
            && text.ends_with(".json")
            && text != NEWEST_ROOT
        {
            names.push(name);
        }
    }
    Ok(names)
}

/// Copy the metadata files from `from` into `to`: into a fresh private `to` (`fresh`), or
/// each replacing its namesake atomically, and those `from` no longer has removed (tough
/// drops a role's file when its keys rotate).
fn copy_datastore(from: &Path, to: &Path, fresh: bool) -> Result<(), UpgradeError> {
    if fresh {
        if let Err(e) = std::fs::remove_dir_all(to) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(UpgradeError::io(to, "remove the last load's copy")(e));
            }
        }
        plinth_release::archive::private_dir(to).map_err(UpgradeError::io(
            to,
            "create the load's copy of the datastore",
        ))?;
    }
    let names = metadata_files(from)?;
    for name in &names {
        let src = from.join(name);
        let bytes = read_untrusted(&src, MAX_METADATA)
            .map_err(UpgradeError::io(&src, "read the trusted metadata"))?;
        let dest = to.join(name);
        plinth_release::atomic::write_atomic(&dest, &bytes, 0o600)
            .map_err(UpgradeError::io(&dest, "write the trusted metadata to"))?;
    }
    if !fresh {
        for gone in metadata_files(to)?.iter().filter(|n| !names.contains(n)) {
            let path = to.join(gone);
            std::fs::remove_file(&path)
                .map_err(UpgradeError::io(&path, "remove the dropped metadata"))?;
        }
    }
    Ok(())
}

async fn load_one(
    root: &[u8],
    root_path: &Path,
    mirror: &Url,
    datastore: &Path,
    client: &reqwest::Client,
) -> Result<tough::Repository, UpgradeError> {
    let base = mirror_base(mirror)?;
    let targets = targets_base(&base)?;
    RepositoryLoader::new(&root, base, targets)
        .transport(MirrorTransport::new(client.clone()))
        .limits(plinth_governance::status::limits())
        .datastore(datastore.to_path_buf())
        .expiration_enforcement(ExpirationEnforcement::Safe)
        .load()
        .await
        .map_err(|e| map_error(mirror.as_str(), root_path, e))
}

/// tough's load error as ours.
pub fn map_error(mirror: &str, root: &Path, e: tough::error::Error) -> UpgradeError {
    use tough::error::Error as E;
    let mirror = mirror.to_string();
    let message = e.to_string();
    let role_name = |r: &RoleType| r.to_string();
    match e {
        E::ExpiredMetadata { role, .. } => UpgradeError::MetadataExpired {
            mirror,
            expires: "a time already past".into(),
            role: role_name(&role),
        },
        E::VerifyMetadata { role, .. } => UpgradeError::BelowThreshold {
            mirror,
            role: role_name(&role),
            message,
        },
        E::OlderMetadata {
            role,
            current_version,
            new_version,
            ..
        } => UpgradeError::MetadataReplayed {
            mirror,
            role: role_name(&role),
            trusted: current_version,
            offered: new_version,
        },
        E::VersionMismatch { role, .. } => UpgradeError::MetadataMixed {
            mirror,
            role: role_name(&role),
            message,
        },
        E::HashMismatch { context, .. } => UpgradeError::MetadataMixed {
            mirror,
            role: context,
            message,
        },
        E::ParseMetadata { role, .. } => UpgradeError::MetadataMalformed {
            mirror,
            role: role_name(&role),
            message,
        },
        E::SystemTimeSteppedBackward {
            sys_time,
            latest_known_time,
        } => UpgradeError::ClockBehind {
            now: sys_time.to_string(),
            seen: latest_known_time.to_string(),
        },
        E::VerifyTrustedMetadata { .. } | E::ParseTrustedMetadata { .. } => {
            UpgradeError::TrustedRoot {
                path: root.to_path_buf(),
                message,
            }
        }
        E::Transport { ref source, .. } => {
            // tough checks a metadata file's hash and size as it streams, inside the
            // transport: a mismatch there is a file of another publication, not a network
            // failure.
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
            while let Some(c) = cause {
                if let Some(inner) = c.downcast_ref::<tough::error::Error>() {
                    if let E::HashMismatch { context, .. } = inner {
                        return UpgradeError::MetadataMixed {
                            mirror,
                            role: context.clone(),
                            message,
                        };
                    }
                    if let E::MaxSizeExceeded { .. } = inner {
                        return UpgradeError::MetadataMalformed {
                            mirror,
                            role: "metadata".into(),
                            message,
                        };
                    }
                }
                cause = c.source();
            }
            UpgradeError::Unreachable { mirror, message }
        }
        _ => UpgradeError::Tough { mirror, message },
    }
}
