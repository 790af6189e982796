//! The boot report of a plinth image: once the system is up, the OS's agent checks the boot
//! and prints one line on every active console (the serial console among them), which boot
//! tests and `plinth run --expect` wait for:
//!
//! ```text
//! PLINTH BOOT OK guest-os 1.2.0 slot=A
//! PLINTH BOOT FAILED host-os 1.2.0 slot=B: failed units: chrony.service
//! ```
//!
//! Which image it is comes from `IMAGE_ID` and `IMAGE_VERSION` in os-release (the build
//! writes them) and the slot from `plinth.slot=` on the kernel command line (the slot's UKI
//! carries it; `slot=none` for an OS without A/B slots). The checks: the image is the agent's
//! own OS, the root filesystem is mounted from a dm-verity device, and no systemd unit failed.
//! The parsing and checks take their inputs as text, so tests give them captured files.
//!
//! Before the marker come the lines an agent adds about the machine ([`report_with`]; the
//! GuestOS agent prints the NUMA nodes and disks it sees as `PLINTH GUEST ...`), the last
//! journal lines of each failed unit (`PLINTH UNIT <unit>: ...`, so that a serial console
//! says why) and, on a machine with a TPM, the `PLINTH TPM ...` lines, in that order.

use plinth_release::slot::{self, Slot, SlotError};
use std::fmt;

pub mod agent;
pub mod measured;

/// The marker's first words; boot tests wait for `PLINTH BOOT OK`.
pub const PREFIX: &str = "PLINTH BOOT";

/// Which image booted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// os-release `IMAGE_ID`: `guest-os`, `host-os` or `setup-os`.
    pub os: String,
    /// os-release `IMAGE_VERSION`.
    pub version: String,
    /// `A` or `B` from `plinth.slot=`; `None` for an OS without slots; the text that is
    /// neither (reported by [`check_identity`]).
    pub slot: Result<Option<Slot>, SlotError>,
}

impl Identity {
    /// From the text of os-release and of /proc/cmdline. Missing fields are reported as
    /// `unknown` (and fail the boot through [`check_identity`]).
    pub fn read(os_release: &str, cmdline: &str) -> Identity {
        Identity {
            os: os_release_field(os_release, "IMAGE_ID").unwrap_or_else(|| "unknown".into()),
            version: os_release_field(os_release, "IMAGE_VERSION")
                .unwrap_or_else(|| "unknown".into()),
            slot: cmdline_value(cmdline, slot::CMDLINE_KEY)
                .map(str::parse)
                .transpose(),
        }
    }
}

impl Identity {
    /// The slot booted, `None` for an OS without slots (or a slot that is neither A nor B,
    /// which [`check_identity`] reports).
    pub fn booted_slot(&self) -> Option<Slot> {
        self.slot.clone().ok().flatten()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.slot {
            Ok(slot) => write!(
                f,
                "{} {} slot={}",
                self.os,
                self.version,
                slot::or_none(*slot)
            ),
            Err(bad) => write!(f, "{} {} slot={}", self.os, self.version, bad.0),
        }
    }
}

/// A field of os-release text, unquoted (`KEY=value`, `KEY="value"` or `KEY='value'`).
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(unquoted.to_string())
    })
}

/// The value of `key=value` on a kernel command line (the last one wins, as for the kernel).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// What is wrong with the identity for the agent of `agent_os`.
pub fn check_identity(id: &Identity, agent_os: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if id.os == "unknown" || id.version == "unknown" {
        problems.push("os-release lacks IMAGE_ID or IMAGE_VERSION (not a plinth image?)".into());
    } else if id.os != agent_os {
        problems.push(format!(
            "os-release says IMAGE_ID={}, but this is the {agent_os} agent",
            id.os
        ));
    }
    if let Err(bad) = &id.slot {
        problems.push(format!(
            "{}={} on the command line: expected A or B",
            slot::CMDLINE_KEY,
            bad.0
        ));
    }
    problems
}

