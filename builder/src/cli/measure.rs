//! `plinth measure`: the TPM PCR values a boot of an image will produce, from the image's own
//! boot files (see [`crate::pipeline::measure`]): a release (its ESP from the disk archive,
//! every slot's UKI from the update archive) or a raw disk image (its ESP). Prints them, writes
//! `measurements.json` with `-o`, and checks a release's published file against the image.
//!
//! A release's archives are streamed, never unpacked, each member's header checked against
//! the manifest's bounds first ([`crate::compare::release::Release::bounds`]): only the ESP's
//! span of the disk image is written (after a free-space check). The boot loader (from the
//! ESP) and each UKI, which must fit on the ESP, are read into memory as their bytes arrive
//! (nothing is allocated by a declared size), each within [`MAX_PE_IN_MEMORY`] and all of
//! them within [`MAX_PES_IN_MEMORY`]; a larger one is refused by name (exit 2). Scratch space
//! is private (0700).

use super::image::{Image, ImageArgs};
use super::{BadInput, CheckFailed, Global, Output};
use crate::pipeline::{esp, measure, ovmf, release, snp};
use anyhow::Context;
use plinth_firmware::measurements::Measurements;
use plinth_release::slot::{self, Slot};
use plinth_release::{Os, Role, Version};
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
                slot::or_none(s.slot)
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
                    slot::or_none(d.slot),
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
type SlotUki = (Option<Slot>, Vec<u8>);

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
        .map(|(slot, uki)| snp::SlotUki { slot: *slot, uki })
        .collect();
    let sha256 = plinth_release::Sha256::of_file(firmware)
        .with_context(|| format!("reading {}", firmware.display()))?
        .0;
    let snp_dir = scratch.join("snp");
    crate::pipeline::artifacts::private_dir(&snp_dir)
        .with_context(|| format!("creating {}", snp_dir.display()))?;
    let computed = snp::expected(
        &snp::FirmwareFile {
            path: firmware,
            name: ovmf::FIRMWARE_FILE,
            sha256,
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
        let name = slot::or_none(m.slot);
        let Some(p) = published.slot(m.slot) else {
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
                    slot::or_none(m.slot),
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

/// The largest ESP of a raw disk image `plinth measure` copies out (to scratch) to read its
/// boot files. plinth's ESPs are 128 and 256 MiB.
const MAX_DISK_ESP: u64 = 1 << 30;

/// The most of one boot file (the boot loader, a UKI) `plinth measure` reads into memory (the
/// PE reader and the PCR prediction take bytes). A UKI must fit on the ESP (plinth's are 128
/// and 256 MiB); real UKIs are 30 to 80 MB, systemd-boot about 100 KB.
const MAX_PE_IN_MEMORY: u64 = 256 << 20;
/// The most of all the boot files of one image together in memory.
const MAX_PES_IN_MEMORY: u64 = 2 * MAX_PE_IN_MEMORY;

/// What `plinth measure` may still read into memory: [`MAX_PE_IN_MEMORY`] per boot file,
/// [`MAX_PES_IN_MEMORY`] in all.
struct Budget {
    left: u64,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            left: MAX_PES_IN_MEMORY,
        }
    }

    /// The most the next boot file may have.
    fn cap(&self) -> u64 {
        MAX_PE_IN_MEMORY.min(self.left)
    }

    /// `bytes` were read.
    fn spend(&mut self, bytes: usize) {
        self.left = self.left.saturating_sub(bytes as u64);
    }

    /// Why `what`, of `size` bytes (or more), was not read.
    fn refusal(&self, what: &str, size: u64, cap: u64) -> String {
        format!(
            "{what} is {size} bytes or more, more than the {cap} bytes plinth measure reads into memory (at most {MAX_PE_IN_MEMORY} for one boot file, {MAX_PES_IN_MEMORY} for all of them)\n  hint: a UKI must fit on the ESP; is the release crafted?"
        )
    }

    /// `path` of the ESP `esp_image`, within the budget; `what` names the ESP for errors.
    fn read_fat(&mut self, esp_image: &Path, path: &str, what: &str) -> Result<Vec<u8>, String> {
        let bytes =
            esp::read_fat_file_capped(esp_image, path, self.cap()).map_err(|e| match e {
                esp::EspError::TooLarge { size, cap, .. } => {
                    self.refusal(&format!("{path} on {what}"), size, cap)
                }
                e => format!("{what}: {path}: {e}"),
            })?;
        self.spend(bytes.len());
        Ok(bytes)
    }
}

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
fn archive_error(e: impl Into<crate::pipeline::artifacts::ArtifactError>) -> anyhow::Error {
    let e = e.into();
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
    if len > MAX_DISK_ESP {
        return Err(bad(format!(
            "its ESP is {len} bytes; plinth measure copies it out to read its boot files and takes at most {MAX_DISK_ESP}"
        ))
        .into());
    }
    let scratch = esp_image.parent().unwrap_or(Path::new("."));
    check_free(scratch, len, &format!("the ESP of {}", disk.display()))?;
    // Holes stay holes: an ESP is mostly empty.
    crate::pipeline::blocks::copy_span_sparse(disk, offset, len, esp_image)
        .with_context(|| format!("copying the ESP of {}", disk.display()))?;
    let mut budget = Budget::new();
    let what = format!("its ESP (at byte {offset})");
    let loader = budget
        .read_fat(esp_image, measure::LOADER_PATH, &what)
        .map_err(bad)?;
    let mut ukis = Vec::new();
    if measure::is_uki(&loader) {
        // A second copy in memory: it counts again.
        if loader.len() as u64 > budget.cap() {
            let refusal = budget.refusal(
                &format!("{} on {what}, as a UKI", measure::LOADER_PATH),
                loader.len() as u64,
                budget.cap(),
            );
            return Err(bad(refusal).into());
        }
        budget.spend(loader.len());
        ukis.push((measure::LOADER_PATH.to_string(), loader.clone()));
    }
    let listed = esp::list_fat(esp_image).map_err(|e| bad(format!("{what}: {e}")))?;
    for entry in listed {
        if !entry.is_dir && entry.path.starts_with("EFI/Linux/") && entry.path.ends_with(".efi") {
            let bytes = budget
                .read_fat(esp_image, &entry.path, &what)
                .map_err(bad)?;
            ukis.push((entry.path.clone(), bytes));
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
        let osrel = plinth_firmware::systemd_stub::section(bytes, ".osrel")
            .map_err(|e| bad(format!("{path}: {e}")))?;
        let cmdline = plinth_firmware::systemd_stub::section(bytes, ".cmdline")
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
        let slot = slot::from_cmdline(&String::from_utf8_lossy(&cmdline))
            .map_err(|e| bad(format!("{path}: its .cmdline's {}: {e}", slot::CMDLINE_KEY)))?;
        slots.push(measure::SlotFiles {
            slot,
            uki_path: path.clone(),
            uki: bytes,
        });
    }
    slots.sort_by_key(|s| s.slot);
    let os: Os = os
        .parse()
        .map_err(|e| bad(format!("its UKI's .osrel IMAGE_ID: {e}")))?;
    let version: Version = version
        .parse()
        .map_err(|e| bad(format!("its UKI's .osrel IMAGE_VERSION: {e}")))?;
    measure::predict(os, &version, &loader, &slots).map_err(|e| bad(e.to_string()).into())
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
        .find(|p| p.role == Role::Esp)
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
    let mut budget = Budget::new();
    let loader = budget
        .read_fat(
            esp_image,
            measure::LOADER_PATH,
            &format!("the ESP of {}'s disk.img", release::DISK_ARCHIVE),
        )
        .map_err(bad)?;
    // Each UKI is read into memory: it must fit on the ESP (no slack), and in
    // MAX_PE_IN_MEMORY. The bound is checked on its header, before any of it is read.
    let uki_bound = crate::pipeline::artifacts::Bound::new(
        esp.size.min(MAX_PE_IN_MEMORY),
        format!(
            "the ESP `{}`'s {} bytes from manifest.json (a UKI must fit on it), and at most {MAX_PE_IN_MEMORY} (plinth measure reads a UKI into memory)",
            esp.name, esp.size
        ),
    );
    let mut bounds = r.bounds(release::UPDATE_ARCHIVE);
    for s in &m.measurements.slots {
        bounds = bounds.member(r.uki_member(s.slot), uki_bound.clone());
    }
    let mut ukis: Vec<(Option<Slot>, String, Vec<u8>)> = Vec::new();
    let mut refused: Option<String> = None;
    crate::pipeline::artifacts::for_each_member(
        &r.dir.join(release::UPDATE_ARCHIVE),
        &bounds,
        |name, size, data| {
            if let Some(s) = m
                .measurements
                .slots
                .iter()
                .find(|s| name == r.uki_member(s.slot))
            {
                // `size` is within `uki_bound` and the reader gives no more than it; still,
                // the buffer grows only as bytes arrive, within the budget.
                let cap = budget.cap();
                let mut bytes = Vec::new();
                data.take(cap + 1).read_to_end(&mut bytes)?;
                if bytes.len() as u64 > cap {
                    refused = Some(budget.refusal(
                        &format!("member `{name}` of {}", release::UPDATE_ARCHIVE),
                        size.max(bytes.len() as u64),
                        cap,
                    ));
                    return Ok(false);
                }
                budget.spend(bytes.len());
                ukis.push((s.slot, format!("EFI/Linux/{name}"), bytes));
            }
            Ok(ukis.len() < m.measurements.slots.len())
        },
    )
    .map_err(archive_error)?;
    if let Some(refused) = refused {
        return Err(bad(refused).into());
    }
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
            slot: *slot,
            uki_path: path.clone(),
            uki: bytes,
        })
        .collect();
    let measured =
        measure::predict(m.os, &m.version, &loader, &slots).map_err(|e| bad(e.to_string()))?;
    Ok((
        measured,
        ukis.into_iter()
            .map(|(slot, _, bytes)| (slot, bytes))
            .collect(),
    ))
}
