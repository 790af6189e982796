//! `plinth-setup`: the SetupOS agent. It certifies the machine against the catalog
//! (`certify`), and reports the boot (`boot-report`) and its measurements (`measured-boot`),
//! both from the crate `plinth-boot-report`. Installing HostOS and GuestOS comes next
//! (issue 21). This file is clap dispatch and the `certify` verb's output.

use anyhow::Context;
use clap::Subcommand;
use plinth_boot_report::agent::Agent;
use plinth_firmware::certification::Certification;
use plinth_setup::certify::{self, Options};
use plinth_setup::inventory::Inventory;
use plinth_setup::report::{self, SetupReport};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const AGENT: Agent = Agent {
    name: "plinth-setup",
    os: "setup-os",
    about: "The SetupOS agent: certifies the machine against the certification catalog, and \
            reports the boot and the TPM's measurements of it.",
    version: env!("CARGO_PKG_VERSION"),
};

/// A `test` SetupOS's root carries this file: only then are test generations certified.
const TEST_GENERATIONS_MARK: &str = "/usr/lib/plinth/test-generations";

#[derive(Debug, Subcommand)]
enum Verb {
    /// Judge this machine against the certification catalog: one line per check (pass,
    /// warn or fail) with what was found, then what to do about each that stops the install.
    #[command(after_help = "\
Exit status: 0 certified, 1 not certified, 2 bad input (an unreadable tree or config).

Examples:
  plinth-setup certify
  plinth-setup certify --config /run/plinth/config/config.yaml --report setup-report.json
  plinth-setup certify --sysfs-root /tmp/capture --json")]
    Certify(CertifyArgs),
}

#[derive(Debug, clap::Args)]
struct CertifyArgs {
    /// The directory that stands for `/`: its sys/, proc/, dev/ and plinth-capture/ are read.
    #[arg(long, value_name = "DIR", default_value = "/")]
    sysfs_root: PathBuf,
    /// The provider's config.yaml: its generation must be this machine's, and its
    /// acknowledged warnings pass.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Write setup-report.json here (its sha256 is printed).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the verdict as JSON.
    #[arg(long)]
    json: bool,
    /// The TPM to read the EK certificate from and extend (a tpm2-tss TCTI, e.g.
    /// `swtpm:path=SOCKET`) [default: device:/dev/tpmrm0 on the live machine; a tree's
    /// plinth-capture/ek-certificate.der with --sysfs-root].
    #[arg(long, value_name = "TCTI")]
    tcti: Option<String>,
    /// Extend PCR 15 with setup-report.json's sha256, so a quote covers the verdict.
    #[arg(long)]
    extend_pcr: bool,
    /// Also print a QR code of the summary (generation, verdict, blocking checks, the
    /// report's sha256), for a phone at the console.
    #[arg(long)]
    qr: bool,
    /// Certify test generations too (qemu-test); implied on a `test` SetupOS.
    #[arg(long)]
    test_generations: bool,
    /// An EK CA certificate (PEM) for a test generation: swtpm's local CA.
    #[arg(long, value_name = "FILE", requires = "test_generations")]
    test_ek_ca: Option<PathBuf>,
}

/// Bad input: exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct BadInput(String);

/// Not certified: exit 1 (the report was printed).
#[derive(Debug, thiserror::Error)]
#[error("not certified")]
struct NotCertified;

impl CertifyArgs {
    fn run(self) -> anyhow::Result<()> {
        let catalog = Certification::builtin();
        let test_generations = self.test_generations || Path::new(TEST_GENERATIONS_MARK).exists();
        let config = match &self.config {
            Some(path) => Some(
                plinth_node_config::NodeConfig::read(path, &catalog.names(test_generations))
                    .map_err(|e| BadInput(e.to_string()))?,
            ),
            None => None,
        };
        let mut test_ek_roots = Vec::new();
        if let Some(path) = &self.test_ek_ca {
            let bytes = plinth_release::untrusted::read_untrusted(path, 64 << 10)
                .map_err(|e| BadInput(format!("{}: {e}", path.display())))?;
            let ca = plinth_firmware::ek::CaCert::parse(&bytes, &path.display().to_string())
                .map_err(BadInput)?;
            test_ek_roots.push(ca);
        }
        let live = self.sysfs_root == Path::new("/");
        let tpm = self
            .tcti
            .clone()
            .or_else(|| live.then(|| "device:/dev/tpmrm0".to_string()));
        if self.extend_pcr && tpm.is_none() {
            return Err(
                BadInput("--extend-pcr needs a TPM: give --tcti with --sysfs-root".into()).into(),
            );
        }
        let inventory = Inventory::read(&self.sysfs_root, tpm.as_deref())
            .map_err(|e| BadInput(e.to_string()))?;
        let options = Options {
            configured: config.as_ref().map(|c| c.generation.as_str()),
            acknowledged: config
                .as_ref()
                .map(|c| c.acknowledged_warnings.as_slice())
                .unwrap_or(&[]),
            test_generations,
            test_ek_roots,
        };
        let verdict = certify::certify(catalog, &inventory, &options);
        let (bytes, sha256) = SetupReport::new(&inventory, &verdict).to_bytes();
        if let Some(path) = &self.report {
            std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        if let (true, Some(tcti)) = (self.extend_pcr, &tpm) {
            let digest: [u8; 32] =
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes))
                    .into();
            plinth_setup::tpm::extend_report(tcti, digest).map_err(anyhow::Error::msg)?;
        }
        if self.json {
            print!("{}", String::from_utf8_lossy(&bytes));
        } else {
            print!("{}", report::render(&verdict));
            println!("setup-report.json sha256 {sha256}");
            if self.extend_pcr {
                println!("measured into PCR {}", plinth_setup::tpm::REPORT_PCR);
            }
            if self.qr {
                print!("{}", report::qr(&report::summary(&verdict, &sha256)));
            }
        }
        if verdict.certified() {
            Ok(())
        } else {
            Err(NotCertified.into())
        }
    }
}

fn main() -> ExitCode {
    AGENT.main(&Vec::new, |verb| match verb {
        Verb::Certify(args) => match args.run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) if e.is::<NotCertified>() => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(if e.is::<BadInput>() { 2 } else { 1 })
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli() {
        AGENT.command::<Verb>().debug_assert();
    }
}
