//! Test support: a synthetic AMD world, so that every check can be broken on its own. Test
//! keys (RSA ARK, ASK and ASVK, P-384 VCEK and VLEK, from fixed seeds) re-issue the real
//! Milan certificates of `testdata/snp/` with their own keys, and re-sign the real Milan
//! report after each change. The data made here is synthetic; only its shape is AMD's.

use super::certs::{Cert, CertSet};
use super::expected::{LaunchDigest, SnpExpected};
use super::generation::Generation;
use super::report::{Report, SIGNATURE_COMPONENT_LEN, SIGNATURE_OFFSET, SIGNED_LEN};
use super::report_data::report_data;
use super::tcb::Tcb;
use super::verify::Trust;
use crate::catalog::Catalog;
use rand_chacha::rand_core::SeedableRng;
use rsa::pkcs8::EncodePublicKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding};
use sev::certs::snp::Certificate;
use std::sync::OnceLock;
use x509_cert::der::asn1::{BitString, OctetString};
use x509_cert::der::{Decode, Encode};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

pub const MILAN_REPORT_HEX: &[u8] = include_bytes!("../../testdata/snp/report_milan.hex");
pub const MILAN_VCEK: &[u8] = include_bytes!("../../testdata/snp/vcek_milan.der");

/// Offsets of the report fields the tests change (ABI spec 56860, ATTESTATION_REPORT).
pub const POLICY: usize = 0x08;
pub const VMPL: usize = 0x30;
pub const KEY_INFO: usize = 0x48;
pub const REPORT_DATA: usize = 0x50;
pub const MEASUREMENT: usize = 0x90;
pub const REPORTED_TCB: usize = 0x180;

struct Keys {
    ark: rsa::RsaPrivateKey,
    ask: rsa::RsaPrivateKey,
    vcek: p384::ecdsa::SigningKey,
}

/// The test keys, made once per test process (RSA key generation is the slow part).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa_key = |seed| {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key generation")
        };
        Keys {
            ark: rsa_key(1),
            ask: rsa_key(2),
            vcek: p384::ecdsa::SigningKey::from_slice(&[7; 48]).expect("a valid P-384 scalar"),
        }
    })
}

/// A test world: its ARK, ASK and VCEK, and a report and expectations that pass every check.
pub struct World {
    pub ark: Cert,
    pub ask: Cert,
    pub vcek: Cert,
    /// The report's bytes (signed).
    pub report: Vec<u8>,
    pub expected: SnpExpected,
    pub nonce: Vec<u8>,
}

impl World {
    /// The world whose report's TCB is the built-in catalog's Milan minimum.
    pub fn new() -> World {
        let k = keys();
        let amd_ark: x509_cert::Certificate = Generation::Milan.builtin_ark().into();
        let amd_ask: x509_cert::Certificate = Generation::Milan.builtin_ask().into();
        let ark = issue(amd_ark, rsa_spki(&k.ark), &k.ark, "test ARK");
        let ask = issue(amd_ask, rsa_spki(&k.ask), &k.ark, "test ASK");
        let tcb = Catalog::builtin()
            .get(Generation::Milan)
            .expect("milan is in the catalog")
            .minimum_tcb;
        let mut report = Report::from_bytes(MILAN_REPORT_HEX, "report_milan.hex")
            .expect("the real report reads")
            .bytes()
            .to_vec();
        set_tcb(&mut report, &tcb);
        let nonce = b"a fresh nonce from the verifier".to_vec();
        report[REPORT_DATA..REPORT_DATA + 64].copy_from_slice(&report_data(&nonce).unwrap());
        let chip_id = report[0x1a0..0x1e0].to_vec();
        let mut w = World {
            ark,
            ask,
            vcek: vcek_cert(&tcb, Some(&chip_id), "test VCEK"),
            report,
            expected: expected_for(&[0x5a; 48]),
            nonce,
        };
        w.report[MEASUREMENT..MEASUREMENT + 48].copy_from_slice(&[0x5a; 48]);
        w.resign();
        w
    }

    /// The certificates as a node would hand them over.
    pub fn certs(&self) -> CertSet {
        CertSet {
            ark: Some(self.ark.clone()),
            ask: Some(self.ask.clone()),
            vcek: Some(self.vcek.clone()),
            ..CertSet::default()
        }
    }

    /// Trust in this world's ARK instead of AMD's, with `catalog`.
    pub fn trust<'a>(&self, catalog: &'a Catalog) -> Trust<'a> {
        let mut t = Trust::with_catalog(catalog);
        t.arks.insert(Generation::Milan, self.ark.cert.clone());
        t.asks.insert(Generation::Milan, self.ask.cert.clone());
        t
    }

    pub fn parsed(&self) -> Report {
        Report::from_bytes(&self.report, "report.bin").expect("a test report reads")
    }

    /// Sign the report again with the VCEK's key (after a change).
    pub fn resign(&mut self) {
        sign_report(&mut self.report, &keys().vcek);
    }

    /// A VCEK of this world's key, issued by its ASK, for `tcb` and `chip_id`.
    pub fn vcek_for(&self, tcb: &Tcb, chip_id: &[u8]) -> Cert {
        vcek_cert(tcb, Some(chip_id), "test VCEK")
    }

    /// This world's report as a host with a VLEK would sign it (SIGNING_KEY 1), and the
    /// VLEK (no hwID) and ASVK (issued by the ARK) that go with it.
    pub fn vlek_variant(&self) -> (Vec<u8>, Cert, Cert) {
        let mut report = self.report.clone();
        report[KEY_INFO] = (report[KEY_INFO] & !0b1_1100) | 1 << 2;
        sign_report(&mut report, &keys().vcek);
        let tcb = Tcb::from(self.parsed().parsed.reported_tcb);
        let vlek = vcek_cert(&tcb, None, "test VLEK");
        let mut asvk = self.ask.clone();
        asvk.origin = "test ASVK".into();
        (report, vlek, asvk)
    }

    pub fn chip_id(&self) -> Vec<u8> {
        self.report[0x1a0..0x1e0].to_vec()
    }
}

