//! What the integration tests share: the `plinth` binary under test ([`Plinth`], one way to
//! build its command line), and a sample manifest with fixed inputs (the only fields a test
//! sets are the OS, the files, the partitions and the slot it measures).
#![allow(dead_code)] // not every helper is used by every module

use plinth::pipeline::manifest::{
    self, Inputs, Manifest, Measurements, OutputFile, PartitionImage, SlotMeasurements,
};
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

/// SOURCE_DATE_EPOCH of every sample.
pub const EPOCH: i64 = 1_700_000_000;

/// The `plinth` binary under test, its command line built in the order plinth reads it:
/// `Plinth::new().root(ws).args(["lock", "guest-os"]).cache(dir).output()`.
pub struct Plinth(Command);

impl Plinth {
    pub fn new() -> Plinth {
        Plinth(Command::new(env!("CARGO_BIN_EXE_plinth")))
    }

    /// `--root WS`: the source tree (before the verb).
    pub fn root(mut self, ws: &Path) -> Plinth {
        self.0.arg("--root").arg(ws);
        self
    }

    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Plinth {
        self.0.args(args);
        self
    }

    /// `--cache DIR` (after the verb), and no cache directory from the environment.
    pub fn cache(mut self, dir: &Path) -> Plinth {
        self.0
            .arg("--cache")
            .arg(dir)
            .env_remove("PLINTH_CACHE_DIR");
        self
    }

    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Plinth {
        self.0.env(key, value);
        self
    }

    pub fn env_remove(mut self, key: &str) -> Plinth {
        self.0.env_remove(key);
        self
    }

    /// Run in `dir`, with `dir` as TMPDIR too: what plinth leaves behind is found there.
    pub fn within(mut self, dir: &Path) -> Plinth {
        self.0.env("TMPDIR", dir).current_dir(dir);
        self
    }

    /// The command, for a test that spawns it itself.
    pub fn command(self) -> Command {
        self.0
    }

    pub fn output(mut self) -> Output {
        self.0.output().expect("the plinth binary runs")
    }
}

/// Run the `plinth` binary under test.
pub fn plinth(args: &[&str]) -> Output {
    Plinth::new().args(args).output()
}

/// A digest of 64 `c`s.
pub fn hex(c: char) -> String {
    c.to_string().repeat(64)
}

/// A slot's measurements: verity root hash `a…`, UKI sha256 `b…`, the PCRs given.
pub fn slot(slot: Option<&str>, pcr4: Option<String>, pcr11: String) -> SlotMeasurements {
    SlotMeasurements {
        slot: slot.map(|s| s.parse().unwrap()),
        verity_root_hash: hex('a').parse().unwrap(),
        uki_sha256: hex('b').parse().unwrap(),
        pcr4: pcr4.map(|p| p.parse().unwrap()),
        pcr7: None,
        pcr11: pcr11.parse().unwrap(),
        pcr_signature: None,
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
        os: os.parse().unwrap(),
        version: "1.0.0".parse().unwrap(),
        profile: "test".parse().unwrap(),
        inputs: Inputs {
            source_commit: "c".repeat(40).parse().unwrap(),
            source_dirty: false,
            source_date_epoch: EPOCH,
            lock_sha256: hex('1').parse().unwrap(),
            os_spec_sha256: hex('2').parse().unwrap(),
            builder_version: "0.1.0".into(),
            pcr_public_key: None,
            carried: Vec::new(),
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
    let (sha256, size) = plinth_release::Sha256::of_file(&dir.join(name)).unwrap();
    OutputFile {
        name: name.parse().unwrap(),
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
        name: name.parse().unwrap(),
        role: serde_json::from_value(serde_json::json!(role)).unwrap(),
        slot: (role == "root").then_some(plinth_release::Slot::A),
        offset,
        size,
        blocks_sha256: plinth::pipeline::blocks::blocks_sha256(disk, offset, size).unwrap(),
    }
}
