//! Bytes from a TPM's EK certificate NV index into the EK chain check (`ek::verify_chain`:
//! the DER prefix, X.509 parsing, the issuer lookup and the RSA and ECDSA signature checks)
//! against the catalog's anchors for gen2-genoa (Infineon, Nuvoton, STMicroelectronics): it
//! must never panic, and a chain it accepts runs from the EK to a root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_firmware::certification::Certification;
use plinth_firmware::ek::{self, Anchors};
use std::sync::LazyLock;

static ANCHORS: LazyLock<Anchors> = LazyLock::new(|| {
    let catalog = Certification::builtin();
    let generation = catalog
        .get("gen2-genoa")
        .expect("the built-in catalog has gen2-genoa");
    catalog.anchors(generation)
});

fuzz_target!(|data: &[u8]| {
    if let Ok(chain) = ek::verify_chain(data, &ANCHORS) {
        assert!(chain.len() >= 2, "a chain without a root: {chain:?}");
    }
});
