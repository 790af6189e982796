//! What systemd-stub 252 measures into TPM PCR 11 when it starts a unified kernel image (UKI),
//! predicted from the UKI alone, beside the firmware's PCR 4 and 7 events ([`crate::uefi`]);
//! and the UKI sections as the stub reads them.
//!
//! Checked by hand once: a UKI of Debian's 6.1 kernel and a tiny initrd booted on OVMF
//! (q35, TCG) with swtpm, and the guest's PCR 11 equalled the prediction.

use crate::pcr::{self, Sha256Digest};
use crate::pe::{self, PeError};
use sha2::{Digest, Sha256};

/// The sections systemd-stub 252 measures into PCR 11, in the order it measures them: the
/// `UnifiedSection` enum of 252's `src/fundamental/tpm-pcr.h` ("the canonical order in which
/// we measure the sections into TPM PCR 11 … PLEASE DO NOT REORDER"), without `.pcrsig`
/// (never measured: it signs the result). 252 knows no `.uname`: that section is carried
/// for newer tools but neither read nor measured by this stub.
pub const STUB_252_MEASURED_SECTIONS: [&str; 7] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey",
];

/// Why a UKI section could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    #[error(transparent)]
    Pe(#[from] PeError),
    #[error("the PE file has no `{0}` section (not a UKI?)")]
    NoSection(String),
}

/// TPM extend: `sha256(pcr || sha256(data))`.
fn extend(pcr: Sha256Digest, data: &[u8]) -> Sha256Digest {
    pcr::extend(pcr, &pcr::digest(data))
}

/// The SHA-256 PCR 11 value systemd-stub 252 leaves after booting `uki`, starting from the
/// all-zero PCR (what `systemd-measure calculate --phase= --bank=sha256` prints).
///
/// systemd-stub 252 (`stub.c`) goes through [`STUB_252_MEASURED_SECTIONS`] in that order and,
/// for each section the image has, extends PCR 11 with the section name including its
/// trailing NUL, then with the section's contents. How it finds them (`pe.c`
/// `locate_sections`), mirrored here: a section matches when its 8-byte name field starts
/// with the name (a prefix compare); when several match, the last in the table wins; the size
/// is `VirtualSize` and a size of 0 means "absent"; the bytes are the section as mapped in
/// memory. Later boot phases extend PCR 11 further: see [`pcr11_after_phases`].
pub fn predict_pcr11(uki: &[u8]) -> Result<Sha256Digest, PeError> {
    Ok(stub_pcr11_events(uki)?
        .iter()
        .fold([0u8; 32], |value, (_, digest)| pcr::extend(value, digest)))
}

/// The events behind [`predict_pcr11`], in order: for each measured section its name (with
/// the NUL) and then its contents, each as (what, sha256).
pub fn stub_pcr11_events(uki: &[u8]) -> Result<Vec<(String, Sha256Digest)>, PeError> {
    let sections = pe::read_sections(uki)?;
    let mut events = Vec::new();
    for name in STUB_252_MEASURED_SECTIONS {
        let found = sections
            .iter()
            .rev()
            .find(|s| s.raw_name.starts_with(name.as_bytes()));
        let Some(s) = found.filter(|s| s.virtual_size > 0) else {
            continue;
        };
        let mut named = name.as_bytes().to_vec();
        named.push(0);
        events.push((
            format!("{name} section name"),
            Sha256::digest(&named).into(),
        ));
        events.push((
            format!("{name} section ({} B)", s.virtual_size),
            Sha256::digest(&s.data(uki)?).into(),
        ));
    }
    Ok(events)
}

/// A section of a UKI as the stub reads it (its `VirtualSize` bytes), e.g. `.linux`, which
/// the stub hands to the firmware to start, or `.cmdline`; found as the stub finds it (the
/// last section whose name field starts with `name`).
pub fn section(uki: &[u8], name: &str) -> Result<Vec<u8>, SectionError> {
    let sections = pe::read_sections(uki)?;
    let found = sections
        .iter()
        .rev()
        .find(|s| s.raw_name.starts_with(name.as_bytes()))
        .ok_or_else(|| SectionError::NoSection(name.into()))?;
    Ok(found.data(uki)?.into_owned())
}

/// PCR 11 after `systemd-pcrphase` (252) extended it with each boot phase word in `phases`
/// (e.g. `["enter-initrd"]`, then `"leave-initrd"`, `"sysinit"`, `"ready"`): each word is
/// extended as is, without a NUL. `systemd-measure calculate` prints these values by default.
pub fn pcr11_after_phases(pcr11: Sha256Digest, phases: &[&str]) -> Sha256Digest {
    phases
        .iter()
        .fold(pcr11, |pcr, phase| extend(pcr, phase.as_bytes()))
}
