//! The state volume's steps against the real tools: cryptsetup's LUKS2 headers classified as
//! plinth reads them (any user, image files), and, as root on a loop device with a swtpm,
//! creation's format and enrolment: systemd-cryptenroll seals a key slot to the TPM and wipes
//! the temporary one. Opening needs device-mapper, which only the VM boot tests have.

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
    assert_eq!(v.content().unwrap(), Content::Blank { torn: false });
    assert_eq!(v.uuid().unwrap(), None);

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
    v.enroll(b"0123456789abcdef").unwrap();
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
