//! A real TPM for tests: a swtpm on a unix socket, manufactured with the SHA-256 bank only,
//! driven with tpm2-tools; a TPM state manufactured with an EK certificate from a local CA
//! ([`manufacture_with_ek`]); and loop devices over image files (root). Used by the tests of
//! the signed PCR policy, the sealed state volume, certification and the install.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A swtpm on a unix socket in `dir`, manufactured with the sha256 bank only; killed on drop.
pub struct Tpm {
    child: Child,
    /// The TCTI string tpm2-tools and systemd take: `swtpm:path=<socket>`.
    pub tcti: String,
}

impl Tpm {
    pub fn start(dir: &Path) -> Tpm {
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        check(
            "swtpm_setup",
            Command::new("swtpm_setup")
                .args([
                    "--tpm2",
                    "--pcr-banks",
                    "sha256",
                    "--overwrite",
                    "--tpmstate",
                ])
                .arg(&state)
                .output(),
        );
        let socket = dir.join("tpm.sock");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--server")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}.ctrl", socket.display()))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdin(Stdio::null())
            .spawn()
            .expect("swtpm (ci/setup installs it)");
        // Owned before anything can fail: dropped (killed) on a panic.
        let tpm = Tpm {
            child,
            tcti: format!("swtpm:path={}", socket.display()),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "swtpm opened no socket"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tpm
    }

    /// A tpm2-tools command against this TPM; its output, having checked that it succeeded.
    pub fn tools(&self, tool: &str, args: &[&str]) -> Output {
        check(
            tool,
            Command::new(tool)
                .args(args)
                .env("TPM2TOOLS_TCTI", &self.tcti)
                .output(),
        )
    }

    /// Sessions and objects left by a failed command: a socket swtpm has no resource manager.
    pub fn flush(&self) {
        for kind in ["-t", "-l", "-s"] {
            self.tools("tpm2_flushcontext", &[kind]);
        }
    }
}

impl Drop for Tpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loop device over a file; detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        let out = check(
            "losetup",
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(file)
                .output(),
        );
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Manufacture a TPM 2.0 state in `state` (sha256 bank) with EK certificates issued by a
/// local CA kept in `ca` (`swtpm_setup --create-ek-cert` with `swtpm_localca`, which makes
/// the CA on first use; a second state with the same `ca` gets a certificate from the same
/// CA). Returns the CA certificate that issued them (PEM).
pub fn manufacture_with_ek(state: &Path, ca: &Path) -> PathBuf {
    std::fs::create_dir_all(state).unwrap();
    std::fs::create_dir_all(ca).unwrap();
    let localca = ca.join("localca.conf");
    std::fs::write(
        &localca,
        format!(
            "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\n\
             certserial = {0}/certserial\n",
            ca.display()
        ),
    )
    .unwrap();
    let setup = ca.join("swtpm_setup.conf");
    std::fs::write(
        &setup,
        format!(
            "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\n\
             active_pcr_banks = sha256\n",
            localca.display()
        ),
    )
    .unwrap();
    check(
        "swtpm_setup (ci/setup installs swtpm-tools)",
        Command::new("swtpm_setup")
            .args(["--tpm2", "--create-ek-cert", "--overwrite", "--tpmstate"])
            .arg(state)
            .arg("--config")
            .arg(&setup)
            .output(),
    );
    ca.join("issuercert.pem")
}

/// `out`, having checked that the command started and succeeded (panics with its output).
pub fn check(what: &str, out: std::io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what} could not be started: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
