//! The install, step by step ([`Step`]): read the provider's config, open the carried
//! releases (every archive checked against its manifest), certify the machine, choose the
//! disks and check each is unused and large enough, plan GuestOS; only then write: HostOS and
//! GuestOS streamed onto their disks with the first MiB last and read back partition by
//! partition (`plinth-flash`, the code `plinth flash` runs), HostOS's configuration
//! partition filled, the UEFI boot entry set. A failure names its step, the reason and the
//! next action, and says whether any disk was written.

use super::disks::{self, Assignment};
use super::guest::{self, GuestEnv};
use super::hostconfig;
use crate::certify::{self, Options, Verdict};
use crate::inventory::Inventory;
use plinth_firmware::certification::Certification;
use plinth_firmware::ek::CaCert;
use plinth_flash::device::{self, Roots};
use plinth_flash::image::Image;
use plinth_flash::write::WriteOptions;
use plinth_flash::Disk;
use plinth_node_config::{NodeConfig, ProviderFiles};
use plinth_release::Role;
use serde::Serialize;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Config,
    Releases,
    Certify,
    Disks,
    PlanGuest,
    WriteHost,
    WriteGuest,
    HostConfig,
    BootEntry,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Config => "read config.yaml",
            Step::Releases => "check the HostOS and GuestOS releases",
            Step::Certify => "certify the hardware",
            Step::Disks => "choose the disks",
            Step::PlanGuest => "plan the GuestOS VM",
            Step::WriteHost => "write HostOS",
            Step::WriteGuest => "write GuestOS",
            Step::HostConfig => "write HostOS's configuration",
            Step::BootEntry => "write the partition tables and set the boot entry",
        }
    }
}

/// A failed install.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", step.name())]
pub struct InstallError {
    pub step: Step,
    pub reason: String,
    pub action: String,
    /// The certification's verdict, when certification ran.
    pub verdict: Option<Box<Verdict>>,
    /// What became of each disk the install had begun to write (empty: none was touched).
    pub disks: Vec<String>,
}

/// What an install is given.
pub struct Request<'a> {
    /// The directory that stands for `/` (sys/, proc/; `/` on the node).
    pub root: &'a Path,
    /// Where the disks' device nodes are (`/dev`).
    pub dev: &'a Path,
    pub config: &'a Path,
    /// Holding `host-os/` and `guest-os/` (the data partition's `releases/`).
    pub releases: &'a Path,
    /// The TPM (a TCTI): its EK certificate is certified, PCR 15 measures the report.
    pub tpm: Option<&'a str>,
    pub test_generations: bool,
    pub test_ek_roots: Vec<CaCert>,
    /// A private (0700) scratch directory.
    pub scratch: &'a Path,
    /// Set the UEFI boot entry (efibootmgr).
    pub boot_entry: bool,
    /// The releases this SetupOS may install, as its (verity) root pins them; `None` takes
    /// whatever the releases directory holds (a manual run on releases of another build).
    pub pins: Option<&'a [Pin]>,
    /// Set by a signal: stop writing, leave the disk marked unusable.
    pub cancel: &'a AtomicBool,
    /// A line per step and progress within the writes.
    pub log: &'a dyn Fn(&str),
}

/// What was installed.
#[derive(Debug, Serialize)]
pub struct Installed {
    pub generation: String,
    pub report_sha256: String,
    pub host_disk: String,
    pub guest_disk: String,
    pub guest_data_disks: Vec<String>,
    pub guest_env: String,
    pub host_write_seconds: f64,
    pub guest_write_seconds: f64,
    pub bytes_written: u64,
    pub verify_seconds: f64,
}

fn fail(step: Step, reason: impl Into<String>, action: impl Into<String>) -> InstallError {
    InstallError {
        step,
        reason: reason.into(),
        action: action.into(),
        verdict: None,
        disks: Vec::new(),
    }
}

/// One carried release as the SetupOS root pins it (`/usr/lib/plinth/carried.json`, written
/// by the build).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    pub os: String,
    pub version: String,
    pub profile: String,
    pub manifest_sha256: plinth_release::Sha256,
}

/// Where the SetupOS root pins its carried releases.
pub const PINS: &str = "/usr/lib/plinth/carried.json";

