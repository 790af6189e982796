//! A plan as people read it: one line per guest node, the QEMU threads, memory, disks and boot;
//! with `--explain`, every reason in the order the choices were made.

use super::{cpulist, Boot, DiskPlan, MemoryBacking, Plan};
use std::fmt::Write;

impl Plan {
    /// The plan in lines of text; with `explain`, the reasons after it.
    pub fn render(&self, explain: bool) -> String {
        let mut s = String::new();
        let smt = if self.placement.threads_per_core > 1 {
            format!(", {} threads per core", self.placement.threads_per_core)
        } else {
            String::new()
        };
        let _ = writeln!(
            s,
            "GuestOS VM: {} vCPUs{smt}, {} GiB, home node {}",
            self.vcpus, self.memory_gib, self.home_node
        );
        for g in &self.placement.guest_nodes {
            let host: Vec<u32> = self
                .placement
                .vcpu_pins
                .iter()
                .filter(|p| p.guest_node == g.id)
                .map(|p| p.host_cpu)
                .collect();
            let vcpus = match (g.vcpus.first(), g.vcpus.last()) {
                (Some(a), Some(b)) => format!("vCPUs {a}-{b} on host threads {}", cpulist(&host)),
                _ => "no vCPUs".to_string(),
            };
            let _ = writeln!(
                s,
                "  guest node {} = host node {}: {vcpus}; {} GiB",
                g.id, g.host_node, g.memory_gib
            );
        }
        let _ = writeln!(
            s,
            "  emulator threads: host threads {}",
            cpulist(&self.placement.emulator_cpus)
        );
        if !self.placement.iothread_cpus.is_empty() {
            let _ = writeln!(
                s,
                "  I/O threads: host threads {}",
                cpulist(&self.placement.iothread_cpus)
            );
        }
        let _ = writeln!(
            s,
            "  host: host threads {}",
            cpulist(&self.placement.host_cpus)
        );
        let memory = match self.placement.memory {
            MemoryBacking::Hugepages1G => "1 GiB hugepages",
            MemoryBacking::Hugepages2M => "2 MiB hugepages",
            MemoryBacking::GuestMemfd => "guest_memfd (SEV-SNP), no hugepages",
            MemoryBacking::Memfd => "ordinary pages (development layout)",
        };
        let _ = writeln!(s, "  memory: {memory}, preallocated, bound per node");
        for d in &self.disks {
            let _ = match d {
                DiskPlan::Vfio { pci, .. } => writeln!(s, "  disk: {pci} by VFIO passthrough"),
                DiskPlan::VirtioBlk {
                    path,
                    iothread,
                    queues,
                    aio,
                    ..
                } => writeln!(
                    s,
                    "  disk: {path} by virtio-blk, I/O thread {iothread}, {queues} queues, {aio}, no host cache"
                ),
            };
        }
        let _ = match &self.boot {
            Boot::SevSnpDirect { policy, .. } => writeln!(
                s,
                "  boot: SEV-SNP, AMD SEV OVMF, direct kernel boot with kernel hashes, policy {policy}"
            ),
            Boot::Disk => writeln!(s, "  boot: OVMF from the GuestOS disk (no SEV)"),
        };
        if explain {
            let _ = writeln!(s, "why:");
            for r in &self.reasons {
                let _ = writeln!(s, "  [{}] {}", r.topic, r.text);
            }
        }
        s
    }
}
