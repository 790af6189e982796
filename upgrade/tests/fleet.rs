//! The fleet simulation (`ci/fleet-sim`; ignored in the unit tier: it runs for minutes).
//!
//! 1. **100 node processes**: each node is a directory with file-backed slots and its own
//!    configuration, driven by the real `plinth-upgrade` binary (`apply`, then, when it
//!    flipped, a simulated reboot into the new slot and `settle`, then `report`), against one
//!    repository served on 127.0.0.1 and published by plinth-governance with `--health`
//!    (the nodes' reports) at every tick. 1.1.0 is elected in two waves, the second opening
//!    a little later and gated on the first's health; then 1.2.0 is elected the same way and
//!    revoked once its canaries run it: it spreads no further, and the lowered `max_version`
//!    brings its nodes back to 1.1.0. Nodes per version at each tick are printed as a table
//!    and drawn as an SVG (`target/fleet-sim/fleet.svg`).
//! 2. **100 000 nodes in-process**: the same wave logic (`choose`, the gate's `evaluate`)
//!    over two simulated days in 15-minute steps; its time is reported.

mod common;

use common::*;
use plinth_governance::custom::{ArtifactCustom, Gate, Kind, Wave};
use plinth_governance::health::{self, Gates, NodeReport, REPORT_FORMAT_VERSION};
use plinth_governance::workdir::StagedRole;
use plinth_release::{Os, Version};
use plinth_upgrade::choose::{self, Decision, Node, Offer, Record as Elected};
use plinth_upgrade::slots::{SlotStore, State};
use std::path::{Path, PathBuf};
use std::process::Command;

const NODES: usize = 100;
/// Seeds below this are the canary wave (about a fifth of the nodes).
const CANARY_LAST: u16 = 399;
const VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "1.2.0"];

struct SimNode {
    name: String,
    seed: u16,
    /// Ticks after the start before a trial boot of the first rollout completes (its
    /// canaries boot slowly, one after another, so that the gate, not the wave's time,
    /// decides when the rest may start).
    boot_ticks: usize,
    config: PathBuf,
    cmdline: PathBuf,
    layout: plinth_upgrade::slots::Layout,
    state: PathBuf,
}

fn agent(node: &SimNode, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_plinth-upgrade"))
        .args(args)
        .arg("--config")
        .arg(&node.config)
        .output()
        .unwrap()
}

fn new_node(root: &Path, i: usize, record: &Record, mirror: &str) -> SimNode {
    let name = format!("node-{i:03}");
    let dir = root.join(&name);
    let n = NodeDir::sized(&dir, 64 << 10);
    // Seeds spread over 0..=2047: node i at 20 i + 7.
    let seed = (i * 20 + 7) as u16;
    let config = write_config(&dir, record, mirror, seed);
    let cmdline = dir.join("cmdline");
    std::fs::write(&cmdline, "plinth.slot=A\n").unwrap();
    let canary_index = (seed <= CANARY_LAST).then_some(i);
    SimNode {
        name,
        seed,
        boot_ticks: canary_index.map_or(0, |k| 2 * k),
        config,
        cmdline,
        layout: n.layout,
        state: n.state,
    }
}

