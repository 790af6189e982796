//! The waves' health gate end to end: governance gates the second wave on the first; the
//! publisher counts the nodes' reports (`plinth-upgrade report`'s format) and signs, with the
//! snapshot, when the gate held; a node of the gated wave waits until then, takes the version
//! after, and waits again once a canary reports that the version failed on it. A snapshot
//! whose gates were altered after signing is refused.

mod common;

use common::*;
use plinth_governance::health::NodeReport;
use plinth_release::Slot;
use plinth_upgrade::apply::{apply, check, Applied, ApplyOptions};
use plinth_upgrade::choose::{Decision, Stay};
use plinth_upgrade::slots::SlotStore;
use std::path::Path;

/// Canary (seeds 0-15) open since [`OPEN`]; `rest` (16-2047) from a day later, once one
/// canary runs the version and none failed it.
fn gated_waves() -> String {
    format!(
        "format_version: 1\nwaves:\n  - name: canary\n    opens_at: {OPEN}\n    seeds: [0, 15]\n  - name: rest\n    opens_at: 2026-01-02T00:00:00Z\n    seeds: [16, 2047]\n    gate: {{min_healthy: 1, max_failed: 0}}\n"
    )
}

/// What the node decides now (its clock read now: a gate opens at the publish's time).
async fn decision_of(opts: &ApplyOptions, store: &SlotStore) -> String {
    let client = plinth_upgrade::repo::http_client().unwrap();
    let mut opts = opts.clone();
    opts.now = now();
    let plan = check(&opts, store, &client).await.unwrap();
    match plan.decision() {
        Decision::Take { offer, .. } => format!("take {}", offer.version()),
        Decision::Stay(s @ Stay::Held { .. }) => format!("held: {s}"),
        Decision::Stay(s) => format!("stay: {s}"),
    }
}

/// `node`'s report, as `plinth-upgrade report` writes it, into `health`.
fn report(health: &Path, name: &str, seed: u16, store: &SlotStore) {
    let r = plinth_upgrade::cli::node_report(
        name,
        plinth_release::Os::HostOs,
        seed,
        store.state(),
        now(),
    );
    let bytes = serde_json::to_vec(&r).unwrap();
    NodeReport::parse(&bytes).unwrap();
    std::fs::create_dir_all(health).unwrap();
    std::fs::write(health.join(format!("{name}.json")), bytes).unwrap();
}