/// Read the pins (a file of the root: still bounded, no link followed).
pub fn read_pins(path: &Path) -> Result<Vec<Pin>, String> {
    let bytes = plinth_release::untrusted::read_untrusted(path, 64 << 10)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Stop before the next step when a signal asked to: nothing of it has begun.
fn check_cancel(req: &Request, step: Step) -> Result<(), InstallError> {
    if req.cancel.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(fail(
            step,
            "interrupted (SIGINT or SIGTERM)",
            "boot SetupOS again",
        ));
    }
    Ok(())
}

/// A tool the install runs after writing, looked for before anything is written.
fn has_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Install HostOS and GuestOS as `req` says.
pub fn install(req: &Request) -> Result<Installed, InstallError> {
    let log = req.log;
    let catalog = Certification::builtin();
    log(&format!("step 1/9: {}", Step::Config.name()));
    // The config and the key are read once: the key written to HostOS is the key checked.
    let ProviderFiles {
        config,
        key_bytes: operator_key,
        ..
    } = ProviderFiles::read(req.config, &catalog.names(req.test_generations)).map_err(|e| {
        fail(
            Step::Config,
            e.to_string(),
            "correct config.yaml on the stick's config partition (`plinth config check` \
             shows every error), then boot SetupOS again",
        )
    })?;

    log(&format!("step 2/9: {}", Step::Releases.name()));
    let reflash = "this SetupOS stick is damaged: flash it again (plinth flash verifies it)";
    let open = |os: &str| {
        let dir = req.releases.join(os);
        let pin = match req.pins {
            None => None,
            Some(pins) => {
                let pin = pins.iter().find(|p| p.os == os).ok_or_else(|| {
                    fail(
                        Step::Releases,
                        format!("this SetupOS pins no {os} release"),
                        reflash,
                    )
                })?;
                Some(pin.manifest_sha256)
            }
        };
        let image = Image::open_pinned(&dir, pin)
            .map_err(|e| fail(Step::Releases, e.to_string(), reflash))?;
        if image.manifest.os.as_str() != os {
            return Err(fail(
                Step::Releases,
                format!("{}: holds {}, not {os}", dir.display(), image.manifest.os),
                reflash,
            ));
        }
        log(&format!(
            "  {os} {} ({}): archive checked against its manifest{}",
            image.manifest.version,
            image.manifest.profile,
            if pin.is_some() {
                ", the manifest against this SetupOS's pin"
            } else {
                " (not pinned)"
            }
        ));
        Ok(image)
    };
    let host_image = open("host-os")?;
    let guest_image = open("guest-os")?;
    let guest_measurements = {
        let path = req.releases.join("guest-os/measurements.json");
        let bytes =
            plinth_release::untrusted::read_untrusted(&path, plinth_release::manifest::MAX_SIZE)
                .map_err(|e| fail(Step::Releases, format!("{}: {e}", path.display()), reflash))?;
        // The bytes read are the bytes checked against GuestOS's (pinned) manifest.
        let listed = guest_image
            .manifest
            .outputs
            .iter()
            .find(|o| o.name.as_str() == "measurements.json");
        let found = plinth_release::Sha256::of(&bytes);
        if listed.is_none_or(|o| o.sha256 != found || o.size != bytes.len() as u64) {
            return Err(fail(
                Step::Releases,
                format!(
                    "{}: sha256 {found} ({} bytes) is not what GuestOS's manifest lists",
                    path.display(),
                    bytes.len()
                ),
                reflash,
            ));
        }
        let text = String::from_utf8_lossy(&bytes);
        plinth_release::measurements::Measurements::parse(&text, &path.display().to_string())
            .map_err(|e| fail(Step::Releases, e, reflash))?
    };

    check_cancel(req, Step::Certify)?;
    log(&format!("step 3/9: {}", Step::Certify.name()));
    let inventory = Inventory::read(req.root, req.tpm).map_err(|e| {
        fail(
            Step::Certify,
            e.to_string(),
            "report this machine's details to the plinth team",
        )
    })?;
    let verdict = certify::certify(
        catalog,
        &inventory,
        &Options {
            configured: Some(&config.generation),
            acknowledged: &config.acknowledged_warnings,
            test_generations: req.test_generations,
            test_ek_roots: req.test_ek_roots.clone(),
        },
    );
    let (report, report_sha256) = crate::report::SetupReport::new(&inventory, &verdict).to_bytes();
    for line in crate::report::render(&verdict).lines() {
        log(&format!("  {line}"));
    }
    if let Some(tcti) = req.tpm {
        let digest: [u8; 32] =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&report)).into();
        crate::tpm::extend_report(tcti, digest).map_err(|e| {
            fail(
                Step::Certify,
                e,
                "check the TPM is enabled in the firmware setup",
            )
        })?;
        log(&format!(
            "  setup-report.json sha256 {report_sha256}, measured into PCR {}",
            crate::tpm::REPORT_PCR
        ));
    }
    if !verdict.certified() {
        let blocking: Vec<&str> = verdict.blocking().map(|c| c.id).collect();
        return Err(InstallError {
            step: Step::Certify,
            reason: format!("not certified: {}", blocking.join(", ")),
            action: verdict
                .blocking()
                .map(|c| format!("{}: {}", c.id, c.action))
                .collect::<Vec<_>>()
                .join("; "),
            verdict: Some(Box::new(verdict)),
            disks: Vec::new(),
        });
    }
    let generation = verdict.generation.clone().unwrap_or_default();
    let test_generation = catalog.get(&generation).is_some_and(|g| g.test_only);

    log(&format!("step 4/9: {}", Step::Disks.name()));
    let roots = Roots {
        sys: req.root.join("sys"),
        proc: req.root.join("proc"),
    };
    let assignment = choose_disks(req, &inventory, &config, &host_image, &guest_image)?;
    let mut targets = Vec::new();
    for (os, t, image) in [
        ("HostOS", &assignment.host, &host_image),
        ("GuestOS", &assignment.guest, &guest_image),
    ] {
        let path = req.dev.join(&t.namespace);
        let target = device::inspect(&path, &roots)
            .and_then(|target| device::check_unused(&target, &roots).map(|()| target))
            .and_then(|target| device::check_size(&target, image.size).map(|()| target))
            .map_err(|e| {
                fail(
                    Step::Disks,
                    format!("{os} disk {}: {e}", t.describe()),
                    "give the installer free NVMe disks (target_disks in config.yaml)",
                )
            })?;
        log(&format!("  {os} onto {}", t.describe()));
        targets.push(target);
    }
    for t in &assignment.guest_data {
        log(&format!("  GuestOS data disk {}", t.describe()));
    }

    log(&format!("step 5/9: {}", Step::PlanGuest.name()));
    let snp = guest_measurements.snp.as_ref();
    let mut counts: Vec<u32> = snp
        .map(|s| s.launch_digests.iter().map(|d| d.vcpus).collect())
        .unwrap_or_default();
    counts.dedup();
    let env: GuestEnv = guest::plan(
        &inventory.topology,
        &assignment,
        test_generation,
        &counts,
        snp.is_none_or(|s| s.policy.smt),
    )
    .map_err(|e| {
        fail(
            Step::PlanGuest,
            e.to_string(),
            "install on a machine of the certified generation with its full memory and NVMe",
        )
    })?;
    log(&format!(
        "  GuestOS: {} vCPUs, {} GiB, disks {}{}",
        env.vcpus,
        env.memory_gib,
        env.disks.join(","),
        if env.sev {
            ", SEV-SNP"
        } else {
            ", development layout (test generation)"
        }
    ));

    // Everything the writing steps need, checked before anything is written.
    let config_partition = host_image
        .manifest
        .partitions
        .iter()
        .find(|p| p.role == Role::Config)
        .cloned()
        .ok_or_else(|| {
            fail(
                Step::HostConfig,
                "the HostOS release has no config partition",
                reflash,
            )
        })?;
    let esp = host_image
        .manifest
        .partitions
        .iter()
        .find(|p| p.role == Role::Esp)
        .map(|p| p.number)
        .ok_or_else(|| fail(Step::BootEntry, "the HostOS release has no ESP", reflash))?;
    let mut tools = vec!["debugfs", "e2fsck"];
    if req.boot_entry {
        tools.push("efibootmgr");
    }
    if let Some(missing) = tools.iter().find(|t| !has_tool(t)) {
        return Err(fail(
            Step::HostConfig,
            format!("{missing} is not installed"),
            reflash,
        ));
    }
    if targets[0].path == targets[1].path {
        return Err(fail(
            Step::Disks,
            format!(
                "HostOS and GuestOS would both go onto {}",
                targets[0].path.display()
            ),
            "name two different disks in target_disks",
        ));
    }
    let files = hostconfig::files(&config, operator_key, &env.render(), report);
    check_cancel(req, Step::WriteHost)?;

    // Nothing has been written so far. From here on, a failure leaves every disk begun
    // without a partition table (its first MiB zeroed), never one that boots half-installed,
    // and the banner says what became of each.
    let mut begun: Vec<(&'static str, Disk)> = Vec::new();
    let result = write_and_configure(
        req,
        [(&host_image, &targets[0]), (&guest_image, &targets[1])],
        &config_partition,
        esp,
        &files,
        &mut begun,
    );
    let (seconds, bytes_written, verify_seconds) = match result {
        Ok(done) => done,
        Err(mut e) => {
            for (os, disk) in &begun {
                e.disks.push(match plinth_flash::write::reset_first_mib(disk) {
                    Ok(()) => format!(
                        "{os} disk {}: left without a partition table (not bootable)",
                        disk.path.display()
                    ),
                    Err(why) => format!(
                        "{os} disk {}: its partition table could NOT be cleared ({why}): do not boot it",
                        disk.path.display()
                    ),
                });
            }
            return Err(e);
        }
    };
    Ok(Installed {
        generation,
        report_sha256,
        host_disk: assignment.host.describe(),
        guest_disk: assignment.guest.describe(),
        guest_data_disks: assignment.guest_data.iter().map(|t| t.describe()).collect(),
        guest_env: env.render(),
        host_write_seconds: seconds[0],
        guest_write_seconds: seconds[1],
        bytes_written,
        verify_seconds,
    })
}

