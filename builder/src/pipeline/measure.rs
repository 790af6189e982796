//! What a boot of an image measures into the TPM, predicted from the image's own boot files
//! (its boot loader and each slot's UKI): the events and values of PCR 4 (the applications
//! the firmware starts: systemd-boot, the UKI, the UKI's kernel), PCR 7 (Secure Boot off) and
//! PCR 11 (the UKI's sections as systemd-stub measures them, then the boot phases), PCR 12
//! and 9 (the command line as systemd-boot, the stub and Linux pass it; the initrd), written
//! as `measurements.json` ([`plinth_firmware::measurements`]). Every other PCR is named with
//! why it is not predicted.

use plinth_firmware::measurements::{
    self as predictions, Measurements, NotPredicted, Platform, FORMAT_VERSION,
};
use plinth_firmware::pcr_policy::PcrValues;
use plinth_firmware::systemd_stub::{self, SectionError};
use plinth_firmware::{authenticode, eventlog::types, pcr, uefi};
use plinth_release::{Os, Sha256, Slot, Version};

/// The platform the predictions hold for: what `plinth run --tpm` boots.
pub const PLATFORM_FIRMWARE: &str =
    "OVMF_CODE_4M.fd + a fresh OVMF_VARS_4M.fd (Debian 12 ovmf 2022.11), swtpm TPM 2.0";

/// What systemd-pcrphase (systemd 252) extends into PCR 11 once the system is up, for a UKI
/// without a signed PCR policy: its initrd has no pcrphase (dracut includes it only on
/// request), the system extends these.
pub const BOOT_PHASES: [&str; 2] = ["sysinit", "ready"];

/// The same for a UKI with a signed PCR policy (`.pcrpkey`): its initrd runs
/// systemd-pcrphase-initrd.service, which extends `enter-initrd` before the state is opened
/// and `leave-initrd` at the switch to the system.
pub const SIGNED_BOOT_PHASES: [&str; 4] = ["enter-initrd", "leave-initrd", "sysinit", "ready"];

/// The boot phases a boot of `uki` extends: [`SIGNED_BOOT_PHASES`] when it carries a signed
/// PCR policy, else [`BOOT_PHASES`].
pub fn boot_phases(uki: &[u8]) -> Result<&'static [&'static str], SectionError> {
    Ok(match systemd_stub::section(uki, ".pcrpkey") {
        Ok(_) => &SIGNED_BOOT_PHASES,
        Err(SectionError::NoSection(_)) => &BOOT_PHASES,
        Err(e) => return Err(e),
    })
}

/// PCR 11 and 12 as they are in the initrd of a boot of `uki` (with systemd-boot before it
/// when `loader`), once systemd-pcrphase extended `enter-initrd`: what a signed PCR policy
/// signs ([`super::pcr_signing`]). `.pcrsig` is not measured, so `uki` may lack it.
pub fn initrd_pcrs(uki: &[u8], loader: bool) -> Result<PcrValues, SectionError> {
    let pcr11 =
        systemd_stub::pcr11_after_phases(systemd_stub::predict_pcr11(uki)?, &["enter-initrd"]);
    let events = command_line_events(
        &systemd_stub::section(uki, ".cmdline")?,
        &systemd_stub::stub_initrd(uki)?,
        loader,
    );
    let pcr12 = events
        .iter()
        .filter(|e| e.pcr == 12)
        .fold([0u8; 32], |v, e| pcr::extend(v, &e.sha256));
    Ok([(11, pcr11), (12, pcr12)].into())
}

/// The firmware's default boot path on the ESP: systemd-boot, or the UKI itself for an OS
/// without a boot loader.
pub const LOADER_PATH: &str = "EFI/BOOT/BOOTX64.EFI";

