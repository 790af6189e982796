//! Bytes from anywhere into the SEV-SNP readers a verifier exposes to a node's (or a host's)
//! data: the report parser (binary and hex), the extended report's certificate table, and
//! the certificate loaders (PEM, DER, KDS bundles) with the VCEK extension reader. None may
//! panic; each must return a value or an error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_firmware::snp::{cert_table, certs, extensions, report::Report};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Report::from_bytes(data, "fuzz") {
        let _ = (r.signing_key(), r.cpuid(), r.signature_components());
    }
    if let Ok(entries) = cert_table::parse(data) {
        let _ = certs::CertSet::from_table(&entries, "fuzz");
        let _ = cert_table::encode(&entries);
    }
    if let Ok(cert) = certs::parse_cert(data, "fuzz") {
        let _ = extensions::read(&cert.cert);
        let _ = cert.subject_cn();
    }
    let _ = certs::chain_set(data, "fuzz");
});
