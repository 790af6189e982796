//! The TCG event log of a measured boot (TCG PC Client Platform Firmware Profile, crypto-agile
//! format, what Linux exposes as `/sys/kernel/security/tpm0/binary_bios_measurements`): its
//! events, their SHA-256 digests, a readable description of each, and the PCR values the log
//! replays to.

use crate::pcr::{self, Sha256Digest};
use std::collections::BTreeMap;

/// Where the running kernel exposes the firmware's log.
pub const SYSFS_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// TPM algorithm id of SHA-256.
const TPM_ALG_SHA256: u16 = 0x000b;

/// Event types (TCG PC Client PFP, section 10.4.1) that plinth names.
pub mod types {
    pub const EV_POST_CODE: u32 = 0x1;
    pub const EV_NO_ACTION: u32 = 0x3;
    pub const EV_SEPARATOR: u32 = 0x4;
    pub const EV_EVENT_TAG: u32 = 0x6;
    pub const EV_S_CRTM_VERSION: u32 = 0x8;
    pub const EV_IPL: u32 = 0xd;
    pub const EV_PLATFORM_CONFIG_FLAGS: u32 = 0xa;
    pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
    pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
    pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
    pub const EV_EFI_BOOT_SERVICES_DRIVER: u32 = 0x8000_0004;
    pub const EV_EFI_GPT_EVENT: u32 = 0x8000_0006;
    pub const EV_EFI_ACTION: u32 = 0x8000_0007;
    pub const EV_EFI_PLATFORM_FIRMWARE_BLOB: u32 = 0x8000_0008;
    pub const EV_EFI_HANDOFF_TABLES: u32 = 0x8000_0009;
    pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000a;
    pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00e0;
}

/// The name of an event type, e.g. `EV_EFI_ACTION`.
pub fn type_name(t: u32) -> String {
    use types::*;
    let name = match t {
        EV_POST_CODE => "EV_POST_CODE",
        EV_NO_ACTION => "EV_NO_ACTION",
        EV_SEPARATOR => "EV_SEPARATOR",
        EV_EVENT_TAG => "EV_EVENT_TAG",
        EV_S_CRTM_VERSION => "EV_S_CRTM_VERSION",
        EV_IPL => "EV_IPL",
        EV_PLATFORM_CONFIG_FLAGS => "EV_PLATFORM_CONFIG_FLAGS",
        EV_EFI_VARIABLE_DRIVER_CONFIG => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        EV_EFI_VARIABLE_BOOT => "EV_EFI_VARIABLE_BOOT",
        EV_EFI_BOOT_SERVICES_APPLICATION => "EV_EFI_BOOT_SERVICES_APPLICATION",
        EV_EFI_BOOT_SERVICES_DRIVER => "EV_EFI_BOOT_SERVICES_DRIVER",
        EV_EFI_GPT_EVENT => "EV_EFI_GPT_EVENT",
        EV_EFI_ACTION => "EV_EFI_ACTION",
        EV_EFI_PLATFORM_FIRMWARE_BLOB => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        EV_EFI_HANDOFF_TABLES => "EV_EFI_HANDOFF_TABLES",
        EV_EFI_PLATFORM_FIRMWARE_BLOB2 => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        EV_EFI_VARIABLE_AUTHORITY => "EV_EFI_VARIABLE_AUTHORITY",
        other => return format!("{other:#x}"),
    };
    name.to_string()
}

/// One event of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub pcr: u32,
    pub event_type: u32,
    /// The SHA-256 digest extended into the PCR.
    pub sha256: Sha256Digest,
    /// The event data (what was measured, or a description of it).
    pub data: Vec<u8>,
}

impl Event {
    /// What the event was, in a few words: its type and a reading of its data.
    pub fn describe(&self) -> String {
        format!("{} {}", type_name(self.event_type), describe_data(self))
    }
}

