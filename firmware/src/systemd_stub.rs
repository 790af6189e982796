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

/// A section the UKI has with a non-zero size, as the stub reads it; `None` when absent.
fn present_section(uki: &[u8], name: &str) -> Result<Option<Vec<u8>>, PeError> {
    let sections = pe::read_sections(uki)?;
    let found = sections
        .iter()
        .rev()
        .find(|s| s.raw_name.starts_with(name.as_bytes()));
    match found.filter(|s| s.virtual_size > 0) {
        Some(s) => Ok(Some(s.data(uki)?.into_owned())),
        None => Ok(None),
    }
}

/// The initrd systemd-stub 252 hands to Linux, which Linux measures into PCR 9: the UKI's
/// `.initrd`, padded with NULs to 4 bytes, then a small cpio archive for each of `.pcrsig`
/// and `.pcrpkey` the UKI has (`/.extra/tpm2-pcr-signature.json`,
/// `/.extra/tpm2-pcr-public-key.pem`), as `combine_initrd` in 252's `stub.c` joins them.
/// Credentials and system extensions from the ESP would come before them; plinth's ESPs have
/// none.
pub fn stub_initrd(uki: &[u8]) -> Result<Vec<u8>, PeError> {
    let extras: Vec<Vec<u8>> = [
        (".pcrsig", "tpm2-pcr-signature.json"),
        (".pcrpkey", "tpm2-pcr-public-key.pem"),
    ]
    .iter()
    .filter_map(|(section, file)| match present_section(uki, section) {
        Ok(Some(data)) => Some(Ok(stub_cpio(".extra", file, &data))),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    })
    .collect::<Result<_, _>>()?;
    let mut out = present_section(uki, ".initrd")?.unwrap_or_default();
    if !extras.is_empty() {
        out.resize(out.len().next_multiple_of(4), 0);
        extras.iter().for_each(|e| out.extend_from_slice(e));
    }
    Ok(out)
}

/// One newc header field: 8 lower-case hex digits.
fn cpio_word(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(format!("{v:08x}").as_bytes());
}

/// A newc header as 252's `cpio.c` writes it (uid, gid, mtime, devices and crc zero; one
/// link), then `name` with its NUL, padded to 4 bytes from the archive's start.
fn cpio_header(out: &mut Vec<u8>, inode: u32, mode: u32, size: u32, name: &str) {
    out.extend_from_slice(b"070701");
    for v in [inode, mode, 0, 0, 1, 0, size, 0, 0, 0, 0] {
        cpio_word(out, v);
    }
    cpio_word(out, name.len() as u32 + 1);
    cpio_word(out, 0);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// `pack_cpio_literal` of systemd-stub 252 (`cpio.c`) for a one-level `dir`: the directory
/// (inode 1, mode 0555), the file (inode 2, mode 0444) padded to 4 bytes, and the trailer,
/// whose header 252 spells with an upper-case `B` and whose name it pads with NULs.
fn stub_cpio(dir: &str, file: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    cpio_header(&mut out, 1, 0o040000 | 0o555, 0, dir);
    cpio_header(
        &mut out,
        2,
        0o100000 | 0o444,
        data.len() as u32,
        &format!("{dir}/{file}"),
    );
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(STUB_CPIO_TRAILER);
    out
}

/// 252's trailer record (inode, mode, ids 0; one link; mtime, size, devices 0; a name of
/// 11 bytes; crc 0), 124 bytes.
const STUB_CPIO_TRAILER: &[u8] = concat!(
    "070701",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "00000001",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "00000000",
    "0000000B",
    "00000000",
    "TRAILER!!!\0\0\0\0"
)
.as_bytes();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_cpio_is_byte_for_byte_252s() {
        let a = stub_cpio(".extra", "tpm2-pcr-public-key.pem", b"KEY");
        // The directory: 110 header bytes + ".extra\0" = 117, padded to 120.
        assert_eq!(&a[..6], b"070701");
        assert_eq!(&a[6..14], b"00000001");
        assert_eq!(&a[14..22], b"0000416d");
        assert_eq!(&a[94..102], b"00000007");
        assert_eq!(&a[110..120], b".extra\0\0\0\0");
        // The file: header, ".extra/tpm2-pcr-public-key.pem\0" (31 bytes) padded from 261
        // to 264, then the 3 bytes padded to 4.
        let f = &a[120..];
        assert_eq!(&f[6..14], b"00000002");
        assert_eq!(&f[14..22], b"00008124");
        assert_eq!(&f[54..62], b"00000003");
        assert_eq!(&f[94..102], b"0000001f");
        assert_eq!(&f[110..141], b".extra/tpm2-pcr-public-key.pem\0");
        assert_eq!(&f[141..144], b"\0\0\0");
        assert_eq!(&f[144..148], b"KEY\0");
        assert_eq!(&f[148..], STUB_CPIO_TRAILER);
        assert_eq!(STUB_CPIO_TRAILER.len(), 124);
        assert_eq!(a.len() % 4, 0);
    }
}
