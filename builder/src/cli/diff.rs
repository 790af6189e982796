//! `plinth diff`: what changed between two releases of one OS, as a governance voter needs
//! it: packages added, removed and changed; the paths changed in each partition; measurement
//! and size changes. Reads only the two release directories.

use super::verify::open_release;
use super::{BadInput, Global, Output};
use crate::compare::{self, Comparison};
use crate::pipeline::manifest::{Manifest, SlotMeasurements};
use anyhow::Context;
use plinth_release::{CommitId, Os, Sha256, Slot};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Both releases must be of the same OS. The paths inside partitions are listed
in user space (ext4 with debugfs, FAT with mtools; nothing is mounted, no root
needed). Exit 0 whatever differs; 1 or 2 when a release cannot be read, 2
when an image in it is malformed (e.g. a directory loop).

Examples:
  plinth diff out/guest-os/1.0.0 out/guest-os/1.1.0
  plinth diff old/host-os/1.0.0 new/host-os/1.0.1 --limit 0
  plinth diff a/setup-os/2.0.0 b/setup-os/2.0.0 --json > diff.json";

/// Show what changed between two releases of one OS.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The older release (directory or manifest.json).
    #[arg(value_name = "RELEASE_A")]
    pub a: PathBuf,
    /// The newer release (directory or manifest.json).
    #[arg(value_name = "RELEASE_B")]
    pub b: PathBuf,
    /// Paths listed per changed partition or member (0: all).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub limit: usize,
}

/// A package on both sides.
#[derive(Debug, Serialize)]
struct PackageChange {
    name: String,
    before: Option<String>,
    after: Option<String>,
}

/// One measurement of one slot on both sides.
#[derive(Debug, Serialize)]
struct MeasurementChange {
    slot: Option<Slot>,
    what: &'static str,
    before: Option<Sha256>,
    after: Option<Sha256>,
}

#[derive(Serialize)]
struct Report<'a> {
    os: Os,
    before: Summary<'a>,
    after: Summary<'a>,
    packages: Vec<PackageChange>,
    measurements: Vec<MeasurementChange>,
    comparison: &'a Comparison,
}

#[derive(Serialize)]
struct Summary<'a> {
    version: &'a str,
    profile: &'a str,
    source_commit: CommitId,
    source_date_epoch: i64,
}

impl<'a> From<&'a Manifest> for Summary<'a> {
    fn from(m: &'a Manifest) -> Self {
        Summary {
            version: &m.version,
            profile: &m.profile,
            source_commit: m.inputs.source_commit,
            source_date_epoch: m.inputs.source_date_epoch,
        }
    }
}

