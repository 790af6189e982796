//! Test support: a synthetic AMD world, so that every check can be broken on its own. Test
//! keys (RSA ARK, ASK and ASVK, P-384 VCEK and VLEK, from fixed seeds) re-issue the real
//! Milan certificates of `testdata/snp/` with their own keys, and re-sign the real Milan
//! report after each change. [`vlek_chain`] makes the ARK, ASVK and VLEK of any generation
//! named as AMD names them, and [`World::vlek_report`] the report an AWS EC2 host signs with
//! a VLEK (version 2, CHIP_ID masked). The data made here is synthetic; only its shape is
//! AMD's. The `synthetic_vlek_*` files of `testdata/snp/` (for `builder/tests/integration/attest.rs`)
//! are made here too, and a test keeps them current.

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
use x509_cert::der::asn1::{BitString, OctetString, SetOfVec};
use x509_cert::der::{Any, Decode, Encode, Tagged};
use x509_cert::name::Name;
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
    asvk: rsa::RsaPrivateKey,
    vcek: p384::ecdsa::SigningKey,
    vlek: p384::ecdsa::SigningKey,
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
            asvk: rsa_key(3),
            vcek: p384::ecdsa::SigningKey::from_slice(&[7; 48]).expect("a valid P-384 scalar"),
            vlek: p384::ecdsa::SigningKey::from_slice(&[9; 48]).expect("a valid P-384 scalar"),
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
        World::with_tcb(
            Catalog::builtin()
                .get(Generation::Milan)
                .expect("milan is in the catalog")
                .minimum_tcb,
        )
    }

    /// The world whose report's REPORTED_TCB is `tcb`.
    pub fn with_tcb(tcb: Tcb) -> World {
        let k = keys();
        let amd_ask: x509_cert::Certificate = Generation::Milan.builtin_ask().into();
        let ark = test_ark(Generation::Milan);
        let ask = issue(amd_ask, rsa_spki(&k.ask), &k.ark, "test ASK");
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

    /// This world's report as a host with a VLEK signs it (SIGNING_KEY 1, signed by the test
    /// VLEK key); with `mask_chip_id`, its CHIP_ID zero, as AWS EC2 hosts write them (the
    /// report is version 2, as the real Milan report it is made from).
    pub fn vlek_report(&self, mask_chip_id: bool) -> Vec<u8> {
        let mut report = self.report.clone();
        report[KEY_INFO] = (report[KEY_INFO] & !0b1_1100) | 1 << 2;
        if mask_chip_id {
            report[CHIP_ID].fill(0);
        }
        sign_report(&mut report, &keys().vlek);
        report
    }

    /// The VLEK chain of `generation` for this world's report's TCB (see [`vlek_chain`]).
    pub fn vlek_chain(&self, generation: Generation, product_name: bool) -> VlekChain {
        let tcb = Tcb::from(self.parsed().parsed.reported_tcb);
        vlek_chain(generation, &tcb, product_name)
    }

    /// Trust in the test ARK of every generation, with `catalog`.
    pub fn trust_all<'a>(&self, catalog: &'a Catalog) -> Trust<'a> {
        let mut t = self.trust(catalog);
        for g in Generation::ALL {
            t.arks.insert(g, test_ark(g).cert);
        }
        t
    }

    pub fn chip_id(&self) -> Vec<u8> {
        self.report[CHIP_ID].to_vec()
    }
}

const CHIP_ID: std::ops::Range<usize> = 0x1a0..0x1e0;

/// A VLEK and its chain, made with the test keys.
#[derive(Debug, Clone)]
pub struct VlekChain {
    /// AMD's ARK of the generation (`ARK-Milan`), re-keyed.
    pub ark: Cert,
    /// `SEV-VLEK-<Product>`, issued by the ARK.
    pub asvk: Cert,
    /// `SEV-VLEK`, issued by the ASVK.
    pub vlek: Cert,
}

impl VlekChain {
    /// The VLEK and ASVK, without the ARK (the pinned one is then used).
    pub fn certs(&self) -> CertSet {
        CertSet {
            asvk: Some(self.asvk.clone()),
            vlek: Some(self.vlek.clone()),
            ..CertSet::default()
        }
    }

