//! The GuestOS VM plan: from the machine's topology and the VM's settings, where every vCPU,
//! every byte of guest memory and every disk goes, and why. The plan is data; the launcher
//! turns it into a QEMU command line.
//!
//! In order: the disks are found and checked (`devices`); the home node is the one their
//! controllers hang off; host threads are reserved there for QEMU's emulator and I/O threads;
//! the vCPUs and the memory are placed on the home node, or on the fewest nodes nearest to it
//! when it is too small (`placement`), with a guest NUMA node mirroring each host node used.

mod devices;
mod placement;
mod report;

pub use devices::{DiskPlan, DiskRequest};

pub use crate::topology::sysfs::format_cpulist as cpulist;
use crate::topology::Topology;
use serde::Serialize;

/// What HostOS asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRequest {
    pub vcpus: u32,
    pub memory_gib: u64,
    /// The GuestOS disks: NVMe namespaces (`nvme1n1`), controllers (`nvme1`) or PCI addresses.
    pub disks: Vec<String>,
    /// Launch under AMD SEV-SNP, as the GuestOS release expects.
    pub sev: Option<SevRequest>,
    pub layout: Layout,
}

impl VmRequest {
    /// A VM of `vcpus` and `memory_gib` on `disks`, without SEV-SNP, in the production layout.
    pub fn plain(vcpus: u32, memory_gib: u64, disks: Vec<String>) -> VmRequest {
        VmRequest {
            vcpus,
            memory_gib,
            disks,
            sev: None,
            layout: Layout::Production,
        }
    }
}

/// How strictly the VM is kept apart from the host's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Nodes: the host's core and QEMU's cores are no vCPU's; one guest node per host node.
    #[default]
    Production,
    /// Development machines too small for production's reservations (CI's: 2 threads, one
    /// node): the vCPUs take the home node's threads in turn, QEMU's threads share them, and
    /// the guest gets `guest_nodes` NUMA nodes, all bound to the home node, so a multi-node
    /// guest can be booted and checked on one host node. Image files may be disks.
    Development { guest_nodes: u32 },
}

/// What the GuestOS release's measurements.json (`snp`) says of its SEV-SNP launches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevRequest {
    /// The guest policy allows SMT (bit 16); attestation checks it.
    pub smt: bool,
    /// The vCPU counts launch digests were published for (empty: not checked).
    pub vcpu_counts: Vec<u32>,
}

/// Where the VM goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub vcpus: u32,
    pub memory_gib: u64,
    /// The node the disks hang off; the VM is placed there first.
    pub home_node: u32,
    /// Where the vCPUs, QEMU's threads and the memory go.
    #[serde(flatten)]
    pub placement: Placement,
    pub disks: Vec<DiskPlan>,
    pub boot: Boot,
    /// Why each choice was made, in the order made (`--explain`).
    pub reasons: Vec<Reason>,
}

/// Where the VM's threads and memory go (`placement`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    /// Guest threads per core (2: each pair of vCPUs is one host core's two threads).
    pub threads_per_core: u32,
    /// One guest NUMA node per host node used, in guest node order.
    pub guest_nodes: Vec<GuestNode>,
    /// vCPU `i` runs on host thread `vcpu_pins[i].host_cpu`.
    pub vcpu_pins: Vec<VcpuPin>,
    /// Host threads QEMU's main loop and emulator threads run on (no vCPU there).
    pub emulator_cpus: Vec<u32>,
    /// Host threads of the virtio-blk I/O threads (no vCPU there).
    pub iothread_cpus: Vec<u32>,
    /// The host threads kept for the host itself (no vCPU, no QEMU thread).
    pub host_cpus: Vec<u32>,
    pub memory: MemoryBacking,
}

/// A guest NUMA node and the host node it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestNode {
    pub id: u32,
    pub host_node: u32,
    /// Its vCPUs (guest indexes).
    pub vcpus: Vec<u32>,
    pub memory_gib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VcpuPin {
    pub vcpu: u32,
    pub host_cpu: u32,
    pub guest_node: u32,
}

/// What backs guest memory; always bound (`policy=bind`) to each guest node's host node and
/// preallocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryBacking {
    Hugepages1G,
    Hugepages2M,
    /// SEV-SNP: private memory comes from guest_memfd, which QEMU cannot back with hugetlbfs.
    GuestMemfd,
    /// Ordinary pages, preallocated (development layout on a machine without hugepages).
    Memfd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Boot {
    /// SEV-SNP: the AMD SEV OVMF starts the slot's kernel, initrd and command line given to
    /// QEMU, whose hashes it measures (`kernel-hashes=on`).
    SevSnpDirect {
        policy: String,
        /// The confidential-guest object's C-bit position and the physical address bits it
        /// takes (`sev-snp-guest,cbitpos=…,reduced-phys-bits=…`): EPYC's.
        cbitpos: u32,
        reduced_phys_bits: u32,
        /// `kernel-hashes=on`: the OVMF measures the kernel, initrd and command line.
        kernel_hashes: bool,
    },
    /// Without SEV: OVMF boots the slot's UKI from the disk.
    Disk,
}

impl Boot {
    /// SEV-SNP direct boot on EPYC (C-bit 51, one physical address bit) with kernel hashes.
    pub fn sev_snp(policy: String) -> Boot {
        Boot::SevSnpDirect {
            policy,
            cbitpos: 51,
            reduced_phys_bits: 1,
            kernel_hashes: true,
        }
    }
}

/// One decision and why it was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub topic: &'static str,
    pub text: String,
}

