//! The topology as people read it (`plinth-host topology`): the machine in one line, a block
//! per NUMA node, then NVMe controllers, NICs and the host's own disks.

use super::sysfs::format_cpulist;
use super::Topology;
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// `1 package`, `2 packages`.
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

impl Topology {
    /// The human summary: the machine, one block per node, then NVMe, NICs and host disks.
    pub fn render(&self) -> String {
        render(self)
    }
}

fn render(t: &Topology) -> String {
    let mut out = String::new();
    let cores: BTreeSet<(u32, u32)> = t.cpus.iter().map(|c| (c.package, c.core)).collect();
    let packages: BTreeSet<u32> = t.cpus.iter().map(|c| c.package).collect();
    let l3: BTreeSet<u32> = t.cpus.iter().filter_map(|c| c.l3).collect();
    let l3 = if l3.is_empty() {
        "no L3 reported".to_string()
    } else {
        count(l3.len(), "L3 group")
    };
    let _ = writeln!(
        out,
        "machine: {}, {} in {}, SMT {}, {l3}, {}",
        count(t.cpus.len(), "thread"),
        count(cores.len(), "core"),
        count(packages.len(), "package"),
        if t.smt() { "on" } else { "off" },
        count(t.nodes.len(), "NUMA node"),
    );
    for node in &t.nodes {
        let _ = writeln!(
            out,
            "node {}: cpus {} ({} threads)",
            node.id,
            format_cpulist(&node.cpus),
            node.cpus.len()
        );
        let _ = writeln!(
            out,
            "  memory     {} total, {} free",
            gib(node.memory_total_bytes),
            gib(node.memory_free_bytes)
        );
        let _ = writeln!(
            out,
            "  hugepages  1G {} free of {}, 2M {} free of {}",
            node.hugepages_1g.free,
            node.hugepages_1g.total,
            node.hugepages_2m.free,
            node.hugepages_2m.total
        );
        let distances: Vec<String> = node.distances.iter().map(u32::to_string).collect();
        let _ = writeln!(out, "  distances  {}", distances.join(" "));
    }
    let node = |n: Option<u32>| n.map_or("unknown".to_string(), |n| n.to_string());
    if t.nvme.is_empty() {
        let _ = writeln!(out, "nvme: none");
    }
    for c in &t.nvme {
        let mut line = format!(
            "nvme {}: node {}, driver {}",
            c.pci,
            node(c.node),
            c.driver.as_deref().unwrap_or("none")
        );
        if let Some(name) = &c.name {
            let _ = write!(line, ", {name}");
        }
        if let Some(model) = &c.model {
            let _ = write!(line, ", model {model}");
        }
        if t.is_host_disk(c) {
            line.push_str(" (host disk)");
        }
        let _ = writeln!(out, "{line}");
        for ns in &c.namespaces {
            let host = if t.host_disks.contains(&ns.name) {
                " (host disk)"
            } else {
                ""
            };
            let _ = writeln!(out, "  {}  {}{host}", ns.name, gib(ns.size_bytes));
        }
    }
    if t.nics.is_empty() {
        let _ = writeln!(out, "nics: none");
    }
    for nic in &t.nics {
        let speed = nic
            .speed_mbps
            .map_or("link down or unknown".to_string(), |s| format!("{s} Mb/s"));
        let _ = writeln!(
            out,
            "nic {}: {}, node {}, driver {}, {speed}",
            nic.name,
            nic.pci,
            node(nic.node),
            nic.driver.as_deref().unwrap_or("none"),
        );
    }
    let disks: Vec<&str> = t.host_disks.iter().map(String::as_str).collect();
    let _ = writeln!(
        out,
        "host disks: {}",
        if disks.is_empty() {
            "none".to_string()
        } else {
            disks.join(", ")
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use crate::topology::fixture::Machine;
    use crate::topology::sysfs;

    #[test]
    fn renders_a_machine() {
        let dir = tempfile::tempdir().unwrap();
        Machine::two_socket_nps4().write(dir.path()).unwrap();
        let text = sysfs::read(dir.path()).unwrap().render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "machine: 256 threads, 128 cores in 2 packages, SMT on, 16 L3 groups, 8 NUMA nodes"
        );
        assert_eq!(lines[1], "node 0: cpus 0-15,128-143 (32 threads)");
        assert_eq!(lines[2], "  memory     128.0 GiB total, 7.0 GiB free");
        assert_eq!(lines[3], "  hugepages  1G 120 free of 120, 2M 0 free of 0");
        assert_eq!(lines[4], "  distances  10 11 12 12 32 32 32 32");
        assert!(text.contains("(host disk)\n  nvme0n1  960.0 GiB (host disk)\n"));
        assert!(
            text.contains("nic enp177s0f0: 0000:b1:00.0, node 5, driver mlx5_core, 25000 Mb/s\n")
        );
        assert!(text.ends_with("host disks: nvme0n1\n"));
    }

    #[test]
    fn renders_a_small_machine() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/topology/this-vm");
        let text = sysfs::read(&root).unwrap().render();
        assert!(text.starts_with(
            "machine: 2 threads, 2 cores in 1 package, SMT off, 1 L3 group, 1 NUMA node\n"
        ));
        assert!(text.contains("\nnvme: none\n"));
        assert!(text.contains(
            "\nnic eth0: 0000:00:03.0, node unknown, driver virtio-pci, link down or unknown\n"
        ));
    }
}
