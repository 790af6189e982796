//! `apply`: from the governance record to a flipped slot, in one ordered function
//! ([`apply`]):
//!
//! 0. take the store's lock ([`SlotStore::lock`]: one apply at a time), read the state
//!    again, and refuse if the inactive slot is the one that booted;
//! 1. load the record ([`crate::repo`]: tough verifies threshold, expiry, rollback);
//! 2. choose ([`crate::choose`]): the version elected for this node's wave, or the one asked
//!    for by name if and only if it is that one; a version that just failed its health gate
//!    on this node is not taken again; a pending flip to a version governance no longer
//!    elects for this node (revoked, above `max_version`) is called off before it boots;
//! 3. download into staging ([`crate::fetch`]): length and sha256 checked against the signed
//!    target, resumed and from the next mirror on failure;
//! 4. check pass, beside the download (its bytes fed to a checking thread as they arrive,
//!    the result counting only once the download's hash matched; read from the staged file
//!    when [`install`] is called on its own): the staged archive read through once (its bytes hashed again as they are
//!    read: the sha256 and length must still be the signed ones, in this pass and the next,
//!    so what is decompressed is what was signed) (zstd, then the tar members with
//!    [`plinth_release::archive`]'s strict reader, each slot member bounded by its part's
//!    size before any of it is read), every member the inactive slot needs present, each
//!    member's sha256 computed. Nothing has touched a slot yet: every refusal up to here
//!    leaves both slots and the state as they were;
//! 5. the inactive slot marked `writing`, persisted;
//! 6. write pass: each member streamed into its part of the inactive slot (never the
//!    active's: [`crate::slots::SlotStore::inactive_writer`]), fsynced, its sha256 compared
//!    with the check pass's;
//! 7. read back: each part's written bytes read again (cache dropped) and compared;
//! 8. only then marked `written` and pending with its tries (the flip), persisted in one
//!    atomic write; the staged payload removed.
//!
//! A crash anywhere leaves the active slot untouched and the state either as before, with
//! the inactive slot `writing` (not bootable; the next apply writes it again, from the
//! staged payload if it is whole) or flipped. Memory is fixed buffers plus zstd's window,
//! capped by [`plinth_release::archive`] whatever the frames ask.

use crate::choose::{self, Decision, Node, Reason, Record};
use crate::error::UpgradeError;
use crate::fetch::{self, Staging, Want};
use crate::passes::{check_archive, slot_plan, write_pass, CheckResult, Checker, Hashed};
use crate::repo::{self, RepoOptions};
use crate::slots::{self, SlotStore};
use plinth_governance::health::Gates;
use plinth_release::archive::ArchiveError;
use plinth_release::{Os, Slot, Version};
use std::path::Path;

/// What the caller asks.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub repo: RepoOptions,
    pub os: Os,
    pub seed: u16,
    pub now: jiff::Timestamp,
    pub staging: Staging,
    /// Boots the new slot gets before it is given up (HostOS: systemd-boot's `+3`).
    pub tries: u8,
    /// Take this version, and only if it is the one elected for this node.
    pub version: Option<Version>,
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Nothing to take.
    Stay { current: Version, why: String },
    /// The version is already written and pending on the inactive slot.
    AlreadyPending { version: Version, slot: Slot },
    /// Written, read back and flipped: `slot` boots next, with `version`.
    Flipped {
        version: Version,
        slot: Slot,
        reason: Reason,
        timings: Timings,
    },
    /// The node runs the pending slot's trial boot: nothing is written until it is
    /// committed (health gate) or given up.
    OnTrial {
        version: Option<Version>,
        slot: Slot,
        tries_left: u8,
    },
    /// A pending flip to `version` was called off: governance no longer elects it here.
    Cancelled {
        version: Version,
        slot: Slot,
        why: String,
    },
}

/// How long each step of a flipped apply took, in seconds (reported by `apply --json`,
/// read by the benchmark).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Loading the record (tough) and choosing.
    pub load_s: f64,
    /// The payload into staging, its length and sha256 checked.
    pub download_s: f64,
    /// The check pass (decompressed, every needed member present and hashed).
    pub check_s: f64,
    /// The write pass (decompressed into the inactive slot's parts, fsynced).
    pub write_s: f64,
    /// Every part read back and compared.
    pub read_back_s: f64,
}

/// What `check` found: the version to take, if any.
#[derive(Debug)]
pub struct Plan {
    pub loaded: repo::Loaded,
    pub record: Record,
    pub node: Node,
}

impl Plan {
    /// The decision for this node.
    pub fn decision(&self) -> Decision<'_> {
        choose::choose(&self.record, &self.node)
    }
}

