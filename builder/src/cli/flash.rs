//! `plinth flash`: write a release's disk image (a SetupOS release for a node's USB stick,
//! or any release's disk) to a disk or a file, read every partition back, and optionally put
//! the provider's `config.yaml` into its `config` partition. The work is [`plinth_flash`]'s;
//! this module checks, asks, and reports.

use super::{BadInput, CheckFailed, Global, Interrupted, Output};
use plinth_flash::device::{self, Roots, Target};
use plinth_flash::image::Image;
use plinth_flash::verify::{self, Verified};
use plinth_flash::write::{self, WriteOptions, Written};
use plinth_flash::{config, Disk, FlashError};
use serde::Serialize;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

const AFTER_HELP: &str = "\
IMAGE is a release directory (manifest.json and disk-img.tar.zst) or its
disk-img.tar.zst. DEVICE is a whole disk (a USB stick: /dev/sdX; links such as
/dev/disk/by-id/... are followed) or a regular file (created sparse if new).
A disk that is mounted, used as swap, held by dm/LVM/md, or holds the running
system is refused, and so is one too small. Before writing, its model, serial
and size are shown and `yes` is asked for on the terminal (--yes skips it).

The first MiB (the GPT) is zeroed first and written last: an interrupted flash
leaves a disk without a partition table, never a half-written one that looks
whole. Every partition is then read back from the disk and compared with the
manifest; --config FILE then writes the provider's config.yaml and the node
operator key it names (from beside it) into the `config` partition with
mtools (nothing is mounted) and reads them back. The config is checked first,
as `plinth config check` and SetupOS check it; nothing is written if it fails.

Exit codes: 0 written and verified; 1 a check failed (read-back mismatch, I/O
error); 2 bad input or refusal (nothing written); 130 interrupted (the disk is
NOT usable).

Examples:
  plinth flash out/setup-os/0.1.0 /dev/sdb
  plinth flash out/setup-os/0.1.0 /dev/disk/by-id/usb-SanDisk_Ultra_4C53-0:0 \\
      --config config.yaml
  plinth flash out/setup-os/0.1.0/disk-img.tar.zst stick.img --yes
  plinth flash out/setup-os/0.1.0 /dev/sdb --verify-only
  plinth --json flash out/setup-os/0.1.0 /dev/sdb --yes > flash.json";

/// Write a release's disk image to a USB stick, disk or file, and verify it.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The release directory, or its disk-img.tar.zst.
    #[arg(value_name = "IMAGE")]
    pub image: PathBuf,
    /// The whole disk (/dev/sdb) or a regular file to write.
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// The provider's config.yaml (checked as SetupOS checks it), written with the node
    /// operator key it names into the `config` partition after verification.
    #[arg(long, value_name = "FILE", conflicts_with = "verify_only")]
    pub config: Option<PathBuf>,
    /// Write without asking for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Only compare DEVICE with the release; write nothing (exit 1 on a
    /// mismatch).
    #[arg(long)]
    pub verify_only: bool,
}

/// One partition's read-back, for `--json`.
#[derive(Serialize)]
struct PartitionResult {
    number: u32,
    name: String,
    role: plinth_release::Role,
    result: &'static str,
    expected: plinth_release::Sha256,
    actual: plinth_release::Sha256,
}

/// The JSON result.
#[derive(Serialize)]
struct Report {
    device: PathBuf,
    kind: &'static str,
    vendor: Option<String>,
    model: Option<String>,
    serial: Option<String>,
    size: u64,
    release: PathBuf,
    image_bytes: u64,
    bytes_written: u64,
    write_seconds: f64,
    write_mb_per_s: f64,
    direct_io: bool,
    verify_seconds: f64,
    verify_mb_per_s: f64,
    gpt: &'static str,
    partitions: Vec<PartitionResult>,
    config_written: bool,
    ok: bool,
}

/// Progress on stderr: a bar on a terminal, a line every few seconds or tenth otherwise,
/// nothing with `-q`.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    verb: &'static str,
    total: u64,
    start: Instant,
    last: std::cell::Cell<(Instant, u64)>,
}

