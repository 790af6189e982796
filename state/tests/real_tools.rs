//! The state volume's steps against the real tools: cryptsetup's LUKS2 headers classified as
//! plinth reads them (any user, image files), and, as root on a loop device with a swtpm,
//! creation's format and enrolment: systemd-cryptenroll seals a key slot to the TPM and wipes
//! the temporary one. Opening needs device-mapper, which only the VM boot tests have.

use plinth_state::derive::{self, Derive};
use plinth_state::header::{Content, LABEL_STATE};
use plinth_state::key::KeySource;
use plinth_state::volume::Volume;
use plinth_testkit::swtpm::{check, Loop, Tpm};
use std::path::{Path, PathBuf};
use std::process::Command;

const SIZE: u64 = 64 << 20;

fn volume(device: PathBuf, tcti: &str) -> Volume {
    Volume {
        device,
        size: SIZE,
        mapper: "plinth-state-test".into(),
        target: PathBuf::from("/nonexistent"),
        source: KeySource::parse(
            &format!("key_source=tpm2\ntpm2_device={tcti}\ntpm2_pcrs=7+11\n"),
            "test",
        )
        .unwrap(),
        wipe: None,
    }
}

/// A cut creation or wipe reads as torn (created again) with the mark, as somebody's data
/// without it.
fn torn_only_if_marked(v: &Volume, marked: bool) {
    let content = v.content().unwrap();
    if marked {
        assert_eq!(content, Content::Blank { torn: true });
    } else {
        assert!(matches!(content, Content::Foreign(_)), "{content:?}");
    }
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    path
}

#[test]
fn cryptsetups_own_headers_are_read_as_plinth_expects() {
    let dir = tempfile::tempdir().unwrap();
    let v = volume(image(dir.path(), "data.img"), "auto");
    assert_eq!(v.content().unwrap(), Content::Blank { torn: false });
    v.format(b"temporary").unwrap();
    assert_eq!(v.content().unwrap(), Content::Creating);
    v.relabel(LABEL_STATE).unwrap();
    assert_eq!(v.content().unwrap(), Content::State);
    v.relabel("backups").unwrap();
    let Content::Foreign(what) = v.content().unwrap() else {
        panic!("a volume labelled backups is not plinth's")
    };
    assert!(what.contains("`backups`"), "{what}");

    // The primary header destroyed: cryptsetup's secondary still names the volume.
    v.relabel(LABEL_STATE).unwrap();
    let mut bytes = std::fs::read(&v.device).unwrap();
    bytes[..4096].fill(0xaa);
    std::fs::write(&v.device, &bytes).unwrap();
    assert_eq!(v.content().unwrap(), Content::State);

    // The UUID a wipe request names is cryptsetup's; the wipe leaves a blank partition.
    let luks_uuid = check(
        "cryptsetup luksUUID",
        Command::new("cryptsetup")
            .arg("luksUUID")
            .arg(&v.device)
            .output(),
    );
    assert_eq!(
        v.uuid().unwrap().as_deref(),
        Some(String::from_utf8_lossy(&luks_uuid.stdout).trim())
    );
    v.wipe_volume().unwrap();
    assert_eq!(v.content().unwrap(), Content::Blank { torn: true });
    assert_eq!(v.uuid().unwrap(), None);
    let bytes = std::fs::read(&v.device).unwrap();
    assert!(bytes[..16 << 20].iter().all(|&b| b == 0));
    assert!(bytes[(16 << 20) + 512..32 << 20].iter().all(|&b| b == 0));

    // A format cut after cryptsetup filled the key slots with random bytes and before it wrote
    // a header (the headers' area zeroed, as cryptsetup does first): with plinth's mark it is
    // a creation to start again, without it somebody's data.
    for marked in [true, false] {
        std::fs::write(&v.device, vec![0u8; SIZE as usize]).unwrap();
        if marked {
            v.mark_creating().unwrap();
        }
        v.format(b"temporary").unwrap();
        let mut bytes = std::fs::read(&v.device).unwrap();
        bytes[..0x8000].fill(0);
        assert!(bytes[0x8000..16 << 20].iter().any(|&b| b != 0));
        std::fs::write(&v.device, &bytes).unwrap();
        torn_only_if_marked(&v, marked);
    }

    // A wipe cut by a power loss after its first MiB of zeros (both headers gone, key slots
    // and data left): the mark, written first, makes it a creation to start again.
    for marked in [true, false] {
        std::fs::write(&v.device, vec![0u8; SIZE as usize]).unwrap();
        v.format(b"temporary").unwrap();
        v.relabel(LABEL_STATE).unwrap();
        let mut bytes = std::fs::read(&v.device).unwrap();
        bytes[16 << 20..(16 << 20) + 4096].fill(0xc3);
        std::fs::write(&v.device, &bytes).unwrap();
        assert_eq!(v.content().unwrap(), Content::State);
        if marked {
            v.mark_creating().unwrap();
        }
        let mut bytes = std::fs::read(&v.device).unwrap();
        bytes[..1 << 20].fill(0);
        std::fs::write(&v.device, &bytes).unwrap();
        torn_only_if_marked(&v, marked);
    }

    // Somebody's ext4: foreign, and left alone.
    let other = volume(image(dir.path(), "ext4.img"), "auto");
    check(
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&other.device)
            .output(),
    );
    let before = std::fs::read(&other.device).unwrap();
    assert!(matches!(other.content().unwrap(), Content::Foreign(_)));
    assert_eq!(std::fs::read(&other.device).unwrap(), before);
}

