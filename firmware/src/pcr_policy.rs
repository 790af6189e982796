//! The TPM 2.0 policy a HostOS's sealed state will be bound to, computed without a TPM: the
//! PolicyPCR digest of a set of SHA-256 PCR values, and the signed PCR policy of systemd 252
//! (`tpm2-pcr-signature.json`, a UKI's `.pcrsig`), by which a release key authorizes the PCR
//! values of each release it signs (TPM2_PolicyAuthorize), so that sealed state survives an
//! approved upgrade without re-enrolment. See docs/state-design.md.
//!
//! systemd 252's `systemd-measure sign` cannot make these in a build: it needs a TPM, even to
//! sign, and signs PCR 11 alone, while with Secure Boot off the stub measures a replaced
//! command line into PCR 12. The format, as systemd 252 reads it (`find_signature` in
//! src/shared/tpm2-util.c): `{"sha256":[{"pcrs":[11,12],"pkfp":HEX,"pol":HEX,"sig":BASE64}]}`,
//! where `pol` is the PolicyPCR digest, `sig` the RSASSA-PKCS1-v1_5 SHA-256 signature of
//! `pol`, and `pkfp` the sha256 of the key's PKCS#1 `RSAPublicKey` DER. An entry matches a
//! TPM enrolment only if its PCR list equals the enrolled mask.

use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;

/// TPM_CC_PolicyPCR.
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;
/// TPM_ALG_SHA256.
const TPM_ALG_SHA256: u16 = 0x000B;
/// Bytes of a PCR selection bitmap (PCRs 0 to 23), as systemd and tpm2-tools write it.
const SIZE_OF_SELECT: usize = 3;
/// PCRs a selection may name.
pub const MAX_PCR: u32 = 23;
/// The largest public key PEM read (a 2048-bit key's is 451 bytes).
pub const MAX_PUBLIC_PEM: usize = 4096;
/// The largest signature JSON read (one entry is about 450 bytes).
pub const MAX_SIGNATURE_JSON: usize = 16 << 10;

/// SHA-256 PCR values by index.
pub type PcrValues = BTreeMap<u32, [u8; 32]>;

/// Why a policy could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("PCR {0} is not one a TPM 2.0 selection can name (0 to {MAX_PCR})")]
    BadPcr(u32),
    #[error("a PCR policy needs at least one PCR")]
    NoPcrs,
    #[error("{path}: not an RSA private key in PKCS#8 PEM ({message})\n  hint: make one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`")]
    BadKey { path: String, message: String },
    #[error("{path}: an RSA key of {bits} bits with exponent {exponent}; the TPM verifies PCR policy signatures of 2048-bit keys with exponent 65537\n  hint: make one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`")]
    UnsupportedKey {
        path: String,
        bits: usize,
        exponent: String,
    },
    #[error("signing the PCR policy: {0}")]
    Sign(String),
    #[error("{what}: not an RSA public key in PEM ({message})")]
    BadPublicKey { what: String, message: String },
    #[error("{what}: {message}")]
    BadSignature { what: String, message: String },
}

/// The policy digest of TPM2_PolicyPCR over `pcrs` from an empty policy: sha256(32 zero bytes
/// ‖ TPM_CC_PolicyPCR ‖ TPML_PCR_SELECTION ‖ sha256(the values in index order)).
pub fn policy_pcr(pcrs: &PcrValues) -> Result<[u8; 32], PolicyError> {
    if pcrs.is_empty() {
        return Err(PolicyError::NoPcrs);
    }
    let mut select = [0u8; SIZE_OF_SELECT];
    let mut values = Sha256::new();
    for (&index, value) in pcrs {
        if index > MAX_PCR {
            return Err(PolicyError::BadPcr(index));
        }
        select[(index / 8) as usize] |= 1 << (index % 8);
        values.update(value);
    }
    let mut h = Sha256::new();
    h.update([0u8; 32]);
    h.update(TPM_CC_POLICY_PCR.to_be_bytes());
    // TPML_PCR_SELECTION: one TPMS_PCR_SELECTION.
    h.update(1u32.to_be_bytes());
    h.update(TPM_ALG_SHA256.to_be_bytes());
    h.update([SIZE_OF_SELECT as u8]);
    h.update(select);
    h.update(values.finalize());
    Ok(h.finalize().into())
}