impl Progress {
    fn new(out: &Output, verb: &'static str, total: u64) -> Progress {
        let bar = out.progress_bars().then(|| {
            indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            )
        });
        if let Some(b) = &bar {
            b.set_message(verb);
        }
        let now = Instant::now();
        Progress {
            bar,
            lines: !out.quiet && !out.progress_bars(),
            verb,
            total,
            start: now,
            last: std::cell::Cell::new((now, 0)),
        }
    }

    fn set(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
        if !self.lines {
            return;
        }
        let (at, shown) = self.last.get();
        let now = Instant::now();
        let tenth = self.total / 10;
        if done < self.total
            && now.duration_since(at) < Duration::from_secs(2)
            && done < shown + tenth.max(1)
        {
            return;
        }
        self.last.set((now, done));
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        eprintln!(
            "flash: {} {:.1} of {:.1} MiB ({}%), {:.0} MB/s",
            self.verb,
            done as f64 / (1 << 20) as f64,
            self.total as f64 / (1 << 20) as f64,
            done * 100 / self.total.max(1),
            done as f64 / secs / 1e6
        );
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A [`FlashError`] as the CLI reports it: bad input (exit 2), interrupted (130) or failed.
fn flash_error(e: FlashError, device: &std::path::Path, written: bool) -> anyhow::Error {
    let state = if written {
        format!(
            "\n  {} is NOT usable: its first MiB (the GPT) was zeroed; flash it again",
            device.display()
        )
    } else {
        format!("\n  nothing was written to {}", device.display())
    };
    match e {
        FlashError::Interrupted => Interrupted(format!("interrupted{state}")).into(),
        e if e.is_bad_input() => BadInput(format!("{e}{state}")).into(),
        e => CheckFailed(format!("{e}{state}")).into(),
    }
}

/// Ask for `yes` on the terminal.
fn confirm(target: &Target, image: &Image) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(BadInput(format!(
            "{}: no terminal to confirm on, and --yes not given; nothing was written\n  hint: check the device (`lsblk -o NAME,MODEL,SERIAL,SIZE`) and pass --yes",
            target.path.display()
        ))
        .into());
    }
    eprint!(
        "Target: {}\nEverything on {} will be lost: it gets {} ({} {} {}, {}).\nType yes to write: ",
        target.describe(),
        target.path.display(),
        image.archive.display(),
        image.manifest.os,
        image.manifest.version,
        image.manifest.profile,
        device::human(image.size)
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        return Err(BadInput(format!(
            "{}: not confirmed (the answer was not `yes`); nothing was written",
            target.path.display()
        ))
        .into());
    }
    Ok(())
}

