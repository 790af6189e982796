//! `plinth run`: boot an image in QEMU (see [`crate::vm`]): a built release of an OS
//! (`out/<os>/<version>`), a release directory, or a raw disk image. The console is shown
//! on the terminal; with `--expect` the run ends as soon as the text appears. A release's
//! disk image is unpacked within its manifest's bounds into a private (0700) scratch
//! directory.

use super::image::{Image, ImageArgs};
use super::{BadInput, CheckFailed, Global, Output};
use crate::vm::{self, accel::Accel, Echo, Ending, Machine, Watch};
use anyhow::Context;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

const AFTER_HELP: &str = "\
IMAGE is an OS name (its release in <OUT>/<os>/<version>, built with plinth
build), a release directory, or a raw disk image file. The boot disk is
never written (copy-on-write) unless --write-boot-disk; --disk files are.
--tpm-state DIR keeps the TPM across runs (a reboot of the same machine).
With --tpm, the booted agent checks the TPM's PCRs against the release's
measurements.json (or --measurements FILE) and its boot report says whether
they match. KVM is used when it runs guests here, TCG otherwise (the log
says which). QEMU and swtpm are stopped and their files removed when the
run ends, Ctrl-C included. Without --expect, on a terminal, the console is
interactive (Ctrl-C ends the run).
Exit 0: the expected text appeared (each of them, for several --expect; or,
without --expect, the guest powered off); 1: timeout or power-off before the text (the console's last lines are
shown), QEMU failed, or interrupted; 2: bad input.

Examples:
  plinth run guest-os --profile test
  plinth run host-os --tpm --expect 'PLINTH BOOT OK' --timeout 300
  plinth run changed.img --tpm --measurements out/host-os/0.1.0/measurements.json
  plinth run out/setup-os/0.1.0 --disk blank1.img --disk blank2.img
  plinth run disk.img --numa 2 --cpus 4 --memory 4096 --json
  plinth run disk.img --tpm --tpm-state tpm/ --write-boot-disk   (again: a reboot)
  plinth run disk.img --tpm --tpm-state tpm/ --write-boot-disk \
      --expect 'PLINTH STATE step=mkfs' --power-off-after 400     (a power cut)
  plinth run out/guest-os/0.1.0 --firmware out/guest-os/0.1.0/OVMF-AmdSev.fd
  plinth run disk.img --tpm --cpu max        (TCG: an emulated CPU with AES-NI)";

/// Boot an image in QEMU with OVMF (and a software TPM).
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub image: ImageArgs,
    /// Attach a software TPM 2.0 (swtpm), fresh for this run.
    #[arg(long)]
    pub tpm: bool,
    /// Another virtual disk (raw image, written by the guest); repeatable.
    #[arg(long = "disk", value_name = "FILE")]
    pub disks: Vec<PathBuf>,
    /// An emulated NVMe drive (a raw image file, written by the guest), with the serial it
    /// reports: `FILE,serial=S` (default serial: PLINTH-NVME-<n>); repeatable.
    #[arg(long = "nvme", value_name = "FILE[,serial=S]")]
    pub nvme: Vec<String>,
    /// Make the boot image the last boot option, after the NVMe drives (an installer stick:
    /// a reboot after the install boots the installed disk).
    #[arg(long, requires = "nvme")]
    pub boot_last: bool,
    /// Guest NUMA nodes (vCPUs and memory split evenly).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub numa: u32,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1536, value_name = "MIB")]
    pub memory: u64,
    /// Stop after this many seconds (exit 1) [default: none; 600 with --expect].
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Stop as soon as this text is on the console (exit 0); repeated, as soon as each of the
    /// texts is, in any order.
    #[arg(long, value_name = "TEXT")]
    pub expect: Vec<String>,
    /// With --expect: cut the VM's power this many milliseconds after the text appears
    /// (QEMU is killed: no shutdown, nothing the guest had not written yet reaches the
    /// disk), for power-loss trials with --write-boot-disk.
    #[arg(long, value_name = "MS", requires = "expect")]
    pub power_off_after: Option<u64>,
    /// Accelerator: auto (KVM if it runs guests here), kvm or tcg.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// The vCPU model [default: host under KVM, QEMU's own under TCG]; e.g. `max`, whose
    /// emulated CPU has AES-NI (QEMU's default TCG model has none).
    #[arg(long, value_name = "MODEL", value_parser = cpu_model)]
    pub cpu: Option<String>,
    /// The measurements.json the booted agent checks the TPM against (given to the guest as
    /// a read-only disk) [default with --tpm: the release's own].
    #[arg(long, value_name = "FILE", requires = "tpm")]
    pub measurements: Option<PathBuf>,
    /// Boot with this single-image firmware instead of Debian's OVMF, e.g. a GuestOS
    /// release's OVMF-AmdSev.fd (it boots the UKI from the disk; it refuses -kernel without
    /// SEV, and has no TPM support).
    #[arg(long, value_name = "FILE", conflicts_with = "tpm")]
    pub firmware: Option<PathBuf>,
    /// Keep the console log in this file.
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// Keep the TPM's state in DIR across runs (manufactured there on first use): the same
    /// machine boots again. Another DIR is another machine's TPM.
    #[arg(long, value_name = "DIR", requires = "tpm")]
    pub tpm_state: Option<PathBuf>,
    /// Write the boot disk itself, not a copy-on-write layer: what the guest wrote (its
    /// state volume) is there on the next run. IMAGE must be a raw disk image file.
    #[arg(long)]
    pub write_boot_disk: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    image: String,
    accel: Accel,
    accel_reason: &'a str,
    ending: Ending,
    seconds: f64,
    console_tail: String,
}