/// A 2048-bit RSA key with exponent 65537, the only kind a TPM is asked to verify with.
fn check_size(key: &rsa::RsaPublicKey, path: &str) -> Result<(), PolicyError> {
    use rsa::traits::PublicKeyParts;
    let exponent = key.e().to_string();
    if key.n().bits() != 2048 || exponent != "65537" {
        return Err(PolicyError::UnsupportedKey {
            path: path.to_string(),
            bits: key.n().bits(),
            exponent,
        });
    }
    Ok(())
}

/// The public half of a release key: what a UKI's `.pcrpkey` holds and a manifest records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: rsa::RsaPublicKey,
}

impl PublicKey {
    /// A SubjectPublicKeyInfo PEM (at most [`MAX_PUBLIC_PEM`] bytes) of an RSA 2048 key with
    /// exponent 65537; `what` names it in errors.
    pub fn from_pem(text: &str, what: &str) -> Result<PublicKey, PolicyError> {
        if text.len() > MAX_PUBLIC_PEM {
            return Err(PolicyError::BadPublicKey {
                what: what.into(),
                message: format!("{} bytes, more than {MAX_PUBLIC_PEM}", text.len()),
            });
        }
        let key = rsa::RsaPublicKey::from_public_key_pem(text).map_err(|e| {
            PolicyError::BadPublicKey {
                what: what.into(),
                message: e.to_string(),
            }
        })?;
        check_size(&key, what)?;
        Ok(PublicKey { key })
    }

    /// The key as SubjectPublicKeyInfo PEM, LF line ends.
    pub fn pem(&self) -> Result<String, PolicyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| PolicyError::Sign(e.to_string()))
    }

    /// sha256 of the key's PKCS#1 `RSAPublicKey` DER: systemd's `pkfp`.
    pub fn fingerprint(&self) -> Result<[u8; 32], PolicyError> {
        let der = self
            .key
            .to_pkcs1_der()
            .map_err(|e| PolicyError::Sign(e.to_string()))?;
        Ok(Sha256::digest(der.as_bytes()).into())
    }

    /// Check `json` (a `tpm2-pcr-signature.json`, `what` names it) against the PCR values a
    /// rebuild predicts: it must hold exactly one SHA-256 entry, for exactly these PCRs, whose
    /// policy is theirs and whose signature this key made.
    pub fn check_signature(
        &self,
        json: &str,
        pcrs: &PcrValues,
        what: &str,
    ) -> Result<(), PolicyError> {
        use base64::Engine as _;
        let bad = |message: String| PolicyError::BadSignature {
            what: what.into(),
            message,
        };
        if json.len() > MAX_SIGNATURE_JSON {
            return Err(bad(format!(
                "{} bytes, more than {MAX_SIGNATURE_JSON}",
                json.len()
            )));
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            pcrs: Vec<u32>,
            pkfp: String,
            pol: String,
            sig: String,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            sha256: Vec<Entry>,
        }
        let file: File = serde_json::from_str(json)
            .map_err(|e| bad(format!("not a systemd PCR signature file: {e}")))?;
        let [entry] = file.sha256.as_slice() else {
            return Err(bad(format!(
                "expected one sha256 entry, found {}",
                file.sha256.len()
            )));
        };
        let wanted: Vec<u32> = pcrs.keys().copied().collect();
        if entry.pcrs != wanted {
            return Err(bad(format!(
                "signs PCRs {:?}, expected {wanted:?}",
                entry.pcrs
            )));
        }
        // The file is outside input: only a hex digest is echoed in an error.
        let shown = |v: &str| {
            if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
                v.to_string()
            } else {
                "(not a sha256 in hex)".to_string()
            }
        };
        if entry.pkfp != hex::encode(self.fingerprint()?) {
            return Err(bad(format!(
                "pkfp {} is not the release key's fingerprint",
                shown(&entry.pkfp)
            )));
        }
        let pol = policy_pcr(pcrs)?;
        if entry.pol != hex::encode(pol) {
            return Err(bad(format!(
                "signs the policy {}, but these PCR values give {}: the signed values are not the predicted ones",
                shown(&entry.pol),
                hex::encode(pol)
            )));
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&entry.sig)
            .map_err(|e| bad(format!("sig: not base64 ({e})")))?;
        let sig = rsa::pkcs1v15::Signature::try_from(sig.as_slice())
            .map_err(|e| bad(format!("sig: {e}")))?;
        rsa::pkcs1v15::VerifyingKey::<Sha256>::new(self.key.clone())
            .verify(&pol, &sig)
            .map_err(|_| bad("the signature was not made by this key".into()))
    }
}