    /// The ASVK and the ARK as AMD's KDS serves them (`/vlek/v1/<Product>/cert_chain`), PEM.
    pub fn kds_cert_chain(&self) -> String {
        [&self.asvk, &self.ark]
            .iter()
            .map(|c| c.cert.to_pem().expect("a certificate encodes"))
            .map(|pem| String::from_utf8(pem).expect("PEM is text"))
            .collect()
    }
}

/// AMD's ARK of `generation` (`ARK-Milan`), re-keyed with the test ARK key and self-signed.
pub fn test_ark(generation: Generation) -> Cert {
    let k = keys();
    let amd_ark: x509_cert::Certificate = generation.builtin_ark().into();
    let origin = match generation {
        Generation::Milan => "test ARK".to_string(),
        g => format!("test {} ARK", g.product()),
    };
    issue(amd_ark, rsa_spki(&k.ark), &k.ark, &origin)
}

/// The VLEK chain of `generation` as AMD names it: the test ARK, an ASVK (AMD's ASK of the
/// generation renamed `SEV-VLEK-<Product>`, test ASVK key, issued by the ARK), and a VLEK
/// (the real Milan VCEK renamed `SEV-VLEK`, issued by the ASVK, test VLEK key) for `tcb`:
/// no hwID, and a productName naming the generation only with `product_name` (a VLEK
/// without one leaves the generation to `--generation` or the chain's names).
pub fn vlek_chain(generation: Generation, tcb: &Tcb, product_name: bool) -> VlekChain {
    let k = keys();
    let product = generation.product();
    let mut asvk: x509_cert::Certificate = generation.builtin_ask().into();
    rename(
        &mut asvk.tbs_certificate.subject,
        &format!("SEV-VLEK-{product}"),
    );
    let asvk = issue(
        asvk,
        rsa_spki(&k.asvk),
        &k.ark,
        &format!("test {product} ASVK"),
    );
    let mut vlek = vek_template(tcb, None, product_name.then_some(product), &k.vlek);
    rename(&mut vlek.tbs_certificate.subject, "SEV-VLEK");
    rename(
        &mut vlek.tbs_certificate.issuer,
        &format!("SEV-VLEK-{product}"),
    );
    let vlek = sign_cert(vlek, &k.asvk, &format!("test {product} VLEK"));
    VlekChain {
        ark: test_ark(generation),
        asvk,
        vlek,
    }
}

/// `asvk` with its subject's and issuer's common names set to `subject` and `issuer`,
/// issued again by the test ARK.
pub fn renamed_asvk(asvk: &Cert, subject: &str, issuer: &str, origin: &str) -> Cert {
    let mut x: x509_cert::Certificate = asvk.cert.clone().into();
    rename(&mut x.tbs_certificate.subject, subject);
    rename(&mut x.tbs_certificate.issuer, issuer);
    sign_cert(x, &keys().ark, origin)
}

/// Set the common name of `name` to `cn` (keeping its string type).
fn rename(name: &mut Name, cn: &str) {
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    for rdn in name.0.iter_mut() {
        let mut atvs = rdn.0.clone().into_vec();
        for atv in atvs.iter_mut().filter(|a| a.oid == CN) {
            atv.value = Any::new(atv.value.tag(), cn.as_bytes()).expect("a name encodes");
        }
        rdn.0 = SetOfVec::try_from(atvs).expect("a name encodes");
    }
}

/// The TCB of the `synthetic_vlek_*` files (the Milan floor of the built-in catalog when
/// they were made; `builder/tests/integration/attest.rs` passes a catalog with this floor).
pub const SYNTHETIC_TCB: Tcb = Tcb {
    fmc: None,
    bootloader: 4,
    tee: 0,
    snp: 21,
    microcode: 211,
};

