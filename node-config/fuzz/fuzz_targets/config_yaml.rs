//! Bytes from any laptop into the node provider's config.yaml reader
//! (`NodeConfig::parse`, the YAML position index, serde and every field check): it must
//! never panic. A config it accepts must survive a round trip: written back with serde_yaml
//! and parsed again, it is accepted and equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_node_config::NodeConfig;

/// The generations a test-profile SetupOS knows (one real, one test-only).
const GENERATIONS: &[&str] = &["gen2-genoa", "qemu-test"];

fuzz_target!(|data: &[u8]| {
    // The reader refuses bytes that are not UTF-8 before parsing; lossy decoding keeps the
    // parser busy on every input (valid UTF-8 passes unchanged).
    let text = String::from_utf8_lossy(data);
    let Ok(config) = NodeConfig::parse(&text, "config.yaml", GENERATIONS) else {
        return;
    };
    let written = serde_yaml::to_string(&config).expect("an accepted config serializes");
    match NodeConfig::parse(&written, "config.yaml", GENERATIONS) {
        Ok(again) => assert_eq!(
            again, config,
            "the round trip changed the config:\n{written}"
        ),
        Err(e) => panic!("an accepted config, written back, is refused: {e:?}\n{written}"),
    }
});