pub fn run(_g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let roots = Roots::system();
    let dev = args.device.clone();
    let refused = |e: FlashError| flash_error(e, &dev, false);
    // Until the write starts, Ctrl-C ends plinth as usual (nothing is written before it).
    static NOT_YET: AtomicBool = AtomicBool::new(false);
    let target = device::inspect(&args.device, &roots).map_err(|e| refused(e.into()))?;
    if !args.verify_only {
        device::check_unused(&target, &roots).map_err(|e| refused(e.into()))?;
    }
    let config_bytes = match &args.config {
        Some(path) => Some(config::check_config(path).map_err(|e| {
            BadInput(format!(
                "{e}\n  hint: --config takes the provider's config.yaml, a regular file of at most {} bytes of UTF-8",
                config::MAX_CONFIG
            ))
        })?),
        None => None,
    };
    out.info(format!(
        "flash: checking {} against its manifest",
        args.image.display()
    ));
    let image = Image::open(&args.image).map_err(refused)?;
    // The provider's config, checked as SetupOS will check it (a `test` SetupOS also takes
    // the test generations), and the node operator key it names, from beside it.
    let config_files = match (&args.config, &config_bytes) {
        (Some(path), Some(bytes)) => {
            let test = image.manifest.profile.as_str() == "test";
            let names = plinth_firmware::certification::Certification::builtin().names(test);
            let files = plinth_node_config::ProviderFiles::read(path, &names).map_err(|e| {
                BadInput(format!(
                    "{e}\n  hint: `plinth config check {}` shows the same; nothing was written",
                    path.display()
                ))
            })?;
            // What was checked is what is written: read once (a config changed since the
            // first check above is refused, not written).
            if files.config_bytes != *bytes {
                return Err(BadInput(format!(
                    "{}: changed while plinth read it; nothing was written",
                    path.display()
                ))
                .into());
            }
            vec![
                (config::CONFIG_NAME.to_string(), files.config_bytes),
                (files.config.node_operator_key.clone(), files.key_bytes),
            ]
        }
        _ => Vec::new(),
    };
    let config_part = match (&args.config, image.config_partition()) {
        (Some(_), None) => {
            return Err(BadInput(format!(
                "{}: the release's disk has no partition of role `config`; --config cannot be written\n  hint: --config is for SetupOS releases; nothing was written",
                image.dir.display()
            ))
            .into())
        }
        (_, p) => p.cloned(),
    };
    out.info(format!(
        "flash: {} {} ({}): disk image of {}",
        image.manifest.os,
        image.manifest.version,
        image.manifest.profile,
        device::human(image.size)
    ));
    out.info(format!("flash: target {}", target.describe()));

    if args.verify_only {
        let disk = Disk::open_read(&target).map_err(refused)?;
        if target.is_block() && target.size < image.disk_end || disk.capacity < image.disk_end {
            return Err(CheckFailed(format!(
                "{}: holds {} bytes; the release's partitions end at byte {}: it does not hold this release",
                target.path.display(),
                disk.capacity,
                image.disk_end
            ))
            .into());
        }
        let verified =
            read_back(out, &disk, &image, &NOT_YET).map_err(|e| flash_error(e, &dev, false))?;
        report(out, &target, &image, None, &verified, false)?;
        return match verified.first_mismatch() {
            None => Ok(()),
            Some(what) => {
                let only_config = verified.gpt_ok
                    && verified
                        .partitions
                        .iter()
                        .all(|p| p.ok || p.role == plinth_release::Role::Config);
                let hint = if only_config {
                    "\n  hint: only the config partition differs, as it does once `--config` wrote a config.yaml into it"
                } else {
                    ""
                };
                Err(CheckFailed(format!(
                    "{}: {what} differs from the release {}{hint}",
                    target.path.display(),
                    image.dir.display()
                ))
                .into())
            }
        };
    }

    device::check_size(&target, image.size).map_err(|e| refused(e.into()))?;
    if target.is_block() && !args.yes {
        confirm(&target, &image)?;
    }
    // From here on Ctrl-C and SIGTERM set a flag: the write stops and zeroes the GPT.
    let cancel = crate::vm::catch_interrupts();
    let mut disk = Disk::open_write(&target).map_err(refused)?;
    if let Some(why) = &disk.buffered_because {
        out.info(format!(
            "flash: note: writing {} through the page cache: {why}",
            target.path.display()
        ));
    }
    let progress = Progress::new(out, "writing", image.size);
    let set = |done: u64| progress.set(done);
    let written = write::write(
        &image,
        &mut disk,
        &WriteOptions {
            cancel,
            progress: &set,
            defer_first_mib: false,
        },
    );
    progress.finish();
    let written = written.map_err(|e| flash_error(e, &dev, true))?;
    out.info(format!(
        "flash: wrote {} in {:.1} s ({:.0} MB/s)",
        device::human(written.bytes),
        written.seconds,
        written.bytes as f64 / written.seconds.max(1e-6) / 1e6
    ));
    let verified = read_back(out, &disk, &image, cancel).map_err(|e| match e {
        FlashError::Interrupted => Interrupted(format!(
            "interrupted while verifying: {} was written but not verified; run `plinth flash {} {} --verify-only`",
            dev.display(),
            args.image.display(),
            dev.display()
        ))
        .into(),
        e => flash_error(e, &dev, false),
    })?;
    if let Some(what) = verified.first_mismatch() {
        report(out, &target, &image, Some(&written), &verified, false)?;
        return Err(CheckFailed(format!(
            "{}: {what} read back differs from the release: the disk or its connection is faulty\n  hint: flash it again, or try another stick or port",
            target.path.display()
        ))
        .into());
    }
    let block = disk.block;
    drop(disk);
    let mut config_written = false;
    if let (false, Some(part)) = (config_files.is_empty(), &config_part) {
        let files: Vec<(&str, &[u8])> = config_files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        config::write_files(&target.path, part, &files)
            .and_then(|()| config::fsck_config(&target.path, block, part))
            .map_err(|e| {
                CheckFailed(format!(
                    "{e}\n  the image was written and verified; the config partition may be damaged: flash again"
                ))
            })?;
        config_written = true;
        out.info(format!(
            "flash: wrote {} into partition {} `{}` and read them back",
            config_files
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            part.number,
            part.name
        ));
    }
    report(
        out,
        &target,
        &image,
        Some(&written),
        &verified,
        config_written,
    )
}