/// A VM that cannot be placed: what was found, what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the VM needs at least one vCPU and 1 GiB of memory (asked: {vcpus} vCPUs, {memory_gib} GiB)")]
    Empty { vcpus: u32, memory_gib: u64 },
    #[error("{vcpus} vCPUs cannot be whole cores: SMT is on and each vCPU pair is one host core\n  hint: ask for an even number of vCPUs")]
    OddVcpus { vcpus: u32 },
    #[error("disk {name}: not found; NVMe here: {found}\n  hint: name a namespace (nvme1n1), a controller (nvme1) or a PCI address (0000:41:00.0)")]
    DiskMissing { name: String, found: String },
    #[error("disk {name}: the host itself uses {what} (mounts or swaps on it, or device-mapper, LVM or md holds it)\n  hint: give GuestOS a disk the host does not use")]
    DiskInUse { name: String, what: String },
    #[error("disk {name} is asked for twice (as {first} too)\n  hint: name each disk once")]
    DiskTwice { name: String, first: String },
    #[error("disk {name}: controller {pci} is bound to {driver} and has no namespace to give\n  hint: bind it to vfio-pci for passthrough, or to nvme and create a namespace")]
    DiskUnusable {
        name: String,
        pci: String,
        driver: String,
    },
    #[error("SEV-SNP: no launch digest is published for {vcpus} vCPUs (measurements.json has {allowed})\n  hint: ask for one of those counts, or publish a release that measures this one (guest-os/os.yaml snp.vcpus)")]
    SevVcpus { vcpus: u32, allowed: String },
    #[error("SEV-SNP: the release's guest policy forbids SMT, and this host has SMT on\n  hint: turn SMT off in the firmware setup, or publish a release with snp.smt: true")]
    SevSmt,
    #[error("{vcpus} vCPUs do not fit: {available} host threads are left for vCPUs after the reservation ({found})\n  hint: ask for at most {available} vCPUs")]
    TooManyVcpus {
        vcpus: u32,
        available: u32,
        found: String,
    },
    #[error("{guest_nodes} guest NUMA nodes cannot each have a vCPU and 1 GiB of a {vcpus}-vCPU, {memory_gib} GiB VM\n  hint: ask for at most {vcpus} guest nodes and at least {guest_nodes} GiB")]
    GuestNodes {
        guest_nodes: u32,
        vcpus: u32,
        memory_gib: u64,
    },
    #[error("disk {name}: {why}\n  hint: {hint}")]
    DiskFile {
        name: String,
        why: String,
        hint: &'static str,
    },
    #[error("{memory_gib} GiB does not fit: {found}\n  hint: {hint}")]
    NotEnoughMemory {
        memory_gib: u64,
        found: String,
        hint: String,
    },
}

/// Threads reserved for the host itself: the first core of the machine (systemd, interrupts,
/// the agent).
const HOST_CORES: usize = 1;

/// Plan the VM `req` on `topo`.
pub fn plan(topo: &Topology, req: &VmRequest) -> Result<Plan, PlanError> {
    if req.vcpus == 0 || req.memory_gib == 0 {
        return Err(PlanError::Empty {
            vcpus: req.vcpus,
            memory_gib: req.memory_gib,
        });
    }
    if let Some(sev) = &req.sev {
        if !sev.vcpu_counts.is_empty() && !sev.vcpu_counts.contains(&req.vcpus) {
            return Err(PlanError::SevVcpus {
                vcpus: req.vcpus,
                allowed: sev
                    .vcpu_counts
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !sev.smt && topo.smt() {
            return Err(PlanError::SevSmt);
        }
    }
    let mut reasons = Vec::new();
    let development = matches!(req.layout, Layout::Development { .. });
    let disks = devices::resolve(topo, &req.disks, development)?;
    let home = devices::home_node(topo, &disks, &mut reasons);
    let virtio = disks.iter().filter(|d| !d.is_vfio()).count();
    let want = placement::Want {
        vcpus: req.vcpus,
        memory_gib: req.memory_gib,
        home,
        iothreads: virtio > 0,
        sev: req.sev.is_some(),
        host_cores: HOST_CORES,
    };
    let placed = match req.layout {
        Layout::Production => placement::place(topo, &want, &mut reasons)?,
        Layout::Development { guest_nodes } => {
            placement::place_development(topo, &want, guest_nodes, &mut reasons)?
        }
    };
    let disks = devices::plan_disks(&disks, &placed.iothread_cpus, req.vcpus, &mut reasons);
    let boot = if let Some(sev) = &req.sev {
        let policy = format!("{:#x}", snp_policy(sev.smt));
        reasons.push(Reason {
            topic: "boot",
            text: format!(
                "SEV-SNP: direct kernel boot by the AMD SEV OVMF with kernel hashes, so the launch digest covers kernel, initrd and command line; guest policy {policy} as the release publishes it (debug and migration agent off, SMT {})",
                if sev.smt { "allowed" } else { "not allowed" }
            ),
        });
        Boot::sev_snp(policy)
    } else {
        reasons.push(Reason {
            topic: "boot",
            text: "no SEV: OVMF boots the slot's UKI from the GuestOS disk".into(),
        });
        Boot::Disk
    };
    Ok(Plan {
        vcpus: req.vcpus,
        memory_gib: req.memory_gib,
        home_node: home,
        placement: placed,
        disks,
        boot,
        reasons,
    })
}

/// The SNP guest policy word of a release: ABI 0.0, SMT (bit 16) as the release allows it,
/// bit 17 (reserved, one), migration agent (18) and debug (19) off: firmware's
/// [`plinth_firmware::snp::Policy::bits`], which attestation checks reports against.
pub fn snp_policy(smt: bool) -> u64 {
    plinth_firmware::snp::Policy {
        abi_major: 0,
        abi_minor: 0,
        smt,
        debug: false,
        migrate_ma: false,
    }
    .bits()
}

#[cfg(test)]
mod tests;
