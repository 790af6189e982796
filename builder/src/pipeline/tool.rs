//! Running the host tools the stages use (mmdebstrap, mke2fs, debugfs, e2fsck, mtools, …): a
//! failure names the tool, its exit status, the command to reproduce it and the last lines
//! of its output; a tool that cannot be started names the Debian package that has it.

use std::process::Command;

/// Lines of a failed tool's output kept in the error.
const TAIL_LINES: usize = 40;

/// A host tool that failed or could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot run {tool}: {source}\n  hint: run ci/setup (installs {package})")]
    Missing {
        tool: &'static str,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("host tools not installed: {}\n  hint: run ci/setup, or `apt-get install {}`", shown.join(", "), packages.join(" "))]
    NotInstalled {
        /// The Debian packages.
        packages: Vec<String>,
        /// Each with its dpkg state when dpkg knows it: `dosfstools (config-files)`.
        shown: Vec<String>,
    },
    #[error("{tool} failed ({status}):\n{output}\n  command: {command}")]
    Failed {
        tool: &'static str,
        status: String,
        command: String,
        /// The last lines of stdout and stderr, indented.
        output: String,
    },
}

/// What a successful tool printed.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl ToolOutput {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// libeatmydata (Debian package eatmydata), where the host has it.
const EATMYDATA: &str = "/usr/lib/x86_64-linux-gnu/libeatmydata.so";

/// `cmd` writes only scratch files of the build's work directory (images that are copied into
/// the disk and the archives later): its fsyncs are skipped with libeatmydata when the host
/// has it, since nothing there must survive a crash (a build after a crash starts afresh).
/// The bytes written are the same.
/// Release files are synced by plinth itself before they are renamed into place.
pub fn scratch(cmd: &mut Command) -> &mut Command {
    if std::path::Path::new(EATMYDATA).exists() {
        cmd.env("LD_PRELOAD", EATMYDATA);
    }
    cmd
}

/// Run `cmd` (the tool `tool`, from Debian package `package`) to completion.
pub fn run(
    tool: &'static str,
    package: &'static str,
    cmd: &mut Command,
) -> Result<ToolOutput, ToolError> {
    let out = cmd.output().map_err(|source| ToolError::Missing {
        tool,
        package,
        source,
    })?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        let text = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
        let lines: Vec<&str> = text.lines().collect();
        return Err(ToolError::Failed {
            tool,
            status: out.status.to_string(),
            command: format!("{cmd:?}"),
            output: lines[lines.len().saturating_sub(TAIL_LINES)..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Ok(ToolOutput {
        stdout: out.stdout,
        stderr,
    })
}

/// The most of a streaming tool's standard error kept (the rest is read and dropped, so the
/// tool never blocks on a full pipe): what its error shows.
pub const MAX_STDERR: usize = 16 << 10;

/// Read `stderr` to its end on a thread of its own, keeping its first [`MAX_STDERR`] bytes:
/// for a tool whose standard output the caller streams.
pub fn keep_stderr(
    mut stderr: impl std::io::Read + Send + 'static,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let (mut kept, mut buf) = (Vec::new(), [0u8; 8192]);
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            let room = MAX_STDERR.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_name_the_tool_status_and_output() {
        let err = run(
            "sh",
            "dash",
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("sh failed (exit status: 3)"), "{text}");
        assert!(text.contains("    out\n    err"), "{text}");
        let err = run(
            "no-such-tool-x",
            "pkg-x",
            &mut Command::new("no-such-tool-x"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("installs pkg-x"), "{err}");
        let ok = run("sh", "dash", Command::new("sh").args(["-c", "printf hi"])).unwrap();
        assert_eq!(ok.stdout_text(), "hi");
    }
}
