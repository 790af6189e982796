//! `plinth config check FILE`: check a node provider's `config.yaml` before it goes onto a
//! SetupOS stick, with the checks SetupOS itself applies (`plinth-node-config`) and errors
//! in os.yaml's `file:line:col` form. The node operator key is looked for beside the file.

use super::{Global, Output};
use plinth_firmware::certification::Certification;
use plinth_node_config::NodeConfig;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
The file format, with an example: docs/node-config.md. Exit 0 valid, 2 invalid.

Examples:
  plinth config check config.yaml
  plinth config check /media/SETUPOS/config.yaml --json";

/// The node provider's configuration (config.yaml).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub verb: ConfigVerb,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigVerb {
    /// Check a config.yaml as SetupOS will.
    #[command(after_help = AFTER_HELP)]
    Check {
        /// The config.yaml (the node operator key must be beside it).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also accept the test generations (qemu-test), as a `test` SetupOS does.
        #[arg(long)]
        test_generations: bool,
    },
}

#[derive(serde::Serialize)]
struct Report<'a> {
    file: String,
    ok: bool,
    config: Option<&'a NodeConfig>,
    errors: Vec<plinth_yaml::SpecError>,
}

pub fn run(_g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    let ConfigVerb::Check {
        file,
        test_generations,
    } = args.verb;
    let names = Certification::builtin().names(test_generations);
    let result = NodeConfig::read(&file, &names);
    let shown = file.display().to_string();
    if out.json {
        let report = Report {
            file: shown.clone(),
            ok: result.is_ok(),
            config: result.as_ref().ok(),
            errors: result
                .as_ref()
                .err()
                .map(|e| e.0.clone())
                .unwrap_or_default(),
        };
        out.json_result(&report)?;
    }
    let config = result?;
    if !out.json {
        println!(
            "ok {shown} (generation {}, {} target disk{}, {} admin key{})",
            config.generation,
            config.target_disks.len(),
            if config.target_disks.len() == 1 {
                ""
            } else {
                "s"
            },
            config.admin_ssh_keys.len(),
            if config.admin_ssh_keys.len() == 1 {
                ""
            } else {
                "s"
            },
        );
    }
    Ok(())
}
