//! The PE reader and what reads through it (the Authenticode digest, the PE checksum,
//! systemd-stub's PCR 11 events, section lookup and the initrd it hands Linux) on arbitrary
//! bytes; and the readers of a release's signed PCR policy (the public key PEM and
//! `tpm2-pcr-signature.json` a manifest records): none may panic or allocate without bound
//! (ci/fuzz runs it with a malloc limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_firmware::pcr_policy::{PcrValues, PublicKey};
use plinth_firmware::{authenticode, pe, systemd_stub};
use std::sync::OnceLock;

/// A public key to check signatures against (its private half was thrown away).
const KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA7mMA/eSxTT+hBXE/wA2a
CAlmb/8zlkCQCJ8CrthwKGrk46jjO1lrqx04SO1cnQULsfhYfBWb+Ry8DD0hVSkt
TzrOm1XjiU/nLbX02PKEoNp2216jEs+QOpYNr/DHulGhi+IJbYTVrzFwh6QOBwCl
BsQbED1HeGB14GkR19vmPZS6tVlLE5MH2beyJracIxxBaE9rtLlwiRrhVcGThgwg
Os6N5OOmU6WGqLJ8vUgf5J1pO7EIeapmbU0UVnVfuxhG5Lj5wTei7piahvhXCTqn
tIxW+YIM1v9b9v8FSpl5OPjAMl+dccr2YqWXghBb3BcehHFmOX8Pge6XkHe5CPGE
iwIDAQAB
-----END PUBLIC KEY-----
";

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = pe::parse(data) {
        for s in &image.sections {
            let _ = s.data(data);
        }
        let _ = pe::checksum(data);
    }
    // A bounded read of a larger file: the headers from the first bytes only.
    let _ = pe::parse_headers(&data[..data.len().min(4096)], data.len() as u64);
    let _ = authenticode::sha256(data);
    let _ = systemd_stub::stub_pcr11_events(data);
    let _ = systemd_stub::section(data, ".cmdline");
    let _ = systemd_stub::stub_initrd(data);
    if let Ok(text) = std::str::from_utf8(data) {
        static PUBLIC: OnceLock<PublicKey> = OnceLock::new();
        let public = PUBLIC.get_or_init(|| PublicKey::from_pem(KEY, "key").unwrap());
        let pcrs: PcrValues = [(11, [1; 32]), (12, [2; 32])].into();
        let _ = public.check_signature(text, &pcrs, "fuzz");
        let _ = PublicKey::from_pem(text, "fuzz");
    }
});
