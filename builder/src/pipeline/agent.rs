//! The OS's agent (`plinth-guest`, `plinth-host`, `plinth-setup`): its crates fetched and
//! checked against Cargo.lock, then built from this workspace offline with
//! `cargo build --release --frozen`, every build-machine path remapped (workspace, cargo
//! home, target directory) and no incremental state, then written into the root image as `/usr/bin/<name>` ([`super::overlay::put_file`]).
//! Two builds from the same source give the same bytes whatever their target directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Which agent belongs to which OS.
pub fn agent_for(os: &str) -> Option<&'static str> {
    match os {
        "guest-os" => Some("plinth-guest"),
        "host-os" => Some("plinth-host"),
        "setup-os" => Some("plinth-setup"),
        _ => None,
    }
}

/// Why the agent could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no agent is defined for `{os}`")]
    UnknownOs { os: String },
    #[error(transparent)]
    Tool(#[from] super::tool::ToolError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// How a binary is linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linking {
    /// Against the image's shared libraries (an agent in the root).
    Dynamic,
    /// Static (glibc's crt-static): a binary that runs where the image's libraries are not,
    /// such as the initrd.
    Static,
}

/// The target a static binary is built for: with `--target`, the flag reaches only the
/// binary's own crates, not build scripts and proc-macros (which cannot link statically).
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Build `package`'s binary of the same name from `workspace` into `target_dir`; returns it.
pub fn build(workspace: &Path, package: &str, target_dir: &Path) -> Result<PathBuf, AgentError> {
    build_linked(workspace, package, target_dir, Linking::Dynamic)
}

/// [`build`], linked as `linking` says (a static build has its own directory under
/// `target_dir`: the flags differ, and so would every dependency's fingerprint).
pub fn build_linked(
    workspace: &Path,
    package: &str,
    target_dir: &Path,
    linking: Linking,
) -> Result<PathBuf, AgentError> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (workspace, target_dir) = (abs(workspace), abs(target_dir));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let target_dir = match linking {
        Linking::Dynamic => target_dir,
        Linking::Static => target_dir.join("static"),
    };
    // Longest prefixes first: rustc applies the last matching remap.
    let mut flags = vec![
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/plinth", workspace.display()),
        format!("--remap-path-prefix={}=/target", target_dir.display()),
        "-Cstrip=symbols".to_string(),
    ];
    if linking == Linking::Static {
        flags.push("-Ctarget-feature=+crt-static".into());
    }
    // The crates come first, checked against Cargo.lock's checksums (like the .debs against
    // the lock); the build itself is offline and fails closed.
    super::tool::run(
        "cargo",
        "a Rust toolchain",
        Command::new("cargo")
            .current_dir(&workspace)
            .args(["fetch", "--locked", "--quiet"]),
    )?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--frozen", "--quiet", "-p", package])
        .arg("--target-dir")
        .arg(&target_dir);
    if linking == Linking::Static {
        cmd.args(["--target", STATIC_TARGET]);
    }
    cmd
        // The unit separator is how cargo takes flags that may contain spaces.
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"))
        .env_remove("RUSTFLAGS")
        .env("CARGO_INCREMENTAL", "0")
        .env("SOURCE_DATE_EPOCH", "0")
        .env("TZ", "UTC")
        .env("LC_ALL", "C");
    super::tool::run("cargo", "a Rust toolchain", &mut cmd)?;
    Ok(match linking {
        Linking::Dynamic => target_dir.join("release").join(package),
        Linking::Static => target_dir.join(STATIC_TARGET).join("release").join(package),
    })
}

/// sha256 of every source the agents are built from: the workspace's `Cargo.toml` and
/// `Cargo.lock`, and each top-level crate directory but the builder's (overlays, specs and
/// locks are keyed apart; build output and fuzz crates are skipped).
pub fn source_digest(workspace: &Path) -> std::io::Result<String> {
    use crate::packages::cache::{sha256_bytes, sha256_file};
    let mut parts = Vec::new();
    for file in ["Cargo.toml", "Cargo.lock"] {
        parts.push(format!("{file} {}", sha256_file(&workspace.join(file))?.0));
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(workspace)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|d| d.join("Cargo.toml").is_file() && !d.ends_with("builder"))
        .collect();
    dirs.sort();
    for dir in dirs {
        let skip = ["rootfs", "target", "fuzz", "os.yaml", "packages.lock"];
        let digest = super::stage_cache::tree_digest(&dir, &skip)?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        parts.push(format!("{name} {digest}"));
    }
    Ok(sha256_bytes(parts.join("\n").as_bytes()))
}
