//! TPM endorsement key certificates: does a TPM's EK certificate chain to a manufacturer CA
//! the certification catalog trusts? The chain is built by issuer name from the catalog's
//! own intermediates and roots (never from certificates the machine offers) and every
//! signature is checked: RSA PKCS #1 v1.5 or ECDSA (P-256, P-384) with SHA-256 or SHA-384,
//! which is what Infineon, Nuvoton, STMicroelectronics and swtpm's local CA sign with.
//! SHA-1 signatures are refused. Validity dates are not checked: a TPM's EK certificate
//! outlives what its manufacturer wrote into it, and SetupOS has no trusted clock.

use rsa::pkcs1v15::{Signature as RsaSignature, VerifyingKey as RsaKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use sha2::{Sha256, Sha384};
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::Certificate;

/// The deepest chain followed (EK, intermediates, root).
const MAX_DEPTH: usize = 5;

const RSA_SHA256: &str = "1.2.840.113549.1.1.11";
const RSA_SHA384: &str = "1.2.840.113549.1.1.12";
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// A CA certificate of the catalog, with the file it came from.
#[derive(Debug, Clone)]
pub struct CaCert {
    pub cert: Certificate,
    pub origin: String,
}

impl CaCert {
    /// Parse a PEM (or DER) CA certificate.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<CaCert, String> {
        let cert = if bytes.starts_with(b"-----BEGIN") {
            Certificate::from_pem(bytes)
        } else {
            Certificate::from_der(bytes)
        }
        .map_err(|e| format!("{origin}: not an X.509 certificate: {e}"))?;
        Ok(CaCert {
            cert,
            origin: origin.to_string(),
        })
    }

    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }
}

/// The trust a chain check uses: roots end a chain, intermediates may stand between.
#[derive(Debug, Clone, Default)]
pub struct Anchors {
    pub roots: Vec<CaCert>,
    pub intermediates: Vec<CaCert>,
}

/// Check `ek_der` (an EK certificate as read from the TPM's NV index) against `anchors`.
/// Returns the chain's subjects, EK first, root last.
pub fn verify_chain(ek_der: &[u8], anchors: &Anchors) -> Result<Vec<String>, String> {
    // NV indices are often larger than the certificate; DER says where it ends.
    let ek = Certificate::from_der(der_prefix(ek_der)?)
        .map_err(|e| format!("the EK certificate is not X.509 DER: {e}"))?;
    let mut chain = vec![ek.tbs_certificate.subject.to_string()];
    let mut current = ek;
    for _ in 0..MAX_DEPTH {
        let issuer = &current.tbs_certificate.issuer;
        if let Some(root) = anchors
            .roots
            .iter()
            .find(|r| &r.cert.tbs_certificate.subject == issuer)
        {
            check_signature(&current, &root.cert).map_err(|e| {
                format!(
                    "{} (signed by root {}): {e}",
                    chain.last().unwrap(),
                    root.origin
                )
            })?;
            chain.push(root.subject());
            return Ok(chain);
        }
        let Some(next) = anchors
            .intermediates
            .iter()
            .find(|i| &i.cert.tbs_certificate.subject == issuer)
        else {
            return Err(format!(
                "no catalog CA issued `{}` (its issuer is `{issuer}`)",
                chain.last().unwrap()
            ));
        };
        check_signature(&current, &next.cert)
            .map_err(|e| format!("{} (signed by {}): {e}", chain.last().unwrap(), next.origin))?;
        chain.push(next.subject());
        current = next.cert.clone();
    }
    Err(format!("the chain is deeper than {MAX_DEPTH} certificates"))
}

/// The subject public key's bits of the certificate `der` (possibly padded): an RSA key's
/// PKCS #1 structure, an EC key's point.
pub fn subject_public_key(der: &[u8]) -> Result<Vec<u8>, String> {
    let cert = Certificate::from_der(der_prefix(der)?)
        .map_err(|e| format!("the EK certificate is not X.509 DER: {e}"))?;
    cert.tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "the EK certificate's key is not a whole number of bytes".into())
}

/// The modulus (big-endian) of an RSA key's PKCS #1 `RSAPublicKey` bytes.
pub fn rsa_modulus(pkcs1: &[u8]) -> Result<Vec<u8>, String> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::traits::PublicKeyParts;
    rsa::RsaPublicKey::from_pkcs1_der(pkcs1)
        .map(|k| k.n().to_bytes_be())
        .map_err(|e| format!("not an RSA public key: {e}"))
}

/// The leading DER element of `bytes` (a SEQUENCE with a definite length).
fn der_prefix(bytes: &[u8]) -> Result<&[u8], String> {
    let bad = || "the EK certificate is not DER (no leading SEQUENCE)".to_string();
    if bytes.len() < 2 || bytes[0] != 0x30 {
        return Err(bad());
    }
    let (len, header) = match bytes[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 if bytes.len() >= 3 => (bytes[2] as usize, 3),
        0x82 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        _ => return Err(bad()),
    };
    bytes.get(..header + len).ok_or_else(bad)
}