fn read_back(
    out: &Output,
    disk: &Disk,
    image: &Image,
    cancel: &AtomicBool,
) -> Result<Verified, FlashError> {
    let total = image
        .manifest
        .partitions
        .iter()
        .fold(0u64, |t, p| t.saturating_add(p.size));
    let progress = Progress::new(out, "verifying", total);
    let mut done = 0u64;
    let result = verify::verify(disk, image, cancel, &mut |n| {
        done += n;
        progress.set(done);
    });
    progress.finish();
    result
}

fn report(
    out: &Output,
    target: &Target,
    image: &Image,
    written: Option<&Written>,
    verified: &Verified,
    config_written: bool,
) -> anyhow::Result<()> {
    let rate = |bytes: u64, secs: f64| bytes as f64 / secs.max(1e-6) / 1e6;
    if out.json {
        let r = Report {
            device: target.path.clone(),
            kind: if target.is_block() { "block" } else { "file" },
            vendor: target.vendor.clone(),
            model: target.model.clone(),
            serial: target.serial.clone(),
            size: target.size.max(image.size),
            release: image.dir.clone(),
            image_bytes: image.size,
            bytes_written: written.map_or(0, |w| w.written),
            write_seconds: written.map_or(0.0, |w| w.seconds),
            write_mb_per_s: written.map_or(0.0, |w| rate(w.bytes, w.seconds)),
            direct_io: written.is_some_and(|w| w.direct),
            verify_seconds: verified.seconds,
            verify_mb_per_s: rate(verified.bytes, verified.seconds),
            gpt: if verified.gpt_ok { "ok" } else { "mismatch" },
            partitions: verified
                .partitions
                .iter()
                .map(|p| PartitionResult {
                    number: p.number,
                    name: p.name.clone(),
                    role: p.role,
                    result: if p.ok { "ok" } else { "mismatch" },
                    expected: p.expected,
                    actual: p.actual,
                })
                .collect(),
            config_written,
            ok: verified.ok(),
        };
        return out.json_result(&r);
    }
    let mut text = String::new();
    if let Some(w) = written {
        text.push_str(&format!(
            "wrote {} to {} in {:.1} s ({:.0} MB/s)\n",
            device::human(w.bytes),
            target.path.display(),
            w.seconds,
            rate(w.bytes, w.seconds)
        ));
    }
    text.push_str(&format!(
        "verified {} in {:.1} s ({:.0} MB/s): GPT region {}\n",
        device::human(verified.bytes),
        verified.seconds,
        rate(verified.bytes, verified.seconds),
        if verified.gpt_ok { "ok" } else { "MISMATCH" }
    ));
    for p in &verified.partitions {
        text.push_str(&format!(
            "  {:>2} {:<12} {:<7} {}\n",
            p.number,
            p.name,
            p.role.to_string(),
            if p.ok { "ok" } else { "MISMATCH" }
        ));
    }
    if config_written {
        text.push_str(&format!("{} written and read back\n", config::CONFIG_NAME));
    }
    print!("{text}");
    Ok(())
}