/// One slot's boot files.
pub struct SlotFiles<'a> {
    /// `A`, `B`, or `None` for an OS without slots.
    pub slot: Option<Slot>,
    /// The UKI's path on the ESP (e.g. `EFI/Linux/host-os-a.efi`) when a boot loader starts
    /// it (without one, the firmware starts it from [`LOADER_PATH`]).
    pub uki_path: String,
    pub uki: &'a [u8],
}

/// A boot file that is not what the prediction needs.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    #[error("{file}: {source}")]
    Pe {
        file: String,
        source: authenticode::PeError,
    },
    #[error("{file}: {source}")]
    Uki { file: String, source: SectionError },
    #[error("{file} is a UKI, but none of the slots' UKIs\n  hint: the ESP was changed after the build, or the release's files do not belong together")]
    Foreign { file: String },
}

fn efi_path(path: &str) -> String {
    format!("\\{}", path.replace('/', "\\"))
}

/// Whether the file at the default boot path is a UKI (it has a `.linux` section), so that
/// the firmware starts the UKI directly, with no boot loader.
pub fn is_uki(default_boot: &[u8]) -> bool {
    systemd_stub::section(default_boot, ".linux").is_ok()
}

/// The prediction for a boot of `default_boot` (systemd-boot, which starts the slot's UKI,
/// or the slot's UKI itself: see [`is_uki`]) for each slot. Without a boot loader, a slot
/// boots once its UKI is installed at [`LOADER_PATH`] (the ESP holds one slot's at a time):
/// its prediction is for that boot.
pub fn predict(
    os: Os,
    version: &Version,
    default_boot: &[u8],
    slots: &[SlotFiles<'_>],
) -> Result<Measurements, MeasureError> {
    let loader = (!is_uki(default_boot)).then_some(default_boot);
    let pe = |file: &str, bytes: &[u8]| {
        authenticode::sha256(bytes).map_err(|source| MeasureError::Pe {
            file: file.to_string(),
            source,
        })
    };
    if loader.is_none() && !slots.iter().any(|s| s.uki == default_boot) {
        return Err(MeasureError::Foreign {
            file: LOADER_PATH.into(),
        });
    }
    let loader_digest = loader.map(|l| pe(LOADER_PATH, l)).transpose()?;
    let mut out = Vec::new();
    for s in slots {
        let bad_uki = |source: SectionError| MeasureError::Uki {
            file: s.uki_path.clone(),
            source,
        };
        let linux = systemd_stub::section(s.uki, ".linux").map_err(bad_uki)?;
        let mut images = Vec::new();
        if let Some(digest) = loader_digest {
            images.push((format!("{} (systemd-boot)", efi_path(LOADER_PATH)), digest));
        }
        let uki_path = if loader.is_some() {
            s.uki_path.as_str()
        } else {
            LOADER_PATH
        };
        images.push((
            format!("{} (the slot's UKI)", efi_path(uki_path)),
            pe(&s.uki_path, s.uki)?,
        ));
        images.push((
            "the UKI's .linux section (the kernel), started by systemd-stub".into(),
            pe(&format!("{}: .linux", s.uki_path), &linux)?,
        ));
        let mut events = uefi::pcr4_boot(&images);
        events.extend(uefi::pcr7_secure_boot_off());
        for (what, sha256) in
            systemd_stub::stub_pcr11_events(s.uki).map_err(|e| bad_uki(e.into()))?
        {
            events.push(uefi::Expected {
                pcr: 11,
                event_type: types::EV_IPL,
                sha256,
                what: format!("systemd-stub: {what}"),
            });
        }
        events.extend(command_line_events(
            &systemd_stub::section(s.uki, ".cmdline").map_err(bad_uki)?,
            &systemd_stub::stub_initrd(s.uki).map_err(|e| bad_uki(e.into()))?,
            loader.is_some(),
        ));
        let later: Vec<uefi::Expected> = boot_phases(s.uki)
            .map_err(bad_uki)?
            .iter()
            .map(|phase| uefi::Expected {
                pcr: 11,
                event_type: types::EV_IPL,
                sha256: pcr::digest(phase.as_bytes()),
                what: format!("systemd-pcrphase: {phase}"),
            })
            .collect();
        // Without a boot loader nothing passes options to the UKI: PCR 12 stays zero.
        let untouched: &[u32] = if loader.is_some() { &[] } else { &[12] };
        out.push(predictions::predict(
            s.slot,
            Sha256::of(s.uki),
            &events,
            &later,
            untouched,
        ));
    }
    Ok(Measurements {
        format_version: FORMAT_VERSION,
        os,
        version: version.clone(),
        platform: Platform {
            firmware: PLATFORM_FIRMWARE.into(),
            secure_boot: false,
            bank: "sha256".into(),
        },
        slots: out,
        not_predicted: not_predicted(),
        snp: None,
    })
}

/// PCR 12 and PCR 9 for a UKI with this `.cmdline` and `.initrd`: systemd-boot (if it
/// started the UKI) measures the options it passes (the UKI's `.cmdline`) into PCR 12, and
/// the stub measures the options it received again (started by the firmware, the UKI gets
/// none and uses its own `.cmdline` unmeasured); then Linux's EFI stub tags the options and
/// the initrd (as the stub hands it: [`systemd_stub::stub_initrd`]) into PCR 9. The options
/// are measured as UTF-16LE with their NUL.
fn command_line_events(cmdline: &[u8], initrd: &[u8], loader: bool) -> Vec<uefi::Expected> {
    let text = String::from_utf8_lossy(cmdline);
    let text = text.trim_end_matches(['\0', '\n']);
    let mut utf16 = pcr::utf16le(text);
    utf16.extend_from_slice(&[0, 0]);
    let options = pcr::digest(&utf16);
    let ipl = |what: &str| uefi::Expected {
        pcr: 12,
        event_type: types::EV_IPL,
        sha256: options,
        what: what.into(),
    };
    let mut events = Vec::new();
    if loader {
        events.push(ipl(
            "systemd-boot: the options it passes (the UKI's .cmdline)",
        ));
        events.push(ipl("systemd-stub: the options it received"));
    }
    events.extend([
        uefi::Expected {
            pcr: 9,
            event_type: types::EV_EVENT_TAG,
            sha256: options,
            what: "Linux EFI stub: LOADED_IMAGE::LoadOptions".into(),
        },
        uefi::Expected {
            pcr: 9,
            event_type: types::EV_EVENT_TAG,
            sha256: pcr::digest(initrd),
            what: format!("Linux EFI stub: the initrd ({} B)", initrd.len()),
        },
    ]);
    events
}

/// The PCRs left out, and why.
pub fn not_predicted() -> Vec<NotPredicted> {
    let left: Vec<(u32, &str)> = vec![
        (0, "the firmware's own code (the OVMF build the machine runs), not part of the image"),
        (1, "the machine's configuration: QEMU's ACPI tables and the firmware's boot variables"),
        (2, "option ROMs and drivers of the machine's devices"),
        (3, "firmware configuration of the machine (only a separator on OVMF)"),
        (5, "the GPT and ExitBootServices: the disk's partition table as the machine sees it (predictable, not published yet)"),
        (6, "platform events of the machine (only a separator on OVMF)"),
        (8, "unused by systemd-boot 252 (its PCR 8 compatibility measurement is off)"),
        (10, "IMA, which measures files as they are opened at run time"),
        (13, "system extension images: none are used"),
        (14, "shim's MOK lists: no shim is used"),
        (15, "systemd's runtime measurements (machine id, file systems): none in systemd 252"),
    ];
    left.into_iter()
        .map(|(pcr, why)| NotPredicted {
            pcr,
            why: why.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_both_predicted_and_left_out() {
        let left: Vec<u32> = not_predicted().iter().map(|n| n.pcr).collect();
        for published in [4, 7, 9, 11, 12] {
            assert!(!left.contains(&published));
        }
        assert_eq!(left.len() + 5, 16, "every PCR 0-15 is predicted or named");
    }
}
