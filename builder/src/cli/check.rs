//! `plinth check`: validate os.yaml specs and apply each of their profiles, and (for `all`)
//! the certification catalog SetupOS judges machines by.
//!
//! Every selected spec is checked, even after one fails, so a single run reports every error.
//! Text output: `ok guest-os/os.yaml (profiles: prod, test)` per valid spec on stdout; the
//! errors go to stderr through the returned error. `--json` prints
//! `{ "ok", "specs": [ { "file", "ok", "errors": [ SpecError... ] } ] }` on stdout.
//! Any invalid spec makes the command fail with [`SpecErrors`] (exit code 2).

use super::{Global, Output};
use crate::spec::{self, OsSpec, SpecError, SpecErrors};
use crate::workspace::Workspace;
use serde::Serialize;

const AFTER_HELP: &str = "\
Every error names the file, line and column, the field, what was expected,
what was found, and a hint.

Examples:
  plinth check                 check guest-os, host-os and setup-os
  plinth check guest-os        check one spec
  plinth check --json          machine-readable result on stdout";

/// Validate os.yaml specs and make sure every profile applies.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The OS to check: guest-os, host-os, setup-os, or all.
    #[arg(default_value = "all", value_name = "OS")]
    pub os: String,
}

/// The result for one spec, as printed by `--json`.
#[derive(Debug, Serialize)]
struct SpecReport {
    file: String,
    ok: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profiles: Vec<String>,
    errors: Vec<SpecError>,
}

/// The whole result, as printed by `--json`.
#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    specs: Vec<SpecReport>,
}

pub fn run(g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let oses = Workspace::select(&args.os)?;
    let ws = Workspace::discover(g.root.as_deref())?;
    let mut specs = Vec::new();
    for os in oses {
        let path = ws.spec_path(os);
        let file = ws.display(&path);
        out.detail(format!("checking {file}"));
        let report = match check_one(&path, &file) {
            Ok(spec) => SpecReport {
                file,
                ok: true,
                profiles: spec.profile_names().iter().map(|s| s.to_string()).collect(),
                errors: Vec::new(),
            },
            Err(errors) => SpecReport {
                file,
                ok: false,
                profiles: Vec::new(),
                errors: errors.0,
            },
        };
        specs.push(report);
    }
    // A tree of specs alone (a test's) has no firmware/: the catalog built into this plinth
    // is checked by its own tests.
    if args.os == "all" && ws.root.join("firmware/certification.yaml").exists() {
        specs.push(check_certification(&ws));
    }
    let report = Report {
        ok: specs.iter().all(|s| s.ok),
        specs,
    };
    if out.json {
        out.json_result(&report)?;
    } else {
        for s in report.specs.iter().filter(|s| s.ok) {
            if s.profiles.is_empty() {
                println!("ok {}", s.file);
            } else {
                println!("ok {} (profiles: {})", s.file, s.profiles.join(", "));
            }
        }
    }
    if report.ok {
        return Ok(());
    }
    for s in report.specs.iter().filter(|s| !s.ok) {
        let n = s.errors.len();
        let plural = if n == 1 { "" } else { "s" };
        out.info(format!("invalid {} ({n} error{plural})", s.file));
    }
    let errors = report.specs.into_iter().flat_map(|s| s.errors).collect();
    Err(SpecErrors(errors).into())
}

/// The certification catalog SetupOS judges machines by (`firmware/certification.yaml`).
fn check_certification(ws: &Workspace) -> SpecReport {
    let path = ws.root.join("firmware/certification.yaml");
    let file = ws.display(&path);
    let result = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read it: {e}"))
        .and_then(|text| {
            plinth_firmware::certification::Certification::parse(&text, &file).map(|_| ())
        });
    SpecReport {
        ok: result.is_ok(),
        errors: result
            .err()
            .map(|e| SpecError::io(&file, e))
            .into_iter()
            .collect(),
        file,
        profiles: Vec::new(),
    }
}

/// Load one spec and apply each of its profiles.
fn check_one(path: &std::path::Path, file: &str) -> Result<OsSpec, SpecErrors> {
    let spec = spec::load(path, file)?;
    let errors: Vec<SpecError> = spec
        .profile_names()
        .into_iter()
        .filter_map(|name| spec.profile(name).err())
        .map(|e| SpecError {
            file: file.to_string(),
            line: 0,
            column: 0,
            path: format!("profiles.{}", e.name),
            expected: "a profile that applies".into(),
            found: e.to_string(),
            hint: String::new(),
        })
        .collect();
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(SpecErrors(errors))
    }
}
