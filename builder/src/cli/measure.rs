//! `plinth measure`: the TPM PCR values a boot of an image will produce, from the image's own
//! boot files (see [`crate::pipeline::measure`]): a release (its ESP from the disk archive,
//! every slot's UKI from the update archive) or a raw disk image (its ESP). Prints them, writes
//! `measurements.json` with `-o`, and checks a release's published file against the image.
//!
//! A release's archives are streamed, never unpacked, each member's header checked against
//! the manifest's bounds first ([`crate::compare::release::Release::bounds`]): only the ESP's
//! span of the disk image is written (after a free-space check), and each UKI, which must
//! fit on the ESP, is read into memory within [`MAX_IN_MEMORY`]. Scratch space is private
//! (0700).

use super::image::{Image, ImageArgs};
use super::{BadInput, CheckFailed, Global, Output};
use crate::pipeline::{esp, measure, ovmf, release, snp};
use anyhow::Context;
use plinth_firmware::measurements::Measurements;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const AFTER_HELP: &str = "\
IMAGE is an OS name (its release in <OUT>/<os>/<version>), a release
directory, or a raw disk image. The prediction holds for the platform plinth
run --tpm gives (OVMF, Secure Boot off, swtpm): PCR 4, 7, 9, 11 (once the
system is up) and 12; measurements.json names the other PCRs and why. For a
release, the published measurements.json is checked against the image (exit 1
if they differ). The booted agent checks the real PCRs against it:
plinth-host measured-boot, or the boot report under plinth run --tpm.
A GuestOS release also gets the SEV-SNP launch digest of each slot, vCPU count
and vCPU type its measurements.json lists, recomputed from its own
OVMF-AmdSev.fd and UKIs (equal to sev-snp-measure --mode snp).

Examples:
  plinth measure host-os
  plinth measure out/guest-os/0.1.0 -o measurements.json
  plinth measure disk.img --json";

/// Predict the PCRs a boot of an image produces (measurements.json).
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub image: ImageArgs,
    /// Write measurements.json here.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    let scratch = crate::pipeline::artifacts::scratch_dir("plinth-measure-")
        .context("creating a temporary directory")?;
    let esp_image = scratch.path().join("esp.img");
    let (measured, published) = match args.image.resolve(g)? {
        Image::Disk(disk) => (from_disk(&disk, &esp_image)?, None),
        Image::Release(r) => {
            let published = r.dir.join(release::MEASUREMENTS);
            let published = published.is_file().then_some(published);
            let (mut measured, ukis) = from_release(&r, &esp_image)?;
            let firmware = r.dir.join(ovmf::FIRMWARE_FILE);
            if let (Some(path), true) = (&published, firmware.is_file()) {
                measured.snp = launch_digests(path, &firmware, &ukis, scratch.path())?;
            }
            (measured, published)
        }
    };
    let mut text = serde_json::to_string_pretty(&measured)?;
    text.push('\n');
    if let Some(path) = &args.output {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        out.info(format!("wrote {}", path.display()));
    }
    if out.json {
        print!("{text}");
    } else {
        let mut stdout = std::io::stdout().lock();
        for s in &measured.slots {
            writeln!(
                stdout,
                "{} {} slot {}:",
                measured.os,
                measured.version,
                s.slot.as_deref().unwrap_or("none")
            )?;
            for (n, v) in &s.pcrs {
                writeln!(stdout, "  PCR {n:2}  {v}")?;
            }
        }
        if let Some(snp) = &measured.snp {
            writeln!(
                stdout,
                "SEV-SNP launch digests with {} (sha256 {}):",
                snp.firmware.file, snp.firmware.sha256
            )?;
            for d in &snp.launch_digests {
                writeln!(
                    stdout,
                    "  slot {} {:>3} x {:<14} {}",
                    d.slot.as_deref().unwrap_or("none"),
                    d.vcpus,
                    d.vcpu_type,
                    d.measurement
                )?;
            }
        }
        let left: Vec<String> = measured
            .not_predicted
            .iter()
            .map(|n| n.pcr.to_string())
            .collect();
        writeln!(
            stdout,
            "not predicted: PCR {} (measurements.json says why)",
            left.join(", ")
        )?;
    }
    out.info(format!(
        "measured in {:.2} s",
        start.elapsed().as_secs_f64()
    ));
    if let Some(published) = published {
        let text = std::fs::read_to_string(&published)
            .with_context(|| format!("reading {}", published.display()))?;
        let theirs =
            Measurements::parse(&text, &published.display().to_string()).map_err(BadInput)?;
        if theirs != measured {
            return Err(CheckFailed(format!(
                "{}: {}, not what the release's own boot files give (printed above)\n  hint: the release was altered, or built by a plinth that predicts otherwise",
                published.display(),
                first_difference(&theirs, &measured)
            ))
            .into());
        }
        out.info(format!("{} matches the image", published.display()));
    }
    Ok(())
}

