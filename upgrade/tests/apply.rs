//! `apply` end to end on file-backed slots, against a governance record published by
//! plinth-governance and served from 127.0.0.1 or a file mirror: the happy path (with a
//! resume after a dropped connection), mirror fallback, and each refusal with nothing
//! applied (every slot part and the state file byte-identical).

mod common;

use common::*;
use plinth_release::Slot;
use plinth_upgrade::apply::{apply, Applied, ApplyOptions};
use plinth_upgrade::choose::Reason;
use plinth_upgrade::fetch::Pace;
use plinth_upgrade::slots::Content;
use plinth_upgrade::UpgradeError;

struct Scene {
    _tmp: tempfile::TempDir,
    record: Record,
    node: NodeDir,
    payload: Vec<u8>,
}

async fn scene() -> Scene {
    let tmp = tempfile::tempdir().unwrap();
    let record = Record::new(&tmp.path().join("gov")).await;
    let payload = update_image(2, 200_000);
    record.elect_and_publish("1.1.0", &payload, OPEN).await;
    let node = NodeDir::new(&tmp.path().join("node"));
    Scene {
        _tmp: tmp,
        record,
        node,
        payload,
    }
}

/// The inactive slot B holds version 2's members, A is untouched, B is pending.
fn assert_flipped_to_b(node: &NodeDir, before_a: &[Vec<u8>]) {
    assert_eq!(&node.active_bytes(), before_a, "the active slot changed");
    let root_b = std::fs::read(&node.layout.b[0].path).unwrap();
    let want = pattern(2, 200_000);
    assert_eq!(&root_b[..want.len()], &want[..]);
    assert_eq!(root_b.len(), PART_SIZE, "the part grew or shrank");
    let uki_b = std::fs::read(&node.layout.b[1].path).unwrap();
    assert_eq!(&uki_b[..3000], &pattern(202, 3000)[..]);
    let store = node.store();
    let s = store.state();
    assert_eq!(
        (s.active, s.pending, s.tries_left),
        (Slot::A, Some(Slot::B), 3)
    );
    assert!(matches!(&s.b, Content::Written { version, .. } if version.as_str() == "1.1.0"));
}

#[tokio::test]
async fn applies_over_http_resuming_after_a_dropped_connection() {
    let s = scene().await;
    let server = Server::start(&s.record.repo);
    // The payload's first response is cut after 50000 bytes.
    server
        .cut_after
        .store(50_000, std::sync::atomic::Ordering::SeqCst);
    let before_a = s.node.active_bytes();
    let mut store = s.node.store();
    let opts = s.node.options(&s.record, std::slice::from_ref(&server.url));
    let done = apply(&opts, &mut store).await.unwrap();
    assert!(
        matches!(
            &done,
            Applied::Flipped {
                version,
                slot: Slot::B,
                reason: Reason::Upgrade,
                timings,
            } if version.as_str() == "1.1.0" && timings.write_s > 0.0 && timings.read_back_s > 0.0
        ),
        "{done:?}"
    );
    assert_flipped_to_b(&s.node, &before_a);
    let reqs = server.requests();
    let payload_reqs: Vec<&String> = reqs.iter().filter(|r| r.contains("/targets/")).collect();
    assert_eq!(payload_reqs.len(), 2, "{reqs:?}");
    assert!(payload_reqs[0].ends_with("whole"), "{reqs:?}");
    assert!(payload_reqs[1].ends_with("from 50000"), "{reqs:?}");
    // The staged payload is gone; a second apply finds the flip done.
    assert_eq!(
        std::fs::read_dir(s.node.dir.join("staging"))
            .unwrap()
            .count(),
        0
    );
    let again = apply(&opts, &mut store).await.unwrap();
    assert!(
        matches!(again, Applied::AlreadyPending { slot: Slot::B, .. }),
        "{again:?}"
    );
    let st = plinth_upgrade::status::status(store.state());
    let text = plinth_upgrade::status::lines(&st).join("\n");
    assert!(
        text.contains("slot B: 1.1.0 (written and read back) (pending, 3 tries left)"),
        "{text}"
    );
    assert!(text.contains("last: applied 1.1.0 to slot B"), "{text}");
    assert!(text.contains("upgrade from 1.0.0 to 1.1.0"), "{text}");
}

