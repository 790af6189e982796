//! The record's life through the library, as the CLI drives it: init, voters' signatures,
//! elect, publish, and a client (tough's RepositoryLoader) reading the result; and the
//! refusals: below threshold, a foreign key, a tampered payload, an expired timestamp, a
//! revoked version, a rotation signed by one side only, a crafted release, a staged root
//! whose targets role a coordinator edited, a planted timestamp version, a timestamp signed
//! by a rotated-out publisher key.

use plinth_governance::elect::{self, ElectOptions};
use plinth_governance::init::{self, GovernanceKeys, InitOptions};
use plinth_governance::keys::{self, PemKeySource};
use plinth_governance::publish::{self, PublishOptions, PublishReport};
use plinth_governance::rotate::{self, RotateOptions};
use plinth_governance::status::{self, Status, StatusOptions};
use plinth_governance::{fixtures, revoke, sign, GovernanceError, StagedRole, Workdir};
use plinth_release::Os;
use std::io::Write;
use std::path::{Path, PathBuf};

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn days(n: i64) -> jiff::Timestamp {
    now()
        .checked_add(jiff::SignedDuration::from_hours(24 * n))
        .unwrap()
}

/// A record with 3 voters (threshold 2) whose root v1 voters 1 and 2 signed.
struct Scene {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    work: PathBuf,
    repo: PathBuf,
}

impl Scene {
    async fn new() -> Scene {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let work = root.join("work");
        init::init(&InitOptions {
            workdir: work.clone(),
            keys: GovernanceKeys::Generate(3),
            threshold: 2,
            key_dir: None,
            root_expires: days(365),
        })
        .unwrap();
        let s = Scene {
            repo: root.join("repo"),
            _tmp: tmp,
            root,
            work,
        };
        s.sign(StagedRole::Root, 1).await.unwrap();
        s.sign(StagedRole::Root, 2).await.unwrap();
        s
    }

    fn key(&self, i: usize) -> PathBuf {
        self.work.join(format!("keys/voter-{i}.pem"))
    }

    async fn sign(
        &self,
        role: StagedRole,
        voter: usize,
    ) -> Result<sign::SignReport, GovernanceError> {
        let key = self.key(voter);
        sign::sign(&self.work, role, &PemKeySource::new(&key), &key).await
    }

    fn elect(&self, version: &str, payload: &[u8]) -> Result<elect::ElectReport, GovernanceError> {
        self.elect_opening(version, payload, "2026-01-10T00:00:00Z")
    }

    /// [`Scene::elect`] with its first wave opening at `first`.
    fn elect_opening(
        &self,
        version: &str,
        payload: &[u8],
        first: &str,
    ) -> Result<elect::ElectReport, GovernanceError> {
        let rel = fixtures::write_release(
            &self.root.join(format!("rel-{version}")),
            Os::HostOs,
            version,
            payload,
        );
        let waves = self.root.join("waves.yaml");
        std::fs::write(&waves, fixtures::waves_yaml(first)).unwrap();
        elect::elect(&ElectOptions {
            workdir: self.work.clone(),
            release: rel,
            waves,
            artifacts: Vec::new(),
            targets_expires: days(90),
            now: now(),
            allow_uncovered: false,
        })
    }

    async fn publish_with(
        &self,
        timestamp_expires: jiff::Timestamp,
    ) -> Result<PublishReport, GovernanceError> {
        self.publish_into(
            &self.repo,
            &self.work.join("keys/publisher.pem"),
            timestamp_expires,
        )
        .await
    }

    /// Publish into `repo`, signing snapshot and timestamp with `key`.
    async fn publish_into(
        &self,
        repo: &Path,
        key: &Path,
        timestamp_expires: jiff::Timestamp,
    ) -> Result<PublishReport, GovernanceError> {
        publish::publish(PublishOptions {
            workdir: self.work.clone(),
            repo: repo.to_path_buf(),
            publisher: Box::new(PemKeySource::new(key)),
            publisher_name: key.to_path_buf(),
            snapshot_expires: days(7),
            timestamp_expires,
            now: now(),
            health: None,
        })
        .await
    }

    async fn publish(&self) -> Result<PublishReport, GovernanceError> {
        self.publish_with(days(1)).await
    }

    async fn status_with(
        &self,
        root: &Path,
        check_payloads: bool,
    ) -> Result<Status, GovernanceError> {
        status::status(&StatusOptions {
            repo: self.repo.display().to_string(),
            root: root.to_path_buf(),
            check_payloads,
        })
        .await
    }

    async fn status(&self) -> Result<Status, GovernanceError> {
        self.status_with(&self.repo.join("1.root.json"), true).await
    }

    /// Every file under the repository with its bytes.
    fn repo_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        files_under(&self.repo)
    }

    /// 1.0.0 elected, signed by voters 1 and 2, published: its payload's path in the
    /// repository and its bytes.
    async fn published_1_0_0(&self) -> (PathBuf, Vec<u8>) {
        self.elect("1.0.0", b"the real update image").unwrap();
        self.sign(StagedRole::Targets, 1).await.unwrap();
        self.sign(StagedRole::Targets, 2).await.unwrap();
        self.publish().await.unwrap();
        self.repo_files()
            .into_iter()
            .find(|(p, _)| p.to_string_lossy().ends_with("update-img.tar.zst"))
            .unwrap()
    }
}