/// A slot (`None` without slots) and its UKI's bytes.
type SlotUki = (Option<String>, Vec<u8>);

/// The SEV-SNP launch digests of the release's own firmware and UKIs, for the launches its
/// published file lists (`None` when it lists none).
fn launch_digests(
    published: &Path,
    firmware: &Path,
    ukis: &[SlotUki],
    scratch: &Path,
) -> anyhow::Result<Option<plinth_firmware::snp::SnpExpected>> {
    let text = std::fs::read_to_string(published)
        .with_context(|| format!("reading {}", published.display()))?;
    let theirs = Measurements::parse(&text, &published.display().to_string()).map_err(BadInput)?;
    let Some(expected) = theirs.snp else {
        return Ok(None);
    };
    let slots: Vec<snp::SlotUki> = ukis
        .iter()
        .map(|(slot, uki)| snp::SlotUki {
            slot: slot.clone(),
            uki,
        })
        .collect();
    let sha256 = crate::packages::cache::sha256_file(firmware)
        .with_context(|| format!("reading {}", firmware.display()))?
        .0;
    let snp_dir = scratch.join("snp");
    crate::pipeline::artifacts::private_dir(&snp_dir)
        .with_context(|| format!("creating {}", snp_dir.display()))?;
    let computed = snp::expected(
        &snp::FirmwareFile {
            path: firmware,
            name: ovmf::FIRMWARE_FILE,
            sha256: &sha256,
            edk2: &expected.firmware.edk2,
        },
        &snp::Launches::of(&expected),
        &slots,
        &snp_dir,
    )
    .map_err(|e| BadInput(e.to_string()))?;
    Ok(Some(computed))
}

/// The first thing `published` says differently from `measured`, in words.
fn first_difference(published: &Measurements, measured: &Measurements) -> String {
    for m in &measured.slots {
        let name = m.slot.as_deref().unwrap_or("none");
        let Some(p) = published.slot(m.slot.as_deref()) else {
            return format!("has no slot {name}");
        };
        for (n, value) in &m.pcrs {
            match p.pcrs.get(n) {
                Some(v) if v == value => {}
                Some(v) => {
                    return format!("says PCR {n} of slot {name} is {v} (the image gives {value})")
                }
                None => return format!("does not predict PCR {n} of slot {name}"),
            }
        }
        if p != m {
            return format!("lists other events for slot {name}");
        }
    }
    if let (Some(p), Some(m)) = (&published.snp, &measured.snp) {
        if p.firmware != m.firmware {
            return format!(
                "names firmware {} sha256 {} (the release's is sha256 {})",
                p.firmware.file, p.firmware.sha256, m.firmware.sha256
            );
        }
        for (p, m) in p.launch_digests.iter().zip(&m.launch_digests) {
            if p != m {
                return format!(
                    "says the SEV-SNP launch digest of slot {} on {} x {} is {} (the image gives {})",
                    m.slot.as_deref().unwrap_or("none"),
                    m.vcpus,
                    m.vcpu_type,
                    p.measurement,
                    m.measurement
                );
            }
        }
    }
    "differs in its other fields (slots, platform, SEV-SNP or the PCRs not predicted)".into()
}

/// The most of a UKI, or of a raw disk's ESP, `plinth measure` reads into memory (the PE
/// reader and the PCR prediction take bytes). plinth's ESPs are 128 and 256 MiB: a UKI must
/// fit on one.
const MAX_IN_MEMORY: u64 = 1 << 30;

