//! dm-verity: the hash tree of a root filesystem image, made by `veritysetup format` with a
//! salt and UUID derived from the release (never random), and its root hash, which goes into
//! the kernel command line (and so into the UKI's measurement and the SNP launch digest).

use std::path::Path;
use std::process::Command;

/// The tree's parameters; part of every image's contract with its initrd.
pub const HASH: &str = "sha256";
pub const BLOCK_SIZE: u32 = 4096;

/// A formatted hash tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    /// Hex root hash.
    pub root_hash: String,
    /// Size of the hash tree file in bytes.
    pub hash_size: u64,
}

/// Why the hash tree could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error(transparent)]
    Tool(#[from] super::tool::ToolError),
    #[error("veritysetup printed no root hash for {data}:\n{output}")]
    NoRootHash { data: String, output: String },
    #[error("{hash}: the hash tree needs {needed} bytes but its partition has {available}\n  hint: raise the verity partition's size in os.yaml")]
    TooSmall {
        hash: String,
        needed: u64,
        available: u64,
    },
}

/// Format the hash tree of `data` into `hash` (a new file) and return its root hash. The tree
/// must fit `available` bytes (the verity partition).
pub fn format(
    data: &Path,
    hash: &Path,
    salt_hex: &str,
    uuid: &str,
    available: u64,
) -> Result<VerityTree, VerityError> {
    let _ = std::fs::remove_file(hash);
    let mut cmd = Command::new("veritysetup");
    cmd.arg("format")
        .arg(format!("--hash={HASH}"))
        .arg(format!("--data-block-size={BLOCK_SIZE}"))
        .arg(format!("--hash-block-size={BLOCK_SIZE}"))
        .arg(format!("--salt={salt_hex}"))
        .arg(format!("--uuid={uuid}"))
        .arg(data)
        .arg(hash)
        .env("LC_ALL", "C");
    let stdout = run(super::tool::scratch(&mut cmd))?;
    let root_hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .ok_or_else(|| VerityError::NoRootHash {
            data: data.display().to_string(),
            output: stdout.clone(),
        })?;
    let hash_size = std::fs::metadata(hash).map(|m| m.len()).unwrap_or(0);
    if hash_size > available {
        return Err(VerityError::TooSmall {
            hash: hash.display().to_string(),
            needed: hash_size,
            available,
        });
    }
    Ok(VerityTree {
        root_hash,
        hash_size,
    })
}

/// Check `data` against `hash` and `root_hash` with `veritysetup verify`.
pub fn verify(data: &Path, hash: &Path, root_hash: &str) -> Result<(), VerityError> {
    let mut cmd = Command::new("veritysetup");
    cmd.arg("verify").arg(data).arg(hash).arg(root_hash);
    run(&mut cmd).map(|_| ())
}

fn run(cmd: &mut Command) -> Result<String, VerityError> {
    Ok(super::tool::run("veritysetup", "cryptsetup-bin", cmd)?.stdout_text())
}