/// Load the record and read this OS's part of it.
pub async fn check(
    opts: &ApplyOptions,
    store: &SlotStore,
    client: &reqwest::Client,
) -> Result<Plan, UpgradeError> {
    let current = store
        .state()
        .current()
        .cloned()
        .ok_or_else(|| UpgradeError::State {
            path: store.state_path().to_path_buf(),
            message: format!(
                "the active slot {} holds no known version",
                store.state().active
            ),
            hint: "the installer records the installed version in the slot state".into(),
        })?;
    let loaded = repo::load(&opts.repo, client).await?;
    // The health gates the publisher signed with the snapshot (tough checked its signature).
    let gates = Gates::from_extra(&loaded.repo.snapshot().signed._extra).map_err(|message| {
        UpgradeError::Record {
            target: "snapshot.json".into(),
            message: format!("{}: {message}", plinth_governance::health::EXTRA_KEY),
        }
    })?;
    let record = Record::read(
        loaded.repo.all_targets().map(|(n, t)| (n.raw(), t)),
        &gates,
        opts.os,
    )?;
    Ok(Plan {
        loaded,
        record,
        node: Node {
            os: opts.os,
            current,
            seed: opts.seed,
            now: opts.now,
        },
    })
}

/// Apply the version elected for this node (see the module doc).
pub async fn apply(opts: &ApplyOptions, store: &mut SlotStore) -> Result<Applied, UpgradeError> {
    let _lock = store.lock()?;
    store.reload()?;
    if let (Some(booted), Some(pending)) = (store.booted(), store.state().pending) {
        if booted == pending {
            // The trial boot this agent flipped to: nothing to do until its health gate
            // commits it or the boot loader falls back.
            let state = store.state();
            return Ok(Applied::OnTrial {
                version: state.content(pending).version().cloned(),
                slot: pending,
                tries_left: state.tries_left,
            });
        }
    }
    store.writable()?;
    let started = std::time::Instant::now();
    let client = repo::http_client()?;
    let plan = check(opts, store, &client).await?;
    let load_s = started.elapsed().as_secs_f64();
    let stay = |why: String| Applied::Stay {
        current: plan.node.current.clone(),
        why,
    };
    let (offer, reason) = match &opts.version {
        Some(v) => {
            let offer = choose::check_requested(&plan.record, &plan.node, v)?;
            let reason = match plan.decision() {
                Decision::Take { reason, .. } => reason,
                Decision::Stay(_) => Reason::Upgrade,
            };
            (offer, reason)
        }
        None => match plan.decision() {
            Decision::Take { offer, reason } => (offer, reason),
            Decision::Stay(s) => {
                opts.staging.clean_except(None);
                if let Some(cancelled) = cancel_pending(store, &s.to_string(), opts.now)? {
                    return Ok(cancelled);
                }
                return Ok(stay(s.to_string()));
            }
        },
    };
    let version = offer.version().clone();
    let state = store.state();
    let inactive = state.inactive();
    if let slots::Content::Written {
        version: v,
        target_sha256,
        ..
    } = state.content(inactive)
    {
        if *v == version
            && *target_sha256 == offer.artifact.sha256
            && state.pending == Some(inactive)
        {
            return Ok(Applied::AlreadyPending {
                version,
                slot: inactive,
            });
        }
    }
    // A flip pending to anything else is called off now, before the download: governance
    // elects another version (or payload) for this node, and the node must not boot the
    // old one should this download fail or take long.
    if state.pending.is_some() {
        let why = format!("it elects {version} (sha256 {}) now", offer.artifact.sha256);
        cancel_pending(store, &why, opts.now)?;
    }
    // A version that failed here is not taken again by itself, whatever came after; asked
    // for by name (`apply --version`), it is tried again.
    if opts.version.is_none() {
        if let Some(failed) = store.state().failure(&version, &offer.artifact.sha256) {
            return Ok(stay(format!(
                "{version} failed on this node at {} ({}); waiting for another version \
                 (`apply --version {version}` tries it again)",
                failed.at, failed.reason
            )));
        }
    }
    if opts.tries == 0 {
        return Err(UpgradeError::State {
            path: store.state_path().to_path_buf(),
            message: "0 tries asked for the new slot".into(),
            hint: "give it at least one boot".into(),
        });
    }
    let want = Want {
        target: offer.target.clone(),
        sha256: offer.artifact.sha256,
        length: offer.artifact.length,
        consistent: plan.loaded.repo.root().signed.consistent_snapshot,
    };
    let started = std::time::Instant::now();
    let slot_plan = slot_plan(&store.inactive_writer()?);
    let mut checker = Checker::new(
        slot_plan.members.into_iter().map(|m| m.0).collect(),
        slot_plan.bounds,
        slot_plan.budget,
        opts.staging.path(&want.sha256),
    );
    let staged = fetch::download_with(
        &client,
        &plan.loaded.mirrors,
        &want,
        &opts.staging,
        &mut checker,
    )
    .await?;
    let checked = checker.finish();
    let download_s = started.elapsed().as_secs_f64();
    let why = match reason {
        Reason::Upgrade => format!("upgrade from {} to {version}", plan.node.current),
        Reason::PullBack => format!(
            "pulled back from {} to {version}: governance lowered max_version",
            plan.node.current
        ),
    };
    let timings = install_with(
        &staged, &want, &version, store, opts.tries, why, opts.now, checked,
    )?;
    let _ = std::fs::remove_file(&staged);
    Ok(Applied::Flipped {
        version,
        slot: inactive,
        reason,
        timings: Timings {
            load_s,
            download_s,
            ..timings
        },
    })
}

