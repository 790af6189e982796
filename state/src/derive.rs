//! Keys the node derives instead of sealing: the same 32 bytes on every boot of the same
//! machine and software, nothing stored beside the volume but what the derivation may know.
//!
//! - [`Derive::Snp`] (GuestOS under SEV-SNP): the AMD secure processor's derived key
//!   (`MSG_KEY_REQ` through `/dev/sev-guest`, the `sev` crate, message version 1), rooted in
//!   the chip's VCEK and mixed with the guest's policy, launch measurement and a TCB version.
//!   Another chip, another policy or another measurement (any other firmware, kernel, initrd
//!   or command line) gets another key. The TCB is the platform's committed TCB when the
//!   volume is created, recorded in the volume's LUKS2 token `plinth-snp` ([`SnpToken`]) and
//!   asked for again on every later boot: the firmware derives for any TCB up to its
//!   committed one, so a firmware update does not lose the state. The token is the host's to
//!   write, so a recorded TCB is checked ([`check_tcb`]): not newer than the committed one,
//!   and not older than the release's floor (`snp_min_tcb` in the verity root), so that a key
//!   older, vulnerable firmware could have derived does not open a volume the host prepared.
//!   Re-keying to a newer TCB belongs to the upgrade.
//! - [`Derive::TpmHmac`] (GuestOS's `test` profile: TCG has no SNP): an HMAC key the TPM
//!   derives from its owner seed (a primary key, made again each time from the same template,
//!   so nothing is stored), applied to PCR 11 (the UKI the stub measured), through
//!   tpm2-tools. Another TPM (another machine) or another UKI gets another key. It stands in
//!   for the chip's key in tests; in the `prod` profile the source is `snp`, fixed in the
//!   verity root, and there is no fallback.
//!
//! Either output is the input key material of HKDF-SHA256 with the info
//! `plinth-state-v1` ‖ the volume's LUKS UUID: the 32 bytes that open the volume
//! (`cryptsetup --key-file=-`). They never reach argv, a file or the console.

use crate::key::Secret;
use std::io::Write;
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

/// The HKDF info's prefix: a new derivation scheme gets a new one.
const INFO: &[u8] = b"plinth-state-v1";
/// The LUKS2 token type that records the SNP derivation's TCB.
pub const SNP_TOKEN: &str = "plinth-snp";
/// The committed TCB in an SEV-SNP attestation report (SNP ABI, table "ATTESTATION_REPORT"):
/// the newest the platform cannot be rolled back from, and the most a key may be derived for.
const REPORT_COMMITTED_TCB: std::ops::Range<usize> = 0x1e0..0x1e8;
/// The message PCR 11's value is prefixed with for the TPM's HMAC.
const HMAC_LABEL: &[u8] = b"plinth-state-v1 pcr11 ";

/// Where the input key material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Derive {
    /// The SEV-SNP derived key; a volume whose recorded TCB is below `min_tcb` (in any
    /// component) is refused: a key older, vulnerable firmware could have derived.
    Snp { min_tcb: Option<u64> },
    /// The TPM's HMAC of PCR 11, through tpm2-tools with this TCTI (`device:/dev/tpmrm0`).
    TpmHmac { tcti: String },
}

/// Why no key could be derived.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error("/dev/sev-guest: {0} (not an SEV-SNP guest, or no sev-guest driver)\n  hint: the snp key source needs an SEV-SNP guest; under TCG, boot a test profile, whose key source is the TPM's")]
    NoSnp(std::io::Error),
    #[error("the SEV-SNP firmware refused the {what} request: {detail}")]
    Snp { what: &'static str, detail: String },
    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },
    #[error("the volume's `{SNP_TOKEN}` token is not valid: {0}")]
    Token(String),
}

/// The derivation's parameters recorded in the volume's LUKS2 header (not secret): the TCB
/// version an SNP key was derived for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpToken {
    pub tcb: u64,
}