/// One poll of one node: apply; if a slot is pending and its trial boot is due (`slow`: not
/// before tick `boot_ticks`), the reboot into it passes its gate (settle commits it); then
/// its report into `health`.
fn poll(node: &SimNode, health: &Path, tick: usize, slow: bool) {
    let cmd = node.cmdline.to_str().unwrap();
    let o = agent(node, &["apply", "--json", "--cmdline", cmd]);
    assert!(
        o.status.success(),
        "{}: apply: {}{}",
        node.name,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let store = SlotStore::open(node.layout.clone(), &node.state).unwrap();
    let due = !slow || tick >= node.boot_ticks;
    if let (Some(pending), true) = (store.state().pending, due) {
        std::fs::write(&node.cmdline, format!("plinth.slot={pending}\n")).unwrap();
        let o = agent(node, &["settle", "--cmdline", cmd]);
        assert!(o.status.success(), "{}: settle", node.name);
    }
    let out = health.join(format!("{}.json", node.name));
    let o = agent(
        node,
        &[
            "report",
            "--node",
            &node.name,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}: report", node.name);
}

fn version_of(node: &SimNode) -> String {
    let store = SlotStore::open(node.layout.clone(), &node.state).unwrap();
    let state: &State = store.state();
    state.current().map_or("?".into(), |v| v.to_string())
}

/// Two waves: canary (0..=CANARY_LAST) from `first`, the rest from `second`, gated on at
/// least `min_healthy` canaries running the version and none failing it.
fn gated_waves(first: jiff::Timestamp, second: jiff::Timestamp, min_healthy: u32) -> String {
    format!(
        "format_version: 1\nwaves:\n  - name: canary\n    opens_at: {first}\n    seeds: [0, {CANARY_LAST}]\n  - name: rest\n    opens_at: {second}\n    seeds: [{}, 2047]\n    gate: {{min_healthy: {min_healthy}, max_failed: 0}}\n",
        CANARY_LAST + 1
    )
}

async fn elect(record: &Record, version: &str, payload: &[u8], waves: &str) {
    record.elect_with_waves(version, payload, waves);
    record.sign(StagedRole::Targets, 1).await;
    record.sign(StagedRole::Targets, 3).await;
}

/// One row of the table: the tick, seconds since the start, what happened, nodes per version.
struct Row {
    tick: usize,
    seconds: f64,
    event: String,
    counts: [usize; 3],
}

fn svg(rows: &[Row]) -> String {
    let (w, h, pad) = (720.0, 360.0, 48.0);
    let last = rows.last().map_or(1.0, |r| r.seconds.max(1.0));
    let x = |s: f64| pad + (w - 2.0 * pad) * s / last;
    let y = |n: usize| h - pad - (h - 2.0 * pad) * n as f64 / NODES as f64;
    let colors = ["#888888", "#1f77b4", "#d62728"];
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"24\" font-size=\"14\">plinth fleet simulation: {NODES} nodes per version</text>\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{r}\" y=\"{t}\" text-anchor=\"end\">seconds ({last:.0})</text>\n\
         <text x=\"8\" y=\"{pad}\">{NODES}</text><text x=\"8\" y=\"{b}\">0</text>\n",
        b = h - pad,
        r = w - pad,
        t = h - pad + 20.0,
    );
    for (v, color) in colors.iter().enumerate() {
        let points: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.seconds), y(r.counts[v])))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>\n",
            points.join(" "),
            w - pad - 60.0,
            pad + 16.0 * v as f64,
            VERSIONS[v]
        ));
    }
    for r in rows.iter().filter(|r| !r.event.is_empty()) {
        out.push_str(&format!(
            "<line x1=\"{0:.1}\" y1=\"{pad}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#bbbbbb\" stroke-dasharray=\"4\"/>\n",
            x(r.seconds),
            h - pad
        ));
    }
    out.push_str("</svg>\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "ci/fleet-sim: 100 node processes for minutes"]
async fn a_fleet_of_100_follows_waves_health_and_a_revocation() {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("fleet-sim");
    std::fs::create_dir_all(&out_dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let record = Record::new(&tmp.path().join("gov")).await;
    let server = Server::start(&record.repo);
    let health = tmp.path().join("health");
    std::fs::create_dir_all(&health).unwrap();
    let nodes: Vec<SimNode> = (0..NODES)
        .map(|i| new_node(&tmp.path().join("nodes"), i, &record, &server.url))
        .collect();
    let canaries = nodes.iter().filter(|n| n.seed <= CANARY_LAST).count();
    let start = std::time::Instant::now();
    let t0 = now();
    let at = |s: i64| t0 + jiff::SignedDuration::from_secs(s);

    // 1.1.0: canaries at once (their trial boots end over about 40 s), the rest 10 s later
    // once 15 canaries run it.
    elect(
        &record,
        "1.1.0",
        &update_image(2, 60_000),
        &gated_waves(t0, at(10), 15),
    )
    .await;
    let mut rows: Vec<Row> = Vec::new();
    let mut event = format!("elect 1.1.0 (rest from +10 s, gated on 15 of {canaries} canaries)");
    let mut revoked = false;
    let mut elected_1_2 = false;
    let mut rest_opened_at: Option<f64> = None;
    for tick in 0..60 {
        let report = record.publish_health(days(1), Some(&health)).await;
        if rest_opened_at.is_none()
            && report
                .gates
                .iter()
                .any(|g| g.target.contains("1.1.0") && g.open_since.is_some())
        {
            rest_opened_at = Some(start.elapsed().as_secs_f64());
        }
        // Every node polls (8 at a time).
        std::thread::scope(|s| {
            for chunk in nodes.chunks(NODES / 8 + 1) {
                let health = &health;
                s.spawn(move || {
                    for n in chunk {
                        poll(n, health, tick, !elected_1_2);
                    }
                });
            }
        });
        let mut counts = [0usize; 3];
        for n in &nodes {
            let v = version_of(n);
            if let Some(i) = VERSIONS.iter().position(|x| *x == v) {
                counts[i] += 1;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        rows.push(Row {
            tick,
            seconds,
            event: std::mem::take(&mut event),
            counts,
        });
        // Until the gate holds, the rest waits, whatever its wave's time.
        if rest_opened_at.is_none() {
            assert!(
                counts[1] <= canaries,
                "the rest took 1.1.0 before its wave's gate held"
            );
        }
        // Once all run 1.1.0: elect 1.2.0 (the rest gated on 15 canaries, 30 s later).
        if !elected_1_2 && counts[1] == NODES {
            let t = now();
            let rest_at = t + jiff::SignedDuration::from_secs(30);
            elect(
                &record,
                "1.2.0",
                &update_image(3, 60_000),
                &gated_waves(t, rest_at, 15),
            )
            .await;
            elected_1_2 = true;
            event = "elect 1.2.0 (rest from +30 s, gated)".into();
        } else if elected_1_2 && !revoked && counts[2] >= canaries.min(10) {
            // 1.2.0 is found bad on its canaries: revoked before the rest takes it.
            assert_eq!(counts[2], canaries, "only canaries took 1.2.0");
            plinth_governance::revoke::revoke(
                &record.work,
                Os::HostOs,
                &"1.2.0".parse().unwrap(),
                days(90),
            )
            .unwrap();
            record.sign(StagedRole::Targets, 1).await;
            record.sign(StagedRole::Targets, 3).await;
            revoked = true;
            event = "revoke 1.2.0 (max_version back to 1.1.0)".into();
        } else if revoked && counts[1] == NODES {
            break;
        }
    }
    // The table.
    let mut table =
        String::from("| tick | s | 1.0.0 | 1.1.0 | 1.2.0 | event |\n|---|---|---|---|---|---|\n");
    for r in &rows {
        table.push_str(&format!(
            "| {} | {:.1} | {} | {} | {} | {} |\n",
            r.tick, r.seconds, r.counts[0], r.counts[1], r.counts[2], r.event
        ));
    }
    std::fs::write(out_dir.join("fleet.md"), &table).unwrap();
    std::fs::write(out_dir.join("fleet.svg"), svg(&rows)).unwrap();
    eprintln!("{table}");
    eprintln!(
        "1.1.0's second wave opened (its gate held) at {:.1} s; table and plot in {}",
        rest_opened_at.unwrap_or(f64::NAN),
        out_dir.display()
    );
    assert!(revoked, "1.2.0 was never revoked");
    let last = rows.last().unwrap();
    assert_eq!(last.counts, [0, NODES, 0], "every node back on 1.1.0");
    assert!(
        rows.iter().all(|r| r.counts[2] <= canaries),
        "1.2.0 never spread past its canaries"
    );
    // The gate, not the wave's time (10 s), opened the rest's wave.
    let opened = rest_opened_at.expect("the gate held");
    assert!(
        opened > 12.0,
        "the gate held at {opened:.1} s, before 15 canaries could boot"
    );
}

/// 100 000 nodes, in-process: two simulated days in 15-minute steps of `choose` for every
/// node and the publisher's `evaluate` of the gate from all their reports.
#[test]
#[ignore = "ci/fleet-sim: 100 000 simulated nodes"]
fn wave_logic_for_100_000_nodes() {
    const N: usize = 100_000;
    let t0: jiff::Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let h = |n: i64| t0 + jiff::SignedDuration::from_hours(n);
    let os = Os::HostOs;
    let version: Version = "1.1.0".parse().unwrap();
    let target = "host-os/1.1.0/update-img.tar.zst".to_string();
    let waves = vec![
        Wave {
            name: "canary".parse().unwrap(),
            opens_at: t0,
            seeds: [0, 101],
            spread_seconds: 3600,
            gate: None,
        },
        Wave {
            name: "rest".parse().unwrap(),
            opens_at: h(6),
            seeds: [102, 2047],
            spread_seconds: 12 * 3600,
            gate: Some(Gate {
                min_healthy: 4000,
                max_failed: 10,
            }),
        },
    ];
    let artifact = ArtifactCustom {
        format_version: plinth_governance::custom::FORMAT_VERSION,
        kind: Kind::Artifact,
        os,
        version: version.clone(),
        file: "update-img.tar.zst".parse().unwrap(),
        sha256: plinth_release::Sha256::of(b"1.1.0"),
        length: 1,
        manifest_sha256: plinth_release::Sha256::of(b"m"),
        elected_at: t0,
        waves,
        measurements: plinth_governance::fixtures::measurements(os, "1.1.0"),
    };
    let current: Version = "1.0.0".parse().unwrap();
    let mut reports: Vec<NodeReport> = (0..N)
        .map(|i| NodeReport {
            format_version: REPORT_FORMAT_VERSION,
            node: format!("n{i}"),
            os,
            seed: choose::seed_of(format!("machine-{i}").as_bytes()),
            version: Some(current.clone()),
            failed: Vec::new(),
            at: t0,
        })
        .collect();
    let started = std::time::Instant::now();
    let mut gates = Gates::default();
    let mut rows = Vec::new();
    let mut choices = 0u64;
    for step in 0..=(48 * 4) {
        let now = t0 + jiff::SignedDuration::from_mins(15 * step);
        let all = health::Reports {
            reports: std::mem::take(&mut reports),
            ..health::Reports::default()
        };
        let (g, verdicts) = health::evaluate([(target.as_str(), &artifact)], &all, &gates, now);
        reports = all.reports;
        gates = g;
        let record = Elected {
            offers: vec![Offer {
                target: target.clone(),
                artifact: artifact.clone(),
                opened: gates.0.get(&target).cloned().unwrap_or_default(),
            }],
            max_version: Some(version.clone()),
            has_policy: true,
        };
        for r in reports.iter_mut() {
            if r.version.as_ref() == Some(&version) {
                continue;
            }
            let node = Node {
                os,
                current: current.clone(),
                seed: r.seed,
                now,
            };
            choices += 1;
            if let Decision::Take { .. } = choose::choose(&record, &node) {
                r.version = Some(version.clone());
                r.at = now;
            }
        }
        let upgraded = reports
            .iter()
            .filter(|r| r.version.as_ref() == Some(&version))
            .count();
        if step % 8 == 0 {
            rows.push(format!(
                "| {:>4} h | {upgraded:>6} | {} |",
                step / 4,
                if verdicts[0].open_since.is_some() {
                    "open"
                } else {
                    "held"
                }
            ));
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "| time | on 1.1.0 of {N} | rest's gate |\n|---|---|---|\n{}",
        rows.join("\n")
    );
    eprintln!(
        "100 000 nodes, 193 steps: {choices} choices and 193 gate evaluations in {:.2} s",
        elapsed.as_secs_f64()
    );
    let upgraded = reports
        .iter()
        .filter(|r| r.version.as_ref() == Some(&version))
        .count();
    assert_eq!(upgraded, N, "every node took 1.1.0 within two days");
}
