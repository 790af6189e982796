//! `plinth diff` and `plinth verify`'s input checks on small synthetic releases (offline):
//! a disk archive holding a FAT and an ext4 partition, an SBOM, a command line and a
//! manifest. Two releases that differ in one file of each filesystem, one package and one
//! measurement: diff names all of them. Altered or malformed releases are refused with the
//! file named and the right exit code. Building the sample releases needs root (mke2fs
//! `root_owner`; the tests that need it say so and return early otherwise); listing their
//! paths does not (see `hostile_image.rs`).

use crate::support;
use crate::support::plinth;

use plinth::pipeline::artifacts::{self, TarEntry};
use plinth::pipeline::esp::{self, FatFile, FatOptions};
use plinth::pipeline::manifest::{self, Manifest, OutputFile};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;
const EPOCH: i64 = 1_700_000_000;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// What differs between the two sample releases.
struct Variant {
    motd: &'static str,
    loader: &'static str,
    bash: &'static str,
    pcr11: char,
}

fn sbom(bash: &str, extra: Option<&str>) -> String {
    let mut packages = vec![
        serde_json::json!({"SPDXID": "SPDXRef-Image", "name": "guest-os", "versionInfo": "1"}),
        serde_json::json!({"SPDXID": "SPDXRef-Package-bash", "name": "bash", "versionInfo": bash}),
        serde_json::json!({"SPDXID": "SPDXRef-Package-zlib1g", "name": "zlib1g", "versionInfo": "1:1.2.13"}),
    ];
    if let Some(name) = extra {
        packages.push(serde_json::json!({"SPDXID": format!("SPDXRef-Package-{name}"), "name": name, "versionInfo": "0.1"}));
    }
    serde_json::to_string_pretty(
        &serde_json::json!({ "spdxVersion": "SPDX-2.3", "packages": packages }),
    )
    .unwrap()
}

/// A release directory in `dir` with a 20 MiB disk: FAT `esp` at 1 MiB (8 MiB), ext4
/// `root-a` at 9 MiB (10 MiB).
fn release(dir: &Path, v: &Variant, extra_package: Option<&str>) -> PathBuf {
    let work = dir.join("work");
    std::fs::create_dir_all(work.join("root/etc")).unwrap();
    std::fs::write(work.join("root/etc/motd"), v.motd).unwrap();
    std::fs::write(work.join("root/etc/hostname"), "guest-os\n").unwrap();
    let ext4 = work.join("root.img");
    std::fs::File::create(&ext4)
        .unwrap()
        .set_len(10 * MIB)
        .unwrap();
    let made = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-U",
            "00000000-0000-4000-8000-000000000001",
        ])
        .args([
            "-E",
            "hash_seed=00000000-0000-4000-8000-000000000002,root_owner=0:0",
        ])
        .arg("-d")
        .arg(work.join("root"))
        .arg(&ext4)
        .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string())
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::write(work.join("loader.conf"), v.loader).unwrap();
    let fat = work.join("esp.img");
    esp::write_fat(
        &fat,
        &FatOptions {
            size: 8 * MIB,
            volume_id: 0x1234_5678,
            label: "ESP".into(),
            epoch: EPOCH,
        },
        &[FatFile::new("loader/loader.conf", work.join("loader.conf"))],
    )
    .unwrap();
    let disk = work.join("disk.img");
    let f = std::fs::File::create(&disk).unwrap();
    f.set_len(20 * MIB).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&std::fs::read(&fat).unwrap(), MIB).unwrap();
    f.write_all_at(&std::fs::read(&ext4).unwrap(), 9 * MIB)
        .unwrap();
    drop(f);

    let rel = dir.join("release");
    std::fs::create_dir_all(&rel).unwrap();
    let outputs = vec![artifacts::write_tar_zst(
        &rel.join("disk-img.tar.zst"),
        &[TarEntry::new("disk.img", &disk)],
        EPOCH,
    )
    .unwrap()];
    std::fs::write(rel.join("sbom.spdx.json"), sbom(v.bash, extra_package)).unwrap();
    std::fs::write(
        rel.join("cmdline-guest-os-a.txt"),
        format!("console=ttyS0 roothash={}\n", v.pcr11.to_string().repeat(8)),
    )
    .unwrap();
    let part = |number: u32, name: &str, role: &str, offset: u64, size: u64| {
        support::partition(&disk, number, name, role, offset, size)
    };
    let h = support::hex;
    let mut outputs: Vec<OutputFile> = outputs;
    for name in ["sbom.spdx.json", "cmdline-guest-os-a.txt"] {
        outputs.push(support::output_file(&rel, name));
    }
    let m = support::sample_manifest(
        "guest-os",
        outputs,
        vec![
            part(1, "esp", "esp", MIB, 8 * MIB),
            part(2, "root-a", "root", 9 * MIB, 10 * MIB),
        ],
        support::slot(Some("A"), Some(h('c')), h(v.pcr11)),
    );
    m.write(&rel.join(manifest::FILE_NAME)).unwrap();
    rel
}