/// The device (`major:minor`) mounted on `/`, from /proc/self/mountinfo text.
pub fn root_device(mountinfo: &str) -> Option<&str> {
    // Fields: id parent major:minor root mount-point ...
    // The last mount on / is the one in effect.
    mountinfo.lines().rev().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(4) == Some(&"/"))
            .then(|| f.get(2).copied())
            .flatten()
    })
}

/// What is wrong with the root filesystem's device, given the text of its
/// `/sys/dev/block/<dev>/dm/uuid` (`None`: not a device-mapper device).
pub fn check_root(device: Option<&str>, dm_uuid: Option<&str>) -> Vec<String> {
    match (device, dm_uuid.map(str::trim)) {
        (None, _) => vec!["no filesystem is mounted on / in /proc/self/mountinfo".into()],
        (Some(dev), None) => vec![format!(
            "the root filesystem (device {dev}) is not on device-mapper: dm-verity is not protecting it"
        )],
        (Some(dev), Some(uuid)) if !uuid.starts_with("CRYPT-VERITY-") => vec![format!(
            "the root filesystem (device {dev}) is on device-mapper `{uuid}`, not on a dm-verity target"
        )],
        _ => Vec::new(),
    }
}

/// What is wrong given the output of `systemctl list-units --state=failed --plain
/// --no-legend` (one unit per line, its name first).
pub fn check_units(failed_listing: &str) -> Vec<String> {
    let failed = failed_units(failed_listing);
    if failed.is_empty() {
        Vec::new()
    } else {
        vec![format!("failed units: {}", failed.join(", "))]
    }
}

/// The failed units' names in a `systemctl list-units --state=failed --plain --no-legend`
/// listing.
pub fn failed_units(failed_listing: &str) -> Vec<&str> {
    failed_listing
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| *w != "●"))
        .collect()
}

/// How many of a failed unit's last journal lines the report shows.
const UNIT_JOURNAL_LINES: usize = 8;

/// The console lines that say why `unit` failed: its last journal lines, each as
/// `PLINTH UNIT <unit>: <line>`, from `journal` (the text of `journalctl -u <unit> -o cat`).
/// A journal line that holds the marker's words (a relayed guest console) gets them as
/// `PLINTH-BOOT`: only the report's own line may be read as the marker.
pub fn unit_lines(unit: &str, journal: &str) -> Vec<String> {
    let lines: Vec<&str> = journal.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(UNIT_JOURNAL_LINES)..]
        .iter()
        .map(|l| {
            let l: String = l.trim_end().chars().filter(|c| !c.is_control()).collect();
            format!("PLINTH UNIT {unit}: {}", l.replace(PREFIX, "PLINTH-BOOT"))
        })
        .collect()
}

/// The console line for `id` with these problems.
pub fn marker(id: &Identity, problems: &[String]) -> String {
    if problems.is_empty() {
        format!("{PREFIX} OK {id}")
    } else {
        format!("{PREFIX} FAILED {id}: {}", problems.join("; "))
    }
}

/// The sealed state's problem, if the image keeps state (`keeps_state`: its key source is
/// configured): what `plinth-state open` recorded in the initrd, or that it recorded nothing.
pub fn check_state(
    keeps_state: bool,
    report: std::io::Result<Option<plinth_state::report::Report>>,
) -> Option<String> {
    if !keeps_state {
        return None;
    }
    match report {
        Ok(Some(r)) => r.problem(),
        Ok(None) => Some(format!(
            "state: {} is missing: plinth-state did not run in the initrd\n  hint: the UKI's initrd must carry plinth-state.service (an image with {} gets it from the build)",
            plinth_state::report::REPORT_PATH,
            plinth_state::key::CONFIG_PATH
        )),
        Err(e) => Some(format!(
            "state: {}: {e}",
            plinth_state::report::REPORT_PATH
        )),
    }
}

