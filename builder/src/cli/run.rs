//! `plinth run`: boot an image in QEMU (see [`crate::vm`]): a built release of an OS
//! (`out/<os>/<version>`), a release directory, or a raw disk image. The console is shown
//! on the terminal; with `--expect` the run ends as soon as the text appears.

use super::{BadInput, CheckFailed, Global, Output};
use crate::compare::release::Release;
use crate::vm::{self, accel::Accel, Echo, Ending, Machine, Watch};
use anyhow::Context;
use serde::Serialize;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

const AFTER_HELP: &str = "\
IMAGE is an OS name (its release in <OUT>/<os>/<version>, built with plinth
build), a release directory, or a raw disk image file. The boot disk is
never written (copy-on-write); --disk files are. KVM is used when it runs
guests here, TCG otherwise (the log says which). QEMU and swtpm are stopped
and their files removed when the run ends, Ctrl-C included. Without
--expect, on a terminal, the console is interactive (Ctrl-C ends the run).
Exit 0: the expected text appeared (or, without --expect, the guest powered
off); 1: timeout or power-off before the text (the console's last lines are
shown), QEMU failed, or interrupted; 2: bad input.

Examples:
  plinth run guest-os --profile test
  plinth run host-os --tpm --expect 'PLINTH BOOT OK' --timeout 300
  plinth run out/setup-os/0.1.0 --disk blank1.img --disk blank2.img
  plinth run disk.img --numa 2 --cpus 4 --memory 4096 --json";

/// Boot an image in QEMU with OVMF (and a software TPM).
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// guest-os, host-os or setup-os; a release directory; or a disk image.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The profile the release must hold [default: whichever it holds].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Release directory root, for an OS name.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Release version, for an OS name [default: the plinth version].
    #[arg(long, value_name = "VERSION")]
    pub release_version: Option<String>,
    /// Attach a software TPM 2.0 (swtpm), fresh for this run.
    #[arg(long)]
    pub tpm: bool,
    /// Another virtual disk (raw image, written by the guest); repeatable.
    #[arg(long = "disk", value_name = "FILE")]
    pub disks: Vec<PathBuf>,
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
    /// Stop as soon as this text is on the console (exit 0).
    #[arg(long, value_name = "TEXT")]
    pub expect: Option<String>,
    /// Accelerator: auto (KVM if it runs guests here), kvm or tcg.
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// Keep the console log in this file.
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
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
    let scratch = tempfile::Builder::new()
        .prefix("plinth-run-")
        .tempdir()
        .context("creating a temporary directory")?;
    let (disk, label) = boot_disk(g, out, &args, scratch.path())?;
    let mut machine = Machine::new(&disk);
    machine.disks = args.disks.clone();
    machine.memory_mib = args.memory;
    machine.cpus = args.cpus;
    machine.numa_nodes = args.numa;
    machine.tpm = args.tpm;
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
    } else if args.expect.is_none() && std::io::stdin().is_terminal() {
        Echo::Interactive
    } else {
        Echo::Stdout
    };
    let timeout = args
        .timeout
        .or(args.expect.as_ref().map(|_| 600))
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
    match result.ending {
        Ending::Marker => Ok(()),
        Ending::Exited { success: true } if args.expect.is_none() => Ok(()),
        Ending::Exited { success: true } => Err(CheckFailed(format!(
            "the guest powered off before `{}` appeared; the console's last lines:\n{}",
            args.expect.as_deref().unwrap_or_default(),
            result.tail(20)
        ))
        .into()),
        Ending::Interrupted => Err(CheckFailed("interrupted".into()).into()),
        Ending::Timeout => Err(CheckFailed(format!(
            "no `{}` within {} s; the console's last lines:\n{}",
            args.expect.as_deref().unwrap_or("power-off"),
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

/// The disk to boot and how to name it: a disk image as given, or the disk image of a
/// release (checked against its manifest and unpacked into `scratch`).
fn boot_disk(
    g: &Global,
    out: &Output,
    args: &Args,
    scratch: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    let given = Path::new(&args.image);
    let is_os = crate::spec::OS_NAMES.contains(&args.image.as_str());
    // A bare OS name wins over a directory of that name (the source tree has one per OS).
    if given.is_file() && !is_os {
        if args.profile.is_some() {
            return Err(BadInput(format!(
                "{}: a disk image has no profile to check\n  hint: drop --profile, or name an OS or a release directory",
                given.display()
            ))
            .into());
        }
        return Ok((given.to_path_buf(), given.display().to_string()));
    }
    let dir = if is_os {
        let version = args
            .release_version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
        let base = match &g.root {
            Some(root) if args.out.is_relative() => root.join(&args.out),
            _ => args.out.clone(),
        };
        let dir = base.join(&args.image).join(&version);
        if !dir.is_dir() {
            return Err(BadInput(format!(
                "{}: no release of {} {version}\n  hint: build it first: plinth build {} --profile {}{}",
                dir.display(),
                args.image,
                args.image,
                args.profile.as_deref().unwrap_or("test"),
                if args.release_version.is_some() {
                    format!(" --release-version {version}")
                } else {
                    String::new()
                }
            ))
            .into());
        }
        dir
    } else if given.is_dir() {
        given.to_path_buf()
    } else {
        return Err(BadInput(format!(
            "`{}` is not an OS (guest-os, host-os, setup-os), a release directory or a disk image file",
            args.image
        ))
        .into());
    };
    let release = Release::open(&dir).map_err(|e| BadInput(e.to_string()))?;
    let m = &release.manifest;
    if let Some(p) = &args.profile {
        if &m.profile != p {
            return Err(BadInput(format!(
                "{}: holds the {} profile of {}, not {p}\n  hint: plinth build {} --profile {p}",
                dir.display(),
                m.profile,
                m.os,
                m.os
            ))
            .into());
        }
    }
    out.detail(format!("unpacking the disk image of {}", dir.display()));
    let disk = release
        .extract_member(crate::pipeline::release::DISK_ARCHIVE, "disk.img", scratch)
        .with_context(|| format!("unpacking the disk image of {}", dir.display()))?;
    Ok((disk, format!("{} {} ({})", m.os, m.version, m.profile)))
}
