//! The verified, content-addressed package cache.
//!
//! Layout below the cache root: `debs/<sha256>.deb` for complete packages and
//! `debs/.partial/<sha256>.part` for downloads in progress. A file appears under its final
//! name only by an atomic rename after its bytes were hashed and matched the name, and after
//! the data (and then the directory) were synced; so every `.deb` in the cache is complete and
//! correct, whatever crashed or failed before. [`Partial`] is the only way to add a file.
//!
//! Files are named by a [`Sha256`], never by text: a path below the cache can only be formed
//! from a valid digest (text becomes one where it enters, e.g. parsing `packages.lock`).
//! Hashing is `plinth_release`'s ([`Sha256Writer`]); [`sha256_reader`], [`sha256_file`] and
//! [`sha256_bytes`] are its one-shot helpers under the names the builder uses.

use plinth_release::{Sha256, Sha256Writer};
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Environment variable overriding the cache root (below `--cache`).
pub const CACHE_DIR_ENV: &str = "PLINTH_CACHE_DIR";

/// Read size of the streaming hash: big enough that syscalls cost nothing next to sha256.
pub const HASH_BUF_SIZE: usize = 1 << 20;

/// The cache of verified `.deb` files.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    debs: PathBuf,
    partial: PathBuf,
}

/// What [`Cache::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Present and its bytes hash to its name.
    Valid,
    /// Not in the cache.
    Missing,
    /// Present but its bytes hash to `actual` (only possible if something outside plinth wrote
    /// it); the caller decides whether to [`Cache::remove`] it.
    Corrupt { actual: Sha256 },
}

/// A cache operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("no cache directory: neither XDG_CACHE_HOME nor HOME is set\n  hint: pass --cache DIR or set {CACHE_DIR_ENV}")]
    NoDefaultRoot,
    #[error("{}: cannot {action}: {source}\n  hint: check that the cache directory is writable, or pick another with --cache DIR", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{}: {written} bytes would exceed the expected size of {expected} bytes", path.display())]
    TooLarge {
        path: PathBuf,
        written: u64,
        expected: u64,
    },
    #[error("{}: incomplete: {found} of {expected} bytes", path.display())]
    Incomplete {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("{}: sha256 mismatch: expected {expected}, got {actual} (the partial file was deleted)", path.display())]
    Mismatch {
        path: PathBuf,
        expected: Sha256,
        actual: Sha256,
    },
}

fn io_err<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> CacheError + 'a {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