/// Steps 6 to 9: each image written and read back, HostOS's configuration, the boot entry.
/// Every disk opened for writing is pushed onto `begun` first, so that the caller can clear
/// it when a later step fails.
fn write_and_configure(
    req: &Request,
    images: [(&Image, &device::Target); 2],
    config_partition: &plinth_release::manifest::PartitionImage,
    esp: u32,
    files: &[hostconfig::ConfigFile],
    begun: &mut Vec<(&'static str, Disk)>,
) -> Result<([f64; 2], u64, f64), InstallError> {
    let log = req.log;
    let mut seconds = [0.0f64; 2];
    let mut bytes_written = 0;
    let mut verify_seconds = 0.0;
    let steps = [(Step::WriteHost, "HostOS"), (Step::WriteGuest, "GuestOS")];
    for (i, ((step, os), (image, target))) in steps.into_iter().zip(images).enumerate() {
        check_cancel(req, step)?;
        log(&format!("step {}/9: {}", 6 + i, step.name()));
        let again = "boot SetupOS again to retry; if it fails again, replace the disk";
        let disk = Disk::open_write(target).map_err(|e| fail(step, e.to_string(), again))?;
        begun.push((os, disk));
        let disk = &mut begun.last_mut().expect("just pushed").1;
        let total = image.size;
        let last = std::cell::Cell::new(0u64);
        let progress = |done: u64| {
            // A line per 10% on the console.
            let tenth = done * 10 / total.max(1);
            if tenth > last.get() {
                last.set(tenth);
                log(&format!(
                    "  {}%  {} of {} MiB",
                    tenth * 10,
                    done >> 20,
                    total >> 20
                ));
            }
        };
        let written = plinth_flash::write::write(
            image,
            disk,
            &WriteOptions {
                cancel: req.cancel,
                progress: &progress,
                // Neither disk gets its partition table before both are written, read back
                // and configured (step 9): a power cut meanwhile leaves no disk that boots or
                // looks installed.
                defer_first_mib: true,
            },
        )
        .map_err(|e| fail(step, e.to_string(), again))?;
        seconds[i] = written.seconds;
        bytes_written += written.written;
        let reader = Disk::open_read(target).map_err(|e| fail(step, e.to_string(), again))?;
        let verified = plinth_flash::verify::verify(&reader, image, req.cancel, &mut |_| {})
            .map_err(|e| fail(step, e.to_string(), again))?;
        verify_seconds += verified.seconds;
        // The first MiB is still zero (deferred): the partitions are compared now, the first
        // MiB is read back when it is committed.
        if let Some(bad) = verified.partitions.iter().find(|p| !p.ok) {
            return Err(fail(
                step,
                format!(
                    "read back differs from the release: partition {} `{}` ({})",
                    bad.number, bad.name, bad.role
                ),
                "the disk does not keep what is written: replace it",
            ));
        }
        log(&format!(
            "  {} MiB in {:.1} s, read back and compared ({} partitions) in {:.1} s",
            written.bytes >> 20,
            written.seconds,
            verified.partitions.len(),
            verified.seconds
        ));
    }

    check_cancel(req, Step::HostConfig)?;
    log(&format!("step 8/9: {}", Step::HostConfig.name()));
    let host = &images[0].1.path;
    hostconfig::write(host, config_partition.offset, files, req.scratch)
        .map_err(|e| fail(Step::HostConfig, e, "boot SetupOS again to retry"))?;
    log(&format!(
        "  {} written into partition {} ({}) and read back",
        files
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        config_partition.number,
        config_partition.name
    ));

    check_cancel(req, Step::BootEntry)?;
    log(&format!("step 9/9: {}", Step::BootEntry.name()));
    // The partition tables, GuestOS's first and HostOS's last: only now can the node boot.
    for (os, (image, _)) in [("GuestOS", images[1]), ("HostOS", images[0])] {
        let disk = &begun
            .iter()
            .find(|(begun, _)| *begun == os)
            .expect("both disks were begun")
            .1;
        plinth_flash::write::commit_first_mib(image, disk).map_err(|e| {
            fail(
                Step::BootEntry,
                format!("{}'s partition table: {e}", disk.path.display()),
                "boot SetupOS again to retry; if it fails again, replace the disk",
            )
        })?;
    }
    log("  partition tables written and read back (GuestOS, then HostOS)");
    if req.boot_entry {
        boot_entry(host, esp).map_err(|e| {
            fail(
                Step::BootEntry,
                e,
                "set the boot order in the firmware setup: the HostOS disk first",
            )
        })?;
    } else {
        log("  skipped (--no-boot-entry)");
    }
    Ok((seconds, bytes_written, verify_seconds))
}

fn choose_disks(
    req: &Request,
    inventory: &Inventory,
    config: &NodeConfig,
    host: &Image,
    guest: &Image,
) -> Result<Assignment, InstallError> {
    let candidates = disks::candidates(req.root, &inventory.topology);
    let chosen =
        disks::choose(candidates, &config.target_disks, config.reinstall).map_err(|e| {
            fail(
                Step::Disks,
                e.to_string(),
                "correct target_disks in config.yaml (serials as the disks report them)",
            )
        })?;
    disks::assign(chosen, host.size, guest.size).map_err(|e| {
        fail(
            Step::Disks,
            e.to_string(),
            "install the NVMe disks the generation lists",
        )
    })
}

/// A UEFI boot entry for systemd-boot on the HostOS disk's ESP, first in the boot order.
fn boot_entry(disk: &Path, esp: u32) -> Result<(), String> {
    let out = Command::new("efibootmgr")
        .arg("--create")
        .arg("--disk")
        .arg(disk)
        .args(["--part", &esp.to_string()])
        .args(["--label", "plinth HostOS"])
        .args(["--loader", "\\EFI\\systemd\\systemd-bootx64.efi"])
        .output()
        .map_err(|e| format!("efibootmgr: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "efibootmgr: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The banner a failure shows on the console: the step, the reason, what to do, and
/// whether the disks were touched.
pub fn banner(e: &InstallError) -> String {
    let rule = "=".repeat(72);
    let mut s = format!(
        "{rule}\nPLINTH SETUP FAILED at step \"{}\"\n",
        e.step.name()
    );
    s.push_str(&format!("  reason: {}\n", e.reason));
    s.push_str(&format!("  do:     {}\n", e.action));
    if e.disks.is_empty() {
        s.push_str("  disks:  nothing was written to any disk\n");
    }
    for d in &e.disks {
        s.push_str(&format!("  disks:  {d}\n"));
    }
    s.push_str(&rule);
    s.push('\n');
    s
}

/// The scratch directory an install uses: a new one with a random name (nobody can plant
/// it beforehand), private to root (0700), removed when dropped.
pub fn scratch_dir(base: &Path) -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("plinth-setup-")
        .tempdir_in(base)
}
