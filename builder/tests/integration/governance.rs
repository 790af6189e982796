//! `plinth governance` end to end through the binary (issue 22, deliverable 1): a record with
//! three voters and threshold two; a release elected, signed by one voter (publish refused,
//! the repository untouched, exit 1), then by a second (published), and loaded by `status`
//! as a node would. Bad input exits 2 with nothing staged: a waves file with overlapping
//! seeds, a crafted manifest, an impossible threshold. The library's own tests
//! (`governance/tests/record.rs`) cover the rest: tampered payloads, expiry, revocation,
//! rotation.

use crate::support::Plinth;
use plinth_governance::fixtures;
use plinth_release::Os;
use std::path::{Path, PathBuf};
use std::process::Output;

struct Scene {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    dir_gov: String,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let dir_gov = dir.join("gov").display().to_string();
        Scene {
            _tmp: tmp,
            dir,
            dir_gov,
        }
    }

    fn p(&self, rel: &str) -> String {
        self.dir.join(rel).display().to_string()
    }

    fn run(&self, args: &[&str]) -> Output {
        Plinth::new().within(&self.dir).args(args).output()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// init (3 voters, threshold 2) and root v1 signed by voters 1 and 2.
    fn record(&self) {
        self.ok(&[
            "governance",
            "init",
            &self.p("gov"),
            "--keys",
            "3",
            "--threshold",
            "2",
            "--key-dir",
            &self.p("keys"),
        ]);
        for i in [1, 2] {
            self.sign("root", i);
        }
    }

    fn sign(&self, role: &str, voter: usize) -> String {
        self.ok(&[
            "governance",
            "sign",
            "--workdir",
            &self.p("gov"),
            "--role",
            role,
            "--key",
            &self.p(&format!("keys/voter-{voter}.pem")),
        ])
    }

    fn release(&self, version: &str) -> PathBuf {
        fixtures::write_release(
            &self.dir.join(format!("rel-{version}")),
            Os::HostOs,
            version,
            b"update image",
        )
    }

    fn waves(&self, text: &str) -> String {
        std::fs::write(self.dir.join("waves.yaml"), text).unwrap();
        self.p("waves.yaml")
    }

    /// [`Scene::record`], host-os 1.2.0 elected, signed by voters 1 and 2 and published
    /// into `repo` with these extra publish arguments.
    fn published(&self, publish: &[&str]) -> String {
        self.record();
        let rel = self.release("1.2.0");
        let waves = self.waves(&fixtures::waves_yaml("2026-01-10T00:00:00Z"));
        self.ok(&[
            "governance",
            "elect",
            rel.to_str().unwrap(),
            "--waves",
            &waves,
            "--workdir",
            &self.p("gov"),
        ]);
        self.sign("targets", 1);
        self.sign("targets", 2);
        let repo = self.p("repo");
        let mut args = vec!["governance", "publish", &repo, "--workdir", &self.dir_gov];
        args.extend_from_slice(publish);
        self.ok(&args);
        repo
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn elect_sign_publish_and_status_through_the_cli() {
    let s = Scene::new();
    s.record();
    let rel = s.release("1.2.0");
    let waves = s.waves(&fixtures::waves_yaml("2026-01-10T00:00:00Z"));
    let out = s.ok(&[
        "governance",
        "elect",
        rel.to_str().unwrap(),
        "--waves",
        &waves,
        "--repo",
        &s.p("gov"),
    ]);
    assert!(
        out.contains("host-os 1.2.0 elected") && out.contains("max_version 1.2.0"),
        "{out}"
    );
    s.sign("targets", 3);

    // One of the two signatures needed: refused, the repository not even created.
    let repo = s.p("repo");
    let out = s.run(&["governance", "publish", &repo, "--workdir", &s.p("gov")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("targets v1: 1 valid signature of the 2 needed"),
        "{}",
        stderr(&out)
    );
    assert!(!Path::new(&repo).exists());

    let signed = s.sign("targets", 1);
    assert!(
        signed.contains("2 of 2 signatures needed by root v1 (enough)"),
        "{signed}"
    );
    let out = s.ok(&["governance", "publish", &repo, "--workdir", &s.p("gov")]);
    assert!(out.contains("root v1, targets v1"), "{out}");

    let out = s.ok(&[
        "--json",
        "governance",
        "status",
        &repo,
        "--trusted-root",
        &s.p("gov/root.json"),
        "--check-payloads",
    ]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["oses"][0]["os"], "host-os");
    assert_eq!(st["oses"][0]["max_version"], "1.2.0");
    let e = &st["oses"][0]["elected"][0];
    assert_eq!(e["version"], "1.2.0");
    assert_eq!(e["waves"][0]["name"], "canary");
    assert_eq!(e["waves"][1]["seeds"], serde_json::json!([16, 2047]));
    assert_eq!(st["targets_signed_by"].as_array().unwrap().len(), 2);
    assert_eq!(st["payloads_checked"], 2);
    let text = s.ok(&[
        "governance",
        "status",
        &format!("file://{repo}"),
        "--trusted-root",
        &s.p("gov/root.json"),
    ]);
    assert!(
        text.contains("wave canary") && text.contains("seeds 0-15 from 2026-01-10T00:00:00Z"),
        "{text}"
    );

    // Revoked: status shows no version and no max_version once published.
    let out = s.ok(&[
        "governance",
        "revoke",
        "host-os",
        "1.2.0",
        "--workdir",
        &s.p("gov"),
    ]);
    assert!(
        out.contains("host-os 1.2.0 revoked") && out.contains("max_version 1.2.0 -> none"),
        "{out}"
    );
    s.sign("targets", 1);
    s.sign("targets", 2);
    s.ok(&["governance", "publish", &repo, "--workdir", &s.p("gov")]);
    let text = s.ok(&[
        "governance",
        "status",
        &repo,
        "--trusted-root",
        &s.p("gov/root.json"),
    ]);
    assert!(
        text.contains("host-os: max_version none") && !text.contains("1.2.0 elected"),
        "{text}"
    );
}

#[test]
fn a_waves_file_error_names_its_line_and_stages_nothing() {
    let s = Scene::new();
    s.record();
    let rel = s.release("1.0.0");
    let waves =
        s.waves(&fixtures::waves_yaml("2026-01-10T00:00:00Z").replace("[16, 2047]", "[10, 2047]"));
    let out = s.run(&[
        "governance",
        "elect",
        rel.to_str().unwrap(),
        "--waves",
        &waves,
        "--workdir",
        &s.p("gov"),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("waves.yaml:8:"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("overlaps wave `canary`"),
        "{}",
        stderr(&out)
    );
    assert!(!s.dir.join("gov/staged/targets.json").exists());
}

#[test]
fn waves_leaving_seeds_uncovered_need_allow_uncovered() {
    let s = Scene::new();
    s.record();
    let rel = s.release("1.0.0");
    let waves =
        s.waves(&fixtures::waves_yaml("2026-01-10T00:00:00Z").replace("[16, 2047]", "[16, 2000]"));
    let args = [
        "governance",
        "elect",
        rel.to_str().unwrap(),
        "--waves",
        &waves,
        "--workdir",
        &s.p("gov"),
    ];
    let out = s.run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the seeds 2001-2047 are in no wave"),
        "{}",
        stderr(&out)
    );
    assert!(!s.dir.join("gov/staged/targets.json").exists());
    let mut allowed = args.to_vec();
    allowed.push("--allow-uncovered");
    let out = s.run(&allowed);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("seeds 2001-2047 are in no wave"),
        "{}",
        stderr(&out)
    );
    assert!(s.dir.join("gov/staged/targets.json").exists());
}

#[test]
fn a_crafted_manifest_is_refused_with_its_field_named() {
    let s = Scene::new();
    s.record();
    let waves = s.waves(&fixtures::waves_yaml("2026-01-10T00:00:00Z"));
    for (name, field, value) in [
        ("dotdot", "version", "../../victim"),
        ("abs", "version", "/etc"),
    ] {
        let rel = fixtures::write_release_with(&s.dir.join(name), Os::HostOs, "1.0.0", b"x", |m| {
            m[field] = value.into()
        });
        let out = s.run(&[
            "governance",
            "elect",
            rel.to_str().unwrap(),
            "--waves",
            &waves,
            "--workdir",
            &s.p("gov"),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("{field}:")) && stderr(&out).contains("manifest.json"),
            "{}",
            stderr(&out)
        );
    }
    assert!(!s.dir.join("gov/staged/targets.json").exists());
    assert!(!s.dir.join("victim").exists());
}

#[test]
fn an_impossible_threshold_is_refused() {
    let s = Scene::new();
    let out = s.run(&[
        "governance",
        "init",
        &s.p("gov"),
        "--keys",
        "2",
        "--threshold",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("threshold 3 with 2 keys"),
        "{}",
        stderr(&out)
    );
    assert!(!s.dir.join("gov").exists());
}

#[test]
fn voters_keys_and_copies_signed_apart_are_merged_and_published() {
    use std::os::unix::fs::PermissionsExt;
    let s = Scene::new();
    for name in ["alice", "bob", "carol"] {
        let out = s.ok(&[
            "--json",
            "governance",
            "keygen",
            name,
            "--key-dir",
            &s.p("voters"),
        ]);
        let k: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(k["key_id"].as_str().unwrap().len(), 64, "{out}");
    }
    let mode = |rel: &str| {
        std::fs::metadata(s.dir.join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("voters"), 0o700);
    assert_eq!(mode("voters/alice.pem"), 0o600);
    // A key is never overwritten.
    let before = std::fs::read(s.dir.join("voters/alice.pem")).unwrap();
    let out = s.run(&["governance", "keygen", "alice", "--key-dir", &s.p("voters")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("alice.pem: exists already"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(s.dir.join("voters/alice.pem")).unwrap(),
        before
    );

    let pubs: Vec<String> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| s.p(&format!("voters/{n}.pub")))
        .collect();
    let mut init = vec!["governance", "init", &s.dir_gov, "--threshold", "2"];
    for p in &pubs {
        init.extend(["--public-key", p.as_str()]);
    }
    s.ok(&init);
    assert!(!s.dir.join("gov/keys/alice.pem").exists());
    for (i, name) in ["alice", "bob"].iter().enumerate() {
        let copy = s.p(&format!("copy-{i}"));
        copy_dir(&s.dir.join("gov"), Path::new(&copy));
        s.ok(&[
            "governance",
            "sign",
            "--workdir",
            &copy,
            "--role",
            "root",
            "--key",
            &s.p(&format!("voters/{name}.pem")),
        ]);
    }
    let out = s.ok(&[
        "governance",
        "merge",
        "--workdir",
        &s.dir_gov,
        "--role",
        "root",
        &s.p("copy-0/staged/root.json"),
        &s.p("copy-1/staged/root.json"),
    ]);
    assert!(
        out.contains("copy-0/staged/root.json: 1 signature(s) added"),
        "{out}"
    );
    assert!(
        out.contains("copy-1/staged/root.json: 1 signature(s) added"),
        "{out}"
    );

    let rel = s.release("2.0.0");
    let waves = s.waves(&fixtures::waves_yaml("2026-01-10T00:00:00Z"));
    s.ok(&[
        "governance",
        "elect",
        rel.to_str().unwrap(),
        "--waves",
        &waves,
        "--workdir",
        &s.dir_gov,
    ]);
    s.ok(&[
        "governance",
        "sign",
        "--workdir",
        &s.dir_gov,
        "--key",
        &s.p("voters/carol.pem"),
    ]);
    s.ok(&[
        "governance",
        "sign",
        "--workdir",
        &s.dir_gov,
        "--key",
        &s.p("voters/bob.pem"),
    ]);
    let repo = s.p("repo");
    let out = s.ok(&["governance", "publish", &repo, "--workdir", &s.dir_gov]);
    assert!(out.contains("root v1, targets v1"), "{out}");
    assert!(s.dir.join("repo/timestamp.json").exists());
}

#[test]
fn status_takes_its_trusted_root_and_not_the_source_tree_option() {
    let s = Scene::new();
    let repo = s.published(&[]);
    // PLINTH_ROOT (the global --root: the source tree) is not the trusted root.
    let out = Plinth::new()
        .within(&s.dir)
        .env("PLINTH_ROOT", &s.dir)
        .args(["governance", "status", &repo])
        .output();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no --trusted-root: trusting the repository's own 1.root.json"),
        "{}",
        stderr(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("host-os: max_version 1.2.0"));
    let out = s.ok(&[
        "--root",
        &s.p("."),
        "governance",
        "status",
        &repo,
        "--trusted-root",
        &s.p("gov/root.json"),
    ]);
    assert!(out.contains("1.2.0 elected"), "{out}");
    // A trusted root that is not this repository's: exit 1, naming the root file.
    let other = Scene::new();
    other.record();
    let other_root = other.p("gov/staged/root.json");
    let out = s.run(&["governance", "status", &repo, "--trusted-root", &other_root]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&other_root), "{}", stderr(&out));
}

#[test]
fn an_expired_timestamp_fails_status_until_published_again() {
    let s = Scene::new();
    let repo = s.published(&["--timestamp-expires", "2020-01-01T00:00:00Z"]);
    let out = s.run(&[
        "--json",
        "governance",
        "status",
        &repo,
        "--trusted-root",
        &s.p("gov/root.json"),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("timestamp: timestamp metadata is expired")
            && stderr(&out).contains("plinth governance publish"),
        "{}",
        stderr(&out)
    );
    // Nothing staged: publish re-signs snapshot and timestamp, and a node loads it again.
    let out = s.ok(&["governance", "publish", &repo, "--workdir", &s.dir_gov]);
    assert!(out.contains("snapshot v2, timestamp v2"), "{out}");
    s.ok(&[
        "governance",
        "status",
        &repo,
        "--trusted-root",
        &s.p("gov/root.json"),
    ]);
}

#[test]
fn a_publisher_key_that_is_not_the_roots_is_named_and_nothing_is_written() {
    let s = Scene::new();
    s.record();
    let rel = s.release("1.0.0");
    let waves = s.waves(&fixtures::waves_yaml("2026-01-10T00:00:00Z"));
    s.ok(&[
        "governance",
        "elect",
        rel.to_str().unwrap(),
        "--waves",
        &waves,
        "--workdir",
        &s.dir_gov,
    ]);
    s.sign("targets", 1);
    s.sign("targets", 2);
    let wrong = s.p("keys/voter-3.pem");
    let out = s.run(&[
        "governance",
        "publish",
        &s.p("repo"),
        "--workdir",
        &s.dir_gov,
        "--publisher-key",
        &wrong,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{wrong}: cannot sign snapshot and timestamp")),
        "{}",
        stderr(&out)
    );
    assert!(!s.dir.join("repo").exists());
    assert!(s.dir.join("gov/staged/targets.json").exists());
}

/// `rotate-root --publisher-key`: the voters see the snapshot and timestamp key change before
/// they sign, publish signs root v2 with the new key without being told (governance.json
/// records it), and then refuses the old one.
#[test]
fn the_publisher_key_is_rotated_through_the_cli() {
    let s = Scene::new();
    let repo = s.published(&[]);
    let out = s.ok(&[
        "--json",
        "governance",
        "keygen",
        "publisher-2",
        "--key-dir",
        &s.p("keys"),
    ]);
    let new: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_id = new["key_id"].as_str().unwrap().to_string();
    let out = s.ok(&[
        "governance",
        "rotate-root",
        "--workdir",
        &s.dir_gov,
        "--publisher-key",
        &s.p("keys/publisher-2.pub"),
    ]);
    assert!(
        out.contains("staged root v2") && out.contains(&format!("publisher key {new_id} replaces")),
        "{out}"
    );
    let out = s.run(&[
        "governance",
        "sign",
        "--workdir",
        &s.dir_gov,
        "--role",
        "root",
        "--key",
        &s.p("keys/voter-1.pem"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("snapshot: key {new_id} added; key "))
            && stderr(&out).contains("root: no change"),
        "{}",
        stderr(&out)
    );
    s.sign("root", 2);
    let out = s.ok(&["governance", "publish", &repo, "--workdir", &s.dir_gov]);
    assert!(out.contains("root v2, targets v1"), "{out}");
    let config = std::fs::read_to_string(s.dir.join("gov/governance.json")).unwrap();
    assert!(
        config.contains("publisher-2.pem") && !config.contains("next_publisher_key"),
        "{config}"
    );
    s.ok(&[
        "governance",
        "status",
        &repo,
        "--trusted-root",
        &s.p("gov/roots/1.root.json"),
    ]);
    let old = s.p("keys/publisher.pem");
    let out = s.run(&[
        "governance",
        "publish",
        &repo,
        "--workdir",
        &s.dir_gov,
        "--publisher-key",
        &old,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{old}: cannot sign snapshot and timestamp")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn every_verb_has_examples_in_its_help() {
    for verb in [
        "keygen",
        "init",
        "elect",
        "revoke",
        "sign",
        "merge",
        "rotate-root",
        "publish",
        "status",
    ] {
        let out = crate::support::plinth(&["governance", verb, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{verb}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains(&format!("Examples:\n  plinth governance {verb} "))
                || help.contains(&format!("Examples:\n  plinth --json governance {verb} ")),
            "plinth governance {verb} --help has no example of itself:\n{help}"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}
