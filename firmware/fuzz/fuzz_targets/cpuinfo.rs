//! A captured machine's `/proc/cpuinfo` (any bytes, read as lossy UTF-8) into the parser
//! SetupOS's certification uses (`cpuinfo::parse_cpuinfo`): it must never panic, and what it
//! accepts has at least one processor and one socket.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_firmware::cpuinfo::parse_cpuinfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(cpu) = parse_cpuinfo(&String::from_utf8_lossy(data)) {
        assert!(cpu.threads >= 1 && cpu.sockets >= 1, "{cpu:?}");
        assert!(!cpu.vendor.is_empty());
    }
});