#[tokio::test]
async fn a_gated_wave_opens_when_the_canaries_are_healthy_and_closes_on_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let record = Record::new(&tmp.path().join("gov")).await;
    let payload = update_image(2, 200_000);
    record.elect_with_waves("1.1.0", &payload, &gated_waves());
    record
        .sign(plinth_governance::workdir::StagedRole::Targets, 1)
        .await;
    record
        .sign(plinth_governance::workdir::StagedRole::Targets, 3)
        .await;
    let health = tmp.path().join("health");
    std::fs::create_dir_all(&health).unwrap();
    let published = record.publish_health(days(1), Some(&health)).await;
    assert_eq!(published.gates.len(), 1);
    assert_eq!(published.gates[0].open_since, None);

    // A node of `rest` (seed 100): its wave's time is past, but the gate has not held.
    let rest = NodeDir::new(&tmp.path().join("rest"));
    let mut rest_opts = rest.options(&record, &[file_url(&record.repo)]);
    rest_opts.seed = 100;
    let d = decision_of(&rest_opts, &rest.store()).await;
    assert!(
        d.starts_with("held: 1.1.0's wave `rest`") && d.contains("wave `canary` is healthy"),
        "{d}"
    );
    let mut store = rest.store();
    let before = rest.snapshot();
    let stayed = apply(&rest_opts, &mut store).await.unwrap();
    assert!(matches!(stayed, Applied::Stay { .. }), "{stayed:?}");
    assert_eq!(rest.snapshot(), before, "a held node writes nothing");

    // A canary (seed 7) takes 1.1.0 and commits it after its trial boot; its report is
    // still on 1.0.0 until then.
    let canary = NodeDir::new(&tmp.path().join("canary"));
    let canary_opts = canary.options(&record, &[file_url(&record.repo)]);
    let mut cstore = canary.store();
    let flipped = apply(&canary_opts, &mut cstore).await.unwrap();
    assert!(
        matches!(flipped, Applied::Flipped { slot: Slot::B, .. }),
        "{flipped:?}"
    );
    report(&health, "canary-1", 7, &cstore);
    let published = record.publish_health(days(1), Some(&health)).await;
    assert_eq!(
        published.gates[0].open_since, None,
        "pending is not healthy"
    );
    let mut cstore = SlotStore::open(canary.layout.clone(), &canary.state)
        .unwrap()
        .with_booted(Some(Slot::B));
    cstore.update(|s| s.commit(now())).unwrap();
    cstore.persist().unwrap();
    report(&health, "canary-1", 7, &cstore);
    let published = record.publish_health(days(1), Some(&health)).await;
    let since = published.gates[0].open_since.expect("the gate holds");
    assert_eq!(
        (published.gates[0].healthy, published.gates[0].failed),
        (1, 0)
    );
    assert_eq!(decision_of(&rest_opts, &rest.store()).await, "take 1.1.0");

    // `governance status` shows it.
    let st = plinth_governance::status::status(&plinth_governance::status::StatusOptions {
        repo: record.repo.display().to_string(),
        root: record.trusted_root(),
        check_payloads: false,
    })
    .await
    .unwrap();
    let lines = plinth_governance::status::lines(&st).join("\n");
    assert!(
        lines.contains("wave rest")
            && lines.contains(&format!("; gate open since {since} (1 healthy, 0 failed)")),
        "{lines}"
    );

    // A later publish keeps when it opened.
    let again = record.publish_health(days(1), Some(&health)).await;
    assert_eq!(again.gates[0].open_since, Some(since));

    // Another canary rolled back from 1.1.0: the gate holds no more, and `rest` waits.
    let failed = NodeDir::new(&tmp.path().join("canary-2"));
    let mut fstore = failed.store();
    apply(
        &failed.options(&record, &[file_url(&record.repo)]),
        &mut fstore,
    )
    .await
    .unwrap();
    let mut fstore = SlotStore::open(failed.layout.clone(), &failed.state)
        .unwrap()
        .with_booted(Some(Slot::A));
    fstore
        .update(|s| s.roll_back("health gate failed: plinth-guest.service".into(), now()))
        .unwrap();
    fstore.persist().unwrap();
    report(&health, "canary-2", 9, &fstore);
    let published = record.publish_health(days(1), Some(&health)).await;
    assert_eq!(published.gates[0].open_since, None);
    assert_eq!(
        (published.gates[0].healthy, published.gates[0].failed),
        (1, 1)
    );
    let d = decision_of(&rest_opts, &rest.store()).await;
    assert!(d.starts_with("held: "), "{d}");

    // The publisher signs the gates: a snapshot whose gates were edited is refused.
    let healthy = std::fs::remove_file(health.join("canary-2.json"));
    healthy.unwrap();
    let published = record.publish_health(days(1), Some(&health)).await;
    assert!(published.gates[0].open_since.is_some());
    let snapshot = record
        .repo
        .join(format!("{}.snapshot.json", published.snapshot_version));
    let text = std::fs::read_to_string(&snapshot).unwrap();
    let edited = text.replacen("\"healthy\": 1", "\"healthy\": 2", 1);
    assert_ne!(edited, text, "{text}");
    std::fs::write(&snapshot, edited).unwrap();
    let tmp2 = tempfile::tempdir().unwrap();
    let mut fresh = rest_opts.clone();
    fresh.repo.datastore = tmp2.path().join("datastore");
    let client = plinth_upgrade::repo::http_client().unwrap();
    let e = check(&fresh, &rest.store(), &client).await.unwrap_err();
    assert!(e.to_string().contains("snapshot"), "{e}");
}