impl SnpToken {
    /// The token's JSON, for `cryptsetup token import` (no key slot: it opens nothing).
    pub fn to_json(self) -> String {
        format!(
            "{{\"type\":\"{SNP_TOKEN}\",\"keyslots\":[],\"tcb\":\"{:016x}\"}}",
            self.tcb
        )
    }

    /// The token among the LUKS2 metadata (`cryptsetup luksDump --dump-json-metadata`);
    /// `None` when there is none.
    pub fn from_metadata(json: &str) -> Result<Option<SnpToken>, DeriveError> {
        let bad = |m: &str| DeriveError::Token(m.to_string());
        let meta: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(&format!("the metadata: {e}")))?;
        let tokens = meta["tokens"].as_object().into_iter().flatten();
        let mut found = None;
        for (_, token) in tokens {
            if token["type"] != SNP_TOKEN {
                continue;
            }
            if found.is_some() {
                return Err(bad("there are two"));
            }
            let hex = token["tcb"]
                .as_str()
                .ok_or_else(|| bad("no `tcb` string"))?;
            if hex.len() != 16 {
                return Err(bad("`tcb` is not 16 hexadecimal digits"));
            }
            let tcb = u64::from_str_radix(hex, 16)
                .map_err(|_| bad("`tcb` is not 16 hexadecimal digits"))?;
            found = Some(SnpToken { tcb });
        }
        Ok(found)
    }
}

/// The volume's key: HKDF-SHA256 of `ikm` for the volume `uuid`.
pub fn volume_key(ikm: &[u8], uuid: &str) -> Secret {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, ikm);
    let mut okm = Zeroizing::new(vec![0u8; 32]);
    let info = [INFO, b"\0", uuid.as_bytes()].concat();
    hk.expand(&info, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 length");
    okm
}

impl Derive {
    /// Its name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Derive::Snp { .. } => "snp",
            Derive::TpmHmac { .. } => "tpm2-hmac",
        }
    }

    /// The input key material, with the SNP token to record (when creating: `token` is
    /// `None`, and the SNP source reads this boot's launch TCB) or the one recorded.
    pub fn ikm(&self, token: Option<SnpToken>) -> Result<(Secret, Option<SnpToken>), DeriveError> {
        match self {
            Derive::Snp { min_tcb } => {
                let (key, token) = snp_key(token, *min_tcb)?;
                Ok((key, Some(token)))
            }
            Derive::TpmHmac { tcti } => Ok((tpm_hmac(tcti)?, None)),
        }
    }
}

