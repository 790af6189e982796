//! Small synthetic releases and waves files, for tests (this crate's, the builder's
//! `plinth governance` tests, the upgrade agent's) and examples: a release directory with a
//! `manifest.json`, a `measurements.json` and an `update-img.tar.zst` whose sha256 and size
//! the manifest lists, as `plinth build` would write them, only tiny. Keys are never here:
//! tests generate their own.

use plinth_release::manifest::{
    self, Inputs, Manifest, Measurements, OutputFile, SlotMeasurements,
};
use plinth_release::measurements as m;
use plinth_release::{Os, Sha256, Slot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The digest of 64 `c`s.
fn h(c: char) -> Sha256 {
    c.to_string().repeat(64).parse().expect("hex")
}

/// The measurements.json of a release: one slot's PCRs, and for GuestOS one launch digest.
pub fn measurements(os: Os, version: &str) -> m::Measurements {
    m::Measurements {
        format_version: m::FORMAT_VERSION,
        os,
        version: version.parse().expect("a legal version"),
        platform: m::Platform {
            firmware: "OVMF".into(),
            secure_boot: false,
            bank: "sha256".into(),
        },
        slots: vec![m::SlotPrediction {
            slot: Some(Slot::A),
            uki_sha256: h('b'),
            pcrs: BTreeMap::from([(4, h('4')), (11, h('e'))]),
            events: Vec::new(),
            later: Vec::new(),
        }],
        not_predicted: Vec::new(),
        snp: (os == Os::GuestOs)
            .then(|| m::SnpExpected::single("ab".repeat(48).parse().expect("hex"), "EPYC-v4")),
    }
}

/// Write a release of `os` `version` into `dir` (created) whose update image holds
/// `payload`; `edit` may change the manifest's JSON before it is written (to craft one).
pub fn write_release_with(
    dir: &Path,
    os: Os,
    version: &str,
    payload: &[u8],
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    std::fs::create_dir_all(dir).expect("release directory");
    let update = dir.join(plinth_release::archive::UPDATE_ARCHIVE);
    std::fs::write(&update, payload).expect("update image");
    let mut mbytes = serde_json::to_vec_pretty(&measurements(os, version)).expect("json");
    mbytes.push(b'\n');
    std::fs::write(dir.join(m::FILE_NAME), &mbytes).expect("measurements");
    let output = |name: &str, bytes: &[u8]| OutputFile {
        name: name.parse().expect("a legal name"),
        sha256: Sha256::of(bytes),
        size: bytes.len() as u64,
    };
    let mut outputs = vec![
        output(m::FILE_NAME, &mbytes),
        output(plinth_release::archive::UPDATE_ARCHIVE, payload),
    ];
    outputs.sort();
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        os,
        version: version.parse().expect("a legal version"),
        profile: "test".parse().expect("a legal name"),
        inputs: Inputs {
            source_commit: "c".repeat(40).parse().expect("hex"),
            source_dirty: false,
            source_date_epoch: 1_700_000_000,
            lock_sha256: h('1'),
            os_spec_sha256: h('2'),
            builder_version: "0.1.0".into(),
            pcr_public_key: None,
            carried: Vec::new(),
        },
        outputs,
        partitions: Vec::new(),
        measurements: Measurements {
            slots: vec![SlotMeasurements {
                slot: Some(Slot::A),
                verity_root_hash: h('a'),
                uki_sha256: h('b'),
                pcr4: Some(h('4')),
                pcr7: None,
                pcr11: h('c'),
                pcr_signature: None,
            }],
            snp: Vec::new(),
        },
    };
    let mut value: serde_json::Value = serde_json::from_slice(&manifest.to_bytes()).expect("json");
    edit(&mut value);
    let mut text = serde_json::to_vec_pretty(&value).expect("json");
    text.push(b'\n');
    std::fs::write(dir.join(manifest::FILE_NAME), text).expect("manifest");
    dir.to_path_buf()
}

/// [`write_release_with`] without changes.
pub fn write_release(dir: &Path, os: Os, version: &str, payload: &[u8]) -> PathBuf {
    write_release_with(dir, os, version, payload, |_| {})
}

/// A waves file: `canary` (seeds 0-15) opening at `first`, `rest` (16-2047) a day later.
pub fn waves_yaml(first: &str) -> String {
    let t: jiff::Timestamp = first.parse().expect("an RFC 3339 time");
    let later = t
        .checked_add(jiff::SignedDuration::from_hours(24))
        .expect("in range");
    format!(
        "format_version: 1\nwaves:\n  - name: canary\n    opens_at: {t}\n    seeds: [0, 15]\n  - name: rest\n    opens_at: {later}\n    seeds: [16, 2047]\n"
    )
}