/// A flip still pending when governance elects nothing for this node (`why`) is called off,
/// persisted, before the node can boot into it.
fn cancel_pending(
    store: &mut SlotStore,
    why: &str,
    now: jiff::Timestamp,
) -> Result<Option<Applied>, UpgradeError> {
    let Some(slot) = store.state().pending else {
        return Ok(None);
    };
    let Some(version) = store.state().content(slot).version().cloned() else {
        return Ok(None);
    };
    let reason = format!("governance no longer elects {version} for this node: {why}");
    store.update(|s| s.cancel(reason.clone(), now))?;
    store.persist()?;
    Ok(Some(Applied::Cancelled {
        version,
        slot,
        why: reason,
    }))
}

/// Steps 4 to 8 of the module doc, from a staged payload whose sha256 was checked; the
/// time of the check, write and read-back passes.
pub fn install(
    staged: &Path,
    want: &Want,
    version: &Version,
    store: &mut SlotStore,
    tries: u8,
    why: String,
    now: jiff::Timestamp,
) -> Result<Timings, UpgradeError> {
    install_with(staged, want, version, store, tries, why, now, None)
}

/// [`install`], with the check pass's result when it ran beside the download.
#[allow(clippy::too_many_arguments)]
fn install_with(
    staged: &Path,
    want: &Want,
    version: &Version,
    store: &mut SlotStore,
    tries: u8,
    why: String,
    now: jiff::Timestamp,
    checked: Option<CheckResult>,
) -> Result<Timings, UpgradeError> {
    let mut timings = Timings::default();
    let mut started = std::time::Instant::now();
    let mut writer = store.inactive_writer()?;
    let slot = writer.slot();
    let plan = slot_plan(&writer);
    let (members, bounds) = (&plan.members, &plan.bounds);
    let too_large = |e: ArchiveError| match e {
        ArchiveError::TooLarge {
            name,
            declared,
            limit,
            ..
        } if members.iter().any(|m| m.0 == name) => {
            let path = &members.iter().find(|m| m.0 == name).expect("found").1;
            slots::too_small(path, &name, declared, limit)
        }
        e => e.into(),
    };

    // 4. Check pass: the archive read through as the write pass will read it (every
    // member the slot needs present, within its part), the payload hashed again; or its
    // result from beside the download.
    let needed: Vec<String> = members.iter().map(|m| m.0.clone()).collect();
    let found = match checked {
        Some(result) => result.map_err(too_large)?,
        None => {
            let mut payload = Hashed::open(staged)?;
            let found = check_archive(&mut payload, staged, bounds, &needed, plan.budget)
                .map_err(too_large)?;
            payload.finish(staged, want)?;
            found
        }
    };
    let missing = |m: &String, path: &std::path::PathBuf| UpgradeError::MissingMember {
        target: want.target.clone(),
        member: m.clone(),
        slot,
        path: path.clone(),
    };
    if let Some((m, path, _)) = members.iter().find(|m| !found.iter().any(|f| f.0 == m.0)) {
        return Err(missing(m, path));
    }

    timings.check_s = started.elapsed().as_secs_f64();
    started = std::time::Instant::now();

    // 5. The inactive slot is no longer bootable.
    store.update(|s| {
        s.begin_write(version.clone());
        Ok(())
    })?;
    store.persist()?;

    // 6. Write pass: one thread reads the staged payload (hashing it), decompresses and
    // splits it into members, and hands each needed member's bytes over a bounded channel;
    // this one writes them to their parts (hashing them) and fsyncs, so decompressing and
    // writing overlap.
    let digests = write_pass(staged, want, bounds, &mut writer, &too_large)?;
    drop(writer);
    // Every part written, once: what the flip records is the whole slot.
    let once = |m: &String| digests.iter().filter(|d| d.member == *m).count() == 1;
    if let Some((m, path, _)) = members.iter().find(|m| !once(&m.0)) {
        return Err(missing(m, path));
    }

    timings.write_s = started.elapsed().as_secs_f64();
    started = std::time::Instant::now();

    // 7. Read back.
    for d in &digests {
        let path = &members
            .iter()
            .find(|m| m.0 == d.member)
            .expect("a member")
            .1;
        let found = SlotStore::read_back(path, d.length)?;
        if found != d.sha256 {
            return Err(UpgradeError::ReadBack {
                path: path.clone(),
                member: d.member.clone(),
                length: d.length,
                expected: d.sha256.to_string(),
                found: found.to_string(),
            });
        }
    }

    timings.read_back_s = started.elapsed().as_secs_f64();

    // 8. The flip.
    store.update(|s| {
        s.written(want.sha256, digests.clone())?;
        s.flip(tries, why, now)
    })?;
    store.persist()?;
    Ok(timings)
}
