//! The `plinth-upgrade` binary as a node runs it: a configuration file naming file-backed
//! slots and a governance record served from 127.0.0.1; `init`, `check`, `apply` (with the
//! booted slot from a command-line file), `status` in words and JSON, one `daemon` poll, a
//! daemon stopped by SIGTERM mid-download, and a bad configuration refused with exit 2
//! naming its line and field.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn agent(args: &[&str], config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plinth-upgrade"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn a_node_inits_checks_applies_and_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = elected_1_1_0(tmp.path()).await;
    let server = Server::start(&record.repo);
    std::fs::remove_file(&node.state).unwrap();
    let config = write_config(&node.dir, &record, &server.url, 7);

    let o = agent(&["status"], &config);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no slot state file"), "{}", text(&o));
    let o = agent(&["init", "--active", "A", "--version", "1.0.0"], &config);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("recorded host-os 1.0.0 on slot A"));
    let o = agent(&["init", "--active", "A", "--version", "1.0.0"], &config);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    let o = agent(&["check"], &config);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("host-os 1.0.0 (seed 7): take 1.1.0"),
        "{}",
        text(&o)
    );
    let o = agent(&["check", "--json"], &config);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["decision"].as_str(), v["version"].as_str()),
        (Some("take"), Some("1.1.0"))
    );

    // No plinth.slot= on the command line: the booted slot cannot be told; refused.
    let cmdline = node.dir.join("cmdline");
    std::fs::write(&cmdline, "console=ttyS0 ro\n").unwrap();
    let o = agent(&["apply", "--cmdline", cmdline.to_str().unwrap()], &config);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("no plinth.slot="), "{}", text(&o));

    // Booted from B while the state says A is active: refused, nothing written.
    std::fs::write(&cmdline, "console=ttyS0 plinth.slot=B ro\n").unwrap();
    let before = node.snapshot();
    let o = agent(&["apply", "--cmdline", cmdline.to_str().unwrap()], &config);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("slot B cannot be written"),
        "{}",
        text(&o)
    );
    assert_eq!(node.snapshot(), before);

    std::fs::write(&cmdline, "console=ttyS0 plinth.slot=A ro\n").unwrap();
    let o = agent(
        &["apply", "--json", "--cmdline", cmdline.to_str().unwrap()],
        &config,
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            v["outcome"].as_str(),
            v["version"].as_str(),
            v["slot"].as_str()
        ),
        (Some("flipped"), Some("1.1.0"), Some("B"))
    );

    let o = agent(&["status"], &config);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("slot B: 1.1.0 (written and read back) (pending, 3 tries left)"),
        "{}",
        text(&o)
    );
    let o = agent(&["status", "--json"], &config);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pending"], "B");

    // Its report for the health gate: on trial, nothing committed counts yet.
    let reports = node.dir.join("reports");
    std::fs::create_dir(&reports).unwrap();
    let out = reports.join("node-7.json");
    let o = agent(
        &["report", "--node", "node-7", "--out", out.to_str().unwrap()],
        &config,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("node-7 seed 7 on nothing committed (0 failed)"),
        "{}",
        text(&o)
    );
    let r = plinth_governance::health::NodeReport::parse(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!((r.node.as_str(), r.seed, r.version), ("node-7", 7, None));
    let o = agent(&["report", "--node", "Node 7", "--out", "-"], &config);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("--node Node 7: node `Node 7`: expected"),
        "{}",
        text(&o)
    );

    // The daemon's poll finds it written and pending.
    let o = Command::new(env!("CARGO_BIN_EXE_plinth-upgrade"))
        .args(["daemon", "--polls", "1", "--cmdline"])
        .arg(&cmdline)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("poll 1: already-pending"), "{}", text(&o));

    // A version not elected for this node is bad input.
    let o = agent(
        &[
            "apply",
            "--version",
            "9.9.9",
            "--cmdline",
            cmdline.to_str().unwrap(),
        ],
        &config,
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // The trial boot of B passes its gate: settled, committed; the report now counts it.
    std::fs::write(&cmdline, "console=ttyS0 plinth.slot=B ro\n").unwrap();
    let o = agent(&["settle", "--cmdline", cmdline.to_str().unwrap()], &config);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("committed host-os 1.1.0 on slot B"),
        "{}",
        text(&o)
    );
    let o = agent(
        &["settle", "--json", "--cmdline", cmdline.to_str().unwrap()],
        &config,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["outcome"].as_str(), v["active"].as_str()),
        (Some("nothing"), Some("B"))
    );
    let o = agent(
        &["report", "--node", "node-7", "--out", "-", "--json"],
        &config,
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["version"], "1.1.0");
    // A command line without plinth.slot=: bad input.
    std::fs::write(&cmdline, "console=ttyS0 ro\n").unwrap();
    let o = agent(&["settle", "--cmdline", cmdline.to_str().unwrap()], &config);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[tokio::test]
async fn sigterm_ends_a_daemon_mid_download_at_once_its_bytes_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (record, node) = elected_1_1_0(tmp.path()).await;
    // 1 KiB every 100 ms: the download would take minutes.
    let server = Server::start(&record.repo);
    server
        .trickle_ms
        .store(100, std::sync::atomic::Ordering::SeqCst);
    let config = write_config(&node.dir, &record, &server.url, 7);
    let cmdline = node.dir.join("cmdline");
    std::fs::write(&cmdline, "plinth.slot=A\n").unwrap();
    let before = node.snapshot();
    let child = Command::new(env!("CARGO_BIN_EXE_plinth-upgrade"))
        .args(["daemon", "--cmdline"])
        .arg(&cmdline)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let staged = || {
        std::fs::read_dir(node.dir.join("staging"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.metadata().unwrap().len())
            .sum::<u64>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while staged() < 4096 {
        assert!(std::time::Instant::now() < deadline, "no download began");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let signalled = std::time::Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(5),
        "the daemon took {:?} to stop",
        signalled.elapsed()
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("poll 1: stopped by a signal"),
        "{}",
        text(&o)
    );
    assert!(staged() >= 4096, "the downloaded bytes were dropped");
    assert_eq!(node.snapshot(), before);
}

#[test]
fn a_bad_configuration_is_named_and_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("upgrade.yaml");
    std::fs::write(
        &config,
        "format_version: 1\nos: host-os\nmirrors: ['http://updates.example.org/']\n\
         trusted_root: /r.json\nstate_dir: /s\nslots:\n  a: []\n  b: []\n",
    )
    .unwrap();
    let o = agent(&["status"], &config);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        text(&o).contains("upgrade.yaml:3:") && text(&o).contains("mirrors[0]"),
        "{}",
        text(&o)
    );
}