pub fn run(g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    // Before anything that needs cleaning up: Ctrl-C from now on ends the run, not plinth.
    let interrupted = vm::catch_interrupts();
    let scratch = crate::pipeline::artifacts::scratch_dir("plinth-run-")
        .context("creating a temporary directory")?;
    let (disk, label, release) = boot_disk(g, out, &args, scratch.path())?;
    if args.write_boot_disk && release.is_some() {
        return Err(BadInput(format!(
            "--write-boot-disk: {label} is a release, whose disk is unpacked into a scratch directory and removed after the run\n  hint: unpack its disk once (tar -I zstd -xf <release>/disk-img.tar.zst disk.img) and run that file"
        ))
        .into());
    }
    let mut machine = Machine::new(&disk);
    machine.write_boot_disk = args.write_boot_disk;
    machine.tpm_state = args.tpm_state.clone();
    machine.disks = args.disks.clone();
    let measurements = args.measurements.clone().or_else(|| {
        let own = release?.join(crate::pipeline::release::MEASUREMENTS);
        (args.tpm && own.is_file()).then_some(own)
    });
    if let Some(file) = &measurements {
        let disk = measurements_disk(file, scratch.path())?;
        machine
            .labelled_disks
            .push((disk, plinth_firmware::measurements::DISK_SERIAL.to_string()));
        out.detail(format!(
            "the guest checks its PCRs against {}",
            file.display()
        ));
    }
    for (i, spec) in args.nvme.iter().enumerate() {
        let (file, serial) = match spec.rsplit_once(",serial=") {
            Some((file, serial)) => (file, serial.to_string()),
            None => (spec.as_str(), format!("PLINTH-NVME-{i}")),
        };
        machine.nvme.push((PathBuf::from(file), serial));
    }
    machine.boot_disk_last = args.boot_last;
    machine.memory_mib = args.memory;
    machine.cpus = args.cpus;
    machine.cpu_model = args.cpu.clone();
    machine.numa_nodes = args.numa;
    machine.tpm = args.tpm;
    machine.firmware = args.firmware.clone();
    let (accel, accel_reason) = match args.accel.as_str() {
        "kvm" => (Accel::Kvm, "--accel kvm".to_string()),
        "tcg" => (Accel::Tcg, "--accel tcg".to_string()),
        _ => vm::accel::detect(scratch.path()),
    };
    machine.accel = Some(accel);
    if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(CheckFailed("interrupted".into()).into());
    }
    let echo = if out.json || g.quiet {
        Echo::Off
    } else if args.expect.is_empty() && std::io::stdin().is_terminal() {
        Echo::Interactive
    } else {
        Echo::Stdout
    };
    let timeout = args
        .timeout
        .or((!args.expect.is_empty()).then_some(600))
        .map(Duration::from_secs);
    out.info(format!(
        "booting {label} under {} ({accel_reason}): {} vCPUs, {} MiB{}{}",
        accel.name().to_uppercase(),
        args.cpus,
        args.memory,
        if args.numa > 1 {
            format!(", {} NUMA nodes", args.numa)
        } else {
            String::new()
        },
        if args.tpm { ", swtpm" } else { "" }
    ));
    let watch = Watch {
        expect: args.expect.clone(),
        power_off_after: args.power_off_after.map(Duration::from_millis),
        timeout,
        echo,
        console_log: args.console_log.clone(),
    };
    let result = vm::run(&machine, &watch).map_err(|e| match e {
        vm::VmError::Bad { .. } => anyhow::Error::new(BadInput(e.to_string())),
        other => anyhow::Error::new(other),
    })?;
    out.info(format!(
        "{} after {:.1} s",
        match result.ending {
            Ending::Marker => "expected text seen",
            Ending::Exited { success: true } => "guest powered off",
            Ending::Exited { success: false } => "QEMU failed",
            Ending::Timeout => "timed out",
            Ending::Interrupted => "interrupted",
        },
        result.seconds
    ));
    if out.json {
        out.json_result(&Report {
            image: label.clone(),
            accel: result.accel,
            accel_reason: &accel_reason,
            ending: result.ending,
            seconds: result.seconds,
            console_tail: result.tail(30),
        })?;
    }
    // What was awaited, for the messages: `A` (and `B`).
    let awaited = args
        .expect
        .iter()
        .map(|e| format!("`{e}`"))
        .collect::<Vec<_>>()
        .join(" and ");
    match result.ending {
        Ending::Marker => Ok(()),
        Ending::Exited { success: true } if args.expect.is_empty() => Ok(()),
        Ending::Exited { success: true } => Err(CheckFailed(format!(
            "the guest powered off before {awaited} appeared; the console's last lines:\n{}",
            result.tail(20)
        ))
        .into()),
        Ending::Interrupted => Err(CheckFailed("interrupted".into()).into()),
        Ending::Timeout => Err(CheckFailed(format!(
            "no {} within {} s; the console's last lines:\n{}",
            if awaited.is_empty() {
                "power-off".to_string()
            } else {
                awaited
            },
            timeout.map(|t| t.as_secs()).unwrap_or(0),
            result.tail(20)
        ))
        .into()),
        Ending::Exited { success: false } => Err(CheckFailed(format!(
            "QEMU failed:\n{}\nthe console's last lines:\n{}",
            result.qemu_stderr.trim_end(),
            result.tail(20)
        ))
        .into()),
    }
}

