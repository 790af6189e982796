//! The upgrade agent's command line, the same on HostOS and GuestOS: `init` (the installer's
//! record of what it installed), `check` (what governance elects for this node, nothing
//! written), `apply` (take it: download, write the inactive slot, read back, flip), `status`
//! (what is on each slot and what happened last, and why), `daemon` (`apply` every poll
//! interval, after a random jitter), `settle` (after a boot's health gate: commit or roll
//! back, [`crate::settle`]) and `report` (the node's report for the waves' health gate). Each reads the node's configuration
//! ([`crate::config`]); `--json` prints one JSON document for a machine. Exit codes: 0 done
//! (including "nothing to take"), 2 bad input (configuration, a version not elected for this
//! node), 1 any other failure. No failure touches the active slot or flips: a failure
//! before the write pass leaves both slots as they were, one during it leaves the inactive
//! slot marked `writing` (never booted; the next apply writes it again).

use crate::apply::{self, Applied};
use crate::choose::{Decision, Reason};
use crate::config::{Config, DEFAULT_PATH};
use crate::slots::{SlotStore, State};
use crate::{status, UpgradeError};
use plinth_release::{Slot, Version};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The agent's verbs.
#[derive(Debug, clap::Subcommand)]
pub enum UpgradeVerb {
    /// Record what the installer put on the active slot (once; refused if recorded).
    Init(InitArgs),
    /// Load the governance record and say what this node would take (writes nothing but
    /// the datastore's trusted metadata).
    Check(CommonArgs),
    /// Take the version governance elects for this node: download, write the inactive slot,
    /// read it back, flip.
    Apply(ApplyArgs),
    /// What is on each slot, which one boots next, and what happened last and why.
    Status(CommonArgs),
    /// Apply every poll interval (after a random jitter), until stopped.
    Daemon(DaemonArgs),
    /// Write this node's report for the repository's health gate (what it runs committed,
    /// what failed on it).
    Report(ReportArgs),
    /// After a boot's health gate: commit the pending slot that booted and passed it, or
    /// roll back one that failed it or that the boot loader fell back from.
    Settle(SettleArgs),
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The boot's slot is the one `plinth.slot=` names on the kernel command line.
Pending slot booted and gate passed: committed. Gate failed (--failed WHY) or
the other slot booted while one is pending: rolled back, the version
remembered as failed (`status` says why). Nothing pending: nothing to do.

Examples:
  plinth-upgrade settle                                   (after boot-complete.target)
  plinth-upgrade settle --failed plinth-guest.service     (the gate's failure)"
)]
pub struct SettleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The kernel command line whose `plinth.slot=` names the slot that booted.
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// The boot's health gate failed, and why (the failed unit or check).
    #[arg(long, value_name = "WHY")]
    pub failed: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// The node's upgrade configuration.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  plinth-upgrade init --active A --version 1.0.0")]