#[tokio::test]
async fn falls_back_to_the_next_mirror() {
    let s = scene().await;
    let server = Server::start(&s.record.repo);
    // A closed port, then a file mirror whose payload is corrupt, then the good server.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", l.local_addr().unwrap())
    };
    let bad = s.node.dir.join("bad-mirror");
    copy_tree(&s.record.repo, &bad);
    let bad_payload = Record {
        repo: bad.clone(),
        dir: bad.clone(),
        work: bad.clone(),
    }
    .payload_path("1.1.0");
    let mut bytes = std::fs::read(&bad_payload).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&bad_payload, bytes).unwrap();
    let before_a = s.node.active_bytes();
    let mut store = s.node.store();
    let opts = s
        .node
        .options(&s.record, &[closed, file_url(&bad), server.url.clone()]);
    let done = apply(&opts, &mut store).await.unwrap();
    assert!(
        matches!(done, Applied::Flipped { slot: Slot::B, .. }),
        "{done:?}"
    );
    assert_flipped_to_b(&s.node, &before_a);
    assert!(server.requests().iter().any(|r| r.contains("/targets/")));
}

#[tokio::test]
async fn a_mirror_that_trickles_is_given_up_and_the_next_resumes_its_bytes() {
    let s = scene().await;
    let (slow, good) = (Server::start(&s.record.repo), Server::start(&s.record.repo));
    // 1 KiB every 50 ms (20 KiB/s), far inside any read timeout, against a pace of 1 MiB/s
    // after 1 s.
    slow.trickle_ms
        .store(50, std::sync::atomic::Ordering::SeqCst);
    let pace = Pace {
        min_rate: 1 << 20,
        grace: std::time::Duration::from_secs(1),
    };
    let length = std::fs::metadata(s.record.payload_path("1.1.0"))
        .unwrap()
        .len();
    assert!(length > 64 << 10, "the payload outlasts the deadline");

    // Alone, it fails the apply, naming the pace; nothing is written.
    let mut alone = s.node.options(&s.record, std::slice::from_ref(&slow.url));
    alone.staging.pace = pace;
    let started = std::time::Instant::now();
    let e = refused(&s, &alone).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let text = e.to_string();
    assert!(
        text.contains("too slow") && text.contains("1024 KiB/s"),
        "{text}"
    );
    // What it gave stays staged for the next run (only transport failed).
    let payload = std::fs::read(s.record.payload_path("1.1.0")).unwrap();
    let staged = std::fs::metadata(alone.staging.path(&plinth_release::Sha256::of(&payload)))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(staged > 0 && staged < length, "{staged} bytes staged");

    // With a good mirror after it, the good one resumes from the bytes the slow one gave.
    let before_a = s.node.active_bytes();
    let mut opts = s
        .node
        .options(&s.record, &[slow.url.clone(), good.url.clone()]);
    opts.staging.pace = pace;
    let mut store = s.node.store();
    let done = apply(&opts, &mut store).await.unwrap();
    assert!(
        matches!(done, Applied::Flipped { slot: Slot::B, .. }),
        "{done:?}"
    );
    assert_flipped_to_b(&s.node, &before_a);
    let resumed: Vec<String> = good
        .requests()
        .into_iter()
        .filter(|r| r.contains("/targets/"))
        .collect();
    assert!(
        resumed.len() == 1 && resumed[0].contains(" from ") && !resumed[0].ends_with(" from 0"),
        "the good mirror was asked for {resumed:?}"
    );
}

/// Run `apply` with `opts`, expect an error, and check that nothing changed.
async fn refused(s: &Scene, opts: &ApplyOptions) -> UpgradeError {
    let before = s.node.snapshot();
    let mut store = s.node.store();
    let e = apply(opts, &mut store).await.unwrap_err();
    assert_eq!(s.node.snapshot(), before, "something was applied: {e}");
    assert_eq!(store.state(), s.node.store().state());
    e
}

