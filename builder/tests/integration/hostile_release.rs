//! Crafted release manifests (issue 18, point 1): every name a manifest carries becomes part
//! of a path when `plinth verify`, `diff`, `measure` or `run` read the release, so a name that
//! is not what `plinth build` would write is refused when the manifest is read: exit 2, the
//! field named, nothing written outside the work directory. Each test builds its own release
//! (one SBOM file and a manifest listing it) and changes one field the way an attacker would,
//! or plants a link or a FIFO where a release file should be.

use crate::support;
use crate::support::plinth;

use plinth::packages::cache::sha256_file;
use plinth::pipeline::manifest::{self, Manifest, OutputFile, PartitionImage};
use std::path::{Path, PathBuf};

/// A well-formed manifest of a release holding only its SBOM.
fn manifest(rel: &Path) -> serde_json::Value {
    std::fs::create_dir_all(rel).unwrap();
    std::fs::write(rel.join("sbom.spdx.json"), "{\"packages\": []}\n").unwrap();
    let (sha256, size) = sha256_file(&rel.join("sbom.spdx.json")).unwrap();
    let h = support::hex;
    let m = support::sample_manifest(
        "host-os",
        vec![OutputFile {
            name: "sbom.spdx.json".parse().unwrap(),
            sha256,
            size,
        }],
        vec![PartitionImage {
            number: 1,
            name: "esp".parse().unwrap(),
            role: plinth_release::Role::Esp,
            slot: None,
            offset: 1 << 20,
            size: 1 << 20,
            blocks_sha256: h('3').parse().unwrap(),
        }],
        support::slot(None, None, h('c')),
    );
    serde_json::from_slice(&m.to_bytes()).unwrap()
}

/// A scratch tree: `release/` (the crafted release), `work/` (verify's work directory) and
/// `victim/` (a directory with a file, where the attacks aim), all in a fresh temp dir.
struct Scene {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        std::fs::create_dir_all(root.join("victim")).unwrap();
        std::fs::write(root.join("victim/keep"), "untouched\n").unwrap();
        Scene { _tmp: tmp, root }
    }

    /// Write the release with `edit` applied to its manifest's JSON.
    fn release(&self, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
        let rel = self.root.join("release");
        let mut m = manifest(&rel);
        edit(&mut m);
        let mut text = serde_json::to_vec_pretty(&m).unwrap();
        text.push(b'\n');
        std::fs::write(rel.join(manifest::FILE_NAME), text).unwrap();
        rel
    }

    /// Every path under the scene except the release itself, with each file's content.
    fn snapshot(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.starts_with(self.root.join("release")) {
                    continue;
                }
                let md = std::fs::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    stack.push(p.clone());
                    out.push((p, None));
                } else {
                    out.push((p.clone(), Some(std::fs::read(&p).unwrap_or_default())));
                }
            }
        }
        out.sort();
        out
    }
}

/// Run each reading verb on the crafted release: exit 2, `field` named in the error, and
/// nothing changed outside the release (verify's work directory is not even created).
fn refused(edit: impl Fn(&mut serde_json::Value), field: &str) {
    let scene = Scene::new();
    let rel = scene.release(&edit);
    let before = scene.snapshot();
    let work = scene.root.join("work");
    let rel_s = rel.to_str().unwrap();
    let runs: Vec<(&str, Vec<&str>)> = vec![
        (
            "verify",
            vec!["verify", rel_s, "--work", work.to_str().unwrap()],
        ),
        ("diff", vec!["diff", rel_s, rel_s]),
        ("measure", vec!["measure", rel_s]),
    ];
    for (verb, args) in runs {
        let out = plinth(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{verb}: {err}");
        assert!(
            err.contains(&format!("{field}:")) && err.contains("manifest.json"),
            "{verb} does not name {field} in manifest.json: {err}"
        );
        assert_eq!(scene.snapshot(), before, "{verb} wrote outside the release");
        assert!(!work.exists(), "{verb} created the work directory");
    }
    assert_eq!(
        std::fs::read_to_string(scene.root.join("victim/keep")).unwrap(),
        "untouched\n"
    );
}

fn set(path: &[&str], value: &str) -> impl Fn(&mut serde_json::Value) {
    let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
    let value = value.to_string();
    move |m| {
        let mut at = m;
        for key in &path {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[key.as_str()],
            };
        }
        *at = serde_json::Value::String(value.clone());
    }
}