/// Refuse to write `len` bytes of `what` into `dir` if its file system has less free.
fn check_free(dir: &Path, len: u64, what: &str) -> anyhow::Result<()> {
    let free = crate::pipeline::artifacts::free_bytes(dir)
        .with_context(|| format!("finding the free space of {}", dir.display()))?;
    if len > free {
        anyhow::bail!(
            "{what} needs {len} bytes, but {} has only {free} bytes free\n  hint: free space there, or point TMPDIR at a larger file system",
            dir.display()
        );
    }
    Ok(())
}

/// An archive error as the CLI reports it: a crafted or corrupt archive is bad input.
fn archive_error(e: crate::pipeline::artifacts::ArtifactError) -> anyhow::Error {
    if e.is_crafted() {
        BadInput(e.to_string()).into()
    } else {
        e.into()
    }
}

/// The prediction for a raw disk image: the boot loader and every UKI on its ESP.
fn from_disk(disk: &Path, esp_image: &Path) -> anyhow::Result<Measurements> {
    let bad = |why: String| BadInput(format!("{}: {why}", disk.display()));
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .open(disk)
        .map_err(|e| bad(format!("no GPT partition table: {e}")))?;
    let esp_type = crate::pipeline::disk::TYPE_ESP.to_ascii_lowercase();
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let esp = gpt
        .partitions()
        .values()
        .find(|p| p.part_type_guid.guid.to_string() == esp_type)
        .ok_or_else(|| bad("has no EFI system partition".into()))?;
    let (offset, len) = (esp.bytes_start(lb)?, esp.bytes_len(lb)?);
    let disk_len = std::fs::metadata(disk)
        .with_context(|| format!("reading {}", disk.display()))?
        .len();
    if offset.checked_add(len).is_none_or(|end| end > disk_len) {
        return Err(bad(format!(
            "its ESP (bytes {offset} to {}) ends past the image's {disk_len} bytes",
            offset.saturating_add(len)
        ))
        .into());
    }
    if len > MAX_IN_MEMORY {
        return Err(bad(format!(
            "its ESP is {len} bytes; plinth measure reads its boot files into memory and takes at most {MAX_IN_MEMORY}"
        ))
        .into());
    }
    let scratch = esp_image.parent().unwrap_or(Path::new("."));
    check_free(scratch, len, &format!("the ESP of {}", disk.display()))?;
    // Holes stay holes: an ESP is mostly empty.
    crate::pipeline::blocks::copy_span_sparse(disk, offset, len, esp_image)
        .with_context(|| format!("copying the ESP of {}", disk.display()))?;
    let read = |path: &str| {
        esp::read_fat_file(esp_image, path)
            .map_err(|e| bad(format!("its ESP (at byte {offset}): {path}: {e}")))
    };
    let loader = read(measure::LOADER_PATH)?;
    let mut ukis = Vec::new();
    if measure::is_uki(&loader) {
        ukis.push((measure::LOADER_PATH.to_string(), loader.clone()));
    }
    for entry in esp::list_fat(esp_image)? {
        if !entry.is_dir && entry.path.starts_with("EFI/Linux/") && entry.path.ends_with(".efi") {
            ukis.push((
                entry.path.clone(),
                esp::read_fat_file(esp_image, &entry.path)?,
            ));
        }
    }
    if ukis.is_empty() {
        return Err(bad(format!(
            "its ESP has no UKI (in EFI/Linux/ or as {})",
            measure::LOADER_PATH
        ))
        .into());
    }
    // Which OS, version and slot each UKI is, from its own .osrel and .cmdline.
    let (mut os, mut version) = (String::new(), String::new());
    let mut slots = Vec::new();
    for (path, bytes) in &ukis {
        let osrel = crate::pipeline::uki::section(bytes, ".osrel")
            .map_err(|e| bad(format!("{path}: {e}")))?;
        let cmdline = crate::pipeline::uki::section(bytes, ".cmdline")
            .map_err(|e| bad(format!("{path}: {e}")))?;
        let osrel = String::from_utf8_lossy(&osrel);
        let field = |k: &str| {
            osrel
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        os = field("IMAGE_ID");
        version = field("IMAGE_VERSION");
        // The last one counts, as for the kernel and the agent.
        let slot = String::from_utf8_lossy(&cmdline)
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("plinth.slot="))
            .next_back()
            .map(str::to_string);
        slots.push(measure::SlotFiles {
            slot,
            uki_path: path.clone(),
            uki: bytes,
        });
    }
    slots.sort_by(|a, b| a.slot.cmp(&b.slot));
    measure::predict(&os, &version, &loader, &slots).map_err(|e| bad(e.to_string()).into())
}