/// A parsed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// The events that extend PCRs, in log order (EV_NO_ACTION records are left out).
    pub events: Vec<Event>,
    /// Locality TPM2_Startup ran at (the `StartupLocality` record; 0 without one): PCR 0
    /// starts with it as its last byte.
    pub startup_locality: u8,
}

/// A log that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LogError {
    #[error("the event log ends inside a record at byte {at}: {what}")]
    Truncated { at: usize, what: &'static str },
    #[error("not a crypto-agile TCG event log: {0}")]
    NotCryptoAgile(String),
    #[error("the event log has no SHA-256 digests (its algorithms: {0})")]
    NoSha256(String),
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], LogError> {
        let s = self
            .b
            .get(self.at..self.at.saturating_add(n))
            .ok_or(LogError::Truncated { at: self.at, what })?;
        self.at += n;
        Ok(s)
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, LogError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, LogError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
}

/// Parse a crypto-agile log (its first record is the TCG_EfiSpecIdEvent in SHA-1 format).
pub fn parse(bytes: &[u8]) -> Result<EventLog, LogError> {
    let mut r = Reader { b: bytes, at: 0 };
    // TCG_PCClientPCREvent: pcr, type, sha1 digest, size, data.
    let _pcr = r.u32("first record's PCR")?;
    let kind = r.u32("first record's type")?;
    r.take(20, "first record's digest")?;
    let size = r.u32("first record's size")? as usize;
    let spec = r.take(size, "the spec id event")?;
    if kind != types::EV_NO_ACTION || !spec.starts_with(b"Spec ID Event03\0") {
        return Err(LogError::NotCryptoAgile(
            "the first record is not a `Spec ID Event03` (a SHA-1-only log?)".into(),
        ));
    }
    let mut s = Reader { b: spec, at: 16 };
    s.take(4 + 4, "platform class and versions")?;
    let count = s.u32("algorithm count")? as usize;
    let mut sizes = BTreeMap::new();
    for _ in 0..count {
        let alg = s.u16("algorithm id")?;
        let size = s.u16("digest size")?;
        sizes.insert(alg, size as usize);
    }
    if !sizes.contains_key(&TPM_ALG_SHA256) {
        let algs: Vec<String> = sizes.keys().map(|a| format!("{a:#06x}")).collect();
        return Err(LogError::NoSha256(algs.join(", ")));
    }
    let mut log = EventLog {
        events: Vec::new(),
        startup_locality: 0,
    };
    while r.at < bytes.len() {
        let pcr = r.u32("PCR index")?;
        let event_type = r.u32("event type")?;
        let n = r.u32("digest count")? as usize;
        let mut sha256 = None;
        for _ in 0..n {
            let alg = r.u16("digest algorithm")?;
            let Some(&size) = sizes.get(&alg) else {
                return Err(LogError::NotCryptoAgile(format!(
                    "an event at byte {} uses algorithm {alg:#06x}, which the spec id event does not list",
                    r.at
                )));
            };
            let d = r.take(size, "digest")?;
            if alg == TPM_ALG_SHA256 {
                sha256 = d.try_into().ok();
            }
        }
        let size = r.u32("event size")? as usize;
        let data = r.take(size, "event data")?.to_vec();
        if event_type == types::EV_NO_ACTION {
            if let Some(rest) = data.strip_prefix(b"StartupLocality\0") {
                log.startup_locality = rest.first().copied().unwrap_or(0);
            }
            continue;
        }
        let Some(sha256) = sha256 else {
            return Err(LogError::NoSha256(format!(
                "an event of PCR {pcr} ({}) has no SHA-256 digest",
                type_name(event_type)
            )));
        };
        log.events.push(Event {
            pcr,
            event_type,
            sha256,
            data,
        });
    }
    Ok(log)
}