impl Cache {
    /// `$XDG_CACHE_HOME/plinth`, else `$HOME/.cache/plinth` (relative or empty values of
    /// either variable are ignored, as the XDG spec says).
    pub fn default_root() -> Option<PathBuf> {
        let abs = |k: &str| {
            std::env::var_os(k)
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        abs("XDG_CACHE_HOME")
            .map(|d| d.join("plinth"))
            .or_else(|| abs("HOME").map(|h| h.join(".cache").join("plinth")))
    }

    /// The root to use: `flag` (from `--cache`), else `$PLINTH_CACHE_DIR`, else
    /// [`Cache::default_root`].
    pub fn resolve_root(flag: Option<&Path>) -> Result<PathBuf, CacheError> {
        if let Some(dir) = flag {
            return Ok(dir.to_path_buf());
        }
        if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(dir));
        }
        Self::default_root().ok_or(CacheError::NoDefaultRoot)
    }

    /// Open (creating if needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Cache, CacheError> {
        let root = root.into();
        let debs = root.join("debs");
        let partial = debs.join(".partial");
        std::fs::create_dir_all(&partial).map_err(io_err(&partial, "create directory"))?;
        Ok(Cache {
            root,
            debs,
            partial,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the verified package with this hash lives (whether or not it is present).
    pub fn deb_path(&self, sha256: &Sha256) -> PathBuf {
        self.debs.join(format!("{sha256}.deb"))
    }

    /// Where a download of this hash grows until it is verified.
    pub fn partial_path(&self, sha256: &Sha256) -> PathBuf {
        self.partial.join(format!("{sha256}.part"))
    }

    /// Cheap presence check: the file exists and has `size` bytes. The content is trusted
    /// because only [`Partial::finish`] puts files there; use [`Cache::verify`] to re-hash.
    pub fn contains(&self, sha256: &Sha256, size: u64) -> bool {
        std::fs::metadata(self.deb_path(sha256)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    /// Re-hash the cached file.
    pub fn verify(&self, sha256: &Sha256) -> Result<Verification, CacheError> {
        let path = self.deb_path(sha256);
        match sha256_file(&path) {
            Ok((actual, _)) if actual == *sha256 => Ok(Verification::Valid),
            Ok((actual, _)) => Ok(Verification::Corrupt { actual }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Verification::Missing),
            Err(e) => Err(io_err(&path, "read")(e)),
        }
    }

    /// Delete a cached file (no error if it is absent).
    pub fn remove(&self, sha256: &Sha256) -> Result<(), CacheError> {
        let path = self.deb_path(sha256);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path, "remove")(e)),
            _ => Ok(()),
        }
    }

    /// The hashes of all cached `.deb` files, sorted (files not named `<sha256>.deb` are
    /// not the cache's and are left out).
    pub fn list(&self) -> Result<Vec<Sha256>, CacheError> {
        let dir = std::fs::read_dir(&self.debs).map_err(io_err(&self.debs, "list"))?;
        let mut out: Vec<Sha256> = dir
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".deb")?.parse().ok()
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Start or resume the download of a `size`-byte file with hash `sha256`. The bytes already
    /// in its `.part` file are hashed so that writing can continue at [`Partial::len`]; a
    /// `.part` longer than `size` is emptied.
    pub fn partial(&self, sha256: &Sha256, size: u64) -> Result<Partial, CacheError> {
        let path = self.partial_path(sha256);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        let mut hasher = Sha256Writer::new(io::sink());
        let existing = file.metadata().map_err(io_err(&path, "stat"))?.len();
        let len = if existing > size {
            file.set_len(0).map_err(io_err(&path, "truncate"))?;
            0
        } else {
            let n = io::copy(
                &mut BufReader::with_capacity(HASH_BUF_SIZE, &mut file),
                &mut hasher,
            )
            .map_err(io_err(&path, "read"))?;
            if n != existing {
                // The file changed under us; start over rather than guess.
                file.set_len(0).map_err(io_err(&path, "truncate"))?;
                hasher = Sha256Writer::new(io::sink());
                0
            } else {
                n
            }
        };
        file.seek(SeekFrom::Start(len))
            .map_err(io_err(&path, "seek"))?;
        Ok(Partial {
            final_path: self.deb_path(sha256),
            debs: self.debs.clone(),
            path,
            sha256: *sha256,
            size,
            file,
            hasher,
            len,
        })
    }

    /// Copy a local file into the cache, verifying it against `sha256` and `size`.
    pub fn insert_file(
        &self,
        src: &Path,
        sha256: &Sha256,
        size: u64,
    ) -> Result<PathBuf, CacheError> {
        let mut partial = self.partial(sha256, size)?;
        partial.reset()?;
        let mut f = File::open(src).map_err(io_err(src, "open"))?;
        let mut buf = vec![0u8; HASH_BUF_SIZE];
        loop {
            let n = f.read(&mut buf).map_err(io_err(src, "read"))?;
            if n == 0 {
                break;
            }
            partial.write(&buf[..n])?;
        }
        partial.finish()
    }
}

