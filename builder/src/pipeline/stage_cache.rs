//! The stage cache: outputs of earlier builds reused when their inputs are unchanged.
//!
//! An entry lives in `<cache>/stages/<key>/` where `key` is the sha256 of a [`StageKey`]: an
//! explicit, sorted record of the stage's input digests (file contents, tool versions, the
//! builder itself; never mtimes). The entry holds `key.json` (that record) and `out/` (what
//! the stage produced). Entries are written under a `.partial` name and renamed into place,
//! so a crash never leaves a half entry behind. The last key of each (stage, os, profile) is
//! kept in `last/`, so that a miss can say which input changed. Older entries of the same
//! (stage, os, profile) beyond [`KEEP`] are removed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Entries kept per (stage, os, profile): the newest ones.
pub const KEEP: usize = 2;

/// The inputs of one stage run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageKey {
    pub stage: String,
    pub os: String,
    pub profile: String,
    /// Input name → digest or value; sorted by name.
    pub inputs: BTreeMap<String, String>,
}

impl StageKey {
    pub fn new(stage: &str, os: &str, profile: &str) -> StageKey {
        StageKey {
            stage: stage.to_string(),
            os: os.to_string(),
            profile: profile.to_string(),
            inputs: BTreeMap::new(),
        }
    }

    /// Add an input.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> StageKey {
        self.inputs.insert(name.to_string(), value.into());
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a key serializes");
        bytes.push(b'\n');
        bytes
    }

    /// The entry name: sha256 of the key's canonical JSON.
    pub fn digest(&self) -> String {
        crate::packages::cache::sha256_bytes(&self.to_bytes())
    }

    fn slot_name(&self) -> String {
        format!("{}-{}-{}.json", self.stage, self.os, self.profile)
    }
}

/// A stage cache operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("stage cache {}: cannot {action}: {source}\n  hint: check that the cache directory is writable, or remove {} to start afresh", path.display(), path.display())]
pub struct StageCacheError {
    path: PathBuf,
    action: &'static str,
    source: std::io::Error,
}

fn err(path: &Path, action: &'static str) -> impl FnOnce(std::io::Error) -> StageCacheError {
    let path = path.to_path_buf();
    move |source| StageCacheError {
        path,
        action,
        source,
    }
}

/// The stage cache below one directory.
#[derive(Debug, Clone)]
pub struct StageCache {
    root: PathBuf,
}

impl StageCache {
    /// The cache in `root` (created on first store).
    pub fn new(root: impl Into<PathBuf>) -> StageCache {
        // Absolute: a build records paths into other entries (the package stage's tree).
        let root = root.into();
        let root = std::path::absolute(&root).unwrap_or(root);
        StageCache { root }
    }

    /// `<root>/<key>/out` if a complete entry exists.
    pub fn lookup(&self, key: &StageKey) -> Option<PathBuf> {
        let entry = self.root.join(key.digest());
        let stored = std::fs::read(entry.join("key.json")).ok()?;
        (stored == key.to_bytes()).then(|| entry.join("out"))
    }

