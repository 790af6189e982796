//! `plinth governance`: the governance record, a TUF repository of elected releases
//! ([`plinth_governance`]). Each verb here parses its flags, runs the library's operation
//! and reports; a refusal or malformed input is bad input (exit 2, nothing written), too few
//! signatures, expired metadata or a payload that does not match is a failed check (exit 1).

use super::{BadInput, CheckFailed, Global, Output};
use plinth_governance::expiry::Expiry;
use plinth_governance::keys::PemKeySource;
use plinth_governance::{
    elect, init, keys, publish, revoke, rotate, sign, status, GovernanceError, StagedRole,
};
use plinth_release::{FileName, Os, Version};
use std::path::{Path, PathBuf};

const AFTER_HELP: &str = "\
The record is a TUF repository: the root role holds the governance keys (k of
n), targets list each elected artifact with its measurements, waves and each
OS's max_version; an online publisher key signs snapshot and timestamp. The
work directory (JSON only, no keys) goes from voter to voter; each signs with
their own key on their own machine. The model, the metadata and the signing
flow: docs/governance.md.

Exit codes: 0 ok, 1 a check failed (too few signatures, expired or tampered
metadata), 2 bad input or a refusal (nothing was written).

Examples:
  plinth governance init gov --keys 3 --threshold 2 --key-dir keys
  plinth governance sign --workdir gov --role root --key keys/voter-1.pem
  plinth governance elect out/host-os/1.2.0 --waves waves.yaml --workdir gov
  plinth governance sign --workdir gov --key keys/voter-2.pem
  plinth governance merge --workdir gov copy-1/staged/targets.json
  plinth governance publish /srv/repo --workdir gov
  plinth governance status /srv/repo --trusted-root gov/root.json
  plinth governance revoke host-os 1.2.0 --workdir gov";

const WORKDIR_HELP: &str = "The governance work directory [env: PLINTH_GOVERNANCE_DIR; default: .]";

/// Elect releases for the fleet: a threshold-signed TUF repository.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(subcommand)]
    pub verb: GovernanceVerb,
}

/// The work directory of every verb but init and status.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkdirArg {
    #[arg(long, visible_alias = "repo", value_name = "DIR", help = WORKDIR_HELP)]
    pub workdir: Option<PathBuf>,
}