/// Every file under `dir` with its bytes, sorted by path.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn two_of_three_elect_publish_and_a_client_loads_it() {
    let s = Scene::new().await;
    let report = s.elect("1.2.0", b"update image 1.2.0").unwrap();
    assert_eq!(report.targets, ["host-os/1.2.0/update-img.tar.zst"]);
    assert_eq!(report.max_version.unwrap().as_str(), "1.2.0");
    s.sign(StagedRole::Targets, 1).await.unwrap();
    let signed = s.sign(StagedRole::Targets, 3).await.unwrap();
    assert_eq!(signed.tallies[0].1.valid().len(), 2);
    let published = s.publish().await.unwrap();
    assert_eq!((published.root_version, published.targets_version), (1, 1));
    assert!(s.repo.join("timestamp.json").exists());
    assert!(s.repo.join("1.targets.json").exists());

    let st = s.status().await.unwrap();
    assert_eq!(st.payloads_checked, Some(2));
    assert_eq!(st.targets_signed_by.len(), 2);
    let host = st.oses.iter().find(|o| o.os == Os::HostOs).unwrap();
    assert_eq!(host.max_version.as_ref().unwrap().as_str(), "1.2.0");
    assert_eq!(host.elected.len(), 1);
    let e = &host.elected[0];
    assert_eq!(e.version.as_str(), "1.2.0");
    assert_eq!(e.waves.len(), 2);
    assert_eq!(e.waves[0].name.as_str(), "canary");
    assert_eq!(e.waves[1].seeds, [16, 2047]);
    assert_eq!(e.waves[0].opens_at.to_string(), "2026-01-10T00:00:00Z");
    assert_eq!(e.files[0].length, b"update image 1.2.0".len() as u64);
    let text = status::lines(&st).join("\n");
    assert!(
        text.contains("wave canary") && text.contains("seeds 16-2047"),
        "{text}"
    );

    // A second publish with nothing staged refreshes snapshot and timestamp only.
    let again = s.publish().await.unwrap();
    assert_eq!((again.targets_version, again.timestamp_version), (1, 2));
    assert!(again.payloads_written.is_empty());
    s.status().await.unwrap();
}

#[tokio::test]
async fn one_of_three_is_refused_and_the_repository_is_untouched() {
    let s = Scene::new().await;
    s.elect("1.0.0", b"one").unwrap();
    s.sign(StagedRole::Targets, 2).await.unwrap();
    let e = s.publish().await.unwrap_err();
    assert!(matches!(e, GovernanceError::Threshold { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.starts_with("targets v1: 1 valid signature of the 2 needed"),
        "{text}"
    );
    assert!(!s.repo.exists(), "publish created the repository");

    // With a published repository, a refused publish changes nothing in it.
    s.sign(StagedRole::Targets, 3).await.unwrap();
    s.publish().await.unwrap();
    let before = s.repo_files();
    s.elect("1.1.0", b"two").unwrap();
    s.sign(StagedRole::Targets, 1).await.unwrap();
    assert!(s.publish().await.is_err());
    assert_eq!(s.repo_files(), before);
}

#[tokio::test]
async fn a_signature_by_a_key_outside_the_root_does_not_count() {
    let s = Scene::new().await;
    s.elect("1.0.0", b"one").unwrap();
    s.sign(StagedRole::Targets, 1).await.unwrap();
    let stranger = keys::generate(&s.root.join("stranger"), "mallory").unwrap();
    // sign refuses it...
    let e = sign::sign(
        &s.work,
        StagedRole::Targets,
        &PemKeySource::new(&stranger.private),
        &stranger.private,
    )
    .await
    .unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("is not a targets key of root v1"),
        "{e}"
    );
    // ...and a staged file carrying its (valid) signature anyway still falls short.
    let path = s.work.join("staged/targets.json");
    let mut staged: tough::schema::Signed<tough::schema::Targets> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    plinth_governance::signatures::add(
        &mut staged,
        &PemKeySource::new(&stranger.private),
        &stranger.private,
        |_| Ok(()),
    )
    .await
    .unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&staged).unwrap()).unwrap();
    let e = s.publish().await.unwrap_err().to_string();
    assert!(e.contains("1 valid signature of the 2 needed"), "{e}");
    assert!(
        e.contains(&format!(
            "not counted: {}: not a targets key of root v1",
            stranger.key_id
        )),
        "{e}"
    );
    assert!(!s.repo.exists());
}

