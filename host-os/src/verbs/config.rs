//! `plinth-host mount-config`: the node's configuration (what SetupOS wrote: guest-os.env,
//! network.env, ...) mounted read-only at /run/plinth/config from the partition named
//! `config` on the disk HostOS booted from, found through sysfs beside the running root.
//! Never by `/dev/disk/by-partlabel/config`: the host also sees GuestOS's disk (and maybe a
//! SetupOS stick), which have partitions of that name.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the configuration is mounted.
pub const CONFIG_DIR: &str = "/run/plinth/config";

/// Mount the boot disk's config partition read-only at /run/plinth/config.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  plinth-host mount-config    what plinth-config.service runs at boot"
)]
pub struct MountConfigArgs {
    /// The directory that stands for /sys.
    #[arg(long, value_name = "DIR", default_value = "/sys")]
    pub sysfs: PathBuf,
}

impl MountConfigArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let st = nix::sys::stat::stat("/").context("stat /")?;
        let root = (
            nix::sys::stat::major(st.st_dev),
            nix::sys::stat::minor(st.st_dev),
        );
        let part =
            plinth_state::disk::sibling_partition(&self.sysfs, Path::new("/dev"), root, "config")
                .map_err(|e| super::BadInput(format!("the boot disk's config partition: {e}")))?;
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(CONFIG_DIR));
        if mounted {
            println!("{CONFIG_DIR} is mounted");
            return Ok(());
        }
        std::fs::create_dir_all(CONFIG_DIR).with_context(|| format!("creating {CONFIG_DIR}"))?;
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", "ro,nodev,nosuid,noexec"])
            .arg(&part.node)
            .arg(CONFIG_DIR)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            anyhow::bail!(
                "mount {} on {CONFIG_DIR}: {}",
                part.node.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!(
            "{} mounted on {CONFIG_DIR} (read-only)",
            part.node.display()
        );
        Ok(())
    }
}