    /// Which inputs differ from the last stored key of the same (stage, os, profile), as
    /// readable lines; empty when there was none.
    pub fn changed_inputs(&self, key: &StageKey) -> Vec<String> {
        let path = self.root.join("last").join(key.slot_name());
        let Some(last) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<StageKey>(&b).ok())
        else {
            return vec!["no earlier build".to_string()];
        };
        let mut names: Vec<&String> = key.inputs.keys().chain(last.inputs.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| match (last.inputs.get(n), key.inputs.get(n)) {
                (Some(a), Some(b)) if a == b => None,
                (Some(a), Some(b)) => Some(format!("{n} changed ({} → {})", short(a), short(b))),
                (None, Some(_)) => Some(format!("{n} is new")),
                (Some(_), None) => Some(format!("{n} is gone")),
                (None, None) => None,
            })
            .collect()
    }

    /// Store an entry: `fill` writes the stage's output into the directory it is given (which
    /// becomes `out/`). Returns the stored `out/` directory.
    pub fn store<E>(
        &self,
        key: &StageKey,
        fill: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<PathBuf, E>
    where
        E: From<StageCacheError>,
    {
        let digest = key.digest();
        let entry = self.root.join(&digest);
        let partial = self
            .root
            .join(format!(".{digest}.partial-{}", std::process::id()));
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(err(&partial, "clear"))?;
        }
        std::fs::create_dir_all(&partial).map_err(err(&partial, "create"))?;
        if let Err(e) = fill(&partial.join("out")) {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
        let key_path = partial.join("key.json");
        std::fs::write(&key_path, key.to_bytes()).map_err(err(&key_path, "write"))?;
        if entry.exists() {
            std::fs::remove_dir_all(&entry).map_err(err(&entry, "replace"))?;
        }
        std::fs::rename(&partial, &entry).map_err(err(&entry, "create"))?;
        let last = self.root.join("last");
        std::fs::create_dir_all(&last).map_err(err(&last, "create"))?;
        let slot = last.join(key.slot_name());
        std::fs::write(&slot, key.to_bytes()).map_err(err(&slot, "write"))?;
        self.prune(key, &digest);
        Ok(entry.join("out"))
    }

    /// One stage through the cache. `restore` reads the stage's output from an entry's `out/`
    /// directory (`None`: the entry lacks a part, say removed by hand, and counts as a miss).
    /// On a hit it is all that runs, and `log` says "`<os>: <what>` reused from the stage
    /// cache". On a miss `produce` runs once, writing the output into the directory it is
    /// given (which it creates, and which becomes the entry's `out/`), and the build goes on
    /// from `restore` of the stored entry: after a hit and after a miss, what follows reads
    /// the same places.
    pub fn cached<T, E>(
        &self,
        key: &StageKey,
        what: &str,
        log: &dyn Fn(&str),
        produce: impl FnOnce(&Path) -> Result<(), E>,
        restore: impl Fn(&Path) -> Result<Option<T>, E>,
    ) -> Result<T, E>
    where
        E: From<StageCacheError>,
    {
        if let Some(out) = self.lookup(key) {
            if let Some(found) = restore(&out)? {
                log(&format!(
                    "{}: {what} reused from the stage cache ({})",
                    key.os,
                    &key.digest()[..12]
                ));
                return Ok(found);
            }
        }
        let out = self.store(key, produce)?;
        restore(&out)?.ok_or_else(|| {
            StageCacheError {
                path: out.clone(),
                action: "read back the entry just stored",
                source: std::io::Error::other(format!("{what} is incomplete there")),
            }
            .into()
        })
    }

    /// The `out/` directories of the other complete entries of `key`'s (stage, os, profile),
    /// newest first.
    pub fn others(&self, key: &StageKey) -> Vec<PathBuf> {
        let mut same = self.same_slot(key, &key.digest());
        same.reverse();
        same.into_iter().map(|(_, p)| p.join("out")).collect()
    }

    /// The entries of `key`'s (stage, os, profile) but `except`, oldest first.
    fn same_slot(&self, key: &StageKey, except: &str) -> Vec<(std::time::SystemTime, PathBuf)> {
        let Ok(dir) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut same: Vec<(std::time::SystemTime, PathBuf)> = dir
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n != except))
            .filter_map(|p| {
                let key_path = p.join("key.json");
                let other: StageKey =
                    serde_json::from_slice(&std::fs::read(&key_path).ok()?).ok()?;
                let same_slot =
                    other.stage == key.stage && other.os == key.os && other.profile == key.profile;
                let time = std::fs::metadata(&key_path).ok()?.modified().ok()?;
                same_slot.then_some((time, p))
            })
            .collect();
        same.sort();
        same
    }

    /// Retire all but the newest [`KEEP`] entries of `key`'s (stage, os, profile); never the
    /// entry just stored. An entry is renamed into `.trash/` at once and deleted there by a
    /// background thread (deleting gigabytes of images took seconds of waiting for the disk);
    /// what a finished process leaves in `.trash/` the next store deletes. Best effort: a
    /// failure leaves an entry behind, nothing worse.
    fn prune(&self, key: &StageKey, keep_digest: &str) {
        let same = self.same_slot(key, keep_digest);
        let excess = (same.len() + 1).saturating_sub(KEEP);
        let trash = self.root.join(".trash");
        let _ = std::fs::create_dir_all(&trash);
        for (_, path) in same.into_iter().take(excess) {
            if let Some(name) = path.file_name() {
                if std::fs::rename(&path, trash.join(name)).is_err() {
                    let _ = std::fs::remove_dir_all(&path);
                }
            }
        }
        std::thread::spawn(move || {
            if let Ok(dir) = std::fs::read_dir(&trash) {
                for e in dir.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        });
    }
}

fn short(s: &str) -> &str {
    if s.len() > 16 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        &s[..12]
    } else {
        s
    }
}

/// Move a tree or a file: renamed, or, when `to` is on another file system, copied and then
/// removed from `from`.
pub fn move_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {}
        Err(e) => return Err(e),
    }
    copy_tree(from, to).map_err(std::io::Error::other)?;
    if std::fs::symlink_metadata(from)?.is_dir() {
        std::fs::remove_dir_all(from)
    } else {
        std::fs::remove_file(from)
    }
}

