//! The PE reader and what reads through it (the Authenticode digest, the PE checksum,
//! systemd-stub's PCR 11 events and section lookup) on arbitrary bytes: none may panic or
//! allocate without bound (ci/fuzz runs it with a malloc limit).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_firmware::{authenticode, pe, systemd_stub};

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
});
