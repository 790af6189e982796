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
    let mut take_qemu = |free: &mut Vec<Core>| -> (Option<u32>, Vec<u32>) {
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
                (Some(core.node), core.threads)
            }
            None => (None, Vec::new()),
        }
    };
    let where_ = |node: Option<u32>| match node {
        Some(n) if n == home => format!("a core of node {home}"),
        Some(n) => format!("a core of node {n}: node {home} has none left"),
        None => "no core left".to_string(),
    };
    let (node, emulator_cpus) = take_qemu(&mut free);
    reasons.push(Reason {
        topic: "cpu",
        text: format!(
            "QEMU's main loop and emulator threads on host threads {} ({}), never a vCPU's",
            cpulist(&emulator_cpus),
            where_(node)
        ),
    });
    let iothread_cpus = if want.iothreads {
        let (node, cpus) = take_qemu(&mut free);
        reasons.push(Reason {
            topic: "cpu",
            text: format!(
                "virtio-blk I/O threads on host threads {} ({}), never a vCPU's",
                cpulist(&cpus),
                where_(node)
            ),
        });
        cpus
    } else {
        Vec::new()
    };

    // vCPUs: whole cores of the machine's usual thread count (a core with an offline
    // sibling would break the guest's SMT pairs: it is left unused).
    let threads_per_core = usual_threads(&free);
    let unused: Vec<u32> = free
        .iter()
        .filter(|c| c.threads.len() as u32 != threads_per_core)
        .flat_map(|c| c.threads.iter().copied())
        .collect();
    if !unused.is_empty() {
        reasons.push(Reason {
            topic: "cpu",
            text: format!(
                "host threads {} are not given to vCPUs: their cores do not have {threads_per_core} online threads",
                cpulist(&unused)
            ),
        });
    }
    free.retain(|c| c.threads.len() as u32 == threads_per_core);
    if threads_per_core > 1 && want.vcpus % threads_per_core != 0 {
        return Err(PlanError::OddVcpus { vcpus: want.vcpus });
    }
    let cores_needed = u64::from(want.vcpus / threads_per_core);
    let order = node_order(topo, home);
    let mut free_by_node: BTreeMap<u32, Vec<Core>> = BTreeMap::new();
    for c in free {
        free_by_node.entry(c.node).or_default().push(c);
    }
    let free_cores = |n: u32| free_by_node.get(&n).map_or(0, |v| v.len() as u64);
    let total_free: u64 = order.iter().map(|n| free_cores(*n)).sum();
    if total_free < cores_needed {
        return Err(PlanError::TooManyVcpus {
            vcpus: want.vcpus,
            available: (total_free as u32) * threads_per_core,
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

    // The fewest nodes that hold the VM (nodes with CPUs first; memory-only ones, such as
    // CXL, only if those are not enough), nearest to home, on the best backing they have.
    let backings: &[MemoryBacking] = if want.sev {
        &[MemoryBacking::GuestMemfd]
    } else {
        &[MemoryBacking::Hugepages1G, MemoryBacking::Hugepages2M]
    };
    let capacity = |b: MemoryBacking, n: u32| memory_capacity(topo, b, n);
    let with_cpus: Vec<u32> = order
        .iter()
        .copied()
        .filter(|n| topo.node(*n).is_some_and(|n| !n.cpus.is_empty()))
        .collect();
    let mut chosen: Option<(MemoryBacking, Vec<u32>)> = None;
    'search: for candidates in [&with_cpus, &order] {
        for k in 1..=candidates.len() {
            for &b in backings {
                if let Some(nodes) = nearest_fitting(topo, home, candidates, k, |set| {
                    set.iter().map(|n| free_cores(*n)).sum::<u64>() >= cores_needed
                        && set.iter().map(|n| capacity(b, *n)).sum::<u64>() >= want.memory_gib
                }) {
                    chosen = Some((b, nodes));
                    break 'search;
                }
            }
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
            MemoryBacking::GuestMemfd => format!(
                "SEV-SNP: private guest memory comes from guest_memfd, which QEMU cannot back with hugetlbfs today: no hugepages; the shared memory is bound to its nodes by the memory backends, the private memory by the QEMU cgroup's cpuset.mems; each node keeps {HOST_RESERVE_GIB} GiB and 1% of its memory for the host"
            ),
            MemoryBacking::Memfd => unreachable!("production backings are hugepages or guest_memfd"),
        },
    });
    if nodes.len() > 1 {
        reasons.push(Reason {
            topic: "node",
            text: format!(
                "the VM does not fit node {home} alone: it spans the fewest nodes that hold it, {} (distance from node {home}: {}), each mirrored by a guest NUMA node with its share of vCPUs and memory",
                nodes.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                nodes
                    .iter()
                    .map(|n| format!("{n}: {}", topo.distance(home, *n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }

    // Each node's share, in proportion to what it has (home first for the remainders), so
    // the guest nodes come out as even as the machine allows; no guest node with vCPUs
    // and no memory.
    let core_caps: Vec<u64> = nodes.iter().map(|n| free_cores(*n)).collect();
    let mem_caps: Vec<u64> = nodes.iter().map(|n| capacity(memory, *n)).collect();
    let core_share = split(cores_needed, &core_caps);
    let mut mem_share = split(want.memory_gib, &mem_caps);
    for i in 0..nodes.len() {
        if core_share[i] > 0 && mem_share[i] == 0 {
            let donor = (0..nodes.len())
                .filter(|j| mem_share[*j] > 1)
                .max_by_key(|j| mem_share[*j]);
            match donor {
                Some(j) if mem_caps[i] > 0 => {
                    mem_share[j] -= 1;
                    mem_share[i] = 1;
                }
                _ => {
                    return Err(PlanError::NotEnoughMemory {
                        memory_gib: want.memory_gib,
                        found: format!(
                            "the vCPUs span {} nodes and each needs at least 1 GiB of its own",
                            core_share.iter().filter(|c| **c > 0).count()
                        ),
                        hint: "ask for more memory or fewer vCPUs".into(),
                    })
                }
            }
        }
    }

    let mut guest_nodes = Vec::new();
    let mut vcpu_pins = Vec::new();
    let mut vcpu = 0u32;
    for (i, &n) in nodes.iter().enumerate() {
        let (k, m) = (core_share[i] as usize, mem_share[i]);
        if k == 0 && m == 0 {
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
            for &t in &c.threads {
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
                format!("guest node {id} = host node {n}: memory only ({m} GiB)")
            } else {
                format!(
                    "guest node {id} = host node {n}: vCPUs {}-{} on host threads {} ({k} cores{}, {} L3 group{}), {m} GiB",
                    vcpus[0],
                    vcpus[vcpus.len() - 1],
                    cpulist(&host),
                    if threads_per_core > 1 {
                        ", both threads of each: guest SMT mirrors the host's"
                    } else {
                        ""
                    },
                    l3s.len(),
                    if l3s.len() == 1 { "" } else { "s" },
                )
            },
        });
        guest_nodes.push(GuestNode {
            id,
            host_node: n,
            vcpus,
            memory_gib: m,
        });
    }
    debug_assert_eq!(vcpu, want.vcpus, "every vCPU placed");
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

/// The development layout ([`super::Layout::Development`]): every vCPU on a thread of the
/// home node in turn (shared with QEMU's threads; nothing is kept for the host), memory on
/// the best backing the home node has (ordinary pages when it has no hugepages), and
/// `guest_nodes` guest NUMA nodes bound to the home node with even shares.
pub fn place_development(
    topo: &Topology,
    want: &Want,
    guest_nodes: u32,
    reasons: &mut Vec<Reason>,
) -> Result<Placement, PlanError> {
    let home = want.home;
    if guest_nodes == 0 || guest_nodes > want.vcpus || u64::from(guest_nodes) > want.memory_gib {
        return Err(PlanError::GuestNodes {
            guest_nodes,
            vcpus: want.vcpus,
            memory_gib: want.memory_gib,
        });
    }
    let mut threads: Vec<u32> = topo
        .cpus
        .iter()
        .filter(|c| c.node == home)
        .map(|c| c.id)
        .collect();
    threads.sort_unstable();
    if (want.vcpus as usize) > threads.len() {
        return Err(PlanError::TooManyVcpus {
            vcpus: want.vcpus,
            available: threads.len() as u32,
            found: format!(
                "development layout: node {home} has {} threads, and vCPUs do not share one",
                threads.len()
            ),
        });
    }
    reasons.push(Reason {
        topic: "cpu",
        text: format!(
            "development layout: nothing is kept for the host, and QEMU's threads share node {home}'s threads {} with the vCPUs (not for production: use it where the machine is too small for the reservations)",
            cpulist(&threads)
        ),
    });
    let backings: &[MemoryBacking] = if want.sev {
        &[MemoryBacking::GuestMemfd]
    } else {
        &[
            MemoryBacking::Hugepages1G,
            MemoryBacking::Hugepages2M,
            MemoryBacking::Memfd,
        ]
    };
    let Some(memory) = backings
        .iter()
        .copied()
        .find(|b| memory_capacity(topo, *b, home) >= want.memory_gib)
    else {
        return Err(not_enough_memory(topo, want, &[home]));
    };
    reasons.push(Reason {
        topic: "memory",
        text: format!(
            "guest memory on {}, preallocated and bound to node {home}",
            match memory {
                MemoryBacking::Hugepages1G => "1 GiB hugepages",
                MemoryBacking::Hugepages2M => "2 MiB hugepages",
                MemoryBacking::GuestMemfd => "guest_memfd (SEV-SNP)",
                MemoryBacking::Memfd => "ordinary pages (the node has no free hugepages for it)",
            }
        ),
    });
    let n = guest_nodes as usize;
    let vcpu_share = split(u64::from(want.vcpus), &vec![u64::from(want.vcpus); n]);
    let mem_share = split(want.memory_gib, &vec![want.memory_gib; n]);
    let mut guest = Vec::new();
    let mut vcpu_pins = Vec::new();
    let mut next = 0u32;
    for (id, (k, m)) in vcpu_share.iter().zip(&mem_share).enumerate() {
        let id = id as u32;
        let vcpus: Vec<u32> = (next..next + *k as u32).collect();
        next += *k as u32;
        for &v in &vcpus {
            vcpu_pins.push(VcpuPin {
                vcpu: v,
                host_cpu: threads[v as usize],
                guest_node: id,
            });
        }
        let host: Vec<u32> = vcpus.iter().map(|v| threads[*v as usize]).collect();
        reasons.push(Reason {
            topic: "cpu",
            text: format!(
                "guest node {id} = host node {home}: vCPUs {} on host threads {}, {m} GiB",
                cpulist(&vcpus),
                cpulist(&host)
            ),
        });
        guest.push(GuestNode {
            id,
            host_node: home,
            vcpus,
            memory_gib: *m,
        });
    }
    let last = threads[threads.len() - 1];
    Ok(Placement {
        threads_per_core: 1,
        guest_nodes: guest,
        vcpu_pins,
        emulator_cpus: vec![threads[0]],
        iothread_cpus: if want.iothreads {
            vec![last]
        } else {
            Vec::new()
        },
        host_cpus: Vec::new(),
        memory,
    })
}

/// GiB each node keeps for the host under SEV-SNP (with 1% of its memory).
const HOST_RESERVE_GIB: u64 = 2;

/// The GiB node `n` can give the guest on backing `b`.
fn memory_capacity(topo: &Topology, b: MemoryBacking, n: u32) -> u64 {
    let Some(node) = topo.node(n) else { return 0 };
    match b {
        MemoryBacking::Hugepages1G => node.hugepages_1g.free,
        MemoryBacking::Hugepages2M => node.hugepages_2m.free / 512,
        MemoryBacking::GuestMemfd | MemoryBacking::Memfd => {
            let reserve = HOST_RESERVE_GIB * GIB + node.memory_total_bytes / 100;
            node.memory_free_bytes.saturating_sub(reserve) / GIB
        }
    }
}

/// The thread count most free cores have (the larger on a tie).
fn usual_threads(free: &[Core]) -> u32 {
    let mut count: BTreeMap<u32, usize> = BTreeMap::new();
    for c in free {
        *count.entry(c.threads.len() as u32).or_default() += 1;
    }
    count
        .into_iter()
        .max_by_key(|(threads, n)| (*n, *threads))
        .map_or(1, |(threads, _)| threads.max(1))
}

/// The `k` nodes of `candidates` that `fits`, nearest to `home` (the sum of their distances
/// from it, then their ids), with `home` among them when it is a candidate. Searches every
/// such set for up to 16 candidates (EPYC has at most 8 nodes), nearest-first otherwise.
fn nearest_fitting(
    topo: &Topology,
    home: u32,
    candidates: &[u32],
    k: usize,
    fits: impl Fn(&[u32]) -> bool,
) -> Option<Vec<u32>> {
    if candidates.len() > 16 {
        let set: Vec<u32> = candidates.iter().copied().take(k).collect();
        return fits(&set).then_some(set);
    }
    let must = candidates.contains(&home);
    let mut best: Option<(u32, Vec<u32>)> = None;
    for mask in 0u32..(1 << candidates.len()) {
        if mask.count_ones() as usize != k {
            continue;
        }
        let set: Vec<u32> = (0..candidates.len())
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| candidates[i])
            .collect();
        if must && !set.contains(&home) {
            continue;
        }
        let cost: u32 = set.iter().map(|n| topo.distance(home, *n)).sum();
        let better = match &best {
            None => true,
            Some((c, b)) => cost < *c || (cost == *c && set < *b),
        };
        if better && fits(&set) {
            best = Some((cost, set));
        }
    }
    // Home first, then by distance.
    best.map(|(_, mut set)| {
        set.sort_by_key(|n| (*n != home, topo.distance(home, *n), *n));
        set
    })
}

/// `total` split over nodes in proportion to their capacities `caps` (never above one),
/// the remainder one at a time from the first node on.
fn split(total: u64, caps: &[u64]) -> Vec<u64> {
    let sum: u64 = caps.iter().sum();
    let mut share: Vec<u64> = caps
        .iter()
        .map(|c| (total * c).checked_div(sum).unwrap_or(0).min(*c))
        .collect();
    let mut left = total - share.iter().sum::<u64>();
    while left > 0 {
        let before = left;
        for (s, c) in share.iter_mut().zip(caps) {
            if left > 0 && *s < *c {
                *s += 1;
                left -= 1;
            }
        }
        if left == before {
            break;
        }
    }
    share
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
                format!(
                    "node {}: {} GiB free, {} GiB of it for the guest",
                    n.id,
                    n.memory_free_bytes / GIB,
                    memory_capacity(topo, MemoryBacking::GuestMemfd, n.id)
                )
            } else {
                format!(
                    "node {}: {} free 1 GiB pages, {} free 2 MiB pages",
                    n.id, n.hugepages_1g.free, n.hugepages_2m.free
                )
            }
        })
        .collect::<Vec<_>>()
        .join("; ");
    let (home, m) = (want.home, want.memory_gib);
    let hint = if want.sev {
        format!("free memory on node {home} (reserved hugepages count against it: lower its nr_hugepages), or ask for less")
    } else {
        format!(
            "reserve {m} 1 GiB pages on node {home}: `echo {m} > /sys/devices/system/node/node{home}/hugepages/hugepages-1048576kB/nr_hugepages`, or at boot `hugepagesz=1G hugepages={home}:{m}`"
        )
    };
    PlanError::NotEnoughMemory {
        memory_gib: want.memory_gib,
        found,
        hint,
    }
}
