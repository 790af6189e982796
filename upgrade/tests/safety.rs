//! What keeps a node safe beyond the record's signatures: the slot that booted is never
//! written (a trial boot of the pending slot, or a state file that lags the boot loader),
//! one apply at a time, a pending flip governance no longer elects is called off before it
//! boots, the root a load verified is where the next load starts (so keys a rotation retired
//! cannot fork the record), a staged payload altered after its download is never written,
//! and a version that failed here is not taken again by itself. Each refusal leaves every slot part and the state file byte-identical.

mod common;

use common::*;
use plinth_governance::keys;
use plinth_governance::rotate::{self, RotateOptions};
use plinth_governance::StagedRole;
use plinth_release::Slot;
use plinth_upgrade::apply::{apply, install, Applied};
use plinth_upgrade::fetch::Want;
use plinth_upgrade::slots::OutcomeKind;
use plinth_upgrade::UpgradeError;
use std::path::Path;

async fn flipped_to_b(dir: &Path) -> (Record, NodeDir) {
    let (record, node) = elected_1_1_0(dir).await;
    let opts = node.options(&record, &[file_url(&record.repo)]);
    let done = apply(&opts, &mut node.store()).await.unwrap();
    assert!(
        matches!(done, Applied::Flipped { slot: Slot::B, .. }),
        "{done:?}"
    );
    (record, node)
}

#[tokio::test]
async fn the_slot_that_booted_is_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = flipped_to_b(tmp.path()).await;
    // Governance elects 1.2.0 while the node is on B's trial boot.
    record
        .elect_and_publish("1.2.0", &update_image(3, 200_000), OPEN)
        .await;
    let opts = node.options(&record, &[file_url(&record.repo)]);
    let before = node.snapshot();
    let mut trial = node.store().with_booted(Some(Slot::B));
    let done = apply(&opts, &mut trial).await.unwrap();
    assert!(
        matches!(&done, Applied::OnTrial { slot: Slot::B, tries_left: 3, version: Some(v) } if v.as_str() == "1.1.0"),
        "{done:?}"
    );
    assert_eq!(node.snapshot(), before, "something was written");

    // A state file that says A is active with nothing pending, while B booted (the boot
    // loader fell back, or the file was restored from a backup): still refused.
    let mut stale = node.store();
    stale.update(|s| s.cancel("test".into(), now())).unwrap();
    stale.persist().unwrap();
    let before = node.snapshot();
    let e = apply(&opts, &mut node.store().with_booted(Some(Slot::B)))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("names slot A as active"), "{e}");
    assert_eq!(node.snapshot(), before);

    // Booted from A, as the state says: B is written with 1.2.0.
    let done = apply(&opts, &mut node.store().with_booted(Some(Slot::A)))
        .await
        .unwrap();
    assert!(
        matches!(&done, Applied::Flipped { version, .. } if version.as_str() == "1.2.0"),
        "{done:?}"
    );
}

#[tokio::test]
async fn a_second_apply_while_one_runs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = elected_1_1_0(tmp.path()).await;
    let opts = node.options(&record, &[file_url(&record.repo)]);
    let running = node.store();
    let held = running.lock().unwrap();
    let before = node.snapshot();
    let e = apply(&opts, &mut node.store()).await.unwrap_err();
    assert!(matches!(e, UpgradeError::Busy { .. }), "{e}");
    assert!(e.to_string().contains("another upgrade run"), "{e}");
    assert_eq!(node.snapshot(), before);
    drop(held);
    // The lock is released with its holder: the next run goes on, and it reads the state
    // from the file, not from a copy taken before the lock.
    let mut other = node.store();
    let mut stale = node.store();
    apply(&opts, &mut other).await.unwrap();
    let again = apply(&opts, &mut stale).await.unwrap();
    assert!(matches!(again, Applied::AlreadyPending { .. }), "{again:?}");
}

