//! What the initrd reads before it decides to write a disk: the data partition's first bytes
//! (LUKS2 headers, with their checksums and sequence numbers, and the zero test), and sysfs
//! uevent text. None may panic; a classification never says "blank" for bytes past the
//! header area that are not zero (unless they begin with plinth's creation mark, which never
//! overrides a valid header); the node's wipe request (`wipe-state`), which must
//! name one volume UUID or nothing; and the LUKS2 metadata's `plinth-snp` token (GuestOS: the
//! host writes that disk), whose TCB must round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_state::config::parse_wipe;
use plinth_state::derive::SnpToken;
use plinth_state::disk::{is_device_name, uevent_value};
use plinth_state::header::{best_header, classify_parts, Content, Window};

fuzz_target!(|data: &[u8]| {
    let _ = best_header(data);
    if classify_parts(data, Window::Zero) == (Content::Blank { torn: false }) {
        assert!(data.iter().all(|&b| b == 0));
    }
    // The creation mark decides only where no header does.
    if best_header(data).is_some() {
        assert_eq!(
            classify_parts(data, Window::Marked),
            classify_parts(data, Window::Zero)
        );
    }
    assert!(matches!(
        classify_parts(data, Window::DataAt(16 << 20)),
        Content::Foreign(_) | Content::State | Content::Creating
    ));
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(Some(token)) = SnpToken::from_metadata(text) {
            let again = format!("{{\"tokens\":{{\"0\":{}}}}}", token.to_json());
            assert_eq!(SnpToken::from_metadata(&again).unwrap(), Some(token));
        }
        if let Ok(uuid) = parse_wipe(text) {
            assert!(uuid.len() == 36 && !uuid.contains('/'));
        }
        for key in ["PARTNAME", "DEVNAME"] {
            if let Some(v) = uevent_value(text, key) {
                if is_device_name(v) {
                    assert!(!v.contains('/') && v != ".." && v != ".");
                }
            }
        }
    }
});
