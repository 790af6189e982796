//! Bytes from anywhere into the SEV-SNP readers a verifier exposes to a node's (or a host's)
//! data: the report parser (binary and hex), the extended report's certificate table, and
//! the certificate loaders (PEM, DER, KDS bundles) with the VCEK extension reader; and every
//! report that parses goes through the whole verification, against a real Milan VCEK and
//! chain (firmware/testdata/snp) and a fixed expectation. None may panic; each must return a
//! value or an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_firmware::snp::certs::{self, CertSet, Role};
use plinth_firmware::snp::verify::{self, Inputs, Trust};
use plinth_firmware::snp::SnpExpected;
use plinth_firmware::snp::{cert_table, extensions, report::Report};
use std::sync::LazyLock;

static TRUST: LazyLock<Trust<'static>> = LazyLock::new(Trust::builtin);

/// The real Milan VCEK with its ASK and ARK.
static MILAN: LazyLock<CertSet> = LazyLock::new(|| {
    let chain = include_bytes!("../../testdata/snp/cert_chain_milan");
    let vcek = include_bytes!("../../testdata/snp/vcek_milan.der");
    let mut set = certs::chain_set(chain, "cert_chain_milan").expect("the Milan chain parses");
    set.set(
        Role::Vcek,
        certs::parse_cert(vcek, "vcek_milan.der").expect("the Milan VCEK parses"),
    );
    set
});

static EXPECTED: LazyLock<SnpExpected> =
    LazyLock::new(|| SnpExpected::single("00".repeat(48).parse().unwrap(), "EPYC-v4"));

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Report::from_bytes(data, "fuzz") {
        let _ = (r.signing_key(), r.cpuid(), r.signature_components());
        let inputs = Inputs {
            report: &r,
            certs: &MILAN,
            expected: &EXPECTED,
            nonce: Some(&[0x5a; 16]),
            generation: None,
        };
        let _ = verify::verify(&inputs, &TRUST);
    }
    if let Ok(entries) = cert_table::parse(data) {
        let _ = CertSet::from_table(&entries, "fuzz");
        let _ = cert_table::encode(&entries);
    }
    if let Ok(cert) = certs::parse_cert(data, "fuzz") {
        let _ = extensions::read(&cert.cert);
        let _ = cert.subject_cn();
    }
    let _ = certs::chain_set(data, "fuzz");
});