#[tokio::test]
async fn a_pending_flip_to_a_revoked_version_is_called_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = flipped_to_b(tmp.path()).await;
    record.revoke_and_publish("1.1.0").await;

    let opts = node.options(&record, &[file_url(&record.repo)]);
    let mut store = node.store();
    let done = apply(&opts, &mut store).await.unwrap();
    assert!(
        matches!(&done, Applied::Cancelled { version, slot: Slot::B, .. } if version.as_str() == "1.1.0"),
        "{done:?}"
    );
    let s = node.store();
    let s = s.state();
    assert_eq!((s.active, s.pending, s.tries_left), (Slot::A, None, 0));
    let last = s.last.as_ref().unwrap();
    assert_eq!(last.kind, OutcomeKind::Cancelled);
    assert!(
        last.reason.contains("no longer elects 1.1.0"),
        "{}",
        last.reason
    );
    let status = plinth_upgrade::status::lines(&plinth_upgrade::status::status(s)).join("\n");
    assert!(status.contains("called off the flip to 1.1.0"), "{status}");
}

#[tokio::test]
async fn a_clock_behind_what_the_metadata_saw_is_named_and_nothing_is_loaded() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = elected_1_1_0(tmp.path()).await;
    // An earlier load saw 2100 (tough keeps the latest time it saw): the clock is behind it.
    let datastore = node.dir.join("datastore");
    std::fs::create_dir_all(&datastore).unwrap();
    std::fs::write(
        datastore.join("latest_known_time.json"),
        "\"2100-01-01T00:00:00Z\"",
    )
    .unwrap();
    let before = node.snapshot();
    let opts = node.options(&record, &[file_url(&record.repo)]);
    let e = apply(&opts, &mut node.store()).await.unwrap_err();
    assert!(matches!(e, UpgradeError::ClockBehind { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("earlier than 2100-01-01T00:00:00Z") && text.contains("NTP"),
        "{text}"
    );
    assert_eq!(node.snapshot(), before);
    // Torn, the file is refused rather than dropped (which would drop the check).
    std::fs::write(datastore.join("latest_known_time.json"), "\"2100-01").unwrap();
    let e = apply(&opts, &mut node.store()).await.unwrap_err();
    assert!(matches!(e, UpgradeError::State { .. }), "{e}");
    assert_eq!(node.snapshot(), before);
}

/// Roll the pending slot back, as the boot's health gate does.
fn roll_back(node: &NodeDir, why: &str) {
    let mut store = node.store();
    store.update(|s| s.roll_back(why.into(), now())).unwrap();
    store.persist().unwrap();
}

#[tokio::test]
async fn a_version_that_failed_here_is_not_taken_again_after_another_one_failed() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = flipped_to_b(tmp.path()).await;
    roll_back(&node, "health gate failed: plinth-guest.service");
    // 1.2.0 is elected, applied, and fails too.
    record
        .elect_and_publish("1.2.0", &update_image(3, 200_000), OPEN)
        .await;
    let opts = node.options(&record, &[file_url(&record.repo)]);
    let done = apply(&opts, &mut node.store()).await.unwrap();
    assert!(matches!(done, Applied::Flipped { .. }), "{done:?}");
    roll_back(&node, "the guest did not start");
    // Governance revokes 1.2.0: 1.1.0 is this node's version again, and it failed here.
    record.revoke_and_publish("1.2.0").await;
    let before = node.snapshot();
    let done = apply(&opts, &mut node.store()).await.unwrap();
    let Applied::Stay { why, .. } = &done else {
        panic!("1.1.0 was applied again: {done:?}")
    };
    assert!(
        why.contains("1.1.0 failed on this node") && why.contains("plinth-guest.service"),
        "{why}"
    );
    assert_eq!(node.snapshot(), before);
    let status =
        plinth_upgrade::status::lines(&plinth_upgrade::status::status(node.store().state()))
            .join("\n");
    assert!(
        status.contains("failed here: 1.1.0") && status.contains("failed here: 1.2.0"),
        "{status}"
    );
    // Asked for by name, it is tried again.
    let mut by_name = opts.clone();
    by_name.version = Some("1.1.0".parse().unwrap());
    let done = apply(&by_name, &mut node.store()).await.unwrap();
    assert!(
        matches!(&done, Applied::Flipped { version, .. } if version.as_str() == "1.1.0"),
        "{done:?}"
    );
}

