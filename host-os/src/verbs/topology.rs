//! `plinth-host topology`: the machine as the VM planner sees it, read from /sys and /proc.

use anyhow::Context;
use plinth_host::topology::sysfs;
use std::io::{self, Write as _};
use std::path::PathBuf;

/// Print the machine's topology, read from /sys and /proc.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 2 when the tree cannot be read as a machine.\n\n\
Examples:\n  plinth-host topology\n  plinth-host topology --sysfs-root /tmp/capture --json"
)]
pub struct TopologyArgs {
    /// The directory that stands for `/`: its sys/ and proc/ are read.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub sysfs_root: PathBuf,
    /// Print the topology as JSON instead.
    #[arg(long)]
    pub json: bool,
}

impl TopologyArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let topology = sysfs::read(&self.sysfs_root).map_err(|e| {
            let hint = if self.sysfs_root.join("sys").is_dir() {
                ""
            } else {
                "\n  hint: --sysfs-root names the directory that stands for / (with sys/ and proc/ in it)"
            };
            super::BadInput(format!("{e}{hint}"))
        })?;
        let text = if self.json {
            serde_json::to_string_pretty(&topology).context("serializing the topology")? + "\n"
        } else {
            topology.render()
        };
        let mut stdout = io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        Ok(())
    }
}
