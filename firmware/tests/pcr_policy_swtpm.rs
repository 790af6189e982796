//! The signed PCR policy against the real thing: a swtpm, tpm2-tools and systemd 252's own
//! enrolment. The PolicyPCR digest computed without a TPM must equal the TPM's own (any user),
//! and `systemd-cryptenroll` (which unseals once before it writes the key slot) must accept a
//! LUKS2 enrolment bound to the release key through the signature file plinth writes, and
//! refuse it once a signed PCR holds another value (root: a loop device). Needs the host
//! tools ci/setup installs: swtpm, tpm2-tools, cryptsetup-bin, systemd.

use plinth_firmware::pcr;
use plinth_firmware::pcr_policy::{self, PcrValues, ReleaseKey};
use plinth_testkit::swtpm::{check, Loop, Tpm};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn release_key() -> ReleaseKey {
    use rand_chacha::rand_core::SeedableRng;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(20);
    let private = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    ReleaseKey::from_pem(&private.to_pkcs8_pem(LineEnding::LF).unwrap(), "test key").unwrap()
}

/// `systemd-cryptenroll` binding `device` to the release key's signed policy over PCRs 11
/// and 12 (no PCR bound directly), unlocking with `passphrase`.
fn enroll(tpm: &Tpm, device: &str, public: &Path, signature: &Path, passphrase: &str) -> Output {
    Command::new("systemd-cryptenroll")
        .arg(format!("--tpm2-device={}", tpm.tcti))
        .arg(format!("--tpm2-public-key={}", public.display()))
        .arg("--tpm2-public-key-pcrs=11+12")
        .arg(format!("--tpm2-signature={}", signature.display()))
        .arg("--tpm2-pcrs=")
        .arg(device)
        .env("PASSWORD", passphrase)
        .output()
        .expect("systemd-cryptenroll (systemd)")
}

/// A 32 MiB LUKS2 volume on a loop device over `dir/name`, unlocked by `passphrase` (PBKDF2
/// with few iterations: the test's time goes to the TPM, not the KDF).
fn luks_volume(dir: &Path, name: &str, passphrase: &str) -> Loop {
    let image = dir.join(name);
    std::fs::File::create(&image)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let device = Loop::attach(&image);
    let mut format = Command::new("cryptsetup")
        .args([
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
        ])
        .args([
            "--pbkdf-force-iterations",
            "1000",
            "--key-file=-",
            &device.0,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cryptsetup (cryptsetup-bin)");
    use std::io::Write as _;
    format
        .stdin
        .take()
        .unwrap()
        .write_all(passphrase.as_bytes())
        .unwrap();
    check("cryptsetup luksFormat", format.wait_with_output());
    device
}

/// A fresh TPM in `dir` with PCRs 11 and 12 extended as a boot would leave them, and their
/// values predicted alongside (checked against the TPM's), then the PolicyPCR digest computed
/// here checked against the TPM's own.
fn tpm_with_pcrs(dir: &Path) -> (Tpm, PcrValues) {
    let tpm = Tpm::start(dir);

    // PCRs 11 and 12 as a boot would leave them, predicted alongside.
    let events = [
        (11u32, pcr::digest(b"enter-initrd")),
        (12, pcr::digest(b"cmdline")),
    ];
    let mut expected = PcrValues::new();
    for (index, digest) in &events {
        tpm.tools(
            "tpm2_pcrextend",
            &[&format!("{index}:sha256={}", hex::encode(digest))],
        );
        expected.insert(*index, pcr::extend([0; 32], digest));
    }
    let read = dir.join("pcrs.bin");
    tpm.tools(
        "tpm2_pcrread",
        &["sha256:11,12", "-o", read.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(&read).unwrap(),
        [expected[&11], expected[&12]].concat()
    );

    // The policy digest computed here is the TPM's own.
    let session = dir.join("trial.ctx");
    let policy = dir.join("pcr.policy");
    let session_arg = session.to_str().unwrap();
    tpm.tools("tpm2_startauthsession", &["-S", session_arg]);
    tpm.tools(
        "tpm2_policypcr",
        &[
            "-S",
            session_arg,
            "-l",
            "sha256:11,12",
            "-L",
            policy.to_str().unwrap(),
        ],
    );
    tpm.tools("tpm2_flushcontext", &[session_arg]);
    assert_eq!(
        std::fs::read(&policy).unwrap(),
        pcr_policy::policy_pcr(&expected).unwrap()
    );
    (tpm, expected)
}

#[test]
fn the_policy_digest_is_the_tpms_own() {
    let dir = tempfile::tempdir().unwrap();
    let (_tpm, expected) = tpm_with_pcrs(dir.path());
    assert_eq!(expected.keys().copied().collect::<Vec<_>>(), [11, 12]);
}

#[test]
fn systemd_enrols_luks2_under_the_policy_plinth_signs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the LUKS2 volume needs a loop device (root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (tpm, expected) = tpm_with_pcrs(dir.path());

    // A LUKS2 volume enrolled through the signature; systemd unseals before it writes.
    let key = release_key();
    let public = dir.path().join("release.pem");
    std::fs::write(&public, key.public_pem().unwrap()).unwrap();
    let signature = dir.path().join("tpm2-pcr-signature.json");
    let signed = key.sign(&expected).unwrap();
    std::fs::write(&signature, pcr_policy::signature_json(&[signed])).unwrap();
    let passphrase = "first-boot key";
    let device = luks_volume(dir.path(), "state.img", passphrase);
    let out = enroll(&tpm, &device.0, &public, &signature, passphrase);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("New TPM2 token enrolled as key slot 1."),
        "{text}"
    );
    let dump = check(
        "cryptsetup luksDump",
        Command::new("cryptsetup")
            .args(["luksDump", &device.0])
            .output(),
    );
    let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(
        dump.contains("systemd-tpm2") && dump.contains("tpm2-pubkey"),
        "{dump}"
    );
    tpm.flush();

    // Once PCR 11 holds another value, the signature covers nothing the TPM has: refused.
    tpm.tools(
        "tpm2_pcrextend",
        &[&format!(
            "11:sha256={}",
            hex::encode(pcr::digest(b"tampered"))
        )],
    );
    let other = luks_volume(dir.path(), "other.img", passphrase);
    let out = enroll(&tpm, &other.0, &public, &signature, passphrase);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "enrolled with a stale signature:\n{text}"
    );
    assert!(text.contains("Couldn't find signature"), "{text}");
    tpm.flush();
}