/// The `synthetic_vlek_*` files of `testdata/snp/`: (name, contents). A version 2 report
/// with a masked chip id signed by a Milan VLEK without productName, as AWS EC2 issues them
/// (measurement 5a.., REPORT_DATA the nonce "a fresh nonce from the verifier"), the VLEK,
/// and its KDS chain (ASVK `SEV-VLEK-Milan`, ARK `ARK-Milan`), all of test keys.
pub fn synthetic_vlek_files() -> Vec<(&'static str, Vec<u8>)> {
    let w = World::with_tcb(SYNTHETIC_TCB);
    let chain = w.vlek_chain(Generation::Milan, false);
    vec![
        ("synthetic_vlek_report_milan.bin", w.vlek_report(true)),
        (
            "synthetic_vlek_milan.pem",
            chain.vlek.cert.to_pem().expect("a certificate encodes"),
        ),
        (
            "synthetic_vlek_cert_chain_milan.pem",
            chain.kds_cert_chain().into_bytes(),
        ),
    ]
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
    let digest = plinth_release::Measurement(measurement.try_into().expect("48 bytes"));
    let mut expected = SnpExpected::single(digest, "EPYC-v4");
    expected.launch_digests.push(LaunchDigest {
        slot: Some(plinth_release::Slot::B),
        vcpus: 4,
        vcpu_type: "EPYC-v4".into(),
        measurement: plinth_release::Measurement([0x11; 48]),
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
/// (without one, no hwID).
fn vcek_cert(tcb: &Tcb, chip_id: Option<&[u8]>, origin: &str) -> Cert {
    let template = vek_template(tcb, chip_id, Some("Milan-B0"), &keys().vcek);
    sign_cert(template, &keys().ask, origin)
}

/// The real Milan VCEK, unsigned, with `key`, `tcb`, `chip_id` (without one, no hwID) and
/// `product_name` (without one, no productName).
fn vek_template(
    tcb: &Tcb,
    chip_id: Option<&[u8]>,
    product_name: Option<&str>,
    key: &p384::ecdsa::SigningKey,
) -> x509_cert::Certificate {
    let mut template = x509_cert::Certificate::from_der(MILAN_VCEK).expect("the real VCEK decodes");
    let point = key.verifying_key().to_encoded_point(false);
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
            "1.3.6.1.4.1.3704.1.2" => {
                x509_cert::der::asn1::Ia5StringRef::new(product_name.unwrap_or_default())
                    .and_then(|s| s.to_der())
                    .expect("a product name encodes")
            }
            _ => continue,
        };
        ext.extn_value = OctetString::new(value).expect("an extension value");
    }
    for exts in template.tbs_certificate.extensions.iter_mut() {
        exts.retain(|e| match e.extn_id.to_string().as_str() {
            "1.3.6.1.4.1.3704.1.4" => chip_id.is_some(),
            "1.3.6.1.4.1.3704.1.2" => product_name.is_some(),
            _ => true,
        });
    }
    template
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `synthetic_vlek_*` files of testdata/snp are what this module makes (the keys,
    /// signatures and certificates are deterministic). To write them again after a change:
    /// `PLINTH_WRITE_TESTDATA=1 cargo test -p plinth-firmware --lib synthetic_vlek_files`.
    #[test]
    fn synthetic_vlek_files_are_current() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/snp");
        let write = std::env::var_os("PLINTH_WRITE_TESTDATA").is_some();
        for (name, made) in synthetic_vlek_files() {
            let path = dir.join(name);
            if write {
                std::fs::write(&path, &made).unwrap();
            }
            let stored = std::fs::read(&path).unwrap_or_default();
            assert!(
                stored == made,
                "testdata/snp/{name} is not what testing.rs makes: run PLINTH_WRITE_TESTDATA=1 cargo test -p plinth-firmware --lib synthetic_vlek_files"
            );
        }
    }

    #[test]
    fn vlek_chains_are_named_as_amd_names_them() {
        let c = vlek_chain(Generation::Genoa, &SYNTHETIC_TCB, true);
        assert_eq!(c.ark.subject_cn(), "ARK-Genoa");
        assert_eq!(c.asvk.subject_cn(), "SEV-VLEK-Genoa");
        assert_eq!(c.asvk.issuer_cn(), "ARK-Genoa");
        assert_eq!(c.vlek.subject_cn(), "SEV-VLEK");
        assert_eq!(c.vlek.issuer_cn(), "SEV-VLEK-Genoa");
        let e = crate::snp::extensions::read(&c.vlek.cert).unwrap();
        assert_eq!(e.product_name.as_deref(), Some("Genoa"));
        assert_eq!(e.hwid, None);
        let bare = vlek_chain(Generation::Milan, &SYNTHETIC_TCB, false);
        let e = crate::snp::extensions::read(&bare.vlek.cert).unwrap();
        assert_eq!((e.product_name, e.snp), (None, Some(21)));
    }
}
