//! Measured boot as the booted system sees it: the TPM's SHA-256 PCRs (read through
//! tss-esapi from the kernel's resource manager), the firmware's event log from securityfs,
//! and, when the machine was given one, the release's `measurements.json` to check them
//! against (a read-only virtual disk whose serial is [`MEASUREMENTS_SERIAL`], holding the
//! file's bytes padded with NULs).

use plinth_firmware::eventlog::{self, EventLog};
use plinth_firmware::measurements;
use plinth_firmware::pcr::Sha256Digest;
pub use plinth_release::measurements::Measurements;
use plinth_release::slot::{self, Slot};
use std::collections::BTreeMap;
use std::str::FromStr;

/// The serial number of the disk that carries `measurements.json` into a machine.
pub use plinth_release::measurements::DISK_SERIAL as MEASUREMENTS_SERIAL;

/// The TPM device (the kernel's resource manager, so other users may share the TPM).
const TPM_DEVICE: &str = "/dev/tpmrm0";

/// Everything read about this boot's measurements.
pub struct Observed {
    /// PCR → value in the SHA-256 bank.
    pub pcrs: BTreeMap<u32, Sha256Digest>,
    /// The firmware's log, or why it could not be read.
    pub log: Result<EventLog, String>,
}

/// Whether this machine has a TPM 2.0 the kernel drives.
pub fn tpm_present() -> bool {
    std::path::Path::new(TPM_DEVICE).exists()
}

/// Read PCRs 0–15 of the SHA-256 bank through tss-esapi.
pub fn read_pcrs() -> Result<BTreeMap<u32, Sha256Digest>, String> {
    use tss_esapi::interface_types::algorithm::HashingAlgorithm;
    use tss_esapi::structures::{PcrSelectionListBuilder, PcrSlot};
    use tss_esapi::tcti_ldr::{DeviceConfig, TctiNameConf};
    let config = DeviceConfig::from_str(TPM_DEVICE).map_err(|e| format!("{TPM_DEVICE}: {e}"))?;
    let mut ctx = tss_esapi::Context::new(TctiNameConf::Device(config))
        .map_err(|e| format!("cannot open the TPM at {TPM_DEVICE}: {e}"))?;
    let slots: Vec<PcrSlot> = (0..16)
        .map(|i| PcrSlot::try_from(1u32 << i))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("PCR selection: {e}"))?;
    let selection = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(|e| format!("PCR selection: {e}"))?;
    let data = tss_esapi::abstraction::pcr::read_all(&mut ctx, selection)
        .map_err(|e| format!("reading the PCRs: {e}"))?;
    let bank = data
        .pcr_bank(HashingAlgorithm::Sha256)
        .ok_or("the TPM has no active SHA-256 PCR bank")?;
    let mut pcrs = BTreeMap::new();
    for (slot, digest) in bank {
        let n = u32::from(*slot).trailing_zeros();
        let value: Sha256Digest = digest
            .value()
            .try_into()
            .map_err(|_| format!("PCR {n}: a digest of {} bytes", digest.value().len()))?;
        pcrs.insert(n, value);
    }
    Ok(pcrs)
}

/// Read the firmware's event log.
pub fn read_log() -> Result<EventLog, String> {
    let bytes =
        std::fs::read(eventlog::SYSFS_LOG).map_err(|e| format!("{}: {e}", eventlog::SYSFS_LOG))?;
    eventlog::parse(&bytes).map_err(|e| format!("{}: {e}", eventlog::SYSFS_LOG))
}

/// PCRs and log of this boot.
pub fn observe() -> Result<Observed, String> {
    Ok(Observed {
        pcrs: read_pcrs()?,
        log: read_log(),
    })
}

/// The block device whose serial is [`MEASUREMENTS_SERIAL`], if any (`sys_block` is
/// `/sys/block`).
pub fn measurements_device(sys_block: &std::path::Path) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find_map(|name| {
        let serial = std::fs::read_to_string(sys_block.join(&name).join("serial")).ok()?;
        (serial.trim() == MEASUREMENTS_SERIAL).then(|| std::path::Path::new("/dev").join(name))
    })
}

/// Measurements from the bytes of such a disk (or of the file itself): the text up to the
/// first NUL.
pub fn parse_measurements(bytes: &[u8], origin: &str) -> Result<Measurements, String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let text =
        std::str::from_utf8(&bytes[..end]).map_err(|e| format!("{origin}: not UTF-8 text: {e}"))?;
    Measurements::parse(text, origin)
}