#[test]
fn creation_seals_a_key_slot_to_the_tpm_and_wipes_the_temporary_one() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the LUKS2 volume needs a loop device (root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tpm = Tpm::start(dir.path());
    let device = Loop::attach(&image(dir.path(), "data.img"));
    let v = volume(PathBuf::from(&device.0), &tpm.tcti);
    v.format(b"0123456789abcdef").unwrap();
    let KeySource::Tpm2(sealed) = &v.source else {
        panic!("a tpm2 source")
    };
    v.enroll(sealed, b"0123456789abcdef").unwrap();
    let dump = check(
        "cryptsetup luksDump",
        Command::new("cryptsetup")
            .args(["luksDump", "--dump-json-metadata", &device.0])
            .output(),
    );
    let meta: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let slots: Vec<&String> = meta["keyslots"].as_object().unwrap().keys().collect();
    assert_eq!(slots, ["1"], "the temporary slot 0 is wiped: {meta}");
    let token = &meta["tokens"]["0"];
    assert_eq!(token["type"], "systemd-tpm2", "{meta}");
    // What systemd-cryptenroll leaves is a header plinth-state opens.
    v.checked_metadata().unwrap();
    assert_eq!(token["tpm2-pcrs"], serde_json::json!([7, 11]), "{meta}");
    // The temporary key opens nothing any more.
    let out = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file=-", &device.0])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    tpm.flush();
}

/// Where the derivation's private scratch directories go (the initrd's /run, which tests
/// may not write): the same for every test, so that parallel tests agree.
fn runtime_dir() {
    std::env::set_var("PLINTH_STATE_RUNTIME_DIR", std::env::temp_dir());
}

/// The tpm2-hmac key material of the TPM at `tcti`.
fn hmac_ikm(tcti: &str) -> Vec<u8> {
    let source = Derive::TpmHmac { tcti: tcti.into() };
    let (ikm, token) = source.ikm(None).unwrap();
    assert_eq!(token, None);
    ikm.to_vec()
}

