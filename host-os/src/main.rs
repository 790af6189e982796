//! `plinth-host`, the HostOS agent: reads the machine's topology, plans and launches the
//! GuestOS VM on it, reports the boot and its TPM measurements, and benchmarks scratch disks
//! (`disk-bench`, from the crate `plinth-disk-bench`). This file is clap dispatch only;
//! each verb is a module of `verbs/` (`boot-report` and `measured-boot` come from the crate
//! `plinth-boot-report`).

mod verbs;

use clap::Subcommand;
use plinth_boot_report::agent::Agent;
use std::process::ExitCode;

const AGENT: Agent = Agent {
    name: "plinth-host",
    os: "host-os",
    about: "The HostOS agent: reads the machine's topology, plans and launches the GuestOS VM \
            on it, and reports the boot and its TPM measurements.",
    version: env!("CARGO_PKG_VERSION"),
};

/// The HostOS agent's own verbs (`boot-report` and `measured-boot` are every agent's).
#[derive(Debug, Subcommand)]
enum Verb {
    /// Print the machine's topology: NUMA nodes, cpus, NVMe, NICs, host disks.
    Topology(verbs::topology::TopologyArgs),
    /// The GuestOS VM: where it runs on this machine.
    #[command(subcommand)]
    Guest(Box<verbs::guest::GuestVerb>),
    /// Benchmark the disks marked as scratch benchmark disks (direct I/O), and with
    /// dm_crypt=1 in the mark, through dm-crypt with the state volume's parameters, and print
    /// `PLINTH DISK BENCH ...` on every active console; without a marked disk, nothing.
    DiskBench(plinth_disk_bench::DiskBenchArgs),
    /// Mount the node's configuration (the boot disk's `config` partition) read-only at
    /// /run/plinth/config.
    MountConfig(verbs::config::MountConfigArgs),
}

fn main() -> ExitCode {
    AGENT.main(&Vec::new, |verb| match verb {
        Verb::Topology(args) => verbs::finish(args.run()),
        Verb::Guest(verb) => (*verb).run(),
        Verb::DiskBench(args) => args.run(AGENT.name),
        Verb::MountConfig(args) => verbs::finish(args.run()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli() {
        AGENT.command::<Verb>().debug_assert();
    }

    #[test]
    fn help_fits_80_columns() {
        let mut command = AGENT.command::<Verb>().term_width(80);
        let mut texts = vec![command.render_help().to_string()];
        for sub in command.get_subcommands_mut() {
            let mut sub = sub.clone().term_width(80);
            texts.push(sub.render_help().to_string());
            texts.push(sub.render_long_help().to_string());
            for subsub in sub.get_subcommands_mut() {
                let mut subsub = subsub.clone().term_width(80);
                texts.push(subsub.render_long_help().to_string());
            }
        }
        for example in [
            "plinth-host topology --sysfs-root",
            "plinth-host guest plan --vcpus",
        ] {
            assert!(texts.iter().any(|t| t.contains(example)), "{example}");
        }
        for text in texts {
            for line in text.lines() {
                assert!(
                    line.chars().count() <= 80,
                    "help line over 80 columns: {line}"
                );
            }
        }
    }
}
