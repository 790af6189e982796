//! Where the VM's threads and memory go. Host threads are taken a whole core at a time: the
//! machine's first core stays the host's; on the home node one core is QEMU's emulator's and
//! one its I/O threads' (in an L3 group the host uses, else the node's last); the vCPUs get whole cores (with SMT on, two vCPUs per core, a guest
//! core mirroring a host core), filling one L3 group after another. Memory is bound to the
//! same nodes: 1 GiB hugepages, else 2 MiB ones, else (SEV-SNP, whose private memory is
//! guest_memfd) the node's free memory. When the home node is too small the VM spans the
//! fewest nodes, nearest first by the distance table, one guest NUMA node per host node.

use super::{GuestNode, MemoryBacking, Placement, PlanError, Reason, VcpuPin};
use crate::plan::cpulist;
use crate::topology::Topology;
use std::collections::{BTreeMap, BTreeSet};

const GIB: u64 = 1 << 30;

/// What is to be placed.
pub struct Want {
    pub vcpus: u32,
    pub memory_gib: u64,
    pub home: u32,
    /// Whether QEMU needs I/O threads (virtio-blk disks).
    pub iothreads: bool,
    pub sev: bool,
    /// Cores kept for the host, from the machine's first.
    pub host_cores: usize,
}

/// A host core: its threads, ascending.
#[derive(Debug, Clone)]
struct Core {
    node: u32,
    l3: Option<u32>,
    threads: Vec<u32>,
}