#[tokio::test]
async fn a_wrong_hash_a_truncated_or_a_longer_payload_is_refused() {
    let s = scene().await;
    let path = s.record.payload_path("1.1.0");
    let good = std::fs::read(&path).unwrap();
    let opts = s.node.options(&s.record, &[file_url(&s.record.repo)]);

    let mut corrupt = good.clone();
    corrupt[good.len() / 2] ^= 1;
    std::fs::write(&path, &corrupt).unwrap();
    let e = refused(&s, &opts).await;
    assert!(matches!(e, UpgradeError::WrongHash { .. }), "{e}");

    std::fs::write(&path, &good[..good.len() - 10]).unwrap();
    let e = refused(&s, &opts).await;
    assert!(matches!(e, UpgradeError::Truncated { .. }), "{e}");

    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&path, &longer).unwrap();
    let e = refused(&s, &opts).await;
    assert!(matches!(e, UpgradeError::TooLong { .. }), "{e}");

    // Over http too, truncated.
    std::fs::write(&path, &good[..good.len() - 10]).unwrap();
    let server = Server::start(&s.record.repo);
    let e = refused(
        &s,
        &s.node.options(&s.record, std::slice::from_ref(&server.url)),
    )
    .await;
    assert!(matches!(e, UpgradeError::Truncated { .. }), "{e}");

    // Restored, it applies.
    std::fs::write(&path, &good).unwrap();
    let mut store = s.node.store();
    apply(&opts, &mut store).await.unwrap();
    assert_eq!(store.state().pending, Some(Slot::B));
}

#[tokio::test]
async fn a_signed_payload_that_is_not_an_update_archive_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let record = Record::new(&tmp.path().join("gov")).await;
    let node = NodeDir::new(&tmp.path().join("node"));
    // Governance signed garbage: the hash matches, the archive does not parse.
    record
        .elect_and_publish("1.1.0", b"not a tar.zst at all", OPEN)
        .await;
    let s = Scene {
        _tmp: tmp,
        record,
        node,
        payload: Vec::new(),
    };
    let opts = s.node.options(&s.record, &[file_url(&s.record.repo)]);
    let e = refused(&s, &opts).await;
    assert!(matches!(e, UpgradeError::Archive(_)), "{e}");

    // An archive without the member slot B's UKI part needs.
    s.record
        .elect_and_publish("1.2.0", &tar_zst(&[("root.img", b"root")]), OPEN)
        .await;
    let e = refused(&s, &opts).await;
    assert!(
        matches!(&e, UpgradeError::MissingMember { member, .. } if member == "host-os-b.efi"),
        "{e}"
    );

    // A member larger than its part: no space, found before writing.
    let big = pattern(9, PART_SIZE + 1);
    s.record
        .elect_and_publish(
            "1.3.0",
            &tar_zst(&[("root.img", &big), ("host-os-b.efi", b"uki")]),
            OPEN,
        )
        .await;
    let e = refused(&s, &opts).await;
    assert!(matches!(e, UpgradeError::NoSpace { .. }), "{e}");
    drop(s.payload);
}

#[tokio::test]
async fn a_version_never_elected_is_refused() {
    let s = scene().await;
    let mut opts = s.node.options(&s.record, &[file_url(&s.record.repo)]);
    opts.version = Some("9.9.9".parse().unwrap());
    let e = refused(&s, &opts).await;
    assert!(matches!(e, UpgradeError::NotElected { .. }), "{e}");
    assert!(e.to_string().contains("never elected, or revoked"), "{e}");
    // A file planted on the mirror but absent from the signed targets is never fetched.
    let planted = s.record.repo.join("targets/planted.host-os/9.9.9");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(planted.join("update-img.tar.zst"), &s.payload).unwrap();
    let e = refused(&s, &opts).await;
    assert!(matches!(e, UpgradeError::NotElected { .. }), "{e}");
    // Its wave not yet open for this seed (seed 7 is a canary; a seed of the second wave,
    // which opens a day after the canary wave, with a canary wave in the future).
    let tmp = tempfile::tempdir().unwrap();
    let later = Record::new(&tmp.path().join("gov")).await;
    later
        .elect_and_publish("1.1.0", &s.payload, "2999-01-01T00:00:00Z")
        .await;
    let mut opts = s.node.options(&later, &[file_url(&later.repo)]);
    // Another record: its own trust (the datastore keeps the first record's root).
    opts.repo.datastore = tmp.path().join("datastore");
    opts.version = Some("1.1.0".parse().unwrap());
    let e = refused(&s, &opts).await;
    assert!(
        e.to_string().contains("opens for seed 7 at 2999-01-01"),
        "{e}"
    );
    // Without asking for it, the node just stays.
    opts.version = None;
    let mut store = s.node.store();
    let stay = apply(&opts, &mut store).await.unwrap();
    assert!(matches!(stay, Applied::Stay { .. }), "{stay:?}");
}

