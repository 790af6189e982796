//! A software TPM 2.0 (swtpm) for one VM: its state in the VM's temporary directory (or in a
//! directory kept across runs, the same machine's TPM booting again), manufactured by
//! `swtpm_setup` with only the sha256 PCR bank active (the bank plinth predicts) and given
//! firmware-like dictionary-attack parameters, started before QEMU on a unix socket and
//! killed with the VM.

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

/// Dictionary-attack parameters of a manufactured TPM, as firmware TPMs ship them: 32 tries,
/// one forgiven every 10 minutes. The reference TPM's 3 tries lock a machine out after its
/// third unclean power-off (the TPM counts one at the next start), and every `plinth run`
/// ends with one: a TPM kept across runs would refuse its sealed keys from the fourth run.
const DA_MAX_TRIES: &str = "32";
const DA_RECOVERY_SECONDS: &str = "600";

/// Run `tool` with `args` against the swtpm at TCTI `tcti`, requiring success.
fn tpm_tool(tool: &'static str, tcti: &str, args: &[&str]) -> Result<(), SwtpmError> {
    let out = Command::new(tool)
        .args(args)
        .env("TPM2TOOLS_TCTI", tcti)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| SwtpmError::Missing { tool, source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(SwtpmError::Failed {
        tool,
        status: out.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// Give the manufactured TPM in `state` firmware-like dictionary-attack parameters
/// ([`DA_MAX_TRIES`]): swtpm serves it on a socket in `dir` for tpm2-tools, which set them
/// and shut the TPM down in order.
fn set_lockout(state: &Path, dir: &Path) -> Result<(), SwtpmError> {
    let socket = dir.join("setup.sock");
    let mut child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--server")
        .arg(format!("type=unixio,path={}", socket.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}.ctrl", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| SwtpmError::Missing {
            tool: "swtpm",
            source,
        })?;
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let tcti = format!("swtpm:path={}", socket.display());
    let result = if socket.exists() {
        tpm_tool(
            "tpm2_dictionarylockout",
            &tcti,
            &[
                "--setup-parameters",
                "--max-tries",
                DA_MAX_TRIES,
                "--recovery-time",
                DA_RECOVERY_SECONDS,
                "--lockout-recovery-time",
                DA_RECOVERY_SECONDS,
            ],
        )
        .and_then(|()| tpm_tool("tpm2_shutdown", &tcti, &[]))
    } else {
        Err(SwtpmError::NoSocket {
            socket: socket.display().to_string(),
        })
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(dir.join("setup.sock.ctrl"));
    result
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
            set_lockout(&state, dir)?;
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
