//! A disk's first sector, written by whoever attached the disk, into the readers of the
//! benchmark marks: the scratch disks' header (`disk-bench`) and the install benchmark's
//! source header (`plinth-setup install-bench`, which then writes an NVMe disk). Neither may
//! panic, and what they accept stays within the bounds the verbs rely on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_disk_bench::{install, mark, scratch};

fuzz_target!(|data: &[u8]| {
    // The verbs read exactly one sector; the fuzzer also tries the marks in front of it.
    let sector = &data[..data.len().min(mark::SECTOR)];
    for magic in [scratch::MAGIC, install::MAGIC] {
        let marked = [magic, sector].concat();
        let marked = &marked[..marked.len().min(mark::SECTOR)];
        check(marked);
    }
    check(sector);
});

fn check(sector: &[u8]) {
    if let Some(Ok(h)) = scratch::parse_header(sector) {
        assert!(h.bytes.is_none_or(|b| b > 0 && b % (1 << 20) == 0));
    }
    if let Some(Ok(h)) = install::parse_header(sector) {
        assert!(install::RELEASES.contains(&h.release));
        assert!(h.bytes > 0 && h.bytes % 512 == 0 && h.bytes <= install::MAX_BYTES);
        assert!((1..=install::MAX_RUNS).contains(&h.runs));
        assert!(!h.target.is_empty() && h.target.len() <= 64);
        assert!(h
            .target
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    }
}