#[tokio::test]
async fn no_space_for_staging_is_refused() {
    let s = scene().await;
    let mut opts = s.node.options(&s.record, &[file_url(&s.record.repo)]);
    opts.staging.keep_free = u64::MAX / 2;
    let e = refused(&s, &opts).await;
    assert!(matches!(e, UpgradeError::NoSpace { .. }), "{e}");
}

#[tokio::test]
async fn expired_unsigned_replayed_and_mixed_metadata_are_refused() {
    let s = scene().await;
    let file = |dir: &std::path::Path| s.node.options(&s.record, &[file_url(dir)]);

    // Replayed: the node has seen timestamp v2; a mirror serving v1 is a replay.
    let old = s.node.dir.join("old-mirror");
    copy_tree(&s.record.repo, &old);
    s.record.publish_with(days(1)).await;
    let mut store = s.node.store();
    plinth_upgrade::repo::load(&file(&s.record.repo).repo, &reqwest::Client::new())
        .await
        .unwrap();
    let e = refused(&s, &file(&old)).await;
    assert!(
        matches!(&e, UpgradeError::MetadataReplayed { role, trusted: 2, offered: 1, .. } if role == "timestamp"),
        "{e}"
    );

    // Mixed: the current timestamp over the previous snapshot.
    let mixed = s.node.dir.join("mixed-mirror");
    copy_tree(&s.record.repo, &mixed);
    std::fs::copy(mixed.join("1.snapshot.json"), mixed.join("2.snapshot.json")).unwrap();
    let e = refused(&s, &file(&mixed)).await;
    assert!(matches!(e, UpgradeError::MetadataMixed { .. }), "{e}");

    // Unsigned: the timestamp's signatures removed.
    let unsigned = s.node.dir.join("unsigned-mirror");
    copy_tree(&s.record.repo, &unsigned);
    let ts = unsigned.join("timestamp.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ts).unwrap()).unwrap();
    v["signatures"] = serde_json::json!([]);
    std::fs::write(&ts, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = refused(&s, &file(&unsigned)).await;
    assert!(
        matches!(&e, UpgradeError::BelowThreshold { role, .. } if role == "timestamp"),
        "{e}"
    );

    // Expired: a publication whose timestamp is past.
    s.record
        .publish_with("2000-01-01T00:00:00Z".parse().unwrap())
        .await;
    let e = refused(&s, &file(&s.record.repo)).await;
    assert!(
        matches!(&e, UpgradeError::MetadataExpired { role, .. } if role == "timestamp"),
        "{e}"
    );

    // Refreshed, the same node applies.
    s.record.publish_with(days(1)).await;
    apply(&file(&s.record.repo), &mut store).await.unwrap();
    assert_eq!(store.state().pending, Some(Slot::B));
}

#[tokio::test]
async fn targets_with_one_signature_of_two_are_refused() {
    let s = scene().await;
    // targets.json in a copy with one of its two signatures dropped: snapshot names its
    // hash, so tough refuses it before counting signatures (as a file that is not the one
    // snapshot names).
    let copy = s.node.dir.join("one-signature");
    copy_tree(&s.record.repo, &copy);
    let targets = copy.join("1.targets.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&targets).unwrap()).unwrap();
    let sigs = v["signatures"].as_array().unwrap().clone();
    assert_eq!(sigs.len(), 2);
    v["signatures"] = serde_json::json!([sigs[0]]);
    std::fs::write(&targets, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = refused(&s, &s.node.options(&s.record, &[file_url(&copy)])).await;
    assert!(matches!(e, UpgradeError::MetadataMixed { .. }), "{e}");
}