fn key_id(work: &Path, voter: usize) -> String {
    let key = keys::read_public(&work.join(format!("keys/voter-{voter}.pub"))).unwrap();
    keys::key_id(&key)
}

#[tokio::test]
async fn keys_a_rotation_retired_cannot_fork_the_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = elected_1_1_0(tmp.path()).await;
    let opts = node.options(&record, &[file_url(&record.repo)]);
    let client = reqwest::Client::new();
    plinth_upgrade::repo::load(&opts.repo, &client)
        .await
        .unwrap();
    let kept = opts.repo.datastore.join(plinth_upgrade::repo::NEWEST_ROOT);
    let version = |p: &Path| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["signed"]["version"].as_u64().unwrap()
    };
    assert_eq!(
        version(&kept),
        1,
        "the first load keeps the root it verified"
    );

    // Whoever holds voters 1 and 2's keys keeps a copy of the record as it was.
    let fork_work = tmp.path().join("fork-work");
    let fork_repo = tmp.path().join("fork-repo");
    copy_tree(&record.work, &fork_work);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        fork_work.join("keys"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    copy_tree(&record.repo, &fork_repo);
    let fork = Record {
        dir: tmp.path().join("fork"),
        work: fork_work.clone(),
        repo: fork_repo.clone(),
    };

    // Governance retires voters 1 and 2 (root v2: voters 3, 4, 5; threshold 2).
    let new: Vec<_> = (4..=5)
        .map(|i| keys::generate(&record.work.join("keys"), &format!("voter-{i}")).unwrap())
        .collect();
    rotate::rotate(&RotateOptions {
        workdir: record.work.clone(),
        add_keys: new.iter().map(|k| k.public.clone()).collect(),
        remove_keys: vec![key_id(&record.work, 1), key_id(&record.work, 2)],
        threshold: None,
        publisher_key: None,
        root_expires: days(365),
        targets_expires: days(90),
    })
    .unwrap();
    for voter in [1, 2, 4, 5] {
        record.sign(StagedRole::Root, voter).await;
    }
    for voter in [3, 5] {
        record.sign(StagedRole::Targets, voter).await;
    }
    record.publish_with(days(1)).await;
    plinth_upgrade::repo::load(&opts.repo, &client)
        .await
        .unwrap();
    assert_eq!(version(&kept), 2, "the node keeps root v2");
    // A node whose image already ships root v2 (newer than its kept v1) keeps v2 too: rolled
    // back to an image with an older root later, it still starts from v2.
    let newer = NodeDir::new(&tmp.path().join("newer"));
    let newer_opts =
        newer.options_with(&record.repo.join("2.root.json"), &[file_url(&record.repo)]);
    let newer_kept = newer_opts
        .repo
        .datastore
        .join(plinth_upgrade::repo::NEWEST_ROOT);
    std::fs::create_dir_all(&newer_opts.repo.datastore).unwrap();
    std::fs::copy(record.repo.join("1.root.json"), &newer_kept).unwrap();
    plinth_upgrade::repo::load(&newer_opts.repo, &client)
        .await
        .unwrap();
    assert_eq!(version(&newer_kept), 2);

    // The retired voters fork: their own root v2 (voters 1, 2 and 6), signed by themselves,
    // which root v1 accepts, electing a release of their own.
    let six = keys::generate(&fork_work.join("keys"), "voter-6").unwrap();
    rotate::rotate(&RotateOptions {
        workdir: fork_work.clone(),
        add_keys: vec![six.public.clone()],
        remove_keys: vec![key_id(&fork_work, 3)],
        threshold: None,
        publisher_key: None,
        root_expires: days(365),
        targets_expires: days(90),
    })
    .unwrap();
    for voter in [1, 2] {
        fork.sign(StagedRole::Root, voter).await;
    }
    for voter in [1, 2] {
        fork.sign(StagedRole::Targets, voter).await;
    }
    // Published twice, so its timestamp and snapshot versions pass the node's.
    fork.publish_with(days(1)).await;
    fork.publish_with(days(1)).await;

    // A node that starts from the image's root v1 (a fresh datastore) is taken in: this is
    // what the kept root protects against.
    let fresh = NodeDir::new(&tmp.path().join("fresh"));
    let fresh_opts = fresh.options(&record, &[file_url(&fork_repo)]);
    plinth_upgrade::repo::load(&fresh_opts.repo, &client)
        .await
        .unwrap();

    // This node starts from root v2: the fork's targets are not signed by its voters.
    let before = node.snapshot();
    let forked = node.options(&record, &[file_url(&fork_repo)]);
    let e = apply(&forked, &mut node.store()).await.unwrap_err();
    assert!(
        matches!(&e, UpgradeError::BelowThreshold { role, .. } if role == "targets"),
        "{e}"
    );
    assert_eq!(node.snapshot(), before);
}