pub struct InitArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The slot the installer wrote and boots.
    #[arg(long, value_name = "A|B")]
    pub active: Slot,
    /// The version installed on it.
    #[arg(long, value_name = "VERSION")]
    pub version: Version,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  plinth-upgrade apply\n  plinth-upgrade apply --version 1.2.0 --json"
)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Take this version, and only if it is the one elected for this node now (also one
    /// that failed here before: it is tried again).
    #[arg(long, value_name = "VERSION")]
    pub version: Option<Version>,
    /// The kernel command line whose `plinth.slot=` names the slot that booted (never
    /// written).
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// No slot booted (an installer writing a node's disks from another OS): without it, a
    /// command line without `plinth.slot=` is refused.
    #[arg(long)]
    pub no_booted_slot: bool,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  plinth-upgrade daemon            what plinth-upgrade.service runs"
)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The kernel command line whose `plinth.slot=` names the slot that booted (refused
    /// without one).
    #[arg(long, value_name = "FILE", default_value = "/proc/cmdline")]
    pub cmdline: PathBuf,
    /// End after this many polls (default: run until stopped).
    #[arg(long, value_name = "N")]
    pub polls: Option<u64>,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "The report is one small JSON file (the format `plinth governance publish
--health DIR` reads: one <node>.json a node); how it reaches that directory
is the fleet's own hook (docs/upgrades.md). It is written atomically.

Examples:
  plinth-upgrade report --node node-17 --out /run/plinth/report/node-17.json
  plinth-upgrade report --node node-17 --out - "
)]
pub struct ReportArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The node's name in the fleet (1 to 64 of a-z, 0-9, -).
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// Where to write it (`-`: standard output).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// Run a verb; print its outcome or its error; the exit code.
pub fn run(verb: UpgradeVerb) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_verb(verb)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.code())
        }
    }
}

/// A verb's failure and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(plinth_yaml::error::SpecErrors),
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Upgrade(#[from] UpgradeError),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Config(_)
            | CliError::BadInput(_)
            | CliError::Upgrade(UpgradeError::NotElected { .. }) => 2,
            CliError::Upgrade(_) => 1,
        }
    }
}

async fn run_verb(verb: UpgradeVerb) -> Result<(), CliError> {
    match verb {
        UpgradeVerb::Init(a) => init(a),
        UpgradeVerb::Check(a) => check(a).await,
        UpgradeVerb::Apply(a) => apply_verb(a).await,
        UpgradeVerb::Status(a) => status_verb(a),
        UpgradeVerb::Daemon(a) => daemon(a).await,
        UpgradeVerb::Report(a) => report_verb(a),
        UpgradeVerb::Settle(a) => settle_verb(a),
    }
}

fn config(path: &Path) -> Result<Config, CliError> {
    Config::load(path).map_err(CliError::Config)
}

/// The slot `plinth.slot=` names in the command line at `path`; `None` without one.
pub fn booted_slot(path: &Path) -> Result<Option<Slot>, CliError> {
    let bytes = plinth_release::untrusted::read_untrusted(path, 64 << 10)
        .map_err(|e| CliError::BadInput(format!("{}: cannot read it: {e}", path.display())))?;
    plinth_release::slot::from_cmdline(&String::from_utf8_lossy(&bytes)).map_err(|e| {
        CliError::BadInput(format!(
            "{}: {}: {e}",
            path.display(),
            plinth_release::slot::CMDLINE_KEY
        ))
    })
}

fn open_store(c: &Config) -> Result<SlotStore, CliError> {
    Ok(SlotStore::open(c.layout.clone(), &c.state_path())?)
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serializes")
    );
}

fn init(a: InitArgs) -> Result<(), CliError> {
    let c = config(&a.common.config)?;
    let path = c.state_path();
    if path.exists() {
        return Err(CliError::BadInput(format!(
            "{}: the slot state is already recorded\n  hint: `plinth-upgrade status` shows it",
            path.display()
        )));
    }
    plinth_release::archive::private_dir(&c.state_dir)
        .map_err(UpgradeError::io(&c.state_dir, "create the state directory"))?;
    let now = jiff::Timestamp::now();
    let store = SlotStore::open_or_init(c.layout.clone(), &path, || {
        State::new(a.active, a.version.clone(), now)
    })?;
    let st = status::status(store.state());
    if a.common.json {
        print_json(&st);
    } else {
        println!(
            "recorded {} {} on slot {} in {}",
            c.os,
            a.version,
            a.active,
            path.display()
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct CheckReport {
    os: String,
    seed: u16,
    mirror: String,
    current: Version,
    /// `take` or `stay`.
    decision: &'static str,
    version: Option<Version>,
    why: String,
}

async fn check(a: CommonArgs) -> Result<(), CliError> {
    let c = config(&a.config)?;
    let seed = c.seed().map_err(CliError::BadInput)?;
    let store = open_store(&c)?;
    // A load writes the datastore: one at a time, as apply does.
    let _lock = store.lock()?;
    let opts = c.apply_options(seed, jiff::Timestamp::now(), None);
    let client = crate::repo::http_client()?;
    let plan = apply::check(&opts, &store, &client).await?;
    let (decision, version, why) = match plan.decision() {
        Decision::Take { offer, reason } => (
            "take",
            Some(offer.version().clone()),
            match reason {
                Reason::Upgrade => format!("{} is open for this node's wave", offer.version()),
                Reason::PullBack => format!(
                    "governance lowered max_version: pulled back to {}",
                    offer.version()
                ),
            },
        ),
        Decision::Stay(s) => ("stay", None, s.to_string()),
    };
    let report = CheckReport {
        os: c.os.to_string(),
        seed,
        mirror: plan.loaded.mirror.to_string(),
        current: plan.node.current.clone(),
        decision,
        version,
        why,
    };
    if a.json {
        print_json(&report);
    } else {
        match &report.version {
            Some(v) => println!(
                "{} {} (seed {}): take {v}: {}",
                report.os, report.current, seed, report.why
            ),
            None => println!(
                "{} {} (seed {}): stay: {}",
                report.os, report.current, seed, report.why
            ),
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct ApplyReport {
    /// `flipped`, `already-pending`, `on-trial`, `cancelled` or `stay`.
    outcome: &'static str,
    version: Option<Version>,
    slot: Option<Slot>,
    why: String,
    /// Each step's seconds, when flipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    timings: Option<apply::Timings>,
}

fn report(done: &Applied) -> ApplyReport {
    match done {
        Applied::Stay { current, why } => ApplyReport {
            outcome: "stay",
            version: Some(current.clone()),
            slot: None,
            why: why.clone(),
            timings: None,
        },
        Applied::AlreadyPending { version, slot } => ApplyReport {
            outcome: "already-pending",
            version: Some(version.clone()),
            slot: Some(*slot),
            why: format!("{version} is written and boots next on slot {slot}"),
            timings: None,
        },
        Applied::Flipped {
            version,
            slot,
            reason,
            timings,
        } => ApplyReport {
            outcome: "flipped",
            version: Some(version.clone()),
            slot: Some(*slot),
            why: match reason {
                Reason::Upgrade => format!("{version} written to slot {slot}; it boots next"),
                Reason::PullBack => {
                    format!("pulled back: {version} written to slot {slot}; it boots next")
                }
            },
            timings: Some(*timings),
        },
        Applied::OnTrial {
            version,
            slot,
            tries_left,
        } => ApplyReport {
            outcome: "on-trial",
            version: version.clone(),
            slot: Some(*slot),
            why: format!(
                "slot {slot} ({}) is on its trial boot, {tries_left} tries left: it is \
                 committed when it passes the health gate, or given up",
                version.as_ref().map_or("version unknown", |v| v.as_str())
            ),
            timings: None,
        },
        Applied::Cancelled { version, slot, why } => ApplyReport {
            outcome: "cancelled",
            version: Some(version.clone()),
            slot: Some(*slot),
            why: why.clone(),
            timings: None,
        },
    }
}

async fn apply_once(
    c: &Config,
    cmdline: &Path,
    no_booted_slot: bool,
    version: Option<Version>,
) -> Result<Applied, CliError> {
    let seed = c.seed().map_err(CliError::BadInput)?;
    let booted = booted_slot(cmdline)?;
    if booted.is_none() && !no_booted_slot {
        return Err(CliError::BadInput(format!(
            "{}: no {}= on the kernel command line: the slot that booted cannot be told, and \
             it must never be written\n  hint: boot a plinth UKI (its command line carries \
             it); where no slot booted (an installer), give --no-booted-slot",
            cmdline.display(),
            plinth_release::slot::CMDLINE_KEY
        )));
    }
    let mut store = open_store(c)?.with_booted(booted);
    let opts = c.apply_options(seed, jiff::Timestamp::now(), version);
    Ok(apply::apply(&opts, &mut store).await?)
}

async fn apply_verb(a: ApplyArgs) -> Result<(), CliError> {
    let c = config(&a.common.config)?;
    let done = apply_once(&c, &a.cmdline, a.no_booted_slot, a.version).await?;
    let r = report(&done);
    if a.common.json {
        print_json(&r);
    } else {
        println!("{}: {}", r.outcome, r.why);
    }
    Ok(())
}

fn status_verb(a: CommonArgs) -> Result<(), CliError> {
    let c = config(&a.config)?;
    let store = open_store(&c)?;
    let st = status::status(store.state());
    if a.json {
        print_json(&st);
    } else {
        for line in status::lines(&st) {
            println!("{line}");
        }
    }
    Ok(())
}

fn settle_verb(a: SettleArgs) -> Result<(), CliError> {
    use crate::settle::{settle, Settled};
    let c = config(&a.common.config)?;
    let booted = booted_slot(&a.cmdline)?.ok_or_else(|| {
        CliError::BadInput(format!(
            "{}: no plinth.slot=: which slot booted cannot be told",
            a.cmdline.display()
        ))
    })?;
    let mut store = open_store(&c)?;
    let done = settle(
        &mut store,
        booted,
        a.failed.as_deref(),
        jiff::Timestamp::now(),
    )?;
    if a.common.json {
        print_json(&done);
        return Ok(());
    }
    let version = |v: &Option<Version>| v.as_ref().map_or("?", |v| v.as_str()).to_string();
    match &done {
        Settled::Nothing { active } => println!("slot {active} is active; nothing was pending"),
        Settled::Committed { slot, version: v } => {
            println!("committed {} {} on slot {slot}", c.os, version(v))
        }
        Settled::RolledBack {
            failed,
            version: v,
            active,
            reason,
        } => println!(
            "rolled back {} {} on slot {failed} (slot {active} stays active): {reason}",
            c.os,
            version(v)
        ),
    }
    Ok(())
}

/// This node's health report from its slot state: the version it runs counts only once
/// committed (no trial boot pending), and its failed versions are the newest
/// [`plinth_governance::health::MAX_FAILED`].
pub fn node_report(
    node: &str,
    os: plinth_release::Os,
    seed: u16,
    state: &State,
    now: jiff::Timestamp,
) -> plinth_governance::health::NodeReport {
    use plinth_governance::health::{NodeReport, MAX_FAILED, REPORT_FORMAT_VERSION};
    let mut failed: Vec<Version> = Vec::new();
    for f in state.failed.iter().rev() {
        if failed.len() == MAX_FAILED {
            break;
        }
        if !failed.contains(&f.version) {
            failed.push(f.version.clone());
        }
    }
    NodeReport {
        format_version: REPORT_FORMAT_VERSION,
        node: node.to_string(),
        os,
        seed,
        version: if state.pending.is_none() {
            state.current().cloned()
        } else {
            None
        },
        failed,
        at: now,
    }
}

fn report_verb(a: ReportArgs) -> Result<(), CliError> {
    let c = config(&a.common.config)?;
    let seed = c.seed().map_err(CliError::BadInput)?;
    let store = open_store(&c)?;
    let report = node_report(&a.node, c.os, seed, store.state(), jiff::Timestamp::now());
    let bytes = serde_json::to_vec_pretty(&report).expect("serializes");
    // What the publisher will refuse is refused here, with the reason.
    plinth_governance::health::NodeReport::parse(&bytes)
        .map_err(|e| CliError::BadInput(format!("--node {}: {e}", a.node)))?;
    if a.out == Path::new("-") {
        println!("{}", String::from_utf8_lossy(&bytes));
        return Ok(());
    }
    plinth_release::atomic::write_atomic(&a.out, &bytes, 0o644)
        .map_err(UpgradeError::io(&a.out, "write the report"))?;
    if !a.common.json {
        println!(
            "{}: {} seed {} on {} ({} failed)",
            a.out.display(),
            report.node,
            report.seed,
            report
                .version
                .as_ref()
                .map_or("nothing committed", |v| v.as_str()),
            report.failed.len()
        );
    } else {
        print_json(&report);
    }
    Ok(())
}

/// A random duration up to `max` (the poll jitter): std's randomly keyed hasher as the
/// source, enough to spread a fleet's polls.
fn jitter(max: std::time::Duration) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    if max.is_zero() {
        return max;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let millis = max.as_millis().max(1) as u64;
    std::time::Duration::from_millis(h.finish() % (millis + 1))
}

/// Say that a signal ended poll `n` before its end: the daemon's end.
fn stopped(n: u64) -> Result<(), CliError> {
    println!(
        "poll {n}: stopped by a signal before its end; what was downloaded stays staged, and \
         the next run resumes it"
    );
    Ok(())
}

async fn daemon(a: DaemonArgs) -> Result<(), CliError> {
    use tokio::signal::unix::{signal, SignalKind};
    let c = config(&a.common.config)?;
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::BadInput(format!("cannot watch SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| CliError::BadInput(format!("cannot watch SIGINT: {e}")))?;
    println!(
        "plinth-upgrade daemon: {} from {} mirror(s), every {} s with up to {} s of jitter",
        c.os,
        c.mirrors.len(),
        c.poll.interval.as_secs(),
        c.poll.jitter.as_secs()
    );
    let mut polls = 0u64;
    loop {
        let wait = jitter(c.poll.jitter);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
        // One poll; its failure is reported and the next poll tries again. A bad
        // configuration or command line does not get better: it ends the daemon. SIGTERM
        // or SIGINT ends a poll where it waits (a download: its bytes stay staged and the
        // next run resumes them; the write pass, which does not wait, runs to its end):
        // every point of an apply is safe to stop at, as a kill is.
        let polled = tokio::select! {
            done = apply_once(&c, &a.cmdline, false, None) => done,
            _ = term.recv() => return stopped(polls + 1),
            _ = int.recv() => return stopped(polls + 1),
        };
        match polled {
            Ok(done) => {
                let r = report(&done);
                if a.common.json {
                    println!("{}", serde_json::to_string(&r).expect("serializes"));
                } else {
                    println!("poll {}: {}: {}", polls + 1, r.outcome, r.why);
                }
            }
            Err(e @ (CliError::Config(_) | CliError::BadInput(_))) => return Err(e),
            Err(e) => println!("poll {}: failed: {e}", polls + 1),
        }
        polls += 1;
        if a.polls.is_some_and(|n| polls >= n) {
            return Ok(());
        }
        let rest = c.poll.interval.saturating_sub(wait);
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_booted_slot_is_read_from_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cmdline");
        std::fs::write(&p, "console=ttyS0 plinth.slot=B roothash=ab ro\n").unwrap();
        assert_eq!(booted_slot(&p).unwrap(), Some(Slot::B));
        std::fs::write(&p, "console=ttyS0 ro\n").unwrap();
        assert_eq!(booted_slot(&p).unwrap(), None);
        std::fs::write(&p, "plinth.slot=C\n").unwrap();
        let e = booted_slot(&p).unwrap_err();
        assert_eq!(e.code(), 2, "{e}");
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let max = std::time::Duration::from_millis(50);
        assert!((0..100).all(|_| jitter(max) <= max));
        assert!(jitter(std::time::Duration::ZERO).is_zero());
    }
}