/// The RSA key that signs a release's PCR policies.
pub struct ReleaseKey {
    key: rsa::RsaPrivateKey,
}

impl ReleaseKey {
    /// A PKCS#8 PEM private key, RSA 2048 with exponent 65537 (what every TPM 2.0 loads to
    /// verify a signature); `path` names it in errors.
    pub fn from_pem(text: &str, path: &str) -> Result<ReleaseKey, PolicyError> {
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(text).map_err(|e| PolicyError::BadKey {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        check_size(&key.to_public_key(), path)?;
        Ok(ReleaseKey { key })
    }

    /// Read a key file (at most 16 KiB).
    pub fn read(path: &std::path::Path) -> Result<ReleaseKey, PolicyError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let bad = |message: String| PolicyError::BadKey {
            path: shown.clone(),
            message,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(|e| bad(e.to_string()))?
            .take(16 << 10)
            .read_to_string(&mut text)
            .map_err(|e| bad(e.to_string()))?;
        ReleaseKey::from_pem(&text, &shown)
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.to_public_key(),
        }
    }

    /// The public key as SubjectPublicKeyInfo PEM: a UKI's `.pcrpkey`, the file
    /// `--tpm2-public-key` of systemd-cryptenroll takes.
    pub fn public_pem(&self) -> Result<String, PolicyError> {
        self.public().pem()
    }

    /// sha256 of the public key's PKCS#1 `RSAPublicKey` DER: systemd's `pkfp`.
    pub fn fingerprint(&self) -> Result<[u8; 32], PolicyError> {
        self.public().fingerprint()
    }

    /// The PolicyPCR digest of `pcrs`, signed.
    pub fn sign(&self, pcrs: &PcrValues) -> Result<SignedPolicy, PolicyError> {
        let pol = policy_pcr(pcrs)?;
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(self.key.clone());
        let sig = signer
            .try_sign(&pol)
            .map_err(|e| PolicyError::Sign(e.to_string()))?;
        Ok(SignedPolicy {
            pcrs: pcrs.keys().copied().collect(),
            pkfp: self.fingerprint()?,
            pol,
            sig: sig.to_vec(),
        })
    }
}

/// One entry of a signed PCR policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPolicy {
    /// The PCRs, ascending.
    pub pcrs: Vec<u32>,
    pub pkfp: [u8; 32],
    pub pol: [u8; 32],
    pub sig: Vec<u8>,
}