/// sha256 of a tree's paths, kinds, normalized modes (as git keeps them: executable or not)
/// and contents, walked in sorted order; "absent" for a missing directory.
pub fn tree_digest(dir: &Path, skip: &[&str]) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    if !dir.is_dir() {
        return Ok("absent".to_string());
    }
    let mut hasher = Sha256::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            if skip.iter().any(|s| rel == Path::new(s)) {
                continue;
            }
            if std::fs::symlink_metadata(&path)?.is_dir() {
                stack.push(path.clone());
            }
            files.push(path);
        }
    }
    files.sort();
    for path in files {
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        let meta = std::fs::symlink_metadata(&path)?;
        hasher.update(rel.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        if meta.is_dir() {
            hasher.update(b"d");
        } else if meta.file_type().is_symlink() {
            hasher.update(b"l");
            hasher.update(std::fs::read_link(&path)?.as_os_str().as_encoded_bytes());
        } else {
            let exec = meta.permissions().mode() & 0o111 != 0;
            hasher.update(if exec { b"x" } else { b"f" });
            let (sha, _) = crate::packages::cache::sha256_file(&path)?;
            hasher.update(sha.as_bytes());
        }
        hasher.update([0]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// `cp -a` (reflinks where the filesystem has them, holes kept): copies a tree with owners,
/// modes, times, hard links, device nodes and extended attributes as they are.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), super::tool::ToolError> {
    super::tool::run(
        "cp",
        "coreutils",
        std::process::Command::new("cp")
            .args(["-a", "--reflink=auto", "--sparse=always", "--"])
            .arg(from)
            .arg(to),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Boxed = Box<dyn std::error::Error + Send + Sync>;

    #[test]
    fn a_move_to_another_file_system_leaves_nothing_behind() {
        use std::os::unix::fs::MetadataExt;
        let here = tempfile::tempdir().unwrap();
        let there = tempfile::tempdir_in("/dev/shm").unwrap();
        let device = |p: &Path| std::fs::metadata(p).unwrap().dev();
        for to in [here.path().join("moved"), there.path().join("moved")] {
            let tree = here.path().join("tree");
            std::fs::create_dir_all(tree.join("sub")).unwrap();
            std::fs::write(tree.join("sub/f"), "tree").unwrap();
            let file = here.path().join("initrd");
            std::fs::write(&file, "file").unwrap();
            std::fs::create_dir_all(&to).unwrap();
            move_tree(&tree, &to.join("root")).unwrap();
            move_tree(&file, &to.join("initrd")).unwrap();
            assert!(!tree.exists() && !file.exists(), "{}", to.display());
            assert_eq!(std::fs::read(to.join("root/sub/f")).unwrap(), b"tree");
            assert_eq!(std::fs::read(to.join("initrd")).unwrap(), b"file");
        }
        // The second move was a copy: /dev/shm is a tmpfs of its own.
        assert_ne!(device(here.path()), device(there.path()));
    }

    #[test]
    fn store_lookup_and_changed_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StageCache::new(dir.path());
        let key = StageKey::new("packages", "guest-os", "test")
            .with("lock", "a".repeat(64))
            .with("epoch", "1");
        assert!(cache.lookup(&key).is_none());
        assert_eq!(cache.changed_inputs(&key), vec!["no earlier build"]);
        let out = cache
            .store(&key, |out| -> Result<(), Boxed> {
                std::fs::create_dir_all(out)?;
                Ok(std::fs::write(out.join("x"), "1")?)
            })
            .unwrap();
        assert_eq!(std::fs::read_to_string(out.join("x")).unwrap(), "1");
        assert_eq!(cache.lookup(&key), Some(out));
        assert!(cache.changed_inputs(&key).is_empty());

        let other = key.clone().with("epoch", "2").with("overlay", "b");
        assert!(cache.lookup(&other).is_none());
        assert_eq!(
            cache.changed_inputs(&other),
            vec!["epoch changed (1 → 2)", "overlay is new"]
        );
        // A failed fill leaves nothing behind.
        let failed: Result<PathBuf, Boxed> = cache.store(&other, |_| Err("boom".into()));
        assert!(failed.is_err());
        assert!(cache.lookup(&other).is_none());
        // Only KEEP entries of one (stage, os, profile) stay.
        for epoch in 3..6 {
            let k = key.clone().with("epoch", epoch.to_string());
            cache
                .store(&k, |out| -> Result<(), Boxed> {
                    Ok(std::fs::create_dir_all(out)?)
                })
                .unwrap();
        }
        let entries = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().join("key.json").exists())
            .count();
        assert_eq!(entries, KEEP);
    }

    #[test]
    fn tree_digest_sees_content_mode_and_names() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/a"), "1").unwrap();
        let d1 = tree_digest(dir.path(), &[]).unwrap();
        std::fs::write(dir.path().join("etc/a"), "2").unwrap();
        let d2 = tree_digest(dir.path(), &[]).unwrap();
        std::fs::set_permissions(
            dir.path().join("etc/a"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let d3 = tree_digest(dir.path(), &[]).unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("target/junk"), "x").unwrap();
        let d4 = tree_digest(dir.path(), &["target"]).unwrap();
        assert!(d1 != d2 && d2 != d3);
        assert_eq!(d3, d4);
        assert_eq!(
            tree_digest(&dir.path().join("none"), &[]).unwrap(),
            "absent"
        );
    }
}