/// A disk image holding `file` (checked to be a measurements file), padded with NULs to
/// whole sectors, in `scratch`.
fn measurements_disk(file: &Path, scratch: &Path) -> anyhow::Result<PathBuf> {
    let text =
        std::fs::read_to_string(file).map_err(|e| BadInput(format!("{}: {e}", file.display())))?;
    plinth_firmware::measurements::Measurements::parse(&text, &file.display().to_string())
        .map_err(BadInput)?;
    let mut bytes = text.into_bytes();
    bytes.resize(bytes.len().div_ceil(512) * 512 + 512, 0);
    let disk = scratch.join("measurements.img");
    std::fs::write(&disk, bytes).with_context(|| format!("writing {}", disk.display()))?;
    Ok(disk)
}

/// The disk to boot, how to name it, and the release directory it came from: a disk image
/// as given, or the disk image of a release (unpacked into `scratch`).
fn boot_disk(
    g: &Global,
    out: &Output,
    args: &Args,
    scratch: &Path,
) -> anyhow::Result<(PathBuf, String, Option<PathBuf>)> {
    let release = match args.image.resolve(g)? {
        Image::Disk(disk) => {
            let label = disk.display().to_string();
            return Ok((disk, label, None));
        }
        Image::Release(release) => release,
    };
    let dir = release.dir.clone();
    let m = &release.manifest;
    out.detail(format!("unpacking the disk image of {}", dir.display()));
    // Within the manifest's bounds, into the private (0700) scratch directory.
    let disk = release
        .extract_member(crate::pipeline::release::DISK_ARCHIVE, "disk.img", scratch)
        .map_err(|e| {
            if e.is_crafted() {
                anyhow::Error::new(BadInput(e.to_string()))
            } else {
                anyhow::Error::new(e)
            }
        })
        .with_context(|| format!("unpacking the disk image of {}", dir.display()))?;
    Ok((
        disk,
        format!("{} {} ({})", m.os, m.version, m.profile),
        Some(dir),
    ))
}

/// A `-cpu` value: a model name with optional `,feature` settings (`max`, `EPYC-v4,+aes`).
fn cpu_model(value: &str) -> Result<String, String> {
    let ok = value.split(',').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-=".contains(&b))
    });
    if ok {
        Ok(value.to_string())
    } else {
        Err("expected a QEMU CPU model such as max or EPYC-v4 (letters, digits, ._+-=, features after commas)".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_models_are_names_with_features() {
        for good in [
            "max",
            "EPYC-v4",
            "qemu64,+aes",
            "Skylake-Server-v4,-hle,vmx=on",
        ] {
            assert_eq!(super::cpu_model(good).as_deref(), Ok(good));
        }
        for bad in ["", "max,", "max host", "a;b", ",max"] {
            assert!(super::cpu_model(bad).is_err(), "{bad:?}");
        }
    }
}