/// `tpm2-pcr-signature.json` (a UKI's `.pcrsig`) holding `entries`, in the SHA-256 bank.
pub fn signature_json(entries: &[SignedPolicy]) -> String {
    use base64::Engine as _;
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "pcrs": e.pcrs,
                "pkfp": hex::encode(e.pkfp),
                "pol": hex::encode(e.pol),
                "sig": base64::engine::general_purpose::STANDARD.encode(&e.sig),
            })
        })
        .collect();
    serde_json::json!({ "sha256": list }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selection_and_values_are_hashed_as_the_tpm_does() {
        // PCRs 11 and 12: select bytes 00 18 00.
        let pcrs: PcrValues = [(11, [0x11; 32]), (12, [0x12; 32])].into();
        let mut expected = Sha256::new();
        expected.update([0u8; 32]);
        expected.update([0, 0, 1, 0x7f, 0, 0, 0, 1, 0, 0x0b, 3, 0x00, 0x18, 0x00]);
        let mut values = Sha256::new();
        values.update([0x11; 32]);
        values.update([0x12; 32]);
        expected.update(values.finalize());
        let expected: [u8; 32] = expected.finalize().into();
        assert_eq!(policy_pcr(&pcrs).unwrap(), expected);
        assert!(matches!(
            policy_pcr(&[(24, [0; 32])].into()),
            Err(PolicyError::BadPcr(24))
        ));
        assert!(matches!(
            policy_pcr(&PcrValues::new()),
            Err(PolicyError::NoPcrs)
        ));
    }

    #[test]
    fn a_signed_policy_verifies_with_the_public_key() {
        use rand_chacha::rand_core::SeedableRng;
        use rsa::pkcs8::{DecodePublicKey, EncodePrivateKey};
        use rsa::signature::Verifier;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
        let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = ReleaseKey::from_pem(&pem, "release.key").unwrap();
        let pcrs: PcrValues = [(11, [1; 32]), (12, [2; 32])].into();
        let signed = key.sign(&pcrs).unwrap();
        assert_eq!(signed.pcrs, [11, 12]);
        assert_eq!(signed.pol, policy_pcr(&pcrs).unwrap());
        let public = rsa::RsaPublicKey::from_public_key_pem(&key.public_pem().unwrap()).unwrap();
        let verifier = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public);
        let sig = rsa::pkcs1v15::Signature::try_from(signed.sig.as_slice()).unwrap();
        verifier.verify(&signed.pol, &sig).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&signature_json(std::slice::from_ref(&signed))).unwrap();
        let entry = &json["sha256"][0];
        assert_eq!(entry["pcrs"], serde_json::json!([11, 12]));
        assert_eq!(entry["pol"], hex::encode(signed.pol));
        assert_eq!(entry["pkfp"], hex::encode(key.fingerprint().unwrap()));

        // A rebuild checks a recorded signature against its own predictions.
        let text = signature_json(std::slice::from_ref(&signed));
        let public = PublicKey::from_pem(&key.public_pem().unwrap(), "pcrpkey").unwrap();
        public.check_signature(&text, &pcrs, "pcrsig").unwrap();
        let other: PcrValues = [(11, [1; 32]), (12, [3; 32])].into();
        let err = public.check_signature(&text, &other, "pcrsig").unwrap_err();
        assert!(err.to_string().contains("not the predicted ones"), "{err}");
        let only11: PcrValues = [(11, [1; 32])].into();
        let err = public
            .check_signature(&text, &only11, "pcrsig")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("signs PCRs [11, 12], expected [11]"),
            "{err}"
        );
        let forged = text.replace(
            &hex::encode(signed.pol),
            &hex::encode(policy_pcr(&other).unwrap()),
        );
        let err = public
            .check_signature(&forged, &other, "pcrsig")
            .unwrap_err();
        assert!(err.to_string().contains("not made by this key"), "{err}");
        let stranger = ReleaseKey::from_pem(
            &rsa::RsaPrivateKey::new(&mut rng, 2048)
                .unwrap()
                .to_pkcs8_pem(LineEnding::LF)
                .unwrap(),
            "other",
        )
        .unwrap();
        let err = stranger
            .public()
            .check_signature(&text, &pcrs, "pcrsig")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("not the release key's fingerprint"),
            "{err}"
        );
        for junk in [
            "",
            "{}",
            "{\"sha256\":[]}",
            &"x".repeat(MAX_SIGNATURE_JSON + 1),
        ] {
            assert!(public.check_signature(junk, &pcrs, "pcrsig").is_err());
        }
        assert!(PublicKey::from_pem("-----BEGIN PUBLIC KEY-----", "k").is_err());
        let small = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let err = ReleaseKey::from_pem(&small.to_pkcs8_pem(LineEnding::LF).unwrap(), "small.key")
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("small.key: an RSA key of 1024 bits with exponent 65537;"),
            "{err}"
        );
        let err = ReleaseKey::from_pem("not a key", "release.key")
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("release.key: not an RSA private key"),
            "{err}"
        );
    }
}