#[tokio::test]
async fn a_staged_payload_altered_after_its_download_is_never_written() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeDir::new(&tmp.path().join("node"));
    let payload = update_image(2, 200_000);
    let want = Want {
        target: "host-os/1.1.0/update-img.tar.zst".into(),
        sha256: plinth_release::Sha256::of(&payload),
        length: payload.len() as u64,
        consistent: false,
    };
    let staged = tmp.path().join("staged.tar.zst");
    // The same archive with one more member: a valid archive, not the signed bytes.
    let other = tar_zst(&[
        ("root.img", &pattern(2, 200_000)),
        ("host-os-a.efi", &pattern(102, 3000)),
        ("host-os-b.efi", &pattern(202, 3000)),
        ("extra", b"x"),
    ]);
    for (i, bytes) in [other, payload[..payload.len() - 1].to_vec()]
        .into_iter()
        .enumerate()
    {
        std::fs::write(&staged, &bytes).unwrap();
        let before = node.snapshot();
        let e = install(
            &staged,
            &want,
            &"1.1.0".parse().unwrap(),
            &mut node.store(),
            3,
            "test".into(),
            now(),
        )
        .unwrap_err();
        if i == 0 {
            // A whole archive, but not the signed one: the hash of what was read says so.
            assert!(matches!(e, UpgradeError::StagedChanged { .. }), "{e}");
            assert!(!staged.exists(), "the altered file is removed");
        } else {
            // Cut short: the archive reader or the hash stops it.
            assert!(
                matches!(
                    e,
                    UpgradeError::StagedChanged { .. } | UpgradeError::Archive(_)
                ),
                "{e}"
            );
        }
        assert_eq!(node.snapshot(), before, "{e}");
    }
    // The signed bytes themselves are written.
    std::fs::write(&staged, &payload).unwrap();
    install(
        &staged,
        &want,
        &"1.1.0".parse().unwrap(),
        &mut node.store(),
        3,
        "test".into(),
        now(),
    )
    .unwrap();
    assert_eq!(node.store().state().pending, Some(Slot::B));
}

