//! `measurements.json` predictions for UKIs built from Debian's systemd-stub 252 (the stub
//! itself stands in for the kernel: any PE image does) with and without systemd-boot in
//! front: the event sequence of each PCR and values recomputed here independently (the
//! command line as UTF-16LE with its NUL, the stub's PCR 11 with the two boot phases, the
//! Secure-Boot-off PCR 7). The release tier checks the same predictions against real boots.

use plinth::pipeline::measure::{self, SlotFiles};
use plinth::pipeline::uki::{
    build_uki, pcr11_after_phases, predict_pcr11, UkiSections, DEFAULT_STUB,
};
use plinth_firmware::{authenticode, pcr};

const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const CMDLINE: &str = "console=ttyS0 plinth.slot=A ro";

fn uki() -> Vec<u8> {
    let stub = std::fs::read(DEFAULT_STUB).expect("ci/setup installs systemd-boot-efi");
    build_uki(
        &stub,
        &UkiSections {
            osrel: b"IMAGE_ID=guest-os\nIMAGE_VERSION=1.0.0\n",
            cmdline: CMDLINE,
            uname: "6.1.0-99-amd64",
            linux: &stub,
            initrd: b"initrd bytes",
        },
    )
    .unwrap()
}

fn options_digest() -> [u8; 32] {
    let mut utf16: Vec<u8> = CMDLINE
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    utf16.extend_from_slice(&[0, 0]);
    pcr::digest(&utf16)
}

#[test]
fn through_systemd_boot() {
    let loader = std::fs::read(SYSTEMD_BOOT).expect("ci/setup installs systemd-boot-efi");
    let uki = uki();
    assert!(!measure::is_uki(&loader) && measure::is_uki(&uki));
    let slots = [SlotFiles {
        slot: Some(plinth_release::Slot::A),
        uki_path: "EFI/Linux/guest-os-a.efi".into(),
        uki: &uki,
    }];
    let m = measure::predict(
        "guest-os".parse().unwrap(),
        &"1.0.0".parse().unwrap(),
        &loader,
        &slots,
    )
    .unwrap();
    let s = m.slot(Some(plinth_release::Slot::A)).unwrap();
    let pcr4: Vec<_> = s.events.iter().filter(|e| e.pcr == 4).collect();
    assert_eq!(pcr4.len(), 5, "action, separator, loader, UKI, kernel");
    assert_eq!(
        pcr4[2].sha256,
        hex::encode(authenticode::sha256(&loader).unwrap())
    );
    assert_eq!(
        pcr4[3].sha256,
        hex::encode(authenticode::sha256(&uki).unwrap())
    );
    let stub = std::fs::read(DEFAULT_STUB).unwrap();
    assert_eq!(
        pcr4[4].sha256,
        hex::encode(authenticode::sha256(&stub).unwrap())
    );
    let d = options_digest();
    assert_eq!(s.pcrs[&12], hex::encode(pcr::replay([&d, &d])));
    assert_eq!(
        s.pcrs[&9],
        hex::encode(pcr::replay([&d, &pcr::digest(b"initrd bytes")]))
    );
    let stub_pcr11 = predict_pcr11(&uki).unwrap();
    assert_eq!(
        s.pcrs[&11],
        hex::encode(pcr11_after_phases(stub_pcr11, &["sysinit", "ready"]))
    );
    assert_eq!(
        s.pcrs[&7],
        "65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068"
    );
    assert!(s.later.iter().all(|e| e.pcr == 11) && s.later.len() == 2);
    assert!(m.not_predicted.iter().all(|n| !s.pcrs.contains_key(&n.pcr)));
}

#[test]
fn uki_started_by_the_firmware() {
    let uki = uki();
    let slots = [SlotFiles {
        slot: Some(plinth_release::Slot::A),
        uki_path: "EFI/Linux/guest-os-a.efi".into(),
        uki: &uki,
    }];
    let m = measure::predict(
        "guest-os".parse().unwrap(),
        &"1.0.0".parse().unwrap(),
        &uki,
        &slots,
    )
    .unwrap();
    let s = m.slot(Some(plinth_release::Slot::A)).unwrap();
    let pcr4: Vec<_> = s.events.iter().filter(|e| e.pcr == 4).collect();
    assert_eq!(pcr4.len(), 4, "action, separator, UKI, kernel");
    assert!(
        pcr4[2].what.starts_with("\\EFI\\BOOT\\BOOTX64.EFI"),
        "{}",
        pcr4[2].what
    );
    assert_eq!(
        s.pcrs[&12],
        hex::encode([0u8; 32]),
        "nothing passes options, nothing is measured"
    );
    assert!(m.not_predicted.iter().all(|n| n.pcr != 12));
    // The ESP's UKI must be one of the slots'.
    let other = SlotFiles {
        slot: Some(plinth_release::Slot::A),
        uki_path: "EFI/Linux/guest-os-a.efi".into(),
        uki: &uki[..uki.len() - 1],
    };
    let e = measure::predict(
        "guest-os".parse().unwrap(),
        &"1.0.0".parse().unwrap(),
        &uki,
        &[other],
    )
    .unwrap_err();
    assert!(e.to_string().contains("none of the slots' UKIs"), "{e}");
    let d = options_digest();
    assert_eq!(
        s.pcrs[&9],
        hex::encode(pcr::replay([&d, &pcr::digest(b"initrd bytes")]))
    );
}

#[test]
fn what_is_not_pe_is_named() {
    let slots = [SlotFiles {
        slot: None,
        uki_path: "EFI/Linux/setup-os.efi".into(),
        uki: b"not a PE",
    }];
    let loader = std::fs::read(SYSTEMD_BOOT).unwrap();
    let e = measure::predict(
        "setup-os".parse().unwrap(),
        &"1.0.0".parse().unwrap(),
        &loader,
        &slots,
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("EFI/Linux/setup-os.efi: "), "{e}");
}
