//! Kill tests: `apply` runs in a child process (this test binary, re-run on its ignored
//! `kill_child` entry) and is killed with SIGKILL at a seeded random point of its run
//! (loading, download, check, write, read-back, flip). After every kill the active slot is
//! byte-identical, the state file reads, and a following `apply` completes with slot B
//! written and pending. The state is then reset to "A active, B not written" (B's parts
//! keep whatever the killed run left) for the next trial.
//!
//! `PLINTH_UPGRADE_KILL_TRIALS` sets the number of trials (default 200, as CI runs it;
//! `ci/upgrade-kill` runs 1000),
//! `PLINTH_UPGRADE_KILL_SEED` the seed of the kill points (default 22).

mod common;

use common::*;
use plinth_release::Slot;
use plinth_upgrade::apply::{apply, Applied};
use plinth_upgrade::slots::Content;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "PLINTH_UPGRADE_KILL_CHILD";
/// The root member's size: large enough that kills land in download, write and read-back.
const ROOT: usize = 4 << 20;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

/// The child's job: one apply. Its argument is "<node dir>\n<trusted root>\n<mirror>".
#[test]
#[ignore = "run by the kill test in a child process"]
fn kill_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut lines = spec.lines();
    let node = NodeDir::at(Path::new(lines.next().unwrap()));
    let root = PathBuf::from(lines.next().unwrap());
    let mirror = lines.next().unwrap().to_string();
    let opts = node.options_with(&root, &[mirror]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut store = node.store();
    rt.block_on(apply(&opts, &mut store)).unwrap();
}

fn child(spec: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["kill_child", "--exact", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, spec)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

#[tokio::test]
async fn sigkill_at_random_points_never_touches_the_active_slot() {
    let trials = env_number("PLINTH_UPGRADE_KILL_TRIALS", 200);
    let seed = env_number("PLINTH_UPGRADE_KILL_SEED", 22);
    let tmp = tempfile::tempdir().unwrap();
    let record = Record::new(&tmp.path().join("gov")).await;
    record
        .elect_and_publish("1.1.0", &update_image(2, ROOT), OPEN)
        .await;
    let server = Server::start(&record.repo);
    let node = NodeDir::sized(&tmp.path().join("node"), 2 * ROOT);
    let initial_state = std::fs::read(&node.state).unwrap();
    let active = node.active_bytes();
    let spec = format!(
        "{}\n{}\n{}",
        node.dir.display(),
        record.trusted_root().display(),
        server.url
    );
    let reset = || std::fs::write(&node.state, &initial_state).unwrap();

    // A whole run, to scale the kill points.
    let started = Instant::now();
    assert!(
        child(&spec).status().unwrap().success(),
        "the child's apply failed"
    );
    let whole = started.elapsed();
    reset();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut killed, mut finished, mut mid_write, mut flipped) = (0, 0, 0, 0);
    for trial in 0..trials {
        let at = Duration::from_micros(rng.next_u64() % (whole.as_micros() as u64 * 5 / 4 + 1));
        let mut c = child(&spec).spawn().unwrap();
        std::thread::sleep(at);
        let _ = c.kill(); // SIGKILL
        let status = c.wait().unwrap();
        if status.success() {
            finished += 1;
        } else {
            killed += 1;
        }
        let context = format!("trial {trial} (seed {seed}, kill at {at:?})");
        assert!(
            node.active_bytes() == active,
            "{context}: the active slot changed"
        );
        let mut store = node.store();
        match &store.state().b {
            Content::Writing { .. } => mid_write += 1,
            Content::Written { .. } => flipped += 1,
            _ => {}
        }
        assert_eq!(store.state().active, Slot::A, "{context}");
        let opts = node.options_with(&record.trusted_root(), std::slice::from_ref(&server.url));
        let done = apply(&opts, &mut store)
            .await
            .unwrap_or_else(|e| panic!("{context}: the next apply failed: {e}"));
        assert!(
            matches!(
                done,
                Applied::Flipped { slot: Slot::B, .. }
                    | Applied::AlreadyPending { slot: Slot::B, .. }
            ),
            "{context}: {done:?}"
        );
        assert!(
            matches!(&store.state().b, Content::Written { version, .. } if version.as_str() == "1.1.0")
        );
        let root_b = std::fs::read(&node.layout.b[0].path).unwrap();
        assert!(
            root_b[..ROOT] == pattern(2, ROOT)[..],
            "{context}: slot B is not 1.1.0"
        );
        assert!(
            node.active_bytes() == active,
            "{context}: the active slot changed"
        );
        reset();
    }
    eprintln!(
        "{trials} trials: {killed} killed ({mid_write} while slot B was being written, {flipped} after the flip), {finished} finished first (a whole run {whole:?})"
    );
    assert!(killed > 0, "no trial was killed before it finished");
    assert!(
        mid_write > 0 && flipped > 0,
        "the kills missed a phase: {mid_write} while writing, {flipped} after the flip"
    );
}