impl EventLog {
    /// The value each PCR with events replays to.
    pub fn replay(&self) -> BTreeMap<u32, Sha256Digest> {
        let mut pcrs = BTreeMap::new();
        for e in &self.events {
            let start = if e.pcr == 0 {
                let mut z = [0u8; 32];
                z[31] = self.startup_locality;
                z
            } else {
                [0u8; 32]
            };
            let v = pcrs.entry(e.pcr).or_insert(start);
            *v = pcr::extend(*v, &e.sha256);
        }
        pcrs
    }

    /// The events of one PCR, in order.
    pub fn of_pcr(&self, pcr: u32) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(move |e| e.pcr == pcr)
    }
}

/// Printable ASCII of `b` up to its first NUL, if that is all it is.
fn ascii(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = &b[..end];
    (!s.is_empty() && s.iter().all(|c| (0x20..0x7f).contains(c)))
        .then(|| String::from_utf8_lossy(s).into_owned())
}

/// UTF-16LE text of `b` up to its first NUL, if it reads as printable text.
fn utf16(b: &[u8]) -> Option<String> {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let s = String::from_utf16(&units).ok()?;
    (!s.is_empty() && s.chars().all(|c| !c.is_control())).then_some(s)
}

/// The file path nodes (type 4, subtype 4) of a UEFI device path, joined.
fn device_path_files(mut dp: &[u8]) -> Vec<String> {
    let mut files = Vec::new();
    while dp.len() >= 4 {
        let (kind, sub) = (dp[0], dp[1]);
        let len = u16::from_le_bytes([dp[2], dp[3]]) as usize;
        if len < 4 || len > dp.len() {
            break;
        }
        if kind == 4 && sub == 4 {
            if let Some(f) = utf16(&dp[4..len]) {
                files.push(f);
            }
        }
        if kind == 0x7f {
            break;
        }
        dp = &dp[len..];
    }
    files
}