/// A download in progress: bytes written here are hashed on the way to the `.part` file, and
/// [`Partial::finish`] moves the file into the cache only if the hash matches.
pub struct Partial {
    path: PathBuf,
    final_path: PathBuf,
    debs: PathBuf,
    sha256: Sha256,
    size: u64,
    file: File,
    /// Hashes the bytes of `file` (those found on resuming, then each write).
    hasher: Sha256Writer<io::Sink>,
    len: u64,
}

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Partial {
    /// Bytes written so far (including those found when resuming).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size the file must reach.
    pub fn expected_size(&self) -> u64 {
        self.size
    }

    /// Append bytes. Refuses (writing nothing) if they would exceed the expected size.
    pub fn write(&mut self, data: &[u8]) -> Result<(), CacheError> {
        let new_len = self.len + data.len() as u64;
        if new_len > self.size {
            return Err(CacheError::TooLarge {
                path: self.path.clone(),
                written: new_len,
                expected: self.size,
            });
        }
        self.file
            .write_all(data)
            .map_err(io_err(&self.path, "write"))?;
        self.hasher
            .write_all(data)
            .expect("hashing into a sink cannot fail");
        self.len = new_len;
        Ok(())
    }

    /// Throw away the bytes written so far and start again from zero.
    pub fn reset(&mut self) -> Result<(), CacheError> {
        self.file
            .set_len(0)
            .map_err(io_err(&self.path, "truncate"))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.path, "seek"))?;
        self.hasher = Sha256Writer::new(io::sink());
        self.len = 0;
        Ok(())
    }

    /// Check size and hash; on success sync the file, rename it to `debs/<sha256>.deb`, sync
    /// the directory and return the final path. On a hash mismatch the partial file is deleted
    /// (its bytes are wrong somewhere, so resuming from it is pointless).
    pub fn finish(self) -> Result<PathBuf, CacheError> {
        if self.len != self.size {
            return Err(CacheError::Incomplete {
                path: self.path,
                found: self.len,
                expected: self.size,
            });
        }
        let (_, actual, _) = self.hasher.finish();
        if actual != self.sha256 {
            drop(self.file);
            let _ = std::fs::remove_file(&self.path);
            return Err(CacheError::Mismatch {
                path: self.path,
                expected: self.sha256,
                actual,
            });
        }
        self.file.sync_all().map_err(io_err(&self.path, "sync"))?;
        drop(self.file);
        std::fs::rename(&self.path, &self.final_path)
            .map_err(io_err(&self.final_path, "rename into"))?;
        File::open(&self.debs)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.debs, "sync"))?;
        Ok(self.final_path)
    }

    /// Delete the partial file.
    pub fn discard(self) {
        drop(self.file);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The sha256 and length of everything `reader` yields.
pub fn sha256_reader(reader: impl Read) -> io::Result<(Sha256, u64)> {
    Sha256::of_reader(reader)
}

/// The sha256 and length of a file.
pub fn sha256_file(path: &Path) -> io::Result<(Sha256, u64)> {
    Sha256::of_file(path)
}

/// The sha256 of a byte slice, as lower-case hex (cache keys, listings).
pub fn sha256_bytes(data: &[u8]) -> String {
    Sha256::of(data).to_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn partial_resumes_and_commits_only_matching_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let data = b"hello, plinth".to_vec();
        let sha = Sha256::of(&data);
        let mut p = cache.partial(&sha, data.len() as u64).unwrap();
        p.write(&data[..5]).unwrap();
        drop(p);
        assert!(!cache.contains(&sha, data.len() as u64));
        let mut p = cache.partial(&sha, data.len() as u64).unwrap();
        assert_eq!(p.len(), 5);
        assert!(p.write(&[0; 100]).is_err());
        p.write(&data[5..]).unwrap();
        let path = p.finish().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data);
        assert!(cache.contains(&sha, data.len() as u64));
        assert_eq!(cache.verify(&sha).unwrap(), Verification::Valid);
        assert!(!cache.partial_path(&sha).exists());
        assert_eq!(cache.list().unwrap(), vec![sha]);
    }

    #[test]
    fn mismatch_deletes_partial_and_never_lands() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let empty: Sha256 = EMPTY.parse().unwrap();
        let mut p = cache.partial(&empty, 3).unwrap();
        p.write(b"abc").unwrap();
        let err = p.finish().unwrap_err();
        assert!(matches!(err, CacheError::Mismatch { .. }), "{err}");
        assert!(!cache.partial_path(&empty).exists());
        assert_eq!(cache.verify(&empty).unwrap(), Verification::Missing);
        assert!(cache.list().unwrap().is_empty());
    }

    /// The cache takes only a [`Sha256`], so a path-traversal "digest" is refused where text
    /// becomes one (here; `packages.lock` parsing is tested in `lockfile`), and nothing that
    /// is not `<sha256>.deb` in the cache directory is listed as a package.
    #[test]
    fn rejects_non_digests() {
        for bad in ["../../etc/passwd", "../x"] {
            assert!(bad.parse::<Sha256>().is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("debs").join("..deb"), b"").unwrap();
        std::fs::write(dir.path().join("debs").join("x.deb"), b"").unwrap();
        assert!(cache.list().unwrap().is_empty());
    }

    #[test]
    fn streaming_hash_matches_one_shot() {
        let data: Vec<u8> = (0..3 * HASH_BUF_SIZE + 17).map(|i| i as u8).collect();
        let (h, n) = sha256_reader(&data[..]).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h, sha256_bytes(&data));
    }
}