pub fn run(_g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let a = open_release(&args.a)?;
    let b = open_release(&args.b)?;
    if a.manifest.os != b.manifest.os {
        return Err(BadInput(format!(
            "{} is a {} release and {} a {} release\n  hint: compare two releases of the same OS",
            a.dir.display(),
            a.manifest.os,
            b.dir.display(),
            b.manifest.os
        ))
        .into());
    }
    let packages = package_changes(&a.packages()?, &b.packages()?);
    let measurements = measurement_changes(&a.manifest, &b.manifest);
    // Private (0700): what is unpacked there is the releases' content, crafted or not.
    let scratch = crate::pipeline::artifacts::scratch_dir("plinth-diff-")
        .context("creating a scratch directory")?;
    let comparison = compare::compare(&a, &b, scratch.path()).map_err(super::compare_error)?;
    if out.json {
        return out.json_result(&Report {
            os: a.manifest.os,
            before: (&a.manifest).into(),
            after: (&b.manifest).into(),
            packages,
            measurements,
            comparison: &comparison,
        });
    }
    let (ma, mb) = (&a.manifest, &b.manifest);
    println!(
        "{}: {} ({}, commit {}) → {} ({}, commit {})",
        ma.os,
        ma.version,
        ma.profile,
        &ma.inputs.source_commit.to_hex()[..12],
        mb.version,
        mb.profile,
        &mb.inputs.source_commit.to_hex()[..12]
    );
    let count = |what: &str| packages.iter().filter(|p| kind(p) == what).count();
    println!(
        "\npackages: {} added, {} removed, {} changed",
        count("added"),
        count("removed"),
        count("changed")
    );
    for p in &packages {
        let v = |x: &Option<String>| x.clone().unwrap_or_default();
        match kind(p) {
            "added" => println!("  + {} {}", p.name, v(&p.after)),
            "removed" => println!("  - {} {}", p.name, v(&p.before)),
            _ => println!("  ~ {} {} → {}", p.name, v(&p.before), v(&p.after)),
        }
    }
    println!("\nmeasurements: {} changed", measurements.len());
    for m in &measurements {
        let v = |x: &Option<Sha256>| x.map_or_else(|| "absent".into(), |d| d.to_string());
        println!(
            "  slot {} {}: {} → {}",
            m.slot.map_or("-", Slot::as_str),
            m.what,
            v(&m.before),
            v(&m.after)
        );
    }
    println!("\nsizes:");
    for art in &comparison.artifacts {
        let size = |d: &Option<compare::Digest>| d.as_ref().map(|d| d.size);
        match (size(&art.before), size(&art.after)) {
            (Some(x), Some(y)) if x == y => println!("  {:<24} {x:>12} B (unchanged)", art.name),
            (Some(x), Some(y)) => println!(
                "  {:<24} {x:>12} B → {y:>12} B ({:+.1} %)",
                art.name,
                (y as f64 - x as f64) * 100.0 / x.max(1) as f64
            ),
            (x, y) => println!("  {:<24} {x:?} → {y:?}", art.name),
        }
    }
    let differing: Vec<_> = comparison.differing().collect();
    println!(
        "\nartifacts: {} of {} differ",
        differing.len(),
        comparison.artifacts.len()
    );
    for art in differing {
        for line in compare::render_artifact(art, ("a", "b"), args.limit) {
            println!("  {line}");
        }
    }
    Ok(())
}

fn kind(p: &PackageChange) -> &'static str {
    match (&p.before, &p.after) {
        (None, _) => "added",
        (_, None) => "removed",
        _ => "changed",
    }
}

fn package_changes(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Vec<PackageChange> {
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .map(|n| PackageChange {
            name: n.clone(),
            before: a.get(n).cloned(),
            after: b.get(n).cloned(),
        })
        .collect()
}

/// Reads one measurement of a slot.
type Field = fn(&SlotMeasurements) -> Option<Sha256>;

fn measurement_changes(a: &Manifest, b: &Manifest) -> Vec<MeasurementChange> {
    let by_slot = |m: &Manifest| -> BTreeMap<Option<Slot>, SlotMeasurements> {
        m.measurements
            .slots
            .iter()
            .map(|s| (s.slot, s.clone()))
            .collect()
    };
    let (sa, sb) = (by_slot(a), by_slot(b));
    let mut slots: Vec<&Option<Slot>> = sa.keys().chain(sb.keys()).collect();
    slots.sort();
    slots.dedup();
    let mut out = Vec::new();
    for slot in slots {
        let (x, y) = (sa.get(slot), sb.get(slot));
        let fields: [(&'static str, Field); 5] = [
            ("verity root hash", |s| Some(s.verity_root_hash)),
            ("UKI sha256", |s| Some(s.uki_sha256)),
            ("PCR 4", |s| s.pcr4),
            ("PCR 7", |s| s.pcr7),
            ("PCR 11", |s| Some(s.pcr11)),
        ];
        for (what, get) in fields {
            let (before, after) = (x.and_then(get), y.and_then(get));
            if before != after {
                out.push(MeasurementChange {
                    slot: *slot,
                    what,
                    before,
                    after,
                });
            }
        }
    }
    out
}