#[tokio::test]
async fn signatures_of_voters_copies_merge() {
    let s = Scene::new().await;
    s.elect("1.0.0", b"one").unwrap();
    // Two voters sign their own copies of the staged targets.
    let copies: Vec<PathBuf> = (1..=2)
        .map(|i| {
            let copy = s.root.join(format!("copy-{i}"));
            copy_dir(&s.work, &copy);
            copy
        })
        .collect();
    for (i, copy) in copies.iter().enumerate() {
        let key = s.key(i + 1);
        sign::sign(copy, StagedRole::Targets, &PemKeySource::new(&key), &key)
            .await
            .unwrap();
    }
    let files: Vec<PathBuf> = copies
        .iter()
        .map(|c| c.join("staged/targets.json"))
        .collect();
    let merged = sign::merge(&s.work, StagedRole::Targets, &files).unwrap();
    assert_eq!(merged.iter().map(|(_, m)| m.added.len()).sum::<usize>(), 2);
    s.publish().await.unwrap();

    // A copy of other content is refused.
    s.elect("1.1.0", b"two").unwrap();
    let e = sign::merge(&s.work, StagedRole::Targets, &files[..1]).unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("other targets content"),
        "{e}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[tokio::test]
async fn a_published_payload_is_a_copy_the_release_cannot_change() {
    let s = Scene::new().await;
    let published = s.published_1_0_0().await;
    // The release's file written in place after publication (same file system, where a hard
    // link would have shared it).
    let (source, bytes) = files_under(&s.root.join("rel-1.0.0"))
        .into_iter()
        .find(|(p, _)| p.to_string_lossy().ends_with("update-img.tar.zst"))
        .expect("the release's payload");
    assert_eq!(bytes, published.1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&source)
        .unwrap()
        .write_all(b"THE")
        .unwrap();
    assert_eq!(std::fs::read(&published.0).unwrap(), published.1);
    s.status().await.unwrap();
}

#[tokio::test]
async fn a_tampered_payload_is_refused_when_a_client_reads_it() {
    let s = Scene::new().await;
    let (payload, _) = s.published_1_0_0().await;
    let mut bytes = std::fs::read(&payload).unwrap();
    bytes[3] ^= 1;
    std::fs::remove_file(&payload).unwrap();
    std::fs::write(&payload, &bytes).unwrap();
    // The metadata still loads; reading the target does not.
    s.status_with(&s.repo.join("1.root.json"), false)
        .await
        .unwrap();
    let e = s.status().await.unwrap_err();
    assert!(matches!(e, GovernanceError::Target { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("host-os/1.0.0/update-img.tar.zst: "),
        "{e}"
    );
}

#[tokio::test]
async fn an_expired_timestamp_is_refused_by_status() {
    let s = Scene::new().await;
    s.elect("1.0.0", b"one").unwrap();
    s.sign(StagedRole::Targets, 1).await.unwrap();
    s.sign(StagedRole::Targets, 2).await.unwrap();
    s.publish_with("2000-01-01T00:00:00Z".parse().unwrap())
        .await
        .unwrap();
    let e = s.status().await.unwrap_err();
    match &e {
        GovernanceError::Load { role, .. } => assert_eq!(role, "timestamp", "{e}"),
        other => panic!("{other}"),
    }
    assert!(!e.is_bad_input());
}

#[tokio::test]
async fn revoke_removes_the_version_and_lowers_max_version() {
    let s = Scene::new().await;
    s.elect("1.0.0", b"one").unwrap();
    s.elect("1.1.0", b"two").unwrap();
    let r = revoke::revoke(&s.work, Os::HostOs, &"1.1.0".parse().unwrap(), days(90)).unwrap();
    assert_eq!(r.removed, ["host-os/1.1.0/update-img.tar.zst"]);
    assert_eq!(r.max_version_before.unwrap().as_str(), "1.1.0");
    assert_eq!(r.max_version.unwrap().as_str(), "1.0.0");
    s.sign(StagedRole::Targets, 1).await.unwrap();
    s.sign(StagedRole::Targets, 2).await.unwrap();
    s.publish().await.unwrap();
    let st = s.status().await.unwrap();
    let host = &st.oses[0];
    assert_eq!(host.max_version.as_ref().unwrap().as_str(), "1.0.0");
    assert_eq!(
        host.elected
            .iter()
            .map(|e| e.version.as_str())
            .collect::<Vec<_>>(),
        ["1.0.0"]
    );

    // Revoking an older version leaves max_version; revoking the last leaves none.
    s.elect("1.2.0", b"three").unwrap();
    let r = revoke::revoke(&s.work, Os::HostOs, &"1.0.0".parse().unwrap(), days(90)).unwrap();
    assert_eq!(r.max_version.unwrap().as_str(), "1.2.0");
    let r = revoke::revoke(&s.work, Os::HostOs, &"1.2.0".parse().unwrap(), days(90)).unwrap();
    assert_eq!(r.max_version, None);
    let e = revoke::revoke(&s.work, Os::HostOs, &"9.9".parse().unwrap(), days(90)).unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("not elected"),
        "{e}"
    );
}

#[tokio::test]
async fn a_rotated_root_needs_both_thresholds() {
    let s = Scene::new().await;
    s.elect("1.0.0", b"one").unwrap();
    s.sign(StagedRole::Targets, 1).await.unwrap();
    s.sign(StagedRole::Targets, 2).await.unwrap();
    s.publish().await.unwrap();

    // Voters 4 and 5 replace voters 1 and 2: root v2 is {3, 4, 5}, threshold 2.
    let new: Vec<keys::NewKey> = (4..=5)
        .map(|i| keys::generate(&s.work.join("keys"), &format!("voter-{i}")).unwrap())
        .collect();
    let ids = |i: usize| {
        let key = keys::read_public(&s.work.join(format!("keys/voter-{i}.pub"))).unwrap();
        keys::key_id(&key)
    };
    let r = rotate::rotate(&RotateOptions {
        workdir: s.work.clone(),
        add_keys: new.iter().map(|k| k.public.clone()).collect(),
        remove_keys: vec![ids(1)[..12].to_string(), ids(2)],
        threshold: None,
        publisher_key: None,
        root_expires: days(365),
        targets_expires: days(90),
    })
    .unwrap();
    assert_eq!((r.version, r.keys, r.threshold), (2, 3, 2));
    // Targets v1 is signed by voters 1 and 2 only: staged again for root v2's voters.
    assert_eq!(r.restaged_targets, Some(2));
    s.sign(StagedRole::Targets, 3).await.unwrap();
    s.sign(StagedRole::Targets, 5).await.unwrap();

    // The new keys alone: root v2 accepts itself, root v1 does not.
    s.sign(StagedRole::Root, 4).await.unwrap();
    s.sign(StagedRole::Root, 5).await.unwrap();
    let e = s.publish().await.unwrap_err().to_string();
    assert!(
        e.starts_with("root v2: 0 valid signatures of the 2 needed from the keys of root v1"),
        "{e}"
    );
    // The old keys alone would not do either; both together do.
    s.sign(StagedRole::Root, 1).await.unwrap();
    s.sign(StagedRole::Root, 2).await.unwrap();
    let p = s.publish().await.unwrap();
    assert_eq!(p.root_version, 2);
    assert!(s.repo.join("2.root.json").exists());

    // A client trusting root v1 walks to v2, whose keys now sign targets.
    let st = s.status().await.unwrap();
    assert_eq!(st.roles[0].version, 2);
    assert_eq!(st.governance_keys.len(), 3);
    s.elect("1.1.0", b"two").unwrap();
    let e = s.sign(StagedRole::Targets, 1).await.unwrap_err();
    assert!(
        e.to_string().contains("not a targets key of root v2"),
        "{e}"
    );
    s.sign(StagedRole::Targets, 4).await.unwrap();
    s.sign(StagedRole::Targets, 3).await.unwrap();
    s.publish().await.unwrap();
    let st = s.status().await.unwrap();
    assert_eq!(st.oses[0].elected.len(), 2);
}

#[tokio::test]
async fn root_v1_needs_its_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    init::init(&InitOptions {
        workdir: work.clone(),
        keys: GovernanceKeys::Generate(3),
        threshold: 2,
        key_dir: None,
        root_expires: days(365),
    })
    .unwrap();
    let key = work.join("keys/voter-1.pem");
    sign::sign(&work, StagedRole::Root, &PemKeySource::new(&key), &key)
        .await
        .unwrap();
    let e = publish::publish(PublishOptions {
        workdir: work.clone(),
        repo: tmp.path().join("repo"),
        publisher: Box::new(PemKeySource::new(work.join("keys/publisher.pem"))),
        publisher_name: work.join("keys/publisher.pem"),
        snapshot_expires: days(7),
        timestamp_expires: days(1),
        now: now(),
        health: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("root v1: 1 valid signature of the 2 needed"),
        "{e}"
    );
}

#[test]
fn init_refuses_impossible_thresholds() {
    let tmp = tempfile::tempdir().unwrap();
    for (n, k) in [(3, 4), (3, 0), (0, 0)] {
        let e = init::init(&InitOptions {
            workdir: tmp.path().join("w"),
            keys: GovernanceKeys::Generate(n),
            threshold: k,
            key_dir: None,
            root_expires: days(365),
        })
        .unwrap_err();
        assert!(e.is_bad_input(), "{e}");
        assert!(!tmp.path().join("w").exists(), "{n}/{k} wrote something");
    }
}

#[tokio::test]
async fn crafted_releases_are_refused_before_anything_is_staged() {
    let s = Scene::new().await;
    let waves = s.root.join("waves.yaml");
    std::fs::write(&waves, fixtures::waves_yaml("2026-01-10T00:00:00Z")).unwrap();
    let attempt = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let rel =
            fixtures::write_release_with(&s.root.join(name), Os::HostOs, "1.0.0", b"x", |m| {
                edit(m)
            });
        elect::elect(&ElectOptions {
            workdir: s.work.clone(),
            release: rel,
            waves: waves.clone(),
            artifacts: Vec::new(),
            targets_expires: days(90),
            now: now(),
            allow_uncovered: false,
        })
        .unwrap_err()
    };
    let e = attempt("dotdot", &|m| {
        m["outputs"][1]["name"] = "../update-img.tar.zst".into()
    });
    assert!(
        e.is_bad_input() && e.to_string().contains("outputs[1].name"),
        "{e}"
    );
    let e = attempt("absolute", &|m| m["version"] = "/etc".into());
    assert!(e.is_bad_input() && e.to_string().contains("version"), "{e}");
    let e = attempt("size", &|m| m["outputs"][1]["size"] = 2.into());
    assert!(
        e.is_bad_input() && e.to_string().contains("the manifest says"),
        "{e}"
    );
    assert!(!s.work.join("staged/targets.json").exists());
    assert!(!s.work.join("sources.json").exists());

    // A link planted where the update image should be is refused too.
    let rel = fixtures::write_release(&s.root.join("link"), Os::HostOs, "1.0.0", b"x");
    std::fs::remove_file(rel.join("update-img.tar.zst")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", rel.join("update-img.tar.zst")).unwrap();
    let e = elect::elect(&ElectOptions {
        workdir: s.work.clone(),
        release: rel,
        waves,
        artifacts: Vec::new(),
        targets_expires: days(90),
        now: now(),
        allow_uncovered: false,
    })
    .unwrap_err();
    assert!(
        e.is_bad_input() && e.to_string().contains("symbolic link"),
        "{e}"
    );
}

#[tokio::test]
async fn waves_that_leave_seeds_uncovered_are_refused_unless_allowed() {
    let s = Scene::new().await;
    let waves = s.root.join("waves.yaml");
    // The usual canary and rest, with the rest ending one seed short.
    let text = fixtures::waves_yaml("2026-01-10T00:00:00Z").replace("2047", "2046");
    assert_ne!(text, fixtures::waves_yaml("2026-01-10T00:00:00Z"));
    std::fs::write(&waves, text).unwrap();
    let rel = fixtures::write_release(&s.root.join("rel"), Os::HostOs, "1.0.0", b"x");
    let opts = |allow_uncovered| ElectOptions {
        workdir: s.work.clone(),
        release: rel.clone(),
        waves: waves.clone(),
        artifacts: Vec::new(),
        targets_expires: days(90),
        now: now(),
        allow_uncovered,
    };
    let e = elect::elect(&opts(false)).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    assert!(
        e.to_string().contains("the seeds 2047 are in no wave")
            && e.to_string().contains("waves.yaml"),
        "{e}"
    );
    assert!(!s.work.join("staged/targets.json").exists());
    let r = elect::elect(&opts(true)).unwrap();
    assert_eq!(r.uncovered, vec![[2047, 2047]]);
}

#[test]
fn uncovered_seed_ranges_are_the_gaps_between_waves() {
    use plinth_governance::custom::Wave;
    use plinth_governance::waves::uncovered;
    let wave = |a: u16, b: u16| Wave {
        name: format!("w{a}").parse().unwrap(),
        opens_at: now(),
        seeds: [a, b],
        spread_seconds: 0,
        gate: None,
    };
    assert!(uncovered(&[wave(0, 15), wave(16, 2047)]).is_empty());
    assert_eq!(
        uncovered(&[wave(100, 199), wave(0, 15)]),
        vec![[16, 99], [200, 2047]]
    );
    assert_eq!(uncovered(&[wave(1, 2046)]), vec![[0, 0], [2047, 2047]]);
}

#[test]
fn init_refuses_a_taken_key_name_before_writing_any_key() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("voter-2.pem"), b"someone else's key").unwrap();
    let e = init::init(&InitOptions {
        workdir: tmp.path().join("w"),
        keys: GovernanceKeys::Generate(3),
        threshold: 2,
        key_dir: Some(keys.clone()),
        root_expires: days(365),
    })
    .unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    assert!(e.to_string().contains("voter-2.pem: exists already"), "{e}");
    assert!(!keys.join("voter-1.pem").exists());
    assert!(!tmp.path().join("w").exists());
    assert_eq!(
        std::fs::read(keys.join("voter-2.pem")).unwrap(),
        b"someone else's key"
    );
}