/// The committed TCB in an attestation report's bytes.
pub fn committed_tcb(report: &[u8]) -> Option<u64> {
    report
        .get(REPORT_COMMITTED_TCB)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// Whether the TCB version `a` is at least `b` in every component. Each component is one
/// byte of the TCB_VERSION (boot loader, TEE, SNP, microcode; on Turin also FMC), at places
/// that differ between generations, and the bytes between them are zero: comparing byte by
/// byte needs no generation.
pub fn tcb_at_least(a: u64, b: u64) -> bool {
    a.to_le_bytes()
        .iter()
        .zip(b.to_le_bytes())
        .all(|(x, y)| *x >= y)
}

/// What the SNP key mixes in: the guest policy, the launch measurement, the TCB version.
pub fn snp_fields() -> sev::firmware::guest::GuestFieldSelect {
    let mut fields = sev::firmware::guest::GuestFieldSelect::default();
    fields.set_guest_policy(true);
    fields.set_measurement(true);
    fields.set_tcb_version(true);
    fields
}

fn snp_key(
    token: Option<SnpToken>,
    min_tcb: Option<u64>,
) -> Result<(Secret, SnpToken), DeriveError> {
    use sev::firmware::guest::{DerivedKey, Firmware};
    wait_for_sev_guest();
    let mut fw = Firmware::open().map_err(DeriveError::NoSnp)?;
    let report = fw
        .get_report(Some(1), Some([0u8; 64]), Some(0))
        .map_err(|e| DeriveError::Snp {
            what: "attestation report",
            detail: e.to_string(),
        })?;
    let committed = committed_tcb(&report).ok_or_else(|| DeriveError::Snp {
        what: "attestation report",
        detail: format!("the report is {} bytes, too short", report.len()),
    })?;
    let token = check_tcb(token, committed, min_tcb)?;
    // VCEK (false), VMPL 0, guest SVN 0; message version 1, which takes no mitigation vector.
    let request = DerivedKey::new(false, snp_fields(), 0, 0, token.tcb, None);
    let key = fw
        .get_derived_key(Some(1), request)
        .map_err(|e| DeriveError::Snp {
            what: "derived key",
            detail: e.to_string(),
        })?;
    let mut key = Zeroizing::new(key);
    let out = Zeroizing::new(key.to_vec());
    zeroize::Zeroize::zeroize(&mut *key);
    Ok((out, token))
}

/// The TCB to derive for: a new volume's is the committed one; a recorded one must be at
/// least `min_tcb` (the release's floor) and at most the committed one (the firmware derives
/// for nothing newer), in every component.
pub fn check_tcb(
    token: Option<SnpToken>,
    committed: u64,
    min_tcb: Option<u64>,
) -> Result<SnpToken, DeriveError> {
    let Some(token) = token else {
        return Ok(SnpToken { tcb: committed });
    };
    if let Some(min) = min_tcb.filter(|min| !tcb_at_least(token.tcb, *min)) {
        return Err(DeriveError::Token(format!(
            "its TCB {:016x} is older than this release's floor snp_min_tcb={min:016x}: a key that firmware could derive is not trusted",
            token.tcb
        )));
    }
    if !tcb_at_least(committed, token.tcb) {
        return Err(DeriveError::Token(format!(
            "its TCB {:016x} is newer than the platform's committed TCB {committed:016x}",
            token.tcb
        )));
    }
    Ok(token)
}

/// The SEV guest device: udev loads its driver (the initrd carries `sev-guest`) when the
/// kernel finds the SNP platform device, which may be after this service starts; the driver
/// is asked for once, and the device waited for a few seconds. Without SEV-SNP it never
/// appears, and opening it names that.
fn wait_for_sev_guest() {
    let device = std::path::Path::new("/dev/sev-guest");
    if device.exists() {
        return;
    }
    let _ = Command::new("modprobe")
        .arg("sev-guest")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !device.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Run a tpm2-tools command with `tcti`, writing `stdin`; its stdout.
fn tpm2(tcti: &str, args: &[&str], stdin: &[u8]) -> Result<Zeroizing<Vec<u8>>, DeriveError> {
    let tool = args[0].to_string();
    let fail = |detail: String| DeriveError::Tool {
        tool: tool.clone(),
        detail,
    };
    let mut child = Command::new(args[0])
        .args(&args[1..])
        .env("TPM2TOOLS_TCTI", tcti)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let stdout = Zeroizing::new(out.stdout);
    if out.status.success() {
        Ok(stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let last: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        Err(fail(format!(
            "{} ({})",
            last[last.len().saturating_sub(2)..].join(" / "),
            out.status
        )))
    }
}

/// The TPM's HMAC of PCR 11 under its owner-seed HMAC primary.
fn tpm_hmac(tcti: &str) -> Result<Secret, DeriveError> {
    // The kernel's TPM device appears with its driver; wait a little for it, as for SNP's.
    if let Some(device) = tcti.strip_prefix("device:") {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !std::path::Path::new(device).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let dir = tempdir()?;
    let ctx = dir.path.join("hmac.ctx");
    let ctx = ctx.to_str().expect("a UTF-8 path");
    let pcr = tpm2(
        tcti,
        &["tpm2_pcrread", "sha256:11", "-o", "/dev/stdout", "-Q"],
        b"",
    )?;
    if pcr.len() != 32 {
        return Err(DeriveError::Tool {
            tool: "tpm2_pcrread".into(),
            detail: format!("PCR 11 read as {} bytes, not 32", pcr.len()),
        });
    }
    tpm2(
        tcti,
        &[
            "tpm2_createprimary",
            "-Q",
            "-C",
            "o",
            "-G",
            "hmac",
            "-g",
            "sha256",
            // A signing key: the default attributes are a storage parent's (restricted,
            // decrypt), which an HMAC key cannot have.
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
            "-c",
            ctx,
        ],
        b"",
    )?;
    // Each tool leaves its transient objects loaded on a TPM without a resource manager (a
    // swtpm socket; the kernel's /dev/tpmrm0 flushes them when the tool exits), and a TPM
    // holds only a few: flushed after each step. The saved context still loads.
    flush_transient(tcti)?;
    let message = [HMAC_LABEL, &pcr[..]].concat();
    let mac = tpm2(
        tcti,
        &["tpm2_hmac", "-c", ctx, "-g", "sha256", "-o", "/dev/stdout"],
        &message,
    );
    let flushed = flush_transient(tcti);
    let mac = mac?;
    flushed?;
    if mac.len() != 32 {
        return Err(DeriveError::Tool {
            tool: "tpm2_hmac".into(),
            detail: format!("the HMAC is {} bytes, not 32", mac.len()),
        });
    }
    Ok(mac)
}

/// Flush the transient objects this connection holds.
fn flush_transient(tcti: &str) -> Result<(), DeriveError> {
    tpm2(tcti, &["tpm2_flushcontext", "-t"], b"").map(|_| ())
}

/// A private (0700) scratch directory under /run, removed on drop.
struct TempDir {
    path: std::path::PathBuf,
}

fn tempdir() -> Result<TempDir, DeriveError> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::var_os("PLINTH_STATE_RUNTIME_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/run".into());
    let name = hex::encode(&*crate::key::random_key(8).map_err(|e| DeriveError::Tool {
        tool: "/dev/urandom".into(),
        detail: e.to_string(),
    })?);
    let path = base.join(format!("plinth-state-{name}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(|e| DeriveError::Tool {
            tool: "mkdir".into(),
            detail: format!("{}: {e}", path.display()),
        })?;
    Ok(TempDir { path })
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_key_is_hkdf_of_the_key_material_and_the_uuid() {
        let a = volume_key(&[7u8; 32], "0b2d2c0e-1111-4222-8333-444455556666");
        assert_eq!(a.len(), 32);
        assert_eq!(
            *a,
            *volume_key(&[7u8; 32], "0b2d2c0e-1111-4222-8333-444455556666")
        );
        assert_ne!(
            *a,
            *volume_key(&[8u8; 32], "0b2d2c0e-1111-4222-8333-444455556666")
        );
        assert_ne!(
            *a,
            *volume_key(&[7u8; 32], "0b2d2c0e-1111-4222-8333-444455556667")
        );
        // RFC 5869's construction, checked against an independent HMAC computation of the
        // first block: T(1) = HMAC(PRK, info || 0x01), PRK = HMAC(zeros, IKM).
        use hmac::{Mac, SimpleHmac};
        let mut prk = SimpleHmac::<sha2::Sha256>::new_from_slice(&[0u8; 32]).unwrap();
        prk.update(&[7u8; 32]);
        let prk = prk.finalize().into_bytes();
        let mut t1 = SimpleHmac::<sha2::Sha256>::new_from_slice(&prk).unwrap();
        t1.update(b"plinth-state-v1\x000b2d2c0e-1111-4222-8333-444455556666\x01");
        assert_eq!(&a[..], &t1.finalize().into_bytes()[..]);
    }

    #[test]
    fn the_snp_key_mixes_policy_measurement_and_tcb() {
        let f = snp_fields();
        assert!(f.get_guest_policy() && f.get_measurement() && f.get_tcb_version());
        assert!(!f.get_image_id() && !f.get_family_id() && !f.get_svn());
        assert!(!f.get_launch_mit_vector());
    }

    #[test]
    fn the_committed_tcb_is_read_from_its_place_in_the_report() {
        let mut report = vec![0u8; 0x4a0];
        report[0x1e0..0x1e8].copy_from_slice(&0x1b00_0000_0000_0315u64.to_le_bytes());
        report[0x1f0..0x1f8].copy_from_slice(&0x1c00_0000_0000_0315u64.to_le_bytes());
        assert_eq!(committed_tcb(&report), Some(0x1b00_0000_0000_0315));
        assert_eq!(committed_tcb(&report[..0x1e4]), None);
    }

    #[test]
    fn recorded_tcbs_are_checked_component_by_component() {
        // Milan's layout: microcode, SNP, (reserved), TEE, boot loader from the top byte.
        let committed = 0xd515_0000_0000_0004u64;
        assert_eq!(check_tcb(None, committed, None).unwrap().tcb, committed);
        let older = SnpToken {
            tcb: 0xd315_0000_0000_0003,
        };
        assert_eq!(check_tcb(Some(older), committed, None).unwrap(), older);
        assert_eq!(
            check_tcb(Some(older), committed, Some(0xd315_0000_0000_0003)).unwrap(),
            older
        );
        // Below the floor in one component (the boot loader), though larger as a number.
        let e = check_tcb(Some(older), committed, Some(0x0000_0000_0000_0004)).unwrap_err();
        assert!(
            e.to_string().contains("older than this release's floor"),
            "{e}"
        );
        // Newer than committed in one component.
        let newer = SnpToken {
            tcb: 0xd415_0000_0000_0005,
        };
        let e = check_tcb(Some(newer), committed, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("newer than the platform's committed"),
            "{e}"
        );
        assert!(tcb_at_least(committed, committed) && !tcb_at_least(0x01, 0x0100));
    }

    #[test]
    fn the_snp_token_round_trips_and_bad_ones_are_named() {
        let token = SnpToken {
            tcb: 0xd315_0000_0000_0004,
        };
        let meta = format!(
            "{{\"keyslots\":{{}},\"tokens\":{{\"0\":{{\"type\":\"systemd-tpm2\"}},\"1\":{}}}}}",
            token.to_json()
        );
        assert_eq!(SnpToken::from_metadata(&meta).unwrap(), Some(token));
        assert_eq!(SnpToken::from_metadata("{\"tokens\":{}}").unwrap(), None);
        for (bad, why) in [
            (
                "{\"tokens\":{\"0\":{\"type\":\"plinth-snp\",\"tcb\":\"12\"}}}",
                "16 hexadecimal",
            ),
            (
                "{\"tokens\":{\"0\":{\"type\":\"plinth-snp\",\"tcb\":4}}}",
                "no `tcb`",
            ),
            (
                "{\"tokens\":{\"0\":{\"type\":\"plinth-snp\",\"tcb\":\"zzzzzzzzzzzzzzzz\"}}}",
                "16 hexadecimal",
            ),
            ("not json", "the metadata"),
        ] {
            let e = SnpToken::from_metadata(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let two = format!(
            "{{\"tokens\":{{\"0\":{},\"1\":{}}}}}",
            token.to_json(),
            token.to_json()
        );
        assert!(SnpToken::from_metadata(&two)
            .unwrap_err()
            .to_string()
            .contains("two"));
    }

    #[test]
    fn without_sev_guest_the_snp_source_says_so() {
        if std::path::Path::new("/dev/sev-guest").exists() {
            return;
        }
        let e = Derive::Snp { min_tcb: None }
            .ikm(None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/sev-guest") && e.contains("SEV-SNP guest"),
            "{e}"
        );
    }
}
