//! The source tree plinth works on: where the OS directories, specs and locks are.

use crate::spec::OS_NAMES;
use std::path::{Path, PathBuf};

/// The plinth source tree (the directory holding the workspace `Cargo.toml` and the OS
/// directories).
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
}

/// Why no workspace was found or an OS name was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("no plinth source tree at or above {start}: expected a directory holding guest-os/os.yaml, host-os/os.yaml and setup-os/os.yaml\n  hint: run plinth inside the plinth checkout, or pass --root DIR")]
    NotFound { start: PathBuf },
    #[error("unknown OS `{found}`: expected one of guest-os, host-os, setup-os, or `all`")]
    UnknownOs { found: String },
}

impl Workspace {
    /// Use `root` if given, else search upwards from the current directory.
    pub fn discover(root: Option<&Path>) -> Result<Workspace, WorkspaceError> {
        let start = match root {
            Some(r) => r.to_path_buf(),
            None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        };
        let mut dir = Some(start.as_path());
        while let Some(d) = dir {
            if OS_NAMES
                .iter()
                .all(|os| d.join(os).join("os.yaml").is_file())
            {
                return Ok(Workspace {
                    root: d.to_path_buf(),
                });
            }
            if root.is_some() {
                break;
            }
            dir = d.parent();
        }
        Err(WorkspaceError::NotFound { start })
    }

    /// Expand an OS argument (`guest-os`, `host-os`, `setup-os` or `all`) into OS names.
    pub fn select(arg: &str) -> Result<Vec<&'static str>, WorkspaceError> {
        if arg == "all" {
            return Ok(OS_NAMES.to_vec());
        }
        OS_NAMES
            .iter()
            .find(|os| **os == arg)
            .map(|os| vec![*os])
            .ok_or_else(|| WorkspaceError::UnknownOs {
                found: arg.to_string(),
            })
    }

    pub fn spec_path(&self, os: &str) -> PathBuf {
        self.root.join(os).join("os.yaml")
    }

    pub fn lock_path(&self, os: &str) -> PathBuf {
        self.root.join(os).join("packages.lock")
    }

    /// How messages name a file: relative to the workspace root.
    pub fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}