/// Publish host-os 1.0.0, signed by voters 1 and 2.
async fn published(s: &Scene) {
    s.elect("1.0.0", b"one").unwrap();
    s.sign(StagedRole::Targets, 1).await.unwrap();
    s.sign(StagedRole::Targets, 2).await.unwrap();
    s.publish().await.unwrap();
}

fn read_root(path: &Path) -> tough::schema::Signed<tough::schema::Root> {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn write_root(path: &Path, root: &tough::schema::Signed<tough::schema::Root>) {
    std::fs::write(path, serde_json::to_vec_pretty(root).unwrap()).unwrap();
}

/// A coordinator edits the staged root so that their own key alone (threshold 1) signs
/// targets: once published it would elect releases without the voters. sign, merge and
/// publish (and the description sign shows first) refuse it, naming the role and what
/// differs; a threshold lowered for targets alone is refused the same way.
#[tokio::test]
async fn a_staged_root_whose_targets_role_is_not_the_governance_keys_is_refused() {
    use tough::schema::RoleType;
    let s = Scene::new().await;
    published(&s).await;
    let voter4 = keys::generate(&s.work.join("keys"), "voter-4").unwrap();
    rotate::rotate(&RotateOptions {
        workdir: s.work.clone(),
        add_keys: vec![voter4.public.clone()],
        remove_keys: Vec::new(),
        threshold: None,
        publisher_key: None,
        root_expires: days(365),
        targets_expires: days(90),
    })
    .unwrap();
    let staged_path = s.work.join("staged/root.json");
    let honest = read_root(&staged_path);
    let mallory = keys::generate(&s.root.join("mallory"), "mallory").unwrap();
    let mallory_id = mallory.key.key_id().unwrap();
    let mut edited = honest.clone();
    edited
        .signed
        .keys
        .insert(mallory_id.clone(), mallory.key.clone());
    let targets = edited.signed.roles.get_mut(&RoleType::Targets).unwrap();
    targets.keyids = vec![mallory_id];
    targets.threshold = std::num::NonZeroU64::MIN;
    write_root(&staged_path, &edited);

    let expect = |e: &GovernanceError| {
        let text = e.to_string();
        assert!(e.is_bad_input(), "{text}");
        assert!(
            text.contains("staged/root.json: root v2: role `targets` is not the governance keys (2 of 4 keys in role `root`)")
                && text.contains(&format!("key(s) {} that are not governance (`root`) keys", mallory.key_id))
                && text.contains("its threshold is 1, the `root` role's is 2")
                && text.contains("do not sign this root"),
            "{text}"
        );
    };
    expect(&sign::describe(&s.work, StagedRole::Root).unwrap_err());
    expect(&s.sign(StagedRole::Root, 1).await.unwrap_err());
    assert!(read_root(&staged_path).signatures.is_empty(), "sign wrote");
    let copy = s.root.join("copy.root.json");
    write_root(&copy, &edited);
    expect(&sign::merge(&s.work, StagedRole::Root, &[copy]).unwrap_err());

    // Signed anyway (voters 1 and 2 hold keys of both roots): publish refuses it too.
    let before = s.repo_files();
    for i in [1, 2] {
        plinth_governance::signatures::add(
            &mut edited,
            &PemKeySource::new(s.key(i)),
            &s.key(i),
            |_| Ok(()),
        )
        .await
        .unwrap();
    }
    write_root(&staged_path, &edited);
    expect(&s.publish().await.unwrap_err());
    assert_eq!(s.repo_files(), before);

    // The governance keys but a threshold of 1 for targets: refused, naming the threshold.
    let mut lowered = honest.clone();
    lowered
        .signed
        .roles
        .get_mut(&RoleType::Targets)
        .unwrap()
        .threshold = std::num::NonZeroU64::MIN;
    write_root(&staged_path, &lowered);
    let e = s.sign(StagedRole::Root, 1).await.unwrap_err().to_string();
    assert!(
        e.contains("role `targets` is not the governance keys")
            && e.contains("its threshold is 1, the `root` role's is 2")
            && !e.contains("leaves out"),
        "{e}"
    );
    // The honest rotation signs.
    write_root(&staged_path, &honest);
    s.sign(StagedRole::Root, 1).await.unwrap();
}

/// What a voter reads before signing a root: every role's keys and threshold, and what
/// changes from the root in force, so that a snapshot and timestamp key swapped by the
/// coordinator (which passes every structural check) is in plain sight.
#[tokio::test]
async fn describe_shows_every_role_of_a_staged_root_and_its_changes() {
    use tough::schema::RoleType;
    let s = Scene::new().await;
    let first = sign::describe(&s.work, StagedRole::Root)
        .unwrap()
        .join("\n");
    for role in ["root", "targets"] {
        assert!(
            first.contains(&format!("  {role}: 2 of these 3 key(s)")),
            "{first}"
        );
    }
    assert!(
        first.contains("  timestamp: 1 of these 1 key(s)"),
        "{first}"
    );
    assert!(first.contains("no root is in force yet"), "{first}");
    published(&s).await;

    let id = |name: &str| {
        keys::key_id(&keys::read_public(&s.work.join(format!("keys/{name}.pub"))).unwrap())
    };
    let voter4 = keys::generate(&s.work.join("keys"), "voter-4").unwrap();
    rotate::rotate(&RotateOptions {
        workdir: s.work.clone(),
        add_keys: vec![voter4.public.clone()],
        remove_keys: vec![id("voter-1")],
        threshold: Some(3),
        publisher_key: None,
        root_expires: days(365),
        targets_expires: days(90),
    })
    .unwrap();
    // The coordinator also puts their key in place of the publisher's.
    let staged_path = s.work.join("staged/root.json");
    let mut root = read_root(&staged_path);
    let mallory = keys::generate(&s.root.join("mallory"), "mallory").unwrap();
    let mallory_id = mallory.key.key_id().unwrap();
    root.signed
        .keys
        .insert(mallory_id.clone(), mallory.key.clone());
    for role in [RoleType::Snapshot, RoleType::Timestamp] {
        root.signed.roles.get_mut(&role).unwrap().keyids = vec![mallory_id.clone()];
    }
    write_root(&staged_path, &root);

    let text = sign::describe(&s.work, StagedRole::Root)
        .unwrap()
        .join("\n");
    assert!(text.starts_with("root v2 (expires "), "{text}");
    assert!(text.contains(", replacing root v1 (expires "), "{text}");
    assert!(text.contains("  targets: 3 of these 3 key(s)"), "{text}");
    assert!(text.contains("changes from root v1:"), "{text}");
    let gov_change = format!(
        "key {} added; key {} removed; threshold 2 -> 3",
        voter4.key_id,
        id("voter-1")
    );
    assert!(text.contains(&format!("  root: {gov_change}")), "{text}");
    assert!(text.contains(&format!("  targets: {gov_change}")), "{text}");
    for role in ["snapshot", "timestamp"] {
        assert!(
            text.contains(&format!(
                "  {role}: key {} added; key {} removed",
                mallory.key_id,
                id("publisher")
            )),
            "{text}"
        );
    }
    assert!(!text.contains("WARNING"), "{text}");

    // A workdir whose root in force was edited (its signatures no longer hold) says so.
    let mut in_force = read_root(&s.work.join("root.json"));
    in_force.signed.expires = days(3650);
    write_root(&s.work.join("root.json"), &in_force);
    let text = sign::describe(&s.work, StagedRole::Root)
        .unwrap()
        .join("\n");
    assert!(
        text.contains("WARNING: root v1 of this workdir (root.json) carries 0 valid signature(s) of its own 2 needed"),
        "{text}"
    );
}

/// What a voter reads before signing targets: each entry in full (every wave's seeds and
/// opening time) and what changes from the published targets: versions added and removed,
/// waves moved, max_version.
#[tokio::test]
async fn describe_shows_staged_targets_and_their_changes() {
    let s = Scene::new().await;
    s.elect("1.0.0", b"one").unwrap();
    let first = sign::describe(&s.work, StagedRole::Targets)
        .unwrap()
        .join("\n");
    assert!(
        first.contains("none published yet, every entry is new"),
        "{first}"
    );
    s.elect("1.1.0", b"two").unwrap();
    s.sign(StagedRole::Targets, 1).await.unwrap();
    s.sign(StagedRole::Targets, 2).await.unwrap();
    s.publish().await.unwrap();

    s.elect_opening("1.1.0", b"two", "2026-03-01T00:00:00Z")
        .unwrap();
    s.elect("1.2.0", b"three").unwrap();
    revoke::revoke(&s.work, Os::HostOs, &"1.0.0".parse().unwrap(), days(90)).unwrap();
    let text = sign::describe(&s.work, StagedRole::Targets)
        .unwrap()
        .join("\n");
    assert!(text.starts_with("targets v2 (expires "), "{text}");
    assert!(
        text.contains(", replacing the published targets v1:"),
        "{text}"
    );
    assert!(
        text.contains("    wave canary: seeds 0-15 from 2026-01-10T00:00:00Z\n    wave rest: seeds 16-2047 from 2026-01-11T00:00:00Z"),
        "{text}"
    );
    assert!(
        text.contains("changes from the published targets v1:"),
        "{text}"
    );
    assert!(
        text.contains("  added host-os/1.2.0/update-img.tar.zst: sha256 "),
        "{text}"
    );
    assert!(
        text.contains("  removed host-os/1.0.0/update-img.tar.zst"),
        "{text}"
    );
    assert!(
        text.contains("  changed host-os/1.1.0/update-img.tar.zst: waves [wave canary: seeds 0-15 from 2026-01-10T00:00:00Z, wave rest: seeds 16-2047 from 2026-01-11T00:00:00Z] -> [wave canary: seeds 0-15 from 2026-03-01T00:00:00Z, wave rest: seeds 16-2047 from 2026-03-02T00:00:00Z]"),
        "{text}"
    );
    assert!(
        text.contains("  host-os max_version: 1.1.0 -> 1.2.0"),
        "{text}"
    );
    assert!(!text.contains("WARNING"), "{text}");
}

/// Sign `timestamp` as the publisher `key` of `root` would, and put it in place of the
/// repository's: what someone holding a publisher key can do to the files nodes read.
async fn plant_timestamp(
    repo: &Path,
    timestamp: tough::schema::Timestamp,
    root: &tough::schema::Root,
    key: &Path,
) {
    let keys: Vec<Box<dyn tough::key_source::KeySource>> = vec![Box::new(PemKeySource::new(key))];
    let signed = tough::editor::signed::SignedRole::new(
        timestamp,
        &tough::schema::KeyHolder::Root(root.clone()),
        &keys,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .await
    .unwrap();
    std::fs::write(repo.join("timestamp.json"), signed.buffer()).unwrap();
}

/// The publisher key (online: it signs snapshot and timestamp) is replaced by a rotation that
/// goes through the voters' threshold like any other: until root v2 is published the old key
/// publishes, then only the new one can. A timestamp the old key signs afterwards, however
/// fresh, is refused by a client (tough's RepositoryLoader walks to root v2 first), while the
/// same timestamp signed by the new key loads.
#[tokio::test]
async fn a_rotated_out_publisher_key_signs_no_timestamp_a_client_takes() {
    let s = Scene::new().await;
    published(&s).await;
    let old_key = s.work.join("keys/publisher.pem");
    let new = keys::generate(&s.work.join("keys"), "publisher-2").unwrap();
    let old_id = keys::key_id(&keys::read_public(&s.work.join("keys/publisher.pub")).unwrap());
    let r = rotate::rotate(&RotateOptions {
        workdir: s.work.clone(),
        add_keys: Vec::new(),
        remove_keys: Vec::new(),
        threshold: None,
        publisher_key: Some(new.public.clone()),
        root_expires: days(365),
        targets_expires: days(90),
    })
    .unwrap();
    assert_eq!((r.version, r.keys, r.threshold), (2, 3, 2));
    assert_eq!(
        r.restaged_targets, None,
        "the governance keys did not change"
    );
    let change = r.publisher.unwrap();
    assert_eq!(
        (change.old, change.new.as_str()),
        (vec![old_id.clone()], new.key_id.as_str())
    );
    assert!(change.private_key.ends_with("keys/publisher-2.pem") && change.private_key_present);
    let staged = read_root(&s.work.join("staged/root.json")).signed;
    assert!(
        !staged
            .keys
            .keys()
            .any(|id| hex::encode(id.clone().into_vec()) == old_id),
        "the old publisher key stays in root v2"
    );
    let text = sign::describe(&s.work, StagedRole::Root)
        .unwrap()
        .join("\n");
    assert!(
        text.contains(&format!(
            "  timestamp: key {} added; key {old_id} removed",
            new.key_id
        )),
        "{text}"
    );

    // Staged, not in force: the next key is recorded, the old one is still the publisher's.
    let w = Workdir::open(&s.work).unwrap();
    assert!(w.config.publisher_key.ends_with("keys/publisher.pem"));
    assert_eq!(w.default_publisher_key().unwrap(), change.private_key);
    s.sign(StagedRole::Root, 1).await.unwrap();
    s.sign(StagedRole::Root, 2).await.unwrap();
    // Root v2 cannot be published with the old key...
    let e = s.publish().await.unwrap_err();
    assert!(
        e.to_string()
            .contains("publisher.pem: cannot sign snapshot and timestamp"),
        "{e}"
    );
    // ...and is with the new one, which governance.json then names.
    let p = s
        .publish_into(&s.repo, &new.private, days(1))
        .await
        .unwrap();
    assert_eq!(p.root_version, 2);
    let w = Workdir::open(&s.work).unwrap();
    assert_eq!(w.config.publisher_key, change.private_key);
    assert_eq!(w.config.next_publisher_key, None);
    assert_eq!(w.default_publisher_key().unwrap(), change.private_key);
    s.status().await.unwrap();
    let e = s.publish().await.unwrap_err();
    assert!(
        e.to_string().contains("cannot sign snapshot and timestamp"),
        "{e}"
    );

    // A newer timestamp signed by the old key: a client trusting root v1 refuses it.
    let current: tough::schema::Signed<tough::schema::Timestamp> =
        serde_json::from_slice(&std::fs::read(s.repo.join("timestamp.json")).unwrap()).unwrap();
    let mut forged = current.signed.clone();
    forged.version = forged.version.checked_add(1).unwrap();
    forged.expires = days(30);
    let v1 = read_root(&s.repo.join("1.root.json")).signed;
    plant_timestamp(&s.repo, forged.clone(), &v1, &old_key).await;
    let e = s.status().await.unwrap_err();
    match &e {
        GovernanceError::Load { role, .. } => assert_eq!(role, "timestamp", "{e}"),
        other => panic!("{other}"),
    }
    // The same timestamp signed by the new key loads: the key is what is refused.
    let v2 = read_root(&s.repo.join("2.root.json")).signed;
    plant_timestamp(&s.repo, forged, &v2, &new.private).await;
    s.status().await.unwrap();

    // The publisher key is a key of its own, and a new one.
    let again = |publisher: PathBuf| {
        rotate::rotate(&RotateOptions {
            workdir: s.work.clone(),
            add_keys: Vec::new(),
            remove_keys: Vec::new(),
            threshold: None,
            publisher_key: Some(publisher),
            root_expires: days(365),
            targets_expires: days(90),
        })
        .unwrap_err()
        .to_string()
    };
    let e = again(new.public.clone());
    assert!(e.contains("is the publisher key of root v2 already"), "{e}");
    let e = again(s.work.join("keys/voter-3.pub"));
    assert!(e.contains("is a governance key"), "{e}");
    assert!(!s.work.join("staged/root.json").exists());
}

fn read_timestamp(repo: &Path) -> tough::schema::Signed<tough::schema::Timestamp> {
    serde_json::from_slice(&std::fs::read(repo.join("timestamp.json")).unwrap()).unwrap()
}

/// A timestamp.json planted in REPO_DIR (by anyone who can write there) claiming version
/// u64::MAX - 1: publish counts from the workdir's own record of what it published, so it
/// refuses a larger claim nobody signed, naming the file and both versions, and leaves
/// REPO_DIR untouched. An empty directory continues the workdir's versions; a workdir without
/// a record takes a claim only the root in force's timestamp key signed; the last version
/// there is is refused by name, not by a panic.
#[tokio::test]
async fn a_planted_timestamp_version_is_refused_and_versions_follow_the_workdir() {
    let s = Scene::new().await;
    published(&s).await;
    let p = s.publish().await.unwrap();
    assert_eq!((p.snapshot_version, p.timestamp_version), (2, 2));
    let honest = std::fs::read(s.repo.join("timestamp.json")).unwrap();

    let mut planted = read_timestamp(&s.repo);
    planted.signed.version = std::num::NonZeroU64::new(u64::MAX - 1).unwrap();
    std::fs::write(
        s.repo.join("timestamp.json"),
        serde_json::to_vec_pretty(&planted).unwrap(),
    )
    .unwrap();
    let before = s.repo_files();
    let e = s.publish().await.unwrap_err();
    assert!(
        matches!(e, GovernanceError::UnverifiedVersion { .. }) && e.is_bad_input(),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "{}: claims timestamp v{} and snapshot v2, but this workdir has published at most timestamp v2 and snapshot v2, and the file is not signed by the timestamp key of root v1",
            s.repo.join("timestamp.json").display(),
            u64::MAX - 1
        )),
        "{e}"
    );
    assert_eq!(s.repo_files(), before, "a refused publish wrote");

    // An empty directory continues the versions this workdir published.
    let other = s.root.join("repo-2");
    let publisher = s.work.join("keys/publisher.pem");
    let p = s.publish_into(&other, &publisher, days(1)).await.unwrap();
    assert_eq!((p.snapshot_version, p.timestamp_version), (3, 3));
    status::status(&StatusOptions {
        repo: other.display().to_string(),
        root: other.join("1.root.json"),
        check_payloads: true,
    })
    .await
    .unwrap();
    // Back in the first repository (the planted file moved aside): on from 3, not from 2.
    std::fs::write(s.repo.join("timestamp.json"), &honest).unwrap();
    let p = s.publish().await.unwrap();
    assert_eq!((p.snapshot_version, p.timestamp_version), (4, 4));
    s.status().await.unwrap();

    // A workdir that kept no record (it published before records were kept) takes the
    // repository's versions, which the publisher key signed.
    std::fs::remove_file(s.work.join("published/versions.json")).unwrap();
    let p = s.publish().await.unwrap();
    assert_eq!((p.snapshot_version, p.timestamp_version), (5, 5));

    // The publisher key itself signed the last version there is: refused, naming it.
    let mut last = read_timestamp(&s.repo).signed;
    last.version = std::num::NonZeroU64::MAX;
    let v1 = read_root(&s.repo.join("1.root.json")).signed;
    plant_timestamp(&s.repo, last, &v1, &publisher).await;
    let e = s.publish().await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!(
            "timestamp v{} was published: there is no later timestamp version",
            u64::MAX
        )),
        "{e}"
    );
}