pub fn place(
    topo: &Topology,
    want: &Want,
    reasons: &mut Vec<Reason>,
) -> Result<Placement, PlanError> {
    let mut free = cores(topo);
    // The host's own core(s), then QEMU's on the home node.
    let mut host_cpus = Vec::new();
    for _ in 0..want.host_cores.min(free.len()) {
        host_cpus.extend(free.remove(0).threads);
    }
    reasons.push(Reason {
        topic: "cpu",
        text: format!(
            "host threads {} (the machine's first core) stay the host's: systemd, interrupts, this agent",
            cpulist(&host_cpus)
        ),
    });
    let home = want.home;
    // QEMU's cores: on the home node, in an L3 group the host already uses if there is one,
    // else the node's last group, from its end; so the vCPUs get whole L3 groups.
    let mut reserved_l3: BTreeSet<(u32, Option<u32>)> = topo
        .cpus
        .iter()
        .filter(|c| host_cpus.contains(&c.id))
        .map(|c| (c.node, c.l3))
        .collect();
    let mut take_qemu = |free: &mut Vec<Core>| -> Vec<u32> {
        let on_home: Vec<usize> = (0..free.len()).filter(|i| free[*i].node == home).collect();
        let pick = on_home
            .iter()
            .rev()
            .find(|i| reserved_l3.contains(&(home, free[**i].l3)))
            .or(on_home.last())
            .copied()
            .or(free.len().checked_sub(1));
        match pick {
            Some(i) => {
                let core = free.remove(i);
                reserved_l3.insert((core.node, core.l3));
                core.threads
            }
            None => Vec::new(),
        }
    };
    let emulator_cpus = take_qemu(&mut free);
    reasons.push(Reason {
        topic: "cpu",
        text: format!(
            "QEMU's main loop and emulator threads on host threads {} (a core of node {home}), never a vCPU's",
            cpulist(&emulator_cpus)
        ),
    });
    let iothread_cpus = if want.iothreads {
        let cpus = take_qemu(&mut free);
        reasons.push(Reason {
            topic: "cpu",
            text: format!(
                "virtio-blk I/O threads on host threads {} (a core of node {home}), never a vCPU's",
                cpulist(&cpus)
            ),
        });
        cpus
    } else {
        Vec::new()
    };

    // vCPUs: whole cores.
    let threads_per_core = free
        .iter()
        .map(|c| c.threads.len() as u32)
        .max()
        .unwrap_or(1)
        .max(1);
    if threads_per_core > 1 && want.vcpus % threads_per_core != 0 {
        return Err(PlanError::OddVcpus { vcpus: want.vcpus });
    }
    let cores_needed = (want.vcpus / threads_per_core) as usize;
    let order = node_order(topo, home);
    let mut free_by_node: BTreeMap<u32, Vec<Core>> = BTreeMap::new();
    for c in free {
        free_by_node.entry(c.node).or_default().push(c);
    }
    let free_cores = |n: u32| free_by_node.get(&n).map_or(0, |v| v.len());
    let total_free: usize = order.iter().map(|n| free_cores(*n)).sum();
    if total_free < cores_needed {
        return Err(PlanError::TooManyVcpus {
            vcpus: want.vcpus,
            available: total_free as u32 * threads_per_core,
            found: format!(
                "{} host threads; {} for the host, {} for QEMU; free: {}",
                topo.cpus.len(),
                host_cpus.len(),
                emulator_cpus.len() + iothread_cpus.len(),
                order
                    .iter()
                    .map(|n| format!(
                        "node {n} {} threads",
                        free_cores(*n) as u32 * threads_per_core
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }

    // Memory: the first backing whose capacity the nodes have, nearest first.
    let backings: &[MemoryBacking] = if want.sev {
        &[MemoryBacking::GuestMemfd]
    } else {
        &[MemoryBacking::Hugepages1G, MemoryBacking::Hugepages2M]
    };
    let capacity = |b: MemoryBacking, n: u32| -> u64 {
        let Some(node) = topo.node(n) else { return 0 };
        match b {
            MemoryBacking::Hugepages1G => node.hugepages_1g.free,
            MemoryBacking::Hugepages2M => node.hugepages_2m.free * 2 / 1024,
            MemoryBacking::GuestMemfd => node.memory_free_bytes / GIB,
        }
    };
    let mut chosen: Option<(MemoryBacking, Vec<u32>)> = None;
    for &b in backings {
        let (mut cores, mut mem, mut nodes) = (0usize, 0u64, Vec::new());
        for &n in &order {
            if cores >= cores_needed && mem >= want.memory_gib {
                break;
            }
            cores += free_cores(n);
            mem += capacity(b, n);
            nodes.push(n);
        }
        if cores >= cores_needed && mem >= want.memory_gib {
            chosen = Some((b, nodes));
            break;
        }
    }
    let Some((memory, nodes)) = chosen else {
        return Err(not_enough_memory(topo, want, &order));
    };
    reasons.push(Reason {
        topic: "memory",
        text: match memory {
            MemoryBacking::Hugepages1G => "guest memory on 1 GiB hugepages, preallocated and bound to its nodes".into(),
            MemoryBacking::Hugepages2M => "guest memory on 2 MiB hugepages (not enough free 1 GiB pages), preallocated and bound to its nodes".into(),
            MemoryBacking::GuestMemfd => "SEV-SNP: private guest memory comes from guest_memfd, which QEMU cannot back with hugetlbfs today: it is bound to its nodes without hugepages".into(),
        },
    });
    if nodes.len() > 1 {
        reasons.push(Reason {
            topic: "node",
            text: format!(
                "the VM does not fit node {home} alone: it spans nodes {} (nearest first by distance: {}), each mirrored by a guest NUMA node",
                nodes.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                nodes
                    .iter()
                    .map(|n| format!("{n}: {}", topo.distance(home, *n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }

    // vCPU cores per node, home first; memory in proportion, within each node's capacity.
    let mut cores_left = cores_needed;
    let mut share: Vec<(u32, usize)> = Vec::new();
    for &n in &nodes {
        let k = free_cores(n).min(cores_left);
        cores_left -= k;
        share.push((n, k));
    }
    let mut mem: BTreeMap<u32, u64> = BTreeMap::new();
    let mut mem_left = want.memory_gib;
    for &(n, k) in &share {
        let proportional = want.memory_gib * k as u64 / cores_needed.max(1) as u64;
        let m = proportional.min(capacity(memory, n)).min(mem_left);
        mem.insert(n, m);
        mem_left -= m;
    }
    for &n in &nodes {
        let room = capacity(memory, n) - mem[&n];
        let m = room.min(mem_left);
        *mem.get_mut(&n).expect("every chosen node has an entry") += m;
        mem_left -= m;
    }

    let mut guest_nodes = Vec::new();
    let mut vcpu_pins = Vec::new();
    let mut vcpu = 0u32;
    for &(n, k) in &share {
        if k == 0 && mem[&n] == 0 {
            continue;
        }
        let id = guest_nodes.len() as u32;
        let mut node_cores = free_by_node.remove(&n).unwrap_or_default();
        // One L3 group after another, those the host or QEMU use last: the vCPUs of a guest
        // node share caches, and not with QEMU.
        node_cores.sort_by_key(|c| (reserved_l3.contains(&(n, c.l3)), c.l3, c.threads[0]));
        let mut vcpus = Vec::new();
        let mut l3s = BTreeSet::new();
        for c in node_cores.into_iter().take(k) {
            l3s.insert(c.l3);
            for &t in c.threads.iter().take(threads_per_core as usize) {
                vcpu_pins.push(VcpuPin {
                    vcpu,
                    host_cpu: t,
                    guest_node: id,
                });
                vcpus.push(vcpu);
                vcpu += 1;
            }
        }
        let host: Vec<u32> = vcpu_pins
            .iter()
            .filter(|p| p.guest_node == id)
            .map(|p| p.host_cpu)
            .collect();
        reasons.push(Reason {
            topic: "cpu",
            text: if vcpus.is_empty() {
                format!("guest node {id} = host node {n}: memory only ({} GiB)", mem[&n])
            } else {
                format!(
                    "guest node {id} = host node {n}: vCPUs {}-{} on host threads {} ({} cores{}, {} L3 group{}), {} GiB",
                    vcpus[0],
                    vcpus[vcpus.len() - 1],
                    cpulist(&host),
                    k,
                    if threads_per_core > 1 {
                        ", both threads of each: guest SMT mirrors the host's"
                    } else {
                        ""
                    },
                    l3s.len(),
                    if l3s.len() == 1 { "" } else { "s" },
                    mem[&n]
                )
            },
        });
        guest_nodes.push(GuestNode {
            id,
            host_node: n,
            vcpus,
            memory_gib: mem[&n],
        });
    }
    Ok(Placement {
        threads_per_core,
        guest_nodes,
        vcpu_pins,
        emulator_cpus,
        iothread_cpus,
        host_cpus,
        memory,
    })
}

/// The machine's cores, by their first thread.
fn cores(topo: &Topology) -> Vec<Core> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut cpus: Vec<_> = topo.cpus.iter().collect();
    cpus.sort_by_key(|c| c.id);
    for c in cpus {
        if !seen.insert(c.id) {
            continue;
        }
        let mut threads: Vec<u32> = c
            .siblings
            .iter()
            .copied()
            .filter(|t| topo.cpu(*t).is_some_and(|s| s.node == c.node))
            .collect();
        if !threads.contains(&c.id) {
            threads.push(c.id);
        }
        threads.sort_unstable();
        seen.extend(threads.iter().copied());
        out.push(Core {
            node: c.node,
            l3: c.l3,
            threads,
        });
    }
    out
}

/// Every node, `home` first, then by distance from it (then id).
fn node_order(topo: &Topology, home: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = topo.nodes.iter().map(|n| n.id).collect();
    ids.sort_by_key(|n| (*n != home, topo.distance(home, *n), *n));
    ids
}

fn not_enough_memory(topo: &Topology, want: &Want, order: &[u32]) -> PlanError {
    let found = order
        .iter()
        .filter_map(|n| topo.node(*n))
        .map(|n| {
            if want.sev {
                format!("node {}: {} GiB free", n.id, n.memory_free_bytes / GIB)
            } else {
                format!(
                    "node {}: {} free 1 GiB pages, {} free 2 MiB pages",
                    n.id, n.hugepages_1g.free, n.hugepages_2m.free
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let hint = if want.sev {
        "free memory on the nodes, or ask for less".to_string()
    } else {
        format!(
            "reserve 1 GiB hugepages at boot (kernel command line `hugepagesz=1G hugepages={}`) or per node in /sys/devices/system/node/node{}/hugepages/hugepages-1048576kB/nr_hugepages",
            want.memory_gib, want.home
        )
    };
    PlanError::NotEnoughMemory {
        memory_gib: want.memory_gib,
        found,
        hint,
    }
}