impl WorkdirArg {
    fn dir(&self) -> PathBuf {
        self.workdir
            .clone()
            .or_else(|| std::env::var_os("PLINTH_GOVERNANCE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("."))
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Targets,
    Root,
}

impl From<RoleArg> for StagedRole {
    fn from(r: RoleArg) -> StagedRole {
        match r {
            RoleArg::Targets => StagedRole::Targets,
            RoleArg::Root => StagedRole::Root,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum GovernanceVerb {
    /// Generate an ed25519 key pair (NAME.pem, mode 0600, and NAME.pub).
    #[command(after_help = "\
A voter generates their key on their own machine and sends NAME.pub to the
coordinator (init --public-key, rotate-root --add-key); NAME.pem never leaves.

Examples:
  plinth governance keygen alice --key-dir ~/.plinth-keys")]
    Keygen {
        /// The key's name (its files are NAME.pem and NAME.pub).
        #[arg(value_name = "NAME")]
        name: String,
        /// Where to write the files (made 0700 if new; an existing one must be 0700).
        #[arg(long, value_name = "DIR", default_value = "keys")]
        key_dir: PathBuf,
    },
    /// Start a record: governance keys, publisher key, root v1 staged.
    #[command(after_help = "\
Root v1 lists the governance keys for the root and targets roles with
threshold K, and the publisher key for snapshot and timestamp. It is staged
unsigned: K voters sign it (sign --role root) before the first publish.
With --keys N the keys are generated here (voter-1.pem ... in --key-dir,
default WORKDIR/keys, which is not part of the record: hand each voter
their key); with --public-key each voter's own key is used.

Examples:
  plinth governance init gov --keys 3 --threshold 2 --key-dir keys
  plinth governance init gov --public-key alice.pub --public-key bob.pub \\
      --public-key carol.pub --threshold 2")]
    Init {
        /// The new work directory.
        #[arg(value_name = "WORKDIR")]
        workdir: PathBuf,
        /// Generate this many governance keys.
        #[arg(long, value_name = "N", required_unless_present = "public_key")]
        keys: Option<usize>,
        /// A voter's public key (keygen's NAME.pub); once per voter.
        #[arg(long, value_name = "FILE", conflicts_with = "keys")]
        public_key: Vec<PathBuf>,
        /// How many governance keys must sign root and targets.
        #[arg(long, value_name = "K")]
        threshold: u64,
        /// Where generated keys go (default: WORKDIR/keys).
        #[arg(long, value_name = "DIR")]
        key_dir: Option<PathBuf>,
        /// When root v1 expires: a duration (365d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN", default_value = "365d")]
        root_expires: Expiry,
    },
    /// Stage the election of a release (checked against its manifest).
    #[command(after_help = "\
The release's manifest.json, measurements.json and the elected files
(update-img.tar.zst unless --artifact) are checked: names, sizes, sha256
(streamed). A new targets version is staged, unsigned; max_version rises to
this version if it is newer. The waves file:

  format_version: 1
  waves:
    - {name: canary, opens_at: 2026-01-10T00:00:00Z, seeds: [0, 15]}
    - {name: rest, opens_at: 2026-01-12T00:00:00Z, seeds: [16, 2047]}

Examples:
  plinth governance elect out/host-os/1.2.0 --waves waves.yaml --workdir gov")]
    Elect {
        /// The release directory (out/<os>/<version>).
        #[arg(value_name = "RELEASE_DIR")]
        release: PathBuf,
        /// The rollout waves (YAML).
        #[arg(long, value_name = "FILE")]
        waves: PathBuf,
        /// A release file to elect (default: update-img.tar.zst); repeatable.
        #[arg(long, value_name = "NAME")]
        artifact: Vec<FileName>,
        /// When the staged targets expire: a duration (90d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN", default_value = "90d")]
        targets_expires: Expiry,
        /// Elect although some node seeds are in no wave (those nodes never take the
        /// version): for reaching part of the fleet on purpose.
        #[arg(long)]
        allow_uncovered: bool,
        #[command(flatten)]
        workdir: WorkdirArg,
    },
    /// Stage the revocation of a version (max_version lowered if it was it).
    #[command(after_help = "\
Examples:
  plinth governance revoke host-os 1.2.0 --workdir gov")]
    Revoke {
        /// The OS (host-os, guest-os, setup-os).
        #[arg(value_name = "OS")]
        os: Os,
        /// The version to revoke.
        // Its own id: `version` is the propagated --version flag's.
        #[arg(id = "release_version", value_name = "VERSION")]
        version: Version,
        /// When the staged targets expire: a duration (90d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN", default_value = "90d")]
        targets_expires: Expiry,
        #[command(flatten)]
        workdir: WorkdirArg,
    },
    /// Add your signature to the staged targets or root.
    #[command(after_help = "\
What is signed is shown first, with what it changes: for targets, the
versions added and removed, waves and max_version against the published
targets; for a root, every role's keys and threshold against the root in
force. A root whose targets role is not its governance keys is refused. The
key must be a targets key (a root key of the root in force or of the staged
root, for --role root). Sign the workdir
in turn, or each voter signs their copy and the copies are merged.

Examples:
  plinth governance sign --workdir gov --key ~/.plinth-keys/alice.pem
  plinth governance sign --workdir gov --role root --key alice.pem")]
    Sign {
        /// Your private key (ed25519 PKCS#8 PEM).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Which staged file to sign.
        #[arg(long, value_enum, default_value = "targets")]
        role: RoleArg,
        #[command(flatten)]
        workdir: WorkdirArg,
    },
    /// Merge the signatures of voters' copies of a staged file.
    #[command(after_help = "\
Each FILE is a voter's signed copy of the staged file (staged/targets.json
or staged/root.json of their copy of the workdir); it must sign the same
content. Only signatures that verify by a key of the role are taken.

Examples:
  plinth governance merge --workdir gov alice/staged/targets.json \\
      bob/staged/targets.json")]
    Merge {
        /// A voter's signed copy of the staged file; one or more.
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
        /// Which staged file the copies are of.
        #[arg(long, value_enum, default_value = "targets")]
        role: RoleArg,
        #[command(flatten)]
        workdir: WorkdirArg,
    },
    /// Stage root v(N+1) with governance keys or the publisher key replaced.
    #[command(
        name = "rotate-root",
        after_help = "\
Publishing it needs a threshold of the old root's keys and of the new root's.
If the new root drops keys that signed the published targets, the same
targets are staged again for the new voters to sign.

--publisher-key NAME.pub puts a new publisher key (keygen's) in the snapshot
and timestamp roles. Until the new root is published the old key stays in
force; publish then signs with NAME.pem beside the .pub (recorded in
governance.json), which is the publisher key from then on.

Examples:
  plinth governance rotate-root --workdir gov --add-key dave.pub \\
      --remove-key 3f2a9c1e --threshold 2
  plinth governance rotate-root --workdir gov --publisher-key keys/publisher-2.pub"
    )]
    RotateRoot {
        /// A new voter's public key; repeatable.
        #[arg(long, value_name = "FILE.pub")]
        add_key: Vec<PathBuf>,
        /// A key id (8 hex digits at least) to remove; repeatable.
        #[arg(long, value_name = "KEYID")]
        remove_key: Vec<String>,
        /// The new threshold (default: unchanged).
        #[arg(long, value_name = "K")]
        threshold: Option<u64>,
        /// A new publisher key's public half (keygen's NAME.pub; NAME.pem beside it signs).
        #[arg(long, value_name = "FILE.pub")]
        publisher_key: Option<PathBuf>,
        /// When the new root expires.
        #[arg(long, value_name = "WHEN", default_value = "365d")]
        root_expires: Expiry,
        /// When targets staged again expire.
        #[arg(long, value_name = "WHEN", default_value = "90d")]
        targets_expires: Expiry,
        #[command(flatten)]
        workdir: WorkdirArg,
    },
    /// Check signatures and write the TUF repository into REPO_DIR.
    #[command(after_help = "\
Refused (REPO_DIR untouched) unless the staged root and targets carry their
thresholds of valid signatures and every payload matches. With nothing
staged, publish re-signs snapshot and timestamp: run it well within a day.
Snapshot and timestamp versions continue from the last this workdir published
(in REPO_DIR or any other directory); a REPO_DIR timestamp.json claiming more
that the root's timestamp key did not sign is refused.

A wave with a gate (waves file) opens only once the wave before it is healthy:
publish counts the node reports in --health DIR (one <node>.json a node, what
plinth-upgrade report writes) and signs, with the snapshot, the gated waves
whose gate holds and since when. Without --health, every gated wave is held.
A report that cannot be read is skipped and named (it never opens a wave).

Examples:
  plinth governance publish /srv/repo --workdir gov
  plinth governance publish /srv/repo --timestamp-expires 12h
  plinth governance publish /srv/repo --health /srv/node-reports   (every few minutes)")]
    Publish {
        /// The repository directory (created if missing).
        #[arg(value_name = "REPO_DIR")]
        repo: PathBuf,
        /// The publisher key (default: the one init made).
        #[arg(long, value_name = "FILE")]
        publisher_key: Option<PathBuf>,
        /// When the snapshot expires.
        #[arg(long, value_name = "WHEN", default_value = "7d")]
        snapshot_expires: Expiry,
        /// When the timestamp expires.
        #[arg(long, value_name = "WHEN", default_value = "1d")]
        timestamp_expires: Expiry,
        /// The nodes' reports the waves' health gates are evaluated from.
        #[arg(long, value_name = "DIR")]
        health: Option<PathBuf>,
        #[command(flatten)]
        workdir: WorkdirArg,
    },
    /// Load a repository as a node would and show what it elects.
    #[command(after_help = "\
Per OS: the elected versions, their waves (opens at, seeds), max_version;
each role's version and expiry; the keys that signed the targets. Expired or
under-signed metadata is an error naming the role (exit 1).

Examples:
  plinth governance status /srv/repo --trusted-root gov/root.json
  plinth --json governance status file:///srv/repo --trusted-root root.json
  plinth governance status /srv/repo --trusted-root root.json --check-payloads")]
    Status {
        /// The repository directory or its file:// URL.
        #[arg(value_name = "REPO")]
        repo: String,
        /// A root.json of the repository obtained out of band (default:
        /// the repository's own 1.root.json, trusted on first use).
        // Not `--root`: that is the global option naming the source tree (PLINTH_ROOT).
        #[arg(long, value_name = "FILE")]
        trusted_root: Option<PathBuf>,
        /// Also read every payload and check its sha256 and length.
        #[arg(long)]
        check_payloads: bool,
    },
}

/// A library error with its exit code: bad input 2, a failed check 1.
fn gov(e: GovernanceError) -> anyhow::Error {
    if e.is_bad_input() {
        BadInput(e.to_string()).into()
    } else {
        CheckFailed(e.to_string()).into()
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run(_g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let now = plinth_governance::expiry::now();
    match args.verb {
        GovernanceVerb::Keygen { name, key_dir } => {
            let k = keys::generate(&key_dir, &name).map_err(gov)?;
            if out.json {
                out.json_result(&serde_json::json!({
                    "key_id": k.key_id, "private": k.private, "public": k.public,
                }))?;
            } else {
                println!(
                    "key {} in {} (public: {})",
                    k.key_id,
                    k.private.display(),
                    k.public.display()
                );
            }
            Ok(())
        }
        GovernanceVerb::Init {
            workdir,
            keys,
            public_key,
            threshold,
            key_dir,
            root_expires,
        } => {
            let report = init::init(&init::InitOptions {
                workdir,
                keys: match keys {
                    Some(n) => init::GovernanceKeys::Generate(n),
                    None => init::GovernanceKeys::Public(public_key),
                },
                threshold,
                key_dir,
                root_expires: root_expires.at(now),
            })
            .map_err(gov)?;
            if out.json {
                return out.json_result(&report);
            }
            println!(
                "root v1 staged in {} ({} of {} governance keys), expires {}",
                report.staged_root.display(),
                report.threshold,
                report.governance_keys.len(),
                report.root_expires
            );
            for k in &report.governance_keys {
                let at = k.private.as_ref().or(k.public.as_ref());
                println!(
                    "  governance key {} ({})",
                    k.key_id,
                    at.map_or(String::new(), |p| p.display().to_string())
                );
            }
            println!(
                "  publisher key {} ({})",
                report.publisher_key.key_id,
                report
                    .publisher_key
                    .private
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string())
            );
            out.info(format!(
                "next: {} voters sign root v1 (plinth governance sign --role root --key FILE); hand each generated voter key to its voter and keep it out of the workdir",
                report.threshold
            ));
            Ok(())
        }
        GovernanceVerb::Elect {
            release,
            waves,
            artifact,
            targets_expires,
            allow_uncovered,
            workdir,
        } => {
            let report = elect::elect(&elect::ElectOptions {
                workdir: workdir.dir(),
                release,
                waves,
                artifacts: artifact,
                targets_expires: targets_expires.at(now),
                now,
                allow_uncovered,
            })
            .map_err(gov)?;
            if !report.uncovered.is_empty() {
                out.warn(format!(
                    "seeds {} are in no wave: those nodes never take this version",
                    elect::seed_ranges(&report.uncovered)
                ));
            }
            if report.waves.iter().any(|w| w.spread_seconds > 0) {
                out.warn(
                    "its waves spread their nodes (spread_seconds): agents older than this plinth \
                     refuse a record holding a field they do not know, so elect spreads only \
                     once the fleet runs an agent that reads them",
                );
            }
            if report.waves.iter().any(|w| w.gate.is_some()) {
                out.warn(
                    "its waves have health gates (gate): agents older than this plinth refuse a \
                     record holding a field they do not know, and a gated wave opens only when \
                     publish --health DIR finds the wave before it healthy",
                );
            }
            if report.dropped_signatures > 0 {
                out.warn(format!(
                    "the staged targets changed: their {} signature(s) were dropped; voters sign again",
                    report.dropped_signatures
                ));
            }
            if out.json {
                return out.json_result(&report);
            }
            println!(
                "staged targets v{}: {} {} elected ({}), max_version {}",
                report.targets_version,
                report.os,
                report.version,
                report.targets.join(", "),
                report.max_version.as_ref().map_or("none", |v| v.as_str())
            );
            for w in &report.waves {
                println!("  wave {} {}", w.name, w.describe());
            }
            out.info("next: voters sign it (plinth governance sign --key FILE), then publish");
            Ok(())
        }
        GovernanceVerb::Revoke {
            os,
            version,
            targets_expires,
            workdir,
        } => {
            let report = revoke::revoke(&workdir.dir(), os, &version, targets_expires.at(now))
                .map_err(gov)?;
            if out.json {
                return out.json_result(&report);
            }
            let show =
                |v: &Option<Version>| v.as_ref().map_or("none".to_string(), |v| v.to_string());
            let max_version = if report.max_version == report.max_version_before {
                format!("{} (unchanged)", show(&report.max_version))
            } else {
                format!(
                    "{} -> {}",
                    show(&report.max_version_before),
                    show(&report.max_version)
                )
            };
            println!(
                "staged targets v{}: {os} {version} revoked ({}), max_version {max_version}",
                report.targets_version,
                report.removed.join(", "),
            );
            out.info("next: voters sign it (plinth governance sign --key FILE), then publish");
            Ok(())
        }
        GovernanceVerb::Sign { key, role, workdir } => {
            let dir = workdir.dir();
            show_staged(out, &dir, role.into())?;
            let source = PemKeySource::new(&key);
            let report = runtime()?
                .block_on(sign::sign(&dir, role.into(), &source, &key))
                .map_err(gov)?;
            if out.json {
                return out.json_result(&report);
            }
            println!(
                "signed {} v{} with key {}",
                report.role, report.version, report.key_id
            );
            for (by, t) in &report.tallies {
                println!(
                    "  {} of {} signatures needed by {by}{}",
                    t.valid().len(),
                    t.threshold,
                    if t.met() { " (enough)" } else { "" }
                );
            }
            Ok(())
        }
        GovernanceVerb::Merge {
            files,
            role,
            workdir,
        } => {
            let merged = sign::merge(&workdir.dir(), role.into(), &files).map_err(gov)?;
            if out.json {
                let list: Vec<_> = merged
                    .iter()
                    .map(|(f, m)| serde_json::json!({"file": f, "added": m.added, "dropped": m.dropped}))
                    .collect();
                return out.json_result(&list);
            }
            for (f, m) in &merged {
                println!("{}: {} signature(s) added", f.display(), m.added.len());
                for d in &m.dropped {
                    out.warn(format!(
                        "{}: signature of {} left out: {}",
                        f.display(),
                        d.key_id,
                        d.not_counted.as_deref().unwrap_or("")
                    ));
                }
            }
            Ok(())
        }
        GovernanceVerb::RotateRoot {
            add_key,
            remove_key,
            threshold,
            publisher_key,
            root_expires,
            targets_expires,
            workdir,
        } => {
            let report = rotate::rotate(&rotate::RotateOptions {
                workdir: workdir.dir(),
                add_keys: add_key,
                remove_keys: remove_key,
                threshold,
                publisher_key,
                root_expires: root_expires.at(now),
                targets_expires: targets_expires.at(now),
            })
            .map_err(gov)?;
            if out.json {
                return out.json_result(&report);
            }
            println!(
                "staged root v{}: {} governance keys, threshold {} (was {}); added {}, removed {}",
                report.version,
                report.keys,
                report.threshold,
                report.old_threshold,
                list(&report.added),
                list(&report.removed)
            );
            if let Some(p) = &report.publisher {
                println!(
                    "  publisher key {} replaces {}; publish signs with {} once root v{} is published",
                    p.new,
                    list(&p.old),
                    p.private_key.display(),
                    report.version
                );
                if !p.private_key_present {
                    out.warn(format!(
                        "{}: not here; it must be where publish runs (or pass publish --publisher-key FILE)",
                        p.private_key.display()
                    ));
                }
            }
            if let Some(v) = report.restaged_targets {
                println!(
                    "staged targets v{v} again: the published targets' signers leave the root"
                );
            }
            out.info("next: a threshold of the old root's voters AND of the new root's sign it (sign --role root)");
            Ok(())
        }
        GovernanceVerb::Publish {
            repo,
            publisher_key,
            snapshot_expires,
            timestamp_expires,
            health,
            workdir,
        } => {
            let dir = workdir.dir();
            let key = match publisher_key {
                Some(k) => k,
                None => plinth_governance::Workdir::open(&dir)
                    .and_then(|w| w.default_publisher_key())
                    .map_err(gov)?,
            };
            let timestamp_at = timestamp_expires.at(now);
            if timestamp_at <= now {
                out.warn(format!("--timestamp-expires {timestamp_at} is past: clients will refuse this repository"));
            }
            let report = runtime()?
                .block_on(publish::publish(publish::PublishOptions {
                    workdir: dir,
                    repo,
                    publisher: Box::new(PemKeySource::new(&key)),
                    publisher_name: key,
                    snapshot_expires: snapshot_expires.at(now),
                    timestamp_expires: timestamp_at,
                    now,
                    health,
                }))
                .map_err(gov)?;
            for skipped in &report.skipped_reports {
                out.warn(format!("node report skipped: {skipped}"));
            }
            if out.json {
                return out.json_result(&report);
            }
            println!(
                "published {}: root v{}, targets v{}, snapshot v{}, timestamp v{} (expires {})",
                report.repo.display(),
                report.root_version,
                report.targets_version,
                report.snapshot_version,
                report.timestamp_version,
                report.timestamp_expires
            );
            for p in &report.payloads_written {
                println!("  payload {p}");
            }
            for g in &report.gates {
                let counts = format!(
                    "{} healthy (needs {}), {} failed (at most {}) in wave `{}`",
                    g.healthy, g.gate.min_healthy, g.failed, g.gate.max_failed, g.after
                );
                match g.open_since {
                    Some(since) => println!(
                        "  {} wave `{}`: open since {since}: {counts}",
                        g.target, g.wave
                    ),
                    None => println!("  {} wave `{}`: held: {counts}", g.target, g.wave),
                }
            }
            Ok(())
        }
        GovernanceVerb::Status {
            repo,
            trusted_root,
            check_payloads,
        } => {
            let root = match trusted_root {
                Some(r) => r,
                None => {
                    let first = repo_dir(&repo)?.join("1.root.json");
                    out.warn("no --trusted-root: trusting the repository's own 1.root.json (pass a root obtained out of band)");
                    first
                }
            };
            let st = runtime()?
                .block_on(status::status(&status::StatusOptions {
                    repo,
                    root,
                    check_payloads,
                }))
                .map_err(gov)?;
            if out.json {
                return out.json_result(&st);
            }
            for line in status::lines(&st) {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// The directory of a repository given as a directory or a `file://` URL.
fn repo_dir(repo: &str) -> anyhow::Result<PathBuf> {
    let (base, _) = status::base_urls(repo).map_err(gov)?;
    Ok(base.to_file_path().unwrap_or_else(|()| PathBuf::from(repo)))
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// Show on stderr what the staged role says, before it is signed.
fn show_staged(out: &Output, dir: &Path, role: StagedRole) -> anyhow::Result<()> {
    for line in sign::describe(dir, role).map_err(gov)? {
        out.info(line);
    }
    Ok(())
}
