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
            pcrpkey: &[],
            pcrsig: &[],
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

/// A UKI with a signed PCR policy: its initrd runs pcrphase (four phases), the stub hands
/// Linux `.pcrsig` and `.pcrpkey` as cpio archives after the initrd (PCR 9), and the PCR 11
/// and 12 the release key signs are those of the initrd phase.
#[test]
fn a_signed_uki() {
    let loader = std::fs::read(SYSTEMD_BOOT).unwrap();
    let stub = std::fs::read(DEFAULT_STUB).unwrap();
    let (pcrpkey, pcrsig) = (b"PEM".as_slice(), b"{\"sha256\":[]}".as_slice());
    let signed = build_uki(
        &stub,
        &UkiSections {
            osrel: b"IMAGE_ID=host-os\n",
            cmdline: CMDLINE,
            uname: "6.1.0-99-amd64",
            linux: &stub,
            initrd: b"initrd bytes",
            pcrpkey,
            pcrsig,
        },
    )
    .unwrap();
    let slots = [SlotFiles {
        slot: Some(plinth_release::Slot::A),
        uki_path: "EFI/Linux/host-os-a.efi".into(),
        uki: &signed,
    }];
    let m = measure::predict(
        "host-os".parse().unwrap(),
        &"1.0.0".parse().unwrap(),
        &loader,
        &slots,
    )
    .unwrap();
    let s = m.slot(Some(plinth_release::Slot::A)).unwrap();
    let phases: Vec<&str> = s.later.iter().map(|e| e.what.as_str()).collect();
    assert_eq!(
        phases,
        [
            "systemd-pcrphase: enter-initrd",
            "systemd-pcrphase: leave-initrd",
            "systemd-pcrphase: sysinit",
            "systemd-pcrphase: ready"
        ]
    );
    // `.pcrpkey` is measured, `.pcrsig` is not.
    let stub_pcr11 = predict_pcr11(&signed).unwrap();
    assert!(s
        .events
        .iter()
        .any(|e| e.what == "systemd-stub: .pcrpkey section name"));
    assert!(!s.events.iter().any(|e| e.what.contains(".pcrsig")));
    // PCR 9: the initrd (12 bytes, no padding), then the two archives.
    let handed = plinth_firmware::systemd_stub::stub_initrd(&signed).unwrap();
    assert_eq!(&handed[..12], b"initrd bytes");
    let text = String::from_utf8_lossy(&handed[12..]).into_owned();
    let sig_at = text.find(".extra/tpm2-pcr-signature.json").unwrap();
    let key_at = text.find(".extra/tpm2-pcr-public-key.pem").unwrap();
    assert!(sig_at < key_at, "the signature's archive comes first");
    assert_eq!(text.matches("TRAILER!!!").count(), 2);
    let d = options_digest();
    assert_eq!(
        s.pcrs[&9],
        hex::encode(pcr::replay([&d, &pcr::digest(&handed)]))
    );
    // What the release key signs: PCR 11 in the initrd, and PCR 12 (whole by then).
    let initrd = measure::initrd_pcrs(&signed, true).unwrap();
    assert_eq!(
        initrd[&11],
        pcr11_after_phases(stub_pcr11, &["enter-initrd"])
    );
    assert_eq!(s.pcrs[&12], hex::encode(initrd[&12]));
    // Signing does not change what is signed.
    let unsigned = build_uki(
        &stub,
        &UkiSections {
            osrel: b"IMAGE_ID=host-os\n",
            cmdline: CMDLINE,
            uname: "6.1.0-99-amd64",
            linux: &stub,
            initrd: b"initrd bytes",
            pcrpkey,
            pcrsig: &[],
        },
    )
    .unwrap();
    assert_eq!(measure::initrd_pcrs(&unsigned, true).unwrap(), initrd);
}