/// Whether `issuer`'s key signed `cert`.
fn check_signature(cert: &Certificate, issuer: &Certificate) -> Result<(), String> {
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| format!("cannot encode the signed part: {e}"))?;
    let signature = cert
        .signature
        .as_bytes()
        .ok_or("the signature is not a whole number of bytes")?;
    let spki = issuer
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("cannot encode the issuer's key: {e}"))?;
    let bad = |e: &dyn std::fmt::Display| format!("the signature does not verify: {e}");
    match cert.signature_algorithm.oid.to_string().as_str() {
        RSA_SHA256 | RSA_SHA384 => {
            let key = rsa::RsaPublicKey::from_public_key_der(&spki)
                .map_err(|e| format!("the issuer's key is not RSA: {e}"))?;
            let sig = RsaSignature::try_from(signature).map_err(|e| bad(&e))?;
            if cert.signature_algorithm.oid.to_string() == RSA_SHA256 {
                RsaKey::<Sha256>::new(key).verify(&tbs, &sig)
            } else {
                RsaKey::<Sha384>::new(key).verify(&tbs, &sig)
            }
            .map_err(|e| bad(&e))
        }
        oid @ (ECDSA_SHA256 | ECDSA_SHA384) => {
            // The curve is the issuer key's; the hash is the algorithm's (a P-384 key may
            // sign with SHA-256 and the other way round).
            use sha2::Digest;
            let digest = if oid == ECDSA_SHA256 {
                Sha256::digest(&tbs).to_vec()
            } else {
                Sha384::digest(&tbs).to_vec()
            };
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(&spki) {
                let sig = p256::ecdsa::Signature::from_der(signature).map_err(|e| bad(&e))?;
                key.verify_prehash(&digest, &sig).map_err(|e| bad(&e))
            } else if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(&spki) {
                let sig = p384::ecdsa::Signature::from_der(signature).map_err(|e| bad(&e))?;
                key.verify_prehash(&digest, &sig).map_err(|e| bad(&e))
            } else {
                Err("the issuer's key is neither RSA nor ECDSA P-256 or P-384".into())
            }
        }
        other => Err(format!(
            "signature algorithm {other} is not accepted (RSA or ECDSA with SHA-256 or SHA-384)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> CaCert {
        let path = format!("{}/tpm-ek-ca/{name}", env!("CARGO_MANIFEST_DIR"));
        CaCert::parse(&std::fs::read(&path).unwrap(), name).unwrap()
    }

    #[test]
    fn manufacturer_intermediates_chain_to_their_roots() {
        // An intermediate stands in for an EK: its chain is checked the same way.
        let anchors = Anchors {
            roots: vec![
                ca("inf_rsa_010rt.pem"),
                ca("inf_ecc_010rt.pem"),
                ca("gs_tpm_rt.pem"),
            ],
            intermediates: vec![ca("stm_rsa_rt.pem")],
        };
        for (leaf, depth) in [
            ("inf_rsa_011.pem", 2),
            ("ifx_ecc_042.pem", 2),
            ("stm_rsa_01i.pem", 3),
        ] {
            let der = ca(leaf).cert.to_der().unwrap();
            let chain = verify_chain(&der, &anchors).unwrap_or_else(|e| panic!("{leaf}: {e}"));
            assert_eq!(chain.len(), depth, "{leaf}: {chain:?}");
        }
        // Padding after the certificate (an NV index's tail) is ignored.
        let mut padded = ca("inf_rsa_011.pem").cert.to_der().unwrap();
        padded.extend([0xff; 100]);
        verify_chain(&padded, &anchors).unwrap();
    }

    #[test]
    fn wrong_roots_and_forged_signatures_are_refused() {
        let der = ca("inf_rsa_011.pem").cert.to_der().unwrap();
        let others = Anchors {
            roots: vec![ca("nuvo_1110.pem")],
            intermediates: vec![],
        };
        let err = verify_chain(&der, &others).unwrap_err();
        assert!(err.contains("no catalog CA issued"), "{err}");
        // A root with the right name but another key (a forged issuer).
        let mut forged = ca("inf_ecc_010rt.pem");
        forged.cert.tbs_certificate.subject = ca("inf_rsa_010rt.pem").cert.tbs_certificate.subject;
        let err = verify_chain(
            &der,
            &Anchors {
                roots: vec![forged],
                intermediates: vec![],
            },
        )
        .unwrap_err();
        assert!(
            err.contains("not RSA") || err.contains("does not verify"),
            "{err}"
        );
        // A flipped bit in the signed part.
        let mut tampered = der.clone();
        let i = tampered.len() / 3;
        tampered[i] ^= 1;
        let real = Anchors {
            roots: vec![ca("inf_rsa_010rt.pem")],
            intermediates: vec![],
        };
        assert!(verify_chain(&tampered, &real).is_err());
        assert!(verify_chain(b"\x30\x82\xff\xff", &real).is_err());
        assert!(verify_chain(b"", &real).is_err());
    }
}
