//! What the integration tests that craft releases share: the `plinth` binary, and a sample
//! manifest with fixed inputs (the only fields a test sets are the OS, the files, the
//! partitions and the slot it measures).
#![allow(dead_code)] // each test binary uses its own part

use plinth::pipeline::manifest::{
    self, Inputs, Manifest, Measurements, OutputFile, PartitionImage, SlotMeasurements,
};
use std::process::{Command, Output};

/// SOURCE_DATE_EPOCH of every sample.
pub const EPOCH: i64 = 1_700_000_000;

/// Run the `plinth` binary under test.
pub fn plinth(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plinth"))
        .args(args)
        .output()
        .unwrap()
}

/// A digest of 64 `c`s.
pub fn hex(c: char) -> String {
    c.to_string().repeat(64)
}

/// A slot's measurements: verity root hash `a…`, UKI sha256 `b…`, the PCRs given.
pub fn slot(slot: Option<&str>, pcr4: Option<String>, pcr11: String) -> SlotMeasurements {
    SlotMeasurements {
        slot: slot.map(str::to_string),
        verity_root_hash: hex('a'),
        uki_sha256: hex('b'),
        pcr4,
        pcr7: None,
        pcr11,
    }
}

/// A manifest of version 1.0.0, profile `test`, commit `c…`, [`EPOCH`], lock `1…` and spec
/// `2…`, with `outputs` (sorted here), `partitions` and one slot.
pub fn sample_manifest(
    os: &str,
    mut outputs: Vec<OutputFile>,
    partitions: Vec<PartitionImage>,
    slot: SlotMeasurements,
) -> Manifest {
    outputs.sort();
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        os: os.into(),
        version: "1.0.0".into(),
        profile: "test".into(),
        inputs: Inputs {
            source_commit: "c".repeat(40),
            source_dirty: false,
            source_date_epoch: EPOCH,
            lock_sha256: hex('1'),
            os_spec_sha256: hex('2'),
            builder_version: "0.1.0".into(),
        },
        outputs,
        partitions,
        measurements: Measurements {
            snp: Vec::new(),
            slots: vec![slot],
        },
    }
}

/// The manifest's entry for the file `name` of the release directory `dir`.
pub fn output_file(dir: &std::path::Path, name: &str) -> OutputFile {
    let (sha256, size) = plinth::packages::cache::sha256_file(&dir.join(name)).unwrap();
    OutputFile {
        name: name.into(),
        sha256,
        size,
    }
}

/// Partition `number` of `disk`, `size` bytes from `offset`, with its block digest; a root
/// partition is slot A's.
pub fn partition(
    disk: &std::path::Path,
    number: u32,
    name: &str,
    role: &str,
    offset: u64,
    size: u64,
) -> PartitionImage {
    PartitionImage {
        number,
        name: name.into(),
        role: role.into(),
        slot: (role == "root").then(|| "A".to_string()),
        offset,
        size,
        blocks_sha256: plinth::pipeline::blocks::blocks_sha256(disk, offset, size).unwrap(),
    }
}
