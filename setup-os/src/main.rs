//! `plinth-setup`: the SetupOS agent. It certifies the machine against the catalog
//! (`certify`), and reports the boot (`boot-report`) and its measurements (`measured-boot`),
//! both from the crate `plinth-boot-report`; installs HostOS and GuestOS (`install`,
//! [`plinth_setup::install`]); and benchmarks the install's writer against `dd`
//! (`install-bench`, [`plinth_setup::bench`]). This file is clap dispatch and the verbs' output.

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
    /// Certify this machine, then install the HostOS and GuestOS releases SetupOS carries
    /// onto its NVMe disks, read every partition back, write HostOS's configuration and set
    /// the boot entry; then reboot. Nothing is written before every check has passed.
    #[command(after_help = "\
Exit status: 0 installed, 1 not certified or a step failed (a banner names the step, the
reason and what to do), 2 bad input.

Examples:
  plinth-setup install --media              what SetupOS runs at boot
  plinth-setup install --config config.yaml --releases /mnt/releases --no-reboot")]
    Install(InstallArgs),
    /// Benchmark the install's writer against `dd` of the same image onto the same NVMe
    /// disk, for each virtio disk marked as a benchmark source (ci/bench-install makes
    /// them); without one, nothing is written.
    #[command(after_help = "\
A source disk's first sector starts with \"PLINTH INSTALL BENCH SOURCE v1\\n\" and names the
release (host-os or guest-os), its image's size (bytes=) and the serial of a blank NVMe
disk (target=); the raw image starts at 1 MiB. Each run copies it with dd (bs=4M
oflag=direct conv=fsync), reads the target back against the release, then writes the
carried release as the install does and reads it back; one line per run on the consoles.

Exit status: 0 no source disk, or every benchmark ran; 1 one failed; 2 bad input.

Examples:
  plinth-setup install-bench                what SetupOS runs at boot
  plinth-setup install-bench --no-wait --releases /mnt/releases")]
    InstallBench(InstallBenchArgs),
}

#[derive(Debug, clap::Args)]
struct InstallBenchArgs {
    /// The directory holding host-os/ and guest-os/ releases [default: SetupOS's data
    /// partition, mounted, with the root's pins].
    #[arg(long, value_name = "DIR")]
    releases: Option<PathBuf>,
    /// Start at once instead of waiting for the end of startup.
    #[arg(long)]
    no_wait: bool,
}

impl InstallBenchArgs {
    fn run(self) -> anyhow::Result<()> {
        use plinth_setup::bench::{self, Bench};
        use plinth_setup::install::{media, run};
        let root = Path::new("/");
        let sources = bench::sources(root, Path::new("/dev"));
        if sources.is_empty() {
            println!("plinth-setup: no install benchmark source disk");
            return Ok(());
        }
        if !self.no_wait {
            plinth_disk_bench::wait_for_startup(std::time::Duration::from_secs(600));
        }
        let (releases, pins) = match self.releases {
            Some(dir) => (dir, None),
            None => {
                // The install may be mounting the same partitions at this moment.
                let m = media::mount(&root.join("sys")).or_else(|_| {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    media::mount(&root.join("sys"))
                });
                let m = m.map_err(BadInput)?;
                let pins = run::read_pins(Path::new(run::PINS)).map_err(BadInput)?;
                (m.data.join("releases"), Some(pins))
            }
        };
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        cancel_on_signals(cancel.clone()).context("blocking SIGINT and SIGTERM")?;
        let say = |line: &str| plinth_state::console::say(&[line.to_string()]);
        let (ok, failed) = Bench {
            root,
            dev: Path::new("/dev"),
            releases: &releases,
            pins: pins.as_deref(),
            cancel: &cancel,
            say: &say,
        }
        .run(sources);
        say(&format!(
            "PLINTH INSTALL BENCH finished ok={ok} failed={failed}"
        ));
        if failed == 0 {
            Ok(())
        } else {
            Err(anyhow::anyhow!("{failed} install benchmark(s) failed"))
        }
    }
}