#[test]
fn a_version_climbing_out_of_the_work_dir_is_refused() {
    refused(set(&["version"], "../../victim"), "version");
}

#[test]
fn an_absolute_version_is_refused() {
    refused(set(&["version"], "/etc"), "version");
}

#[test]
fn a_dot_dot_version_is_refused() {
    refused(set(&["version"], ".."), "version");
}

#[test]
fn an_absolute_os_is_refused() {
    // The attack read os.yaml and packages.lock from here instead of the exported commit.
    refused(set(&["os"], "/tmp/release/evil-os"), "os");
}

#[test]
fn an_os_outside_the_list_is_refused() {
    refused(set(&["os"], "../host-os"), "os");
}

#[test]
fn a_profile_with_a_path_is_refused() {
    refused(set(&["profile"], "../../victim"), "profile");
}

#[test]
fn an_output_name_outside_the_release_is_refused() {
    // Release::open would hash the named file: a path outside the release reads it.
    refused(
        set(&["outputs", "0", "name"], "../victim/keep"),
        "outputs[0].name",
    );
    refused(
        set(&["outputs", "0", "name"], "/etc/passwd"),
        "outputs[0].name",
    );
}

#[test]
fn a_partition_name_with_a_path_is_refused() {
    refused(
        set(&["partitions", "0", "name"], "../../victim"),
        "partitions[0].name",
    );
}

#[test]
fn an_unknown_partition_role_is_refused() {
    refused(
        set(&["partitions", "0", "role"], "../esp"),
        "partitions[0].role",
    );
}

#[test]
fn the_well_formed_release_passes_the_name_checks() {
    // The control: the same release unedited is read (diff of a release with itself
    // passes the manifest and stops later, never on a name).
    let scene = Scene::new();
    let rel = scene.release(|_| {});
    Manifest::read(&rel.join(manifest::FILE_NAME)).unwrap();
    let out = plinth(&["diff", rel.to_str().unwrap(), rel.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("manifest.json: version"), "{err}");
    assert!(!err.contains("manifest.json: os"), "{err}");
}

/// Run plinth with `args`, killing it after 60 s: a read that never ends is a failure,
/// not a hang of the test run.
fn plinth_bounded(args: &[&str]) -> std::process::Output {
    use std::time::{Duration, Instant};
    let mut child = crate::support::Plinth::new()
        .command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("plinth {args:?} still ran after 60 s: it reads a planted device or FIFO");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_manifest_planted_as_a_link_to_a_device_is_not_read() {
    // The attack: manifest.json -> /dev/zero, read whole into memory until none is left.
    let scene = Scene::new();
    let rel = scene.release(|_| {});
    let manifest = rel.join(manifest::FILE_NAME);
    std::fs::remove_file(&manifest).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &manifest).unwrap();
    let rel_s = rel.to_str().unwrap();
    for args in [vec!["diff", rel_s, rel_s], vec!["measure", rel_s]] {
        let out = plinth_bounded(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("manifest.json") && err.contains("symbolic link"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn release_files_planted_as_fifos_or_links_are_not_read() {
    // A listed file replaced by a FIFO nobody writes: opening it for reading would block
    // for ever. It is named as not a regular file (the release does not match its manifest).
    let scene = Scene::new();
    let rel = scene.release(|_| {});
    let sbom = rel.join("sbom.spdx.json");
    std::fs::remove_file(&sbom).unwrap();
    nix::unistd::mkfifo(&sbom, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let rel_s = rel.to_str().unwrap();
    let out = plinth_bounded(&["diff", rel_s, rel_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("sbom.spdx.json") && err.contains("not a regular file"),
        "{err}"
    );

    // An SBOM the manifest does not list, linked to /dev/zero: bad input, named.
    let scene = Scene::new();
    let rel = scene.release(|m| m["outputs"] = serde_json::json!([]));
    let sbom = rel.join("sbom.spdx.json");
    std::fs::remove_file(&sbom).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &sbom).unwrap();
    let rel_s = rel.to_str().unwrap();
    let out = plinth_bounded(&["diff", rel_s, rel_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sbom.spdx.json") && err.contains("symbolic link"),
        "{err}"
    );
}
