//! The OS's agent (`plinth-guest`, `plinth-host`, `plinth-setup`): built from this workspace
//! with `cargo build --release --locked`, every build-machine path remapped (workspace, cargo
//! home, target directory) and no incremental state, then installed as `/usr/bin/<name>`.
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

/// Build `package`'s binary of the same name from `workspace` into `target_dir`; returns it.
pub fn build(workspace: &Path, package: &str, target_dir: &Path) -> Result<PathBuf, AgentError> {
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (workspace, target_dir) = (abs(workspace), abs(target_dir));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    // Longest prefixes first: rustc applies the last matching remap.
    let flags = [
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
        format!("--remap-path-prefix={}=/plinth", workspace.display()),
        format!("--remap-path-prefix={}=/target", target_dir.display()),
        "-Cstrip=symbols".to_string(),
    ];
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--locked", "--quiet", "-p", package])
        .arg("--target-dir")
        .arg(&target_dir)
        // The unit separator is how cargo takes flags that may contain spaces.
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\u{1f}"))
        .env_remove("RUSTFLAGS")
        .env("CARGO_INCREMENTAL", "0")
        .env("SOURCE_DATE_EPOCH", "0")
        .env("TZ", "UTC")
        .env("LC_ALL", "C");
    super::tool::run("cargo", "a Rust toolchain", &mut cmd)?;
    Ok(target_dir.join("release").join(package))
}

/// Install the built binary as `root/usr/bin/<name>` (mode 0755).
pub fn install(binary: &Path, root: &Path, name: &str) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    let dest = root.join("usr/bin").join(name);
    let io = |e: std::io::Error| AgentError::Io {
        path: dest.display().to_string(),
        message: e.to_string(),
    };
    std::fs::copy(binary, &dest).map_err(io)?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).map_err(io)
}