#[derive(Debug, clap::Args)]
struct InstallArgs {
    /// Mount SetupOS's own config and data partitions (of the disk it booted from) and take
    /// config.yaml and the releases from them.
    #[arg(long)]
    media: bool,
    /// The provider's config.yaml [default with --media: /run/plinth/config/config.yaml].
    #[arg(long, value_name = "FILE", required_unless_present = "media")]
    config: Option<PathBuf>,
    /// The directory holding host-os/ and guest-os/ releases [default with --media:
    /// /run/plinth/data/releases].
    #[arg(long, value_name = "DIR", required_unless_present = "media")]
    releases: Option<PathBuf>,
    /// The directory that stands for `/` (its sys/ and proc/ are read).
    #[arg(long, value_name = "DIR", default_value = "/")]
    sysfs_root: PathBuf,
    /// Where the disks' device nodes are.
    #[arg(long, value_name = "DIR", default_value = "/dev")]
    dev: PathBuf,
    /// The TPM (a tpm2-tss TCTI) [default: device:/dev/tpmrm0 when --sysfs-root is /].
    #[arg(long, value_name = "TCTI")]
    tcti: Option<String>,
    /// Certify test generations too (qemu-test); implied on a `test` SetupOS.
    #[arg(long)]
    test_generations: bool,
    /// An EK CA certificate (PEM) for a test generation [default on a `test` SetupOS:
    /// test-ek-ca.pem beside config.yaml, when there is one].
    #[arg(long, value_name = "FILE")]
    test_ek_ca: Option<PathBuf>,
    /// The releases this SetupOS may install, pinned by manifest sha256 [default with
    /// --media: /usr/lib/plinth/carried.json, which the build writes into the verity root;
    /// without --media and without this flag the releases are taken unpinned].
    #[arg(long, value_name = "FILE")]
    pins: Option<PathBuf>,
    /// Do not set the UEFI boot entry.
    #[arg(long)]
    no_boot_entry: bool,
    /// Do not reboot when done.
    #[arg(long)]
    no_reboot: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl InstallArgs {
    fn run(self) -> anyhow::Result<()> {
        use plinth_setup::install::{media, run};
        let test_generations = self.test_generations || Path::new(TEST_GENERATIONS_MARK).exists();
        let (config, releases) = if self.media {
            let m = media::mount(&self.sysfs_root.join("sys")).map_err(BadInput)?;
            (
                self.config.unwrap_or_else(|| m.config.join("config.yaml")),
                self.releases.unwrap_or_else(|| m.data.join("releases")),
            )
        } else {
            (
                self.config.expect("required without --media"),
                self.releases.expect("required without --media"),
            )
        };
        if self.media && !config.exists() {
            // A stick flashed without a config: nothing to install yet, and no failure of
            // SetupOS's own (its boot report stays OK). The provider reads what to do.
            plinth_state::console::say(&[
                "PLINTH SETUP WAITING: there is no config.yaml on SetupOS's config partition"
                    .into(),
                "  do: write one (docs/node-config.md; `plinth flash IMAGE DEVICE --config FILE`, \
                 or copy it onto the partition from any computer), then boot SetupOS again"
                    .into(),
            ]);
            return Ok(());
        }
        let test_ek_ca = self.test_ek_ca.clone().or_else(|| {
            let beside = config.with_file_name("test-ek-ca.pem");
            (test_generations && beside.is_file()).then_some(beside)
        });
        let mut test_ek_roots = Vec::new();
        if let Some(path) = &test_ek_ca {
            let bytes = plinth_release::untrusted::read_untrusted(path, 64 << 10)
                .map_err(|e| BadInput(format!("{}: {e}", path.display())))?;
            test_ek_roots.push(
                plinth_firmware::ek::CaCert::parse(&bytes, &path.display().to_string())
                    .map_err(BadInput)?,
            );
        }
        let live = self.sysfs_root == Path::new("/");
        let tpm = self
            .tcti
            .clone()
            .or_else(|| live.then(|| "device:/dev/tpmrm0".to_string()));
        let pins_path = self
            .pins
            .clone()
            .or_else(|| self.media.then(|| PathBuf::from(run::PINS)));
        let pins = match &pins_path {
            Some(path) => Some(run::read_pins(path).map_err(BadInput)?),
            None => None,
        };
        // systemd's RuntimeDirectory (on /run) at boot: SetupOS's root and /tmp are read-only.
        let base = std::env::var_os("RUNTIME_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let scratch_dir =
            run::scratch_dir(&base).context("creating a private scratch directory")?;
        let scratch = scratch_dir.path().to_path_buf();
        let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        cancel_on_signals(cancel.clone()).context("blocking SIGINT and SIGTERM")?;
        let json = self.json;
        // At boot (--media) every line goes to every active console too: the provider may
        // watch the serial console, a BMC's or the screen.
        let consoles = self.media;
        let say = move |text: &str| {
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            if consoles {
                plinth_state::console::say(&lines);
            } else if json {
                lines.iter().for_each(|l| eprintln!("{l}"));
            } else {
                lines.iter().for_each(|l| println!("{l}"));
            }
        };
        let log = |line: &str| say(&format!("plinth-setup: {line}"));
        let request = run::Request {
            root: &self.sysfs_root,
            dev: &self.dev,
            config: &config,
            releases: &releases,
            tpm: tpm.as_deref(),
            test_generations,
            test_ek_roots,
            scratch: &scratch,
            boot_entry: !self.no_boot_entry,
            pins: pins.as_deref(),
            cancel: &cancel,
            log: &log,
        };
        let result = run::install(&request);
        drop(scratch_dir);
        match result {
            Ok(installed) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&installed)?);
                }
                say(&format!(
                    "PLINTH SETUP OK generation={} host={} guest={} report_sha256={}",
                    installed.generation,
                    installed.host_disk,
                    installed.guest_disk,
                    installed.report_sha256
                ));
                if !self.no_reboot {
                    log("rebooting into HostOS");
                    let _ = std::process::Command::new("systemctl")
                        .arg("reboot")
                        .status();
                }
                Ok(())
            }
            Err(e) => {
                say(&run::banner(&e));
                Err(InstallFailed.into())
            }
        }
    }
}

/// Set `flag` when SIGINT or SIGTERM arrives (the writer stops and leaves the disk without
/// a partition table). Both are blocked here, before any other thread starts, and one
/// thread waits for them: no handler runs in signal context.
fn cancel_on_signals(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> std::io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().map_err(std::io::Error::from)?;
    std::thread::spawn(move || {
        while set.wait().is_ok() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    Ok(())
}

/// The install failed: exit 1 (the banner was printed).
#[derive(Debug, thiserror::Error)]
#[error("install failed")]
struct InstallFailed;

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
        Verb::Certify(args) => finish(args.run()),
        Verb::InstallBench(args) => finish(args.run()),
        Verb::Install(args) => {
            let media = args.media;
            let result = args.run();
            // At boot, what failed before the install could say so goes to the consoles too.
            if let (true, Err(e)) = (media, &result) {
                if !e.is::<InstallFailed>() {
                    plinth_state::console::say(&[format!("PLINTH SETUP FAILED: {e:#}")]);
                }
            }
            finish(result)
        }
    })
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<NotCertified>() || e.is::<InstallFailed>() => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(if e.is::<BadInput>() { 2 } else { 1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli() {
        AGENT.command::<Verb>().debug_assert();
    }
}
