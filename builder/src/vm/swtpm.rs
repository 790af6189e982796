//! A software TPM 2.0 (swtpm) for one VM: its state in the VM's temporary directory (or in a
//! directory kept across runs, the same machine's TPM booting again), manufactured by
//! `swtpm_setup` with only the sha256 PCR bank active (the bank plinth predicts), started
//! before QEMU on a unix socket and killed with the VM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm; killed when dropped.
pub struct Swtpm {
    child: Child,
    /// The socket QEMU's `-chardev socket` connects to.
    pub socket: PathBuf,
}

/// Why the TPM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    #[error("{tool} could not be started: {source}\n  hint: install the Debian package swtpm-tools (ci/setup does)")]
    Missing {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("cannot create the TPM's directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}):\n{output}")]
    Failed {
        tool: &'static str,
        status: String,
        output: String,
    },
    #[error("swtpm did not open its socket {socket} within 10 s")]
    NoSocket { socket: String },
}

/// The file swtpm_setup leaves in a manufactured TPM's state directory.
const MANUFACTURED: &str = "tpm2-00.permall";

/// Manufacture a TPM 2.0 in `state`: the sha256 bank only, an EK and its certificate as
/// swtpm_setup makes them by default.
fn manufacture(state: &Path) -> Result<(), SwtpmError> {
    let out = Command::new("swtpm_setup")
        .args(["--tpm2", "--pcr-banks", "sha256", "--overwrite"])
        .arg("--tpmstate")
        .arg(state)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SwtpmError::Missing {
            tool: "swtpm_setup",
            source,
        })?;
    if !out.status.success() {
        return Err(SwtpmError::Failed {
            tool: "swtpm_setup",
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

impl Swtpm {
    /// Start a TPM with its socket and log in `dir` (created): a fresh one (its state in
    /// `dir`), or the one whose state is `kept` (manufactured there on first use, then the
    /// same TPM, its keys and NV, on every later run).
    pub fn start(dir: &Path, kept: Option<&Path>) -> Result<Swtpm, SwtpmError> {
        let state = kept.map_or_else(|| dir.join("state"), Path::to_path_buf);
        for d in [dir, state.as_path()] {
            std::fs::create_dir_all(d).map_err(|source| SwtpmError::Dir {
                path: d.display().to_string(),
                source,
            })?;
        }
        if !state.join(MANUFACTURED).is_file() {
            manufacture(&state)?;
        }
        let socket = dir.join("swtpm.sock");
        let log = dir.join("swtpm.log");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2"])
            .arg("--tpmstate")
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={}", log.display()))
            // Ends by itself when QEMU disconnects (once it has connected), should plinth be
            // killed outright.
            .arg("--terminate")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| SwtpmError::Missing {
                tool: "swtpm",
                source,
            })?;
        // The guest kernel gives each TPM command a fixed time (750 ms for most) and fails
        // the command past it ("tpm tpm0: Operation Timed out"); under TCG on a busy host
        // the vCPUs' threads can starve swtpm that long. It works in short bursts, so it
        // is run ahead of them where this process may (root); elsewhere it keeps its nice.
        let _ = Command::new("renice")
            .args(["-n", "-10", "-p", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut tpm = Swtpm { child, socket };
        let start = Instant::now();
        while !tpm.socket.exists() {
            if let Ok(Some(status)) = tpm.child.try_wait() {
                let output = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(SwtpmError::Failed {
                    tool: "swtpm",
                    status: status.to_string(),
                    output,
                });
            }
            if start.elapsed() > Duration::from_secs(10) {
                return Err(SwtpmError::NoSocket {
                    socket: tpm.socket.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }

    /// QEMU arguments that attach this TPM (TIS interface, as on q35 servers).
    pub fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", super::qemu_value(&self.socket)),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ]
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