/// A loop device, detached when dropped.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn a_block_device_in_use_is_not_opened_for_writing() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: loop devices need root (CI runs as root)");
        return;
    }
    use plinth_upgrade::slots::{Layout, Part, SlotStore, State};
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let backing = tmp.path().join("b.img");
    std::fs::write(&backing, vec![0u8; 1 << 20]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dev = Loop(String::from_utf8(out.stdout).unwrap().trim().to_string());
    let a = tmp.path().join("a.img");
    std::fs::write(&a, vec![0u8; 1 << 20]).unwrap();
    let layout = Layout {
        a: vec![Part {
            member: "root.img".into(),
            path: a,
        }],
        b: vec![Part {
            member: "root.img".into(),
            path: dev.0.clone().into(),
        }],
    };
    let store = SlotStore::open_or_init(layout, &tmp.path().join("slots.json"), || {
        State::new(Slot::A, "1.0.0".parse().unwrap(), now())
    })
    .unwrap();
    // Free, it opens; claimed (as a mount or a dm-verity mapping claims it), it does not.
    drop(store.inactive_writer().unwrap());
    let claim = std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_EXCL)
        .open(&dev.0)
        .unwrap();
    let e = store
        .inactive_writer()
        .err()
        .expect("refused while claimed");
    assert!(
        matches!(&e, UpgradeError::SlotInUse { slot: Slot::B, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("in use"), "{e}");
    drop(claim);
    drop(store.inactive_writer().unwrap());
}

#[tokio::test]
async fn a_superseded_pending_flip_is_called_off_before_the_download() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = flipped_to_b(tmp.path()).await;
    // Governance revokes 1.1.0 and elects 1.2.0, whose payload no mirror has yet.
    record.revoke_and_publish("1.1.0").await;
    record
        .elect_and_publish("1.2.0", &update_image(3, 200_000), OPEN)
        .await;
    std::fs::remove_file(record.payload_path("1.2.0")).unwrap();
    let opts = node.options(&record, &[file_url(&record.repo)]);
    let e = apply(&opts, &mut node.store()).await.unwrap_err();
    assert!(
        e.is_transport() || matches!(e, UpgradeError::NoMirror { .. }),
        "{e}"
    );
    let store = node.store();
    let s = store.state();
    assert_eq!(
        (s.active, s.pending),
        (Slot::A, None),
        "the revoked 1.1.0 stays pending"
    );
    let last = s.last.as_ref().unwrap();
    assert_eq!(last.kind, OutcomeKind::Cancelled);
    assert!(last.reason.contains("elects 1.2.0"), "{}", last.reason);
}

#[tokio::test]
async fn an_archive_of_too_many_members_is_refused_unread() {
    let tmp = tempfile::tempdir().unwrap();
    let node = NodeDir::new(&tmp.path().join("node"));
    let filler: Vec<(String, Vec<u8>)> = (0..70).map(|i| (format!("f{i}"), vec![1u8])).collect();
    let mut members: Vec<(&str, &[u8])> = filler
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    let (root, a, b) = (pattern(2, 1000), pattern(102, 3000), pattern(202, 3000));
    members.extend([
        ("root.img", &root[..]),
        ("host-os-a.efi", &a[..]),
        ("host-os-b.efi", &b[..]),
    ]);
    let payload = tar_zst(&members);
    let staged = tmp.path().join("staged");
    std::fs::write(&staged, &payload).unwrap();
    let want = Want {
        target: "host-os/1.1.0/update-img.tar.zst".into(),
        sha256: plinth_release::Sha256::of(&payload),
        length: payload.len() as u64,
        consistent: false,
    };
    let before = node.snapshot();
    let e = install(
        &staged,
        &want,
        &"1.1.0".parse().unwrap(),
        &mut node.store(),
        3,
        "test".into(),
        now(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("more than 64 members"), "{e}");
    assert_eq!(node.snapshot(), before);
}

#[tokio::test]
async fn trusted_metadata_altered_on_disk_is_refused_not_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = flipped_to_b(tmp.path()).await;
    let opts = node.options(&record, &[file_url(&record.repo)]);
    let ts = opts.repo.datastore.join("timestamp.json");
    assert!(ts.exists(), "the load kept the timestamp it trusted");
    // No load leaves its working copy behind.
    assert!(!opts.repo.datastore.join(".load").exists());
    std::fs::write(&ts, b"{\"signed\": ").unwrap();
    let before = node.snapshot();
    let e = apply(&opts, &mut node.store()).await.unwrap_err();
    assert!(e.to_string().contains("does not parse"), "{e}");
    assert!(e.to_string().contains("timestamp.json"), "{e}");
    assert_eq!(node.snapshot(), before);
}