/// The console lines that show `observed`: each PCR's value (and, if the log replays to
/// something else, that), then every event of the log.
pub fn lines(observed: &Observed) -> Vec<String> {
    let replayed = observed.log.as_ref().map(EventLog::replay).ok();
    let mut out = Vec::new();
    for (n, value) in &observed.pcrs {
        let log_says = match replayed.as_ref().and_then(|r| r.get(n)) {
            Some(r) if r == value => "= log".to_string(),
            Some(r) => format!("log replays to {}", hex::encode(r)),
            None if value.iter().all(|&b| b == 0) => "no events".to_string(),
            None => "not in the log".to_string(),
        };
        out.push(format!(
            "PLINTH TPM PCR {n:2} {} {log_says}",
            hex::encode(value)
        ));
    }
    match &observed.log {
        Ok(log) => {
            for e in &log.events {
                out.push(format!(
                    "PLINTH TPM EVENT {:2} {} {}",
                    e.pcr,
                    hex::encode(e.sha256),
                    e.describe()
                ));
            }
        }
        Err(why) => out.push(format!("PLINTH TPM EVENT LOG unreadable: {why}")),
    }
    out
}

/// The measurements.json to check against and where it came from: `file` if given, else
/// the measurements disk if the machine has one; `None` if neither.
pub fn load_expected(
    file: Option<&std::path::Path>,
) -> Result<Option<(Measurements, String)>, String> {
    let (path, origin) = match file {
        Some(f) => (f.to_path_buf(), f.display().to_string()),
        None => match measurements_device(std::path::Path::new("/sys/block")) {
            Some(dev) => {
                let origin = format!("{} (measurements.json)", dev.display());
                (dev, origin)
            }
            None => return Ok(None),
        },
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("{origin}: {e}"))?;
    Ok(Some((parse_measurements(&bytes, &origin)?, origin)))
}

/// What differs from `expected` for the boot of `os` `version` from `slot`: empty if the
/// file is for this image and every predicted PCR is the live one.
pub fn check(
    observed: &Observed,
    expected: &Measurements,
    (os, version): (&str, &str),
    slot: Option<Slot>,
) -> Vec<String> {
    if (expected.os.as_str(), expected.version.as_str()) != (os, version) {
        return vec![format!(
            "measurements.json is for {} {}, but this is {os} {version}\n  hint: give the machine the measurements.json of the release it boots",
            expected.os, expected.version
        )];
    }
    let Some(prediction) = expected.slot(slot) else {
        return vec![format!(
            "measurements.json has no prediction for slot {} (it has: {})",
            slot::or_none(slot),
            expected
                .slots
                .iter()
                .map(|s| slot::or_none(s.slot))
                .collect::<Vec<_>>()
                .join(", ")
        )];
    };
    measurements::check(prediction, &observed.pcrs, observed.log.as_ref().ok())
}

/// The agents' `measured-boot` verb: print the PCRs and the log (as console lines, or as
/// JSON), checked against `expect` (a measurements.json file, or the measurements disk if
/// the machine has one) for the image `id` (os, version) booted from `slot`. Returns
/// whether nothing differs.
pub fn show(
    expect: Option<&std::path::Path>,
    id: (&str, &str),
    slot: Option<Slot>,
    json: bool,
) -> Result<bool, String> {
    let observed = observe()?;
    let expected = load_expected(expect)?.map(|(m, _)| m);
    let problems = expected
        .as_ref()
        .map(|m| check(&observed, m, id, slot))
        .unwrap_or_default();
    if json {
        let events: Vec<measurements::Event> = observed
            .log
            .as_ref()
            .map(|log| log.events.iter().map(measurements::Event::from).collect())
            .unwrap_or_default();
        let pcrs: BTreeMap<u32, String> = observed
            .pcrs
            .iter()
            .map(|(n, v)| (*n, hex::encode(v)))
            .collect();
        let doc = serde_json::json!({
            "pcrs": pcrs,
            "log_error": observed.log.as_ref().err(),
            "events": events,
            "checked": expected.is_some(),
            "problems": problems,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?
        );
    } else {
        for line in lines(&observed) {
            println!("{line}");
        }
        match &expected {
            None => println!("not checked: no --expect file and no measurements disk"),
            Some(_) if problems.is_empty() => println!("every predicted PCR is the live one"),
            Some(_) => {
                for p in &problems {
                    println!("MISMATCH {p}");
                }
            }
        }
    }
    Ok(problems.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_disk_by_serial() {
        let dir = tempfile_dir();
        for (name, serial) in [("vda", "boot"), ("vdb", MEASUREMENTS_SERIAL)] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("serial"), format!("{serial}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.join("loop0")).unwrap();
        assert_eq!(
            measurements_device(&dir),
            Some(std::path::PathBuf::from("/dev/vdb"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn padding_is_not_part_of_the_file() {
        let mut bytes = b"{}".to_vec();
        bytes.resize(512, 0);
        let e = parse_measurements(&bytes, "/dev/vdb").err().unwrap();
        assert!(
            e.starts_with("/dev/vdb: not a plinth measurements file"),
            "{e}"
        );
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("plinth-measured-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