/// The whole report on the running system: wait until systemd has finished starting, run
/// every check, print the line on stdout and on every active console; whether the boot is
/// good. It prints `machine` (the agent's lines about the machine it sees, e.g. the
/// GuestOS's `PLINTH GUEST ...` NUMA and disk lines) first, then the failed units' journal
/// lines, then the TPM lines, then the marker, all in one write to each console so that
/// nothing interleaves them. The machine lines are information only: they do not fail the
/// boot.
pub fn report_with(agent_os: &str, machine: &[String]) -> bool {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let run = |cmd: &mut std::process::Command| {
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let id = Identity::read(&read("/etc/os-release"), &read("/proc/cmdline"));
    let mut problems = Vec::new();
    let mut lines_before = Vec::new();
    if let Err(why) = wait_for_startup(STARTUP_WAIT) {
        problems.push(why);
    }
    problems.extend(check_identity(&id, agent_os));
    let mountinfo = read("/proc/self/mountinfo");
    let device = root_device(&mountinfo);
    let dm_uuid =
        device.and_then(|d| std::fs::read_to_string(format!("/sys/dev/block/{d}/dm/uuid")).ok());
    problems.extend(check_root(device, dm_uuid.as_deref()));
    let keeps_state = std::path::Path::new("/")
        .join(plinth_state::key::CONFIG_PATH)
        .is_file();
    let state =
        plinth_state::report::Report::read(std::path::Path::new(plinth_state::report::REPORT_PATH));
    if let Ok(Some(r)) = &state {
        lines_before.push(r.summary());
    }
    problems.extend(check_state(keeps_state, state));
    match run(std::process::Command::new("systemctl").args([
        "list-units",
        "--state=failed",
        "--plain",
        "--no-legend",
    ])) {
        Ok(listing) => {
            problems.extend(check_units(&listing));
            // Why each failed, from its journal: the console is all a boot test or a
            // node provider at a serial console may have.
            for unit in failed_units(&listing) {
                let journal = run(std::process::Command::new("journalctl").args([
                    "--boot",
                    "--no-pager",
                    "--output=cat",
                    "--lines",
                    &UNIT_JOURNAL_LINES.to_string(),
                    "--unit",
                    unit,
                ]))
                .unwrap_or_else(|e| format!("journalctl could not be run: {e}"));
                lines_before.extend(unit_lines(unit, &journal));
            }
        }
        Err(e) => problems.push(format!("systemctl could not be run: {e}")),
    }
    let mut lines = machine.to_vec();
    lines.append(&mut lines_before);
    let expected = measured::load_expected(None);
    if measured::tpm_present() {
        problems.extend(measured_boot(&id, expected, &mut lines));
    } else if let Ok(Some((_, origin))) = &expected {
        problems.push(format!(
            "measured boot: {origin} is attached, but there is no TPM at /dev/tpmrm0\n  hint: give the machine a TPM 2.0 (plinth run --tpm), or check that the kernel's TPM driver loaded"
        ));
    }
    let line = marker(&id, &problems);
    lines.push(line);
    plinth_state::console::say(&lines);
    problems.is_empty()
}

/// Read the TPM's PCRs and the event log into `lines`, and check them against `expected`
/// (the measurements disk, if the machine has one); the problems found.
fn measured_boot(
    id: &Identity,
    expected: Result<Option<(measured::Measurements, String)>, String>,
    lines: &mut Vec<String>,
) -> Vec<String> {
    let observed = match measured::observe() {
        Ok(o) => o,
        Err(why) => return vec![format!("measured boot: {why}")],
    };
    lines.extend(measured::lines(&observed));
    let problems = match expected {
        Ok(None) => {
            lines.push(format!(
                "PLINTH TPM no disk with serial {} attached: the PCRs are not checked",
                measured::MEASUREMENTS_SERIAL
            ));
            return Vec::new();
        }
        Ok(Some((m, origin))) => {
            let problems = measured::check(&observed, &m, (&id.os, &id.version), id.booted_slot());
            if problems.is_empty() {
                lines.push(format!(
                    "PLINTH TPM measurements.json matches: every predicted PCR is the live one ({origin})"
                ));
            }
            problems
        }
        Err(why) => vec![why],
    };
    problems
        .into_iter()
        .map(|p| format!("measured boot: {p}"))
        .collect()
}

/// How long startup may take before the report says it hangs.
const STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Wait until systemd has no start job left (`systemctl is-system-running --wait`; this unit
/// is started already, being Type=exec), at most `limit`; on a timeout, name the jobs left.
fn wait_for_startup(limit: std::time::Duration) -> Result<(), String> {
    let start = std::time::Instant::now();
    let mut wait = std::process::Command::new("systemctl")
        .args(["is-system-running", "--wait"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("systemctl could not be run: {e}"))?;
    while start.elapsed() < limit {
        if let Ok(Some(_)) = wait.try_wait() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = wait.kill();
    let _ = wait.wait();
    let jobs = std::process::Command::new("systemctl")
        .args(["list-jobs", "--plain", "--no-legend"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let names: Vec<&str> = jobs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    Err(format!(
        "startup did not finish within {} s; jobs left: {}",
        limit.as_secs(),
        names.join(", ")
    ))
}

/// The verbs every agent has, ahead of its own in [`agent::Agent::main`].
#[derive(Debug, clap::Subcommand)]
pub enum CommonVerb {
    /// Check the boot (image identity, dm-verity root, failed units) and print `PLINTH BOOT
    /// OK|FAILED ...` on every active console, after the agent's lines about its machine.
    BootReport,
    /// Print the TPM's PCRs and the firmware's event log, checked against measurements.json.
    MeasuredBoot(MeasuredBootArgs),
}

impl CommonVerb {
    /// Run the verb as the agent of `os`, whose boot report first prints `machine()` (the
    /// lines it has about its machine; none for most); the process's exit code: 0 the boot
    /// is good or nothing differs, 1 it is not or something differs, 2 bad input.
    pub fn run(&self, os: &str, machine: &dyn Fn() -> Vec<String>) -> std::process::ExitCode {
        match self {
            CommonVerb::BootReport => {
                if report_with(os, &machine()) {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                }
            }
            CommonVerb::MeasuredBoot(args) => args.run(),
        }
    }
}

/// The agents' `measured-boot` verb.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Prints each SHA-256 PCR (read from the TPM through tss-esapi) and every event of the
firmware's log, and checks them against a measurements.json (from `plinth measure` or the
release directory): the file given, else the disk with serial plinth-measurements if the
machine has one. Exit 0: nothing differs (or nothing to check); 1: a PCR differs (each
difference is explained event by event); 2: no TPM, or an unreadable file.

Examples:
  plinth-host measured-boot
  plinth-host measured-boot --expect /run/measurements.json --json")]
pub struct MeasuredBootArgs {
    /// The measurements.json to check against.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<std::path::PathBuf>,
    /// Print JSON (pcrs, events, problems).
    #[arg(long)]
    pub json: bool,
}

impl MeasuredBootArgs {
    /// Run the verb; the process's exit code.
    pub fn run(&self) -> std::process::ExitCode {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let id = Identity::read(&read("/etc/os-release"), &read("/proc/cmdline"));
        match measured::show(
            self.expect.as_deref(),
            (&id.os, &id.version),
            id.booted_slot(),
            self.json,
        ) {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::FAILURE,
            Err(why) => {
                eprintln!("error: {why}");
                std::process::ExitCode::from(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nIMAGE_ID=guest-os\nIMAGE_VERSION=\"1.2.0\"\n";

    #[test]
    fn the_state_is_a_problem_only_where_it_is_kept_and_not_open() {
        use plinth_state::report::Report;
        let report = |ok: bool| Report {
            ok,
            device: Some("/dev/vda7".into()),
            key_source: Some("tpm2".into()),
            created: false,
            boots: 1,
            machine_id: None,
            reason: (!ok).then(|| "/dev/vda7 could not be unlocked with the tpm2 key".into()),
            steps: Vec::new(),
            volume: None,
        };
        assert_eq!(check_state(false, Ok(None)), None);
        assert_eq!(check_state(true, Ok(Some(report(true)))), None);
        assert_eq!(
            check_state(true, Ok(Some(report(false)))).unwrap(),
            "state: /dev/vda7 could not be unlocked with the tpm2 key"
        );
        assert!(check_state(true, Ok(None))
            .unwrap()
            .starts_with("state: /run/plinth/state.json is missing"));
        let id = Identity::read(OS_RELEASE, "plinth.slot=A");
        let problems: Vec<String> = check_state(true, Ok(Some(report(false))))
            .into_iter()
            .collect();
        assert_eq!(
            marker(&id, &problems),
            "PLINTH BOOT FAILED guest-os 1.2.0 slot=A: state: /dev/vda7 could not be unlocked with the tpm2 key"
        );
    }

    #[test]
    fn identity_and_marker() {
        let id = Identity::read(OS_RELEASE, "console=ttyS0 plinth.slot=A roothash=ab ro\n");
        assert_eq!(id.to_string(), "guest-os 1.2.0 slot=A");
        assert!(check_identity(&id, "guest-os").is_empty());
        assert_eq!(marker(&id, &[]), "PLINTH BOOT OK guest-os 1.2.0 slot=A");
        let problems = check_identity(&id, "host-os");
        assert_eq!(
            marker(&id, &problems),
            "PLINTH BOOT FAILED guest-os 1.2.0 slot=A: os-release says IMAGE_ID=guest-os, but this is the host-os agent"
        );
        let none = Identity::read("ID=debian\n", "quiet");
        assert_eq!(none.to_string(), "unknown unknown slot=none");
        assert_eq!(check_identity(&none, "setup-os").len(), 1);
        let bad_slot = Identity::read(OS_RELEASE, "plinth.slot=C");
        assert_eq!(check_identity(&bad_slot, "guest-os").len(), 1);
    }

    #[test]
    fn root_must_be_verity() {
        let mountinfo = "22 1 254:0 / / ro,relatime shared:1 - ext4 /dev/mapper/root ro\n\
                         23 22 0:21 / /proc rw shared:2 - proc proc rw\n";
        assert_eq!(root_device(mountinfo), Some("254:0"));
        let over = format!("{mountinfo}30 22 0:40 / / rw - tmpfs tmpfs rw\n");
        assert_eq!(
            root_device(&over),
            Some("0:40"),
            "the last mount on / counts"
        );
        assert!(check_root(Some("254:0"), Some("CRYPT-VERITY-0123-root\n")).is_empty());
        assert!(check_root(Some("254:0"), Some("LVM-abc"))[0].contains("not on a dm-verity"));
        assert!(check_root(Some("8:2"), None)[0].contains("not on device-mapper"));
        assert_eq!(check_root(None, None).len(), 1);
    }

    #[test]
    fn failed_units_are_named() {
        assert!(check_units("").is_empty());
        let listing =
            "chrony.service loaded failed failed chrony\n● x.mount loaded failed failed X\n";
        assert_eq!(
            check_units(listing),
            ["failed units: chrony.service, x.mount"]
        );
    }

    #[test]
    fn a_failed_units_last_journal_lines_are_shown_and_cannot_pass_for_the_marker() {
        let journal: String = (1..=12)
            .map(|i| format!("line {i}\n"))
            .chain([
                "\n".into(),
                "relayed: PLINTH BOOT OK guest-os 1.0 slot=A\x1b[0m\r\n".into(),
            ])
            .collect();
        let lines = unit_lines("systemd-pcrphase.service", &journal);
        assert_eq!(lines.len(), UNIT_JOURNAL_LINES);
        assert_eq!(lines[0], "PLINTH UNIT systemd-pcrphase.service: line 6");
        assert_eq!(
            lines[7],
            "PLINTH UNIT systemd-pcrphase.service: relayed: PLINTH-BOOT OK guest-os 1.0 slot=A[0m"
        );
        assert!(lines.iter().all(|l| !l.contains(PREFIX)));
        assert!(unit_lines("x.service", "").is_empty());
    }
}