/// The prediction for a release: the boot loader from the disk archive's ESP (only that much
/// of the disk is decompressed), every slot's UKI from the update archive.
fn from_release(
    r: &crate::compare::release::Release,
    esp_image: &Path,
) -> anyhow::Result<(Measurements, Vec<SlotUki>)> {
    let m = &r.manifest;
    let esp = m
        .partitions
        .iter()
        .find(|p| p.role == "esp")
        .ok_or_else(|| {
            BadInput(format!(
                "{}: the release's disk has no ESP",
                r.dir.display()
            ))
        })?;
    let disk_archive = r.dir.join(release::DISK_ARCHIVE);
    let scratch = esp_image.parent().unwrap_or(Path::new("."));
    check_free(
        scratch,
        esp.size,
        &format!("the ESP of {}", r.dir.display()),
    )?;
    let mut dst = std::fs::File::create(esp_image)?;
    let mut found = false;
    let bounds = r.bounds(release::DISK_ARCHIVE);
    crate::pipeline::artifacts::for_each_member(&disk_archive, &bounds, |name, _, data| {
        if name != "disk.img" {
            return Ok(true);
        }
        found = true;
        std::io::copy(&mut data.take(esp.offset), &mut std::io::sink())?;
        std::io::copy(&mut data.take(esp.size), &mut dst)?;
        Ok(false)
    })
    .map_err(archive_error)?;
    let bad = |why: String| BadInput(format!("{}: {why}", r.dir.display()));
    if !found {
        return Err(bad(format!("{} has no disk.img", release::DISK_ARCHIVE)).into());
    }
    let loader = esp::read_fat_file(esp_image, measure::LOADER_PATH).map_err(|e| {
        bad(format!(
            "the ESP of {}'s disk.img: {}: {e}",
            release::DISK_ARCHIVE,
            measure::LOADER_PATH
        ))
    })?;
    // Each UKI is read into memory: it must fit on the ESP (no slack), and in MAX_IN_MEMORY.
    // The bound is checked on its header, before any of it is read.
    let uki_bound = crate::pipeline::artifacts::Bound::new(
        esp.size.min(MAX_IN_MEMORY),
        format!(
            "the ESP `{}`'s {} bytes from manifest.json (a UKI must fit on it), and at most {MAX_IN_MEMORY} (plinth measure reads a UKI into memory)",
            esp.name, esp.size
        ),
    );
    let mut bounds = r.bounds(release::UPDATE_ARCHIVE);
    for s in &m.measurements.slots {
        bounds = bounds.member(r.uki_member(s.slot.as_deref()), uki_bound.clone());
    }
    let mut ukis: Vec<(Option<String>, String, Vec<u8>)> = Vec::new();
    crate::pipeline::artifacts::for_each_member(
        &r.dir.join(release::UPDATE_ARCHIVE),
        &bounds,
        |name, size, data| {
            if let Some(s) = m
                .measurements
                .slots
                .iter()
                .find(|s| name == r.uki_member(s.slot.as_deref()))
            {
                // `size` is within `uki_bound`, and the reader gives no more than it.
                let mut bytes = Vec::with_capacity(size as usize);
                data.read_to_end(&mut bytes)?;
                ukis.push((s.slot.clone(), format!("EFI/Linux/{name}"), bytes));
            }
            Ok(ukis.len() < m.measurements.slots.len())
        },
    )
    .map_err(archive_error)?;
    if ukis.len() != m.measurements.slots.len() {
        return Err(BadInput(format!(
            "{}: has {} of the {} slots' UKIs",
            r.dir.join(release::UPDATE_ARCHIVE).display(),
            ukis.len(),
            m.measurements.slots.len()
        ))
        .into());
    }
    ukis.sort();
    let slots: Vec<measure::SlotFiles> = ukis
        .iter()
        .map(|(slot, path, bytes)| measure::SlotFiles {
            slot: slot.clone(),
            uki_path: path.clone(),
            uki: bytes,
        })
        .collect();
    let measured =
        measure::predict(&m.os, &m.version, &loader, &slots).map_err(|e| bad(e.to_string()))?;
    Ok((
        measured,
        ukis.into_iter()
            .map(|(slot, _, bytes)| (slot, bytes))
            .collect(),
    ))
}