#[test]
fn the_test_key_source_derives_per_tpm_and_per_pcr_11() {
    let dir = tempfile::tempdir().unwrap();
    runtime_dir();
    let one = Tpm::start(&dir.path().join("one"));
    let first = hmac_ikm(&one.tcti);
    assert_eq!(first.len(), 32);
    // Nothing stored: the same TPM and PCR 11 give the same key again.
    assert_eq!(hmac_ikm(&one.tcti), first);
    let uuid = "0b2d2c0e-1111-4222-8333-444455556666";
    assert_eq!(
        *derive::volume_key(&first, uuid),
        *derive::volume_key(&hmac_ikm(&one.tcti), uuid)
    );
    // Another TPM (another machine's owner seed) derives another key.
    let other = Tpm::start(&dir.path().join("other"));
    assert_ne!(hmac_ikm(&other.tcti), first);
    // So does another UKI: PCR 11 extended once more.
    one.tools(
        "tpm2_pcrextend",
        &[&format!("11:sha256={}", "ab".repeat(32))],
    );
    let changed = hmac_ikm(&one.tcti);
    assert_ne!(changed, first);
    assert_eq!(hmac_ikm(&one.tcti), changed);
    // A TPM that is not there is a named error.
    let gone = Derive::TpmHmac {
        tcti: format!("swtpm:path={}", dir.path().join("none.sock").display()),
    };
    let e = gone.ikm(None).unwrap_err().to_string();
    assert!(e.contains("tpm2_pcrread failed"), "{e}");
    one.flush();
    other.flush();
}

#[test]
fn a_derived_key_opens_only_the_volume_it_was_derived_for() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the LUKS2 volume needs a loop device (root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    runtime_dir();
    let tpm = Tpm::start(&dir.path().join("tpm"));
    let other = Tpm::start(&dir.path().join("other"));
    let device = Loop::attach(&image(dir.path(), "data.img"));
    let mut v = volume(PathBuf::from(&device.0), &tpm.tcti);
    v.source = KeySource::Derived(Derive::TpmHmac {
        tcti: tpm.tcti.clone(),
    });
    let uuid = "0b2d2c0e-1111-4222-8333-444455556666";
    let key = derive::volume_key(&hmac_ikm(&tpm.tcti), uuid);
    v.format_as(&key, Some(uuid)).unwrap();
    assert_eq!(v.uuid().unwrap().as_deref(), Some(uuid));
    let opens = |key: &[u8]| {
        let mut child = Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file=-", &device.0])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(key).unwrap();
        child.wait().unwrap().success()
    };
    assert!(opens(&key));
    // The same TPM's key for another volume, and another TPM's for this one, do not.
    let tpm_ikm = hmac_ikm(&tpm.tcti);
    assert!(!opens(&derive::volume_key(
        &tpm_ikm,
        "0b2d2c0e-1111-4222-8333-444455556667"
    )));
    assert!(!opens(&derive::volume_key(&hmac_ikm(&other.tcti), uuid)));
    v.checked_metadata().unwrap();
    // The SNP source's token: none yet, then the TCB recorded, read back from the header.
    assert_eq!(v.recorded_token().unwrap(), None);
    let token = derive::SnpToken {
        tcb: 0xdb18_0000_0000_0003,
    };
    v.import_token(token).unwrap();
    assert_eq!(v.recorded_token().unwrap(), Some(token));
    assert!(opens(&key), "the token changes no key slot");
    // A token the volume's own source never writes makes its header suspect.
    let e = v.checked_metadata().unwrap_err().to_string();
    assert!(e.contains("a token of type `plinth-snp`"), "{e}");
    tpm.flush();
    other.flush();
}

#[test]
fn a_held_partition_is_neither_marked_nor_wiped() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: holding a partition needs a loop device (root)");
        return;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = image(dir.path(), "data.img");
    std::fs::write(&file, vec![0x5a; 1 << 20]).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let before = std::fs::read(&file).unwrap();
    let device = Loop::attach(&file);
    // Another exclusive opener, as a mount or an open dm-crypt mapping holds a partition.
    let _holder = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(&device.0)
        .unwrap();
    let v = volume(PathBuf::from(&device.0), "auto");
    for (what, result) in [("mark", v.mark_creating()), ("wipe", v.wipe_volume())] {
        let err = result.expect_err(what).to_string();
        assert!(
            err.contains(&device.0) && err.to_lowercase().contains("busy"),
            "{what}: {err}"
        );
    }
    drop(_holder);
    drop(device);
    assert!(
        std::fs::read(&file).unwrap() == before,
        "the held partition was written"
    );
}