/// Write `tcb` as REPORTED_TCB (the Milan and Genoa layout: bootloader, TEE, 4 reserved,
/// SNP, microcode).
pub fn set_tcb(report: &mut [u8], tcb: &Tcb) {
    let b = [tcb.bootloader, tcb.tee, 0, 0, 0, 0, tcb.snp, tcb.microcode];
    report[REPORTED_TCB..REPORTED_TCB + 8].copy_from_slice(&b);
}

/// Expectations of slot A's launch with `measurement` (and slot B's with another digest),
/// with QEMU's default policy.
pub fn expected_for(measurement: &[u8]) -> SnpExpected {
    let mut expected = SnpExpected::single(&hex::encode(measurement), "EPYC-v4");
    expected.launch_digests.push(LaunchDigest {
        slot: Some("B".into()),
        vcpus: 4,
        vcpu_type: "EPYC-v4".into(),
        measurement: "11".repeat(48),
    });
    expected
}

fn sign_report(report: &mut [u8], key: &p384::ecdsa::SigningKey) {
    use p384::ecdsa::signature::Signer;
    let sig: p384::ecdsa::Signature = key.sign(&report[..SIGNED_LEN]);
    let (r, s) = sig.split_bytes();
    let at = SIGNATURE_OFFSET;
    report[at..at + 2 * SIGNATURE_COMPONENT_LEN].fill(0);
    for (i, b) in r.iter().rev().enumerate() {
        report[at + i] = *b;
    }
    for (i, b) in s.iter().rev().enumerate() {
        report[at + SIGNATURE_COMPONENT_LEN + i] = *b;
    }
}

fn rsa_spki(key: &rsa::RsaPrivateKey) -> SubjectPublicKeyInfoOwned {
    let der = key
        .to_public_key()
        .to_public_key_der()
        .expect("an RSA key encodes");
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).expect("the encoding decodes")
}

/// `template` with `spki` as its key, signed by `signer` (RSA-PSS, SHA-384, 48-byte salt, as
/// AMD signs).
pub fn issue(
    mut template: x509_cert::Certificate,
    spki: SubjectPublicKeyInfoOwned,
    signer: &rsa::RsaPrivateKey,
    origin: &str,
) -> Cert {
    template.tbs_certificate.subject_public_key_info = spki;
    sign_cert(template, signer, origin)
}

fn sign_cert(mut cert: x509_cert::Certificate, signer: &rsa::RsaPrivateKey, origin: &str) -> Cert {
    let tbs = cert.tbs_certificate.to_der().expect("a TBS encodes");
    let key = rsa::pss::SigningKey::<sha2::Sha384>::new_with_salt_len(signer.clone(), 48);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let sig = key.sign_with_rng(&mut rng, &tbs).to_vec();
    cert.signature = BitString::from_bytes(&sig).expect("a signature is a bit string");
    let cert = Certificate::from(cert);
    Cert::new(cert, origin).expect("a test certificate encodes")
}

/// The real Milan VCEK re-issued by the test ASK for the test VCEK key, `tcb` and `chip_id`
/// (without one, no hwID: a VLEK).
fn vcek_cert(tcb: &Tcb, chip_id: Option<&[u8]>, origin: &str) -> Cert {
    let mut template = x509_cert::Certificate::from_der(MILAN_VCEK).expect("the real VCEK decodes");
    let point = keys().vcek.verifying_key().to_encoded_point(false);
    template
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key =
        BitString::from_bytes(point.as_bytes()).expect("a point is a bit string");
    let spl = |v: u8| v.to_der().expect("an integer encodes");
    for ext in template.tbs_certificate.extensions.iter_mut().flatten() {
        let value = match ext.extn_id.to_string().as_str() {
            "1.3.6.1.4.1.3704.1.3.1" => spl(tcb.bootloader),
            "1.3.6.1.4.1.3704.1.3.2" => spl(tcb.tee),
            "1.3.6.1.4.1.3704.1.3.3" => spl(tcb.snp),
            "1.3.6.1.4.1.3704.1.3.8" => spl(tcb.microcode),
            "1.3.6.1.4.1.3704.1.4" => chip_id.unwrap_or_default().to_vec(),
            _ => continue,
        };
        ext.extn_value = OctetString::new(value).expect("an extension value");
    }
    if chip_id.is_none() {
        for exts in template.tbs_certificate.extensions.iter_mut() {
            exts.retain(|e| e.extn_id.to_string() != "1.3.6.1.4.1.3704.1.4");
        }
    }
    sign_cert(template, &keys().ask, origin)
}

/// Flip one byte of a certificate's signature (it then fails to verify, nothing else changes).
pub fn break_signature(c: &Cert) -> Cert {
    let mut x: x509_cert::Certificate = c.cert.clone().into();
    let mut sig = x.signature.raw_bytes().to_vec();
    sig[10] ^= 0x01;
    x.signature = BitString::from_bytes(&sig).expect("a bit string");
    Cert::new(
        Certificate::from(x),
        format!("{} (signature altered)", c.origin),
    )
    .expect("encodes")
}