#[test]
fn diff_names_packages_measurements_and_changed_files() {
    if !is_root() {
        eprintln!("skipped: mke2fs -d with root_owner needs root");
        return;
    }
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = release(
        da.path(),
        &Variant {
            motd: "hello\n",
            loader: "timeout 0\n",
            bash: "5.2.15-2+b2",
            pcr11: 'c',
        },
        None,
    );
    let b = release(
        db.path(),
        &Variant {
            motd: "hello, world\n",
            loader: "timeout 3\n",
            bash: "5.2.15-2+b7",
            pcr11: 'd',
        },
        Some("jq"),
    );
    let out = plinth(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "packages: 1 added, 0 removed, 1 changed",
        "  + jq 0.1",
        "  ~ bash 5.2.15-2+b2 → 5.2.15-2+b7",
        "measurements: 1 changed",
        "slot A PCR 11: cccc",
        "partition esp (vfat): 1 path differs",
        "changed /loader/loader.conf (content): file 10 B",
        "partition root-a (ext4): 1 path differs",
        "changed /etc/motd (content): file 6 B mode 0644 owner 0:0",
        "→ file 13 B mode 0644 owner 0:0",
        "cmdline-guest-os-a.txt",
    ] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }
    assert!(
        !text.contains("/etc/hostname"),
        "an unchanged file is listed:\n{text}"
    );

    // The same as JSON.
    let json = plinth(&["--json", "diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["packages"].as_array().unwrap().len(), 2);
    let disk = v["comparison"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "disk-img.tar.zst")
        .unwrap();
    let root = disk["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "root-a")
        .unwrap();
    assert_eq!(root["changes"][0]["path"], "/etc/motd");
    assert_eq!(root["changes"][0]["what"][0], "content");

    // A release against itself: nothing differs.
    let same = plinth(&["diff", a.to_str().unwrap(), a.to_str().unwrap()]);
    let same_text = String::from_utf8_lossy(&same.stdout);
    assert!(
        same_text.contains("packages: 0 added, 0 removed, 0 changed"),
        "{same_text}"
    );
    assert!(
        same_text.contains("artifacts: 0 of 4 differ"),
        "{same_text}"
    );
}

#[test]
fn altered_or_malformed_releases_are_refused() {
    let d = tempfile::tempdir().unwrap();
    if !is_root() {
        eprintln!("skipped: building the sample release needs root (mke2fs root_owner)");
        return;
    }
    let v = Variant {
        motd: "x\n",
        loader: "timeout 0\n",
        bash: "5",
        pcr11: 'c',
    };
    let a = release(d.path(), &v, None);

    // Missing: bad input, exit 2.
    let missing = plinth(&["diff", "/nonexistent/release", a.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr)
        .contains("/nonexistent/release: no such release directory"));

    // A file changed after the release was made: the check fails (exit 1) naming it.
    let other = tempfile::tempdir().unwrap();
    let b = release(other.path(), &v, None);
    std::fs::write(
        b.join("cmdline-guest-os-a.txt"),
        "console=ttyS0 init=/bin/sh\n",
    )
    .unwrap();
    for args in [
        vec!["diff", a.to_str().unwrap(), b.to_str().unwrap()],
        vec!["verify", b.to_str().unwrap()],
    ] {
        let out = plinth(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("do not match its manifest")
                && err.contains("cmdline-guest-os-a.txt: sha256"),
            "{err}"
        );
    }

    // A malformed manifest: bad input naming line and column.
    std::fs::write(
        b.join("manifest.json"),
        format!(
            "{{\"format_version\": {}, \"os\": 3}}\n",
            manifest::FORMAT_VERSION
        ),
    )
    .unwrap();
    let out = plinth(&["verify", b.join("manifest.json").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("manifest.json: line 1, column"), "{err}");

    // Releases of two OSes cannot be diffed.
    let mut m = Manifest::read(&a.join("manifest.json")).unwrap();
    m.os = plinth_release::Os::HostOs;
    let c = d.path().join("host");
    std::fs::create_dir_all(&c).unwrap();
    for f in [
        "disk-img.tar.zst",
        "sbom.spdx.json",
        "cmdline-guest-os-a.txt",
    ] {
        std::fs::copy(a.join(f), c.join(f)).unwrap();
    }
    m.write(&c.join("manifest.json")).unwrap();
    let out = plinth(&["diff", a.to_str().unwrap(), c.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("compare two releases of the same OS"));

    // A manifest with no source commit cannot be rebuilt.
    let mut m = Manifest::read(&a.join("manifest.json")).unwrap();
    m.inputs.source_commit = plinth_release::CommitId::default();
    m.write(&a.join("manifest.json")).unwrap();
    let out = plinth(&["verify", a.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("records no source commit"));
}