fn describe_data(e: &Event) -> String {
    use types::*;
    let d = &e.data;
    match e.event_type {
        EV_EFI_BOOT_SERVICES_APPLICATION | EV_EFI_BOOT_SERVICES_DRIVER => {
            // EFI_IMAGE_LOAD_EVENT: address, length, link address (3 × u64), device path
            // length (u64), device path.
            let files = d.get(32..).map(device_path_files).unwrap_or_default();
            if files.is_empty() {
                "(image from memory)".into()
            } else {
                files.join("")
            }
        }
        EV_EFI_VARIABLE_DRIVER_CONFIG | EV_EFI_VARIABLE_BOOT | EV_EFI_VARIABLE_AUTHORITY => {
            // UEFI_VARIABLE_DATA: GUID, name length (chars), data length, name, data.
            let chars = d
                .get(16..24)
                .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()) as usize)
                .unwrap_or(0);
            chars
                .checked_mul(2)
                .and_then(|n| n.checked_add(32))
                .and_then(|end| d.get(32..end))
                .and_then(utf16)
                .unwrap_or_else(|| "(variable)".into())
        }
        EV_SEPARATOR => hex::encode(d),
        EV_EFI_GPT_EVENT => "(partition table)".into(),
        EV_EVENT_TAG if d.len() >= 8 => {
            let id = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            let text = ascii(&d[8..]).unwrap_or_default();
            format!("{id:#x} {text}")
        }
        // UTF-16 text (systemd-boot and systemd-stub describe their events so) has a NUL
        // as every second byte.
        _ if d.len() >= 2 && d[1] == 0 => utf16(d)
            .or_else(|| ascii(d))
            .unwrap_or_else(|| format!("({} bytes)", d.len())),
        _ => ascii(d)
            .or_else(|| utf16(d))
            .unwrap_or_else(|| format!("({} bytes)", d.len())),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A log with the spec id event (SHA-1 and SHA-256) and these events.
    pub fn synth(events: &[(u32, u32, &[u8])]) -> Vec<u8> {
        let mut spec = b"Spec ID Event03\0".to_vec();
        spec.extend_from_slice(&0u32.to_le_bytes());
        spec.extend_from_slice(&[0, 2, 0, 2]);
        spec.extend_from_slice(&2u32.to_le_bytes());
        spec.extend_from_slice(&0x0004u16.to_le_bytes());
        spec.extend_from_slice(&20u16.to_le_bytes());
        spec.extend_from_slice(&0x000bu16.to_le_bytes());
        spec.extend_from_slice(&32u16.to_le_bytes());
        spec.push(0);
        let mut log = Vec::new();
        log.extend_from_slice(&0u32.to_le_bytes());
        log.extend_from_slice(&types::EV_NO_ACTION.to_le_bytes());
        log.extend_from_slice(&[0; 20]);
        log.extend_from_slice(&(spec.len() as u32).to_le_bytes());
        log.extend_from_slice(&spec);
        for (pcr, t, data) in events {
            log.extend_from_slice(&pcr.to_le_bytes());
            log.extend_from_slice(&t.to_le_bytes());
            log.extend_from_slice(&2u32.to_le_bytes());
            log.extend_from_slice(&0x0004u16.to_le_bytes());
            log.extend_from_slice(&[0xaa; 20]);
            log.extend_from_slice(&0x000bu16.to_le_bytes());
            log.extend_from_slice(&pcr::digest(data));
            log.extend_from_slice(&(data.len() as u32).to_le_bytes());
            log.extend_from_slice(data);
        }
        log
    }

    #[test]
    fn parses_and_replays() {
        let bytes = synth(&[
            (
                4,
                types::EV_EFI_ACTION,
                b"Calling EFI Application from Boot Option",
            ),
            (4, types::EV_SEPARATOR, &[0, 0, 0, 0]),
            (7, types::EV_SEPARATOR, &[0, 0, 0, 0]),
            (3, types::EV_NO_ACTION, b"ignored"),
        ]);
        let log = parse(&bytes).unwrap();
        assert_eq!(log.events.len(), 3);
        let r = log.replay();
        let sep = pcr::digest(&[0; 4]);
        assert_eq!(
            r[&4],
            pcr::replay([
                &pcr::digest(b"Calling EFI Application from Boot Option"),
                &sep
            ])
        );
        assert_eq!(r[&7], pcr::replay([&sep]));
        assert!(!r.contains_key(&3));
        assert_eq!(
            log.events[0].describe(),
            "EV_EFI_ACTION Calling EFI Application from Boot Option"
        );
        assert_eq!(log.events[1].describe(), "EV_SEPARATOR 00000000");
    }

    #[test]
    fn truncated_and_foreign_logs_are_refused() {
        let bytes = synth(&[(4, types::EV_IPL, b"abc")]);
        for cut in [3, 40, bytes.len() - 1] {
            assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut sha1_only = bytes.clone();
        sha1_only[32..32 + 15].copy_from_slice(b"Spec ID Event02");
        assert!(matches!(
            parse(&sha1_only),
            Err(LogError::NotCryptoAgile(_))
        ));
    }

    #[test]
    fn describes_images_and_variables() {
        let mut image = vec![0u8; 32];
        let path: Vec<u8> = "\\EFI\\BOOT\\BOOTX64.EFI\0"
            .encode_utf16()
            .flat_map(|u| u.to_le_bytes())
            .collect();
        image.extend_from_slice(&[4, 4]);
        image.extend_from_slice(&((4 + path.len()) as u16).to_le_bytes());
        image.extend_from_slice(&path);
        image.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        let e = Event {
            pcr: 4,
            event_type: types::EV_EFI_BOOT_SERVICES_APPLICATION,
            sha256: [0; 32],
            data: image,
        };
        assert_eq!(
            e.describe(),
            "EV_EFI_BOOT_SERVICES_APPLICATION \\EFI\\BOOT\\BOOTX64.EFI"
        );
    }
}
