//! `plinth-state`: opens (or on the first boot creates) the node's sealed persistent state
//! and mounts it on the new root's /var, from the initrd (`plinth-state.service`). Whatever
//! fails, the boot goes on: /var becomes a tmpfs, nothing on the partition is changed, and the
//! reason goes to `/run/plinth/state.json`, which the boot report names.

use clap::{Parser, Subcommand};
use plinth_state::console::say;
use plinth_state::key::KeySource;
use plinth_state::report::{Report, REPORT_PATH};
use plinth_state::volume::{Volume, SYSTEMD_CRYPTSETUP};
use plinth_state::{config, disk};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The node's sealed persistent state (/var on LUKS2 on the boot disk's `data` partition).
#[derive(Debug, Parser)]
#[command(
    name = "plinth-state",
    version,
    after_help = "Examples:\n  plinth-state open --root /sysroot      (what the initrd runs)\n  plinth-state status --json"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Open the state volume, creating it if the partition never held anything, and mount it
    /// on ROOT/var; on any failure mount a tmpfs there instead and record why. Exits 0 unless
    /// not even the tmpfs could be mounted.
    Open(OpenArgs),
    /// Show what the last `open` recorded.
    Status {
        /// The report to read.
        #[arg(long, default_value = REPORT_PATH)]
        report: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct OpenArgs {
    /// The new root (the verity root, mounted): its key source configuration is read, and its
    /// disk holds the state partition.
    #[arg(long, default_value = "/sysroot")]
    root: PathBuf,
    /// The GPT name of the state partition.
    #[arg(long, default_value = "data")]
    partition: String,
    /// The device-mapper name of the opened volume.
    #[arg(long, default_value = "plinth-state")]
    mapper: String,
    /// sysfs, read to find the partition.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Where the report is written.
    #[arg(long, default_value = REPORT_PATH)]
    report: PathBuf,
}

fn main() -> ExitCode {
    match Cli::parse().verb {
        Verb::Open(args) => open(&args),
        Verb::Status { report, json } => status(&report, json),
    }
}

fn status(path: &Path, json: bool) -> ExitCode {
    match Report::read(path) {
        Ok(Some(r)) if json => {
            println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            ExitCode::from(if r.ok { 0 } else { 1 })
        }
        Ok(Some(r)) => {
            match r.problem() {
                None => println!(
                    "state: {} open{} ({} key)",
                    r.device.as_deref().unwrap_or("?"),
                    if r.created { ", created this boot" } else { "" },
                    r.key_source.as_deref().unwrap_or("?")
                ),
                Some(p) => println!("{p}"),
            }
            for (step, ms) in &r.steps {
                println!("  {step:<8} {ms} ms");
            }
            ExitCode::from(if r.ok { 0 } else { 1 })
        }
        Ok(None) => {
            eprintln!(
                "error: {}: no state report (plinth-state open has not run on this boot)",
                path.display()
            );
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn open(args: &OpenArgs) -> ExitCode {
    let target = args.root.join("var");
    let mut report = Report {
        ok: false,
        device: None,
        key_source: None,
        created: false,
        boots: 0,
        machine_id: None,
        reason: None,
        steps: Vec::new(),
        volume: None,
    };
    let result = (|| -> Result<Option<plinth_state::volume::Outcome>, String> {
        let Some(source) = KeySource::load(&args.root).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let source = source.for_this_boot();
        report.key_source = Some(source.name().into());
        let st = nix::sys::stat::stat(&args.root)
            .map_err(|e| format!("{}: {e}", args.root.display()))?;
        let dev = (
            nix::sys::stat::major(st.st_dev),
            nix::sys::stat::minor(st.st_dev),
        );
        let part = disk::sibling_partition(&args.sysfs, Path::new("/dev"), dev, &args.partition)
            .map_err(|e| e.to_string())?;
        report.device = Some(part.node.display().to_string());
        // The node's request to wipe the state, if its configuration has one. A request
        // that cannot be read wipes nothing, and says why.
        let wipe =
            match disk::sibling_partition(&args.sysfs, Path::new("/dev"), dev, config::PARTITION) {
                Ok(c) => config::read_wipe_request(&c.node).unwrap_or_else(|e| {
                    say(&[format!(
                        "PLINTH STATE note: the wipe request is ignored: {e}"
                    )]);
                    None
                }),
                Err(_) => None,
            };
        let volume = Volume {
            device: part.node,
            size: part.size,
            mapper: args.mapper.clone(),
            target: target.clone(),
            source,
            wipe,
        };
        report.volume = volume.uuid().ok().flatten();
        let outcome = volume.open_or_create().map_err(|e| e.to_string())?;
        report.volume = outcome.uuid.clone();
        Ok(Some(outcome))
    })();
    match result {
        Ok(None) => {
            say(&["PLINTH STATE none: this image keeps no persistent state".into()]);
            ExitCode::SUCCESS
        }
        Ok(Some(outcome)) => {
            report.ok = true;
            report.created = outcome.created;
            report.boots = outcome.boots;
            report.machine_id = Some(outcome.machine_id);
            report.steps = outcome
                .steps
                .into_iter()
                .map(|(s, ms)| (s.to_string(), ms))
                .collect();
            finish(&report, &args.report)
        }
        Err(e) => {
            let first = e.lines().next().unwrap_or_default().to_string();
            say(&[format!("PLINTH STATE failed: {first}")]);
            eprintln!("{e}");
            report.reason = Some(first);
            // Undo a partial open, then give the system a /var it can boot with.
            let _ = Command::new("umount").arg(&target).status();
            let _ = Command::new(SYSTEMD_CRYPTSETUP)
                .args(["detach", &args.mapper])
                .status();
            let tmpfs = Command::new("mount")
                // Bounded: the persistent journal and whatever else writes /var would
                // otherwise take the machine's memory (a host can force this path).
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    "mode=0755,nodev,nosuid,size=10%",
                    "tmpfs",
                ])
                .arg(&target)
                .status();
            let code = finish(&report, &args.report);
            match tmpfs {
                Ok(s) if s.success() => code,
                _ => {
                    eprintln!(
                        "error: {}: not even a tmpfs could be mounted",
                        target.display()
                    );
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn finish(report: &Report, path: &Path) -> ExitCode {
    if report.ok {
        say(&[format!(
            "PLINTH STATE ok {}{}",
            report.device.as_deref().unwrap_or("?"),
            if report.created { " created" } else { "" }
        )]);
    }
    match report.write(path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            ExitCode::from(1)
        }
    }
}
