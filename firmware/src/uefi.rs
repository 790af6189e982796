//! The events UEFI firmware (OVMF, edk2-stable202211, as Debian 12 ships it) logs on the way
//! to the first boot application, for the PCRs plinth predicts: PCR 7 (the Secure Boot policy)
//! and PCR 4 (the boot attempt and every application started). The research behind each
//! event, with its sources, is in `firmware/MEASURED-BOOT.md`.

use crate::eventlog::types;
use crate::pcr::{self, Sha256Digest};

/// One event a boot is expected to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub pcr: u32,
    pub event_type: u32,
    pub sha256: Sha256Digest,
    /// What was measured, in words.
    pub what: String,
}

/// EFI_GLOBAL_VARIABLE.
const GLOBAL: [u8; 16] = guid(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
/// EFI_IMAGE_SECURITY_DATABASE_GUID (db, dbx).
const SECURITY_DB: [u8; 16] = guid(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);

/// A GUID in its in-memory (mixed-endian) layout.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The EV_SEPARATOR firmware logs into `pcr` (four zero bytes).
pub fn separator(pcr: u32) -> Expected {
    Expected {
        pcr,
        event_type: types::EV_SEPARATOR,
        sha256: pcr::digest(&[0; 4]),
        what: "separator".into(),
    }
}

/// An EV_EFI_VARIABLE_DRIVER_CONFIG event: the digest covers the whole UEFI_VARIABLE_DATA
/// (GUID, name length in characters, data length, UTF-16 name without NUL, data).
fn variable(pcr: u32, vendor: [u8; 16], name: &str, data: &[u8]) -> Expected {
    let name16 = pcr::utf16le(name);
    let mut v = vendor.to_vec();
    v.extend_from_slice(&(name.encode_utf16().count() as u64).to_le_bytes());
    v.extend_from_slice(&(data.len() as u64).to_le_bytes());
    v.extend_from_slice(&name16);
    v.extend_from_slice(data);
    Expected {
        pcr,
        event_type: types::EV_EFI_VARIABLE_DRIVER_CONFIG,
        sha256: pcr::digest(&v),
        what: format!(
            "{name} ({})",
            if data.is_empty() {
                "empty".to_string()
            } else {
                format!("{} B", data.len())
            }
        ),
    }
}

/// PCR 7 with Secure Boot off and no keys enrolled (OVMF_VARS_4M.fd): the SecureBoot variable
/// (one byte, 0), empty PK, KEK, db and dbx, then the separator.
pub fn pcr7_secure_boot_off() -> Vec<Expected> {
    vec![
        variable(7, GLOBAL, "SecureBoot", &[0]),
        variable(7, GLOBAL, "PK", &[]),
        variable(7, GLOBAL, "KEK", &[]),
        variable(7, SECURITY_DB, "db", &[]),
        variable(7, SECURITY_DB, "dbx", &[]),
        separator(7),
    ]
}

/// What the firmware logs when it tries the first boot option.
pub const CALLING_BOOT_OPTION: &str = "Calling EFI Application from Boot Option";

/// PCR 4 when the first boot option starts these applications in turn (each its name and
/// Authenticode digest): the boot attempt, the separator, then one
/// EV_EFI_BOOT_SERVICES_APPLICATION per image.
pub fn pcr4_boot(images: &[(String, Sha256Digest)]) -> Vec<Expected> {
    let mut events = vec![
        Expected {
            pcr: 4,
            event_type: types::EV_EFI_ACTION,
            sha256: pcr::digest(CALLING_BOOT_OPTION.as_bytes()),
            what: CALLING_BOOT_OPTION.into(),
        },
        separator(4),
    ];
    events.extend(images.iter().map(|(what, digest)| Expected {
        pcr: 4,
        event_type: types::EV_EFI_BOOT_SERVICES_APPLICATION,
        sha256: *digest,
        what: what.clone(),
    }));
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr7_is_the_published_ovmf_value() {
        // The value OVMF with Secure Boot off is known to give (e.g. Fraunhofer-AISEC
        // measured-boot-tools `calculate_pcr7`; MEASURED-BOOT.md section 3).
        let events = pcr7_secure_boot_off();
        let value = pcr::replay(events.iter().map(|e| &e.sha256));
        assert_eq!(
            hex::encode(value),
            "65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068"
        );
    }

    #[test]
    fn pcr4_starts_with_the_boot_attempt() {
        let events = pcr4_boot(&[("loader".into(), [1; 32])]);
        assert_eq!(events.len(), 3);
        assert_eq!(
            hex::encode(events[0].sha256),
            hex::encode(pcr::digest(b"Calling EFI Application from Boot Option"))
        );
        assert_eq!(events[2].sha256, [1; 32]);
    }
}
