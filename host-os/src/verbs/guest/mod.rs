//! `plinth-host guest`: `plan` (here: where the GuestOS VM goes on this machine, vCPU pins,
//! memory nodes and backing, disks, QEMU's threads, and with `--explain` why), `launch`,
//! `stop` and `status` (the supervisor, `launch.rs` and `control.rs`) and the internal
//! `exec-qemu` (`exec_qemu.rs`).

mod control;
mod exec_qemu;
mod launch;

use super::BadInput;
use anyhow::Context;
use plinth_host::plan::{self, Layout, SevRequest, VmRequest};
use plinth_host::topology::sysfs;
use plinth_release::measurements::Measurements;
use std::io::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum GuestVerb {
    /// Plan the GuestOS VM on this machine's topology.
    Plan(PlanArgs),
    /// Plan, start and supervise the GuestOS VM (until stopped).
    Launch(Box<launch::LaunchArgs>),
    /// Stop the supervised VM: ACPI power-down, then quit.
    Stop(control::StopArgs),
    /// What the supervisor says of the VM.
    Status(control::StatusArgs),
    /// (Internal: the supervisor's jail) join the cgroups, drop to the user, exec QEMU.
    #[command(hide = true)]
    ExecQemu(exec_qemu::ExecQemuArgs),
}

/// Plan the GuestOS VM: the NUMA node of its disks, a host thread per vCPU there (SMT
/// siblings together), cores for QEMU's threads, memory bound to the same node(s) on
/// hugepages, each disk by VFIO or virtio-blk; nodes nearest first when one is too small.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 planned; 2 the VM does not fit (what was found and what to \
change are printed) or the topology cannot be read.\n\n\
Examples:\n  plinth-host guest plan --vcpus 64 --memory 480 --disk nvme1n1 --disk nvme2n1 \
--sev --expect guest/measurements.json --explain\n  plinth-host guest plan --vcpus 8 --memory 16 --json"
)]
pub struct PlanArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Say why each choice was made.
    #[arg(long)]
    pub explain: bool,
    /// Print the plan as JSON (with the reasons).
    #[arg(long)]
    pub json: bool,
}

/// The VM asked for (shared by `plan` and `launch`).
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// vCPUs (an even number when the host has SMT on: each pair is one host core).
    #[arg(long, env = "PLINTH_GUEST_VCPUS")]
    pub vcpus: u32,
    /// Guest memory in GiB.
    #[arg(long, value_name = "GIB", env = "PLINTH_GUEST_MEMORY_GIB")]
    pub memory: u64,
    /// A GuestOS disk: NVMe namespace (nvme1n1), controller (nvme1) or PCI address (the
    /// environment's list: comma-separated).
    #[arg(
        long = "disk",
        value_name = "NAME",
        env = "PLINTH_GUEST_DISKS",
        value_delimiter = ','
    )]
    pub disks: Vec<String>,
    /// Launch under AMD SEV-SNP (guest_memfd memory, direct kernel boot).
    #[arg(long, env = "PLINTH_GUEST_SEV")]
    pub sev: bool,
    /// The GuestOS release's measurements.json: its SEV-SNP policy (SMT) and the vCPU
    /// counts it publishes launch digests for (without it: SMT allowed, any count).
    #[arg(
        long,
        value_name = "FILE",
        requires = "sev",
        env = "PLINTH_GUEST_EXPECT"
    )]
    pub expect: Option<PathBuf>,
    /// Development layout, for machines too small for production's reservations: vCPUs
    /// share the home node's threads with QEMU's, image files may be disks.
    #[arg(long, env = "PLINTH_GUEST_DEVELOPMENT")]
    pub development: bool,
    /// Guest NUMA nodes in the development layout, all bound to the home node.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "development")]
    pub guest_nodes: u32,
    /// The directory that stands for `/`: its sys/ and proc/ are read.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub sysfs_root: PathBuf,
}

impl GuestVerb {
    pub fn run(self) -> ExitCode {
        let result = match self {
            GuestVerb::Plan(args) => args.run(),
            GuestVerb::Launch(args) => (*args).run(),
            GuestVerb::Stop(args) => args.run(),
            // Exit 3 when the VM does not run, as `systemctl status` says it.
            GuestVerb::Status(args) => match args.run() {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(3),
                Err(e) => Err(e),
            },
            GuestVerb::ExecQemu(args) => args.run(),
        };
        super::finish(result)
    }
}

impl VmArgs {
    /// The plan of this VM on this machine (errors are bad input: exit 2).
    pub fn plan(&self) -> anyhow::Result<plan::Plan> {
        let topology = sysfs::read(&self.sysfs_root)?;
        let sev = match (&self.sev, &self.expect) {
            (false, _) => None,
            (true, None) => Some(SevRequest {
                smt: true,
                vcpu_counts: Vec::new(),
            }),
            (true, Some(path)) => Some(sev_request(path)?),
        };
        let request = VmRequest {
            vcpus: self.vcpus,
            memory_gib: self.memory,
            disks: self.disks.clone(),
            sev,
            layout: if self.development {
                Layout::Development {
                    guest_nodes: self.guest_nodes,
                }
            } else {
                Layout::Production
            },
        };
        plan::plan(&topology, &request).context("the GuestOS VM cannot be planned")
    }
}

impl PlanArgs {
    fn run(self) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let planned = self.vm.plan()?;
        let elapsed = started.elapsed();
        let text = if self.json {
            serde_json::to_string_pretty(&planned).context("serializing the plan")? + "\n"
        } else if self.explain {
            format!(
                "{}planned in {:.2} ms\n",
                planned.render(true),
                elapsed.as_secs_f64() * 1000.0
            )
        } else {
            planned.render(false)
        };
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
            .context("writing the plan")?;
        Ok(())
    }
}

/// The SEV-SNP part of a release's measurements.json.
fn sev_request(path: &Path) -> Result<SevRequest, BadInput> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| BadInput(format!("{shown}: cannot read: {e}")))?;
    let m = Measurements::parse(&text, &shown).map_err(BadInput)?;
    let snp = m.snp.ok_or_else(|| {
        BadInput(format!("{shown}: no `snp` part: not a GuestOS release measured for SEV-SNP\n  hint: pass the measurements.json of a guest-os release"))
    })?;
    let mut vcpu_counts: Vec<u32> = snp.launch_digests.iter().map(|d| d.vcpus).collect();
    vcpu_counts.sort_unstable();
    vcpu_counts.dedup();
    Ok(SevRequest {
        smt: snp.policy.smt,
        vcpu_counts,
    })
}
