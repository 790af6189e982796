//! Generates sysfs and procfs trees of synthetic machines, as plain files, for tests: what
//! [`super::sysfs::read`] reads, laid out as Linux lays it out on AMD EPYC (numbering,
//! siblings, L3 groups, SLIT distances), with NVMe controllers, NICs and the host's mounts.
//!
//! Conventions of the generated trees (tests may rely on them):
//! - cpu ids: the first thread of every core in socket and node order, then every second
//!   thread (`cpu0`'s siblings are `0,<cores>`); a core's `core_id` is its index in its socket;
//!   L3 ids count groups of `cores_per_l3` cores machine-wide (0: no L3 is reported); the
//!   caches are `index0` (L1d) and `index3` (L3).
//! - memory: a node's MemFree is its total less its hugepages and 1 GiB the host uses; every
//!   hugepage is free (`nr_hugepages` = `free_hugepages`).
//! - NVMe `k` (its index in `Machine::nvme`) is at `<domain>:<bus>:00.0` with bus = node × 32
//!   + 1 + its index among its node's NVMe (domain 0000 until that passes 255), is controller
//!   `nvme<k>` with namespace `nvme<k>n1` while its driver is `nvme` (`""`: unbound); the first
//!   host disk is mounted as `/` from `nvme<k>n1p2` and `/boot/efi` from `p1`, later ones at
//!   `/var/lib/host<k>`; without one, `/` is a tmpfs.
//! - NICs: bus = node × 32 + 17 + index among the node's NICs, named `enp<bus>s0f0`, driver
//!   `mlx5_core` above 10 Gb/s and `ixgbe` otherwise, speed `-1` when `speed_mbps` is 0 (link
//!   down); plus `lo` and a bridge `br0`, which have no device.
//! - a host bridge at `0000:00:00.0` that is no NVMe.

use super::sysfs::format_cpulist;
use std::fs;
use std::io;
use std::path::Path;

/// What the host itself uses of each node's memory in the generated meminfo.
const HOST_USE_KIB: u64 = 1024 * 1024;
/// At most this many NVMe controllers (and as many NICs) per node fit its bus numbers.
const DEVICES_PER_NODE: u32 = 16;

/// A synthetic machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub sockets: u32,
    /// AMD NPS1 = 1, NPS4 = 4.
    pub nodes_per_socket: u32,
    pub cores_per_node: u32,
    /// 1 (SMT off) or 2.
    pub threads_per_core: u32,
    /// 8 on Milan/Genoa CCXs.
    pub cores_per_l3: u32,
    pub memory_per_node_gib: u64,
    pub free_hugepages_1g_per_node: u64,
    pub free_hugepages_2m_per_node: u64,
    pub nvme: Vec<FixtureNvme>,
    pub nics: Vec<FixtureNic>,
}

/// An NVMe controller with one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureNvme {
    pub node: u32,
    /// `"nvme"` | `"vfio-pci"` (`""`: unbound).
    pub driver: &'static str,
    pub size_gib: u64,
    /// Mounted as `/` by the host.
    pub host_disk: bool,
}

/// A NIC on its own PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureNic {
    pub node: u32,
    /// 0: link down.
    pub speed_mbps: u32,
}

impl FixtureNvme {
    fn host(node: u32) -> FixtureNvme {
        FixtureNvme {
            node,
            driver: "nvme",
            size_gib: 960,
            host_disk: true,
        }
    }

    fn data(node: u32) -> FixtureNvme {
        FixtureNvme {
            node,
            driver: "nvme",
            size_gib: 3576,
            host_disk: false,
        }
    }
}

impl Machine {
    /// 1 socket, NPS1, 32 cores with SMT (64 threads), 256 GiB, 200 free 1G pages; a host
    /// NVMe and 2 nvme-bound data NVMe on node 0; one 10 Gb/s NIC.
    pub fn one_socket() -> Machine {
        Machine {
            sockets: 1,
            nodes_per_socket: 1,
            cores_per_node: 32,
            threads_per_core: 2,
            cores_per_l3: 8,
            memory_per_node_gib: 256,
            free_hugepages_1g_per_node: 200,
            free_hugepages_2m_per_node: 0,
            nvme: vec![
                FixtureNvme::host(0),
                FixtureNvme::data(0),
                FixtureNvme::data(0),
            ],
            nics: vec![FixtureNic {
                node: 0,
                speed_mbps: 10_000,
            }],
        }
    }

    /// EPYC 7763-like: 2 × 64 cores with SMT (256 threads), NPS1: 2 nodes of 512 GiB with
    /// 480 free 1G pages each; the host NVMe on node 0, 4 data NVMe and a 25 Gb/s NIC on
    /// node 1.
    pub fn two_socket_nps1() -> Machine {
        Machine {
            sockets: 2,
            nodes_per_socket: 1,
            cores_per_node: 64,
            threads_per_core: 2,
            cores_per_l3: 8,
            memory_per_node_gib: 512,
            free_hugepages_1g_per_node: 480,
            free_hugepages_2m_per_node: 0,
            nvme: std::iter::once(FixtureNvme::host(0))
                .chain((0..4).map(|_| FixtureNvme::data(1)))
                .collect(),
            nics: vec![FixtureNic {
                node: 1,
                speed_mbps: 25_000,
            }],
        }
    }

    /// The same CPUs in NPS4: 8 nodes of 16 cores and 128 GiB with 120 free 1G pages each;
    /// the host NVMe on node 0, 4 data NVMe and a 25 Gb/s NIC on node 5 (socket 1).
    pub fn two_socket_nps4() -> Machine {
        Machine {
            sockets: 2,
            nodes_per_socket: 4,
            cores_per_node: 16,
            threads_per_core: 2,
            cores_per_l3: 8,
            memory_per_node_gib: 128,
            free_hugepages_1g_per_node: 120,
            free_hugepages_2m_per_node: 0,
            nvme: std::iter::once(FixtureNvme::host(0))
                .chain((0..4).map(|_| FixtureNvme::data(5)))
                .collect(),
            nics: vec![FixtureNic {
                node: 5,
                speed_mbps: 25_000,
            }],
        }
    }

    /// Write the machine's `sys/...` and `proc/...` under `root`.
    pub fn write(&self, root: &Path) -> io::Result<()> {
        self.check()?;
        let out = Out {
            root,
            made: Default::default(),
        };
        self.write_cpus(&out)?;
        self.write_nodes(&out)?;
        self.write_devices(&out)
    }

    fn nodes(&self) -> u32 {
        self.sockets * self.nodes_per_socket
    }

    fn cores(&self) -> u32 {
        self.nodes() * self.cores_per_node
    }

    /// The threads of core `core` (machine-wide index), ascending.
    fn threads_of_core(&self, core: u32) -> Vec<u32> {
        (0..self.threads_per_core)
            .map(|t| t * self.cores() + core)
            .collect()
    }

    /// The threads of the cores `first..first + count`.
    fn threads_of_cores(&self, first: u32, count: u32) -> Vec<u32> {
        (first..first + count)
            .flat_map(|c| self.threads_of_core(c))
            .collect()
    }

    fn check(&self) -> io::Result<()> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        let counts = [
            ("sockets", self.sockets),
            ("nodes_per_socket", self.nodes_per_socket),
            ("cores_per_node", self.cores_per_node),
            ("threads_per_core", self.threads_per_core),
        ];
        for (name, count) in counts {
            if count == 0 {
                return invalid(format!("fixture machine: {name} is 0"));
            }
        }
        let threads = u64::from(self.cores()) * u64::from(self.threads_per_core);
        if threads > 65_536 {
            return invalid(format!("fixture machine: {threads} threads"));
        }
        let nodes = self.nodes();
        let mut per_node = std::collections::BTreeMap::new();
        for (kind, node) in self
            .nvme
            .iter()
            .map(|d| ("nvme", d.node))
            .chain(self.nics.iter().map(|n| ("nic", n.node)))
        {
            if node >= nodes {
                return invalid(format!(
                    "fixture machine: a {kind} on node {node} of {nodes}"
                ));
            }
            let count = per_node.entry((kind, node)).or_insert(0u32);
            *count += 1;
            if *count > DEVICES_PER_NODE {
                return invalid(format!(
                    "fixture machine: more than {DEVICES_PER_NODE} {kind} on node {node}"
                ));
            }
        }
        Ok(())
    }

    fn write_cpus(&self, out: &Out) -> io::Result<()> {
        let cpu_dir = "sys/devices/system/cpu";
        let cores = self.cores();
        let cores_per_socket = self.nodes_per_socket * self.cores_per_node;
        let all: Vec<u32> = (0..cores * self.threads_per_core).collect();
        out.file(&format!("{cpu_dir}/online"), &format_cpulist(&all))?;
        out.file(&format!("{cpu_dir}/possible"), &format_cpulist(&all))?;
        for core in 0..cores {
            let siblings = format_cpulist(&self.threads_of_core(core));
            let l3 = (self.cores_per_l3 > 0).then(|| {
                let group = core / self.cores_per_l3;
                let shared = self.threads_of_cores(
                    group * self.cores_per_l3,
                    self.cores_per_l3.min(cores - group * self.cores_per_l3),
                );
                (group, format_cpulist(&shared))
            });
            for cpu in self.threads_of_core(core) {
                let dir = format!("{cpu_dir}/cpu{cpu}");
                let topology = format!("{dir}/topology");
                let package = (core / cores_per_socket).to_string();
                out.file(&format!("{topology}/physical_package_id"), &package)?;
                out.file(
                    &format!("{topology}/core_id"),
                    &(core % cores_per_socket).to_string(),
                )?;
                out.file(&format!("{topology}/thread_siblings_list"), &siblings)?;
                // L1d (index0) for a cache of another level, then the L3 (index3); the
                // kernel's index1 (L1i) and index2 (L2) are left out to keep trees small.
                out.cache(&dir, 0, 1, core, &siblings)?;
                if let Some((group, shared)) = &l3 {
                    out.cache(&dir, 3, 3, *group, shared)?;
                }
            }
        }
        Ok(())
    }

    fn write_nodes(&self, out: &Out) -> io::Result<()> {
        let node_dir = "sys/devices/system/node";
        let nodes = self.nodes();
        let ids: Vec<u32> = (0..nodes).collect();
        out.file(&format!("{node_dir}/online"), &format_cpulist(&ids))?;
        out.file(&format!("{node_dir}/possible"), &format_cpulist(&ids))?;
        let total_kib = self.memory_per_node_gib * 1024 * 1024;
        let huge_kib =
            self.free_hugepages_1g_per_node * 1024 * 1024 + self.free_hugepages_2m_per_node * 2048;
        let free_kib = total_kib.saturating_sub(huge_kib + HOST_USE_KIB);
        for node in 0..nodes {
            let dir = format!("{node_dir}/node{node}");
            let cpus = self.threads_of_cores(node * self.cores_per_node, self.cores_per_node);
            out.file(&format!("{dir}/cpulist"), &format_cpulist(&cpus))?;
            out.file(
                &format!("{dir}/meminfo"),
                &format!(
                    "Node {node} MemTotal:       {total_kib} kB\n\
                     Node {node} MemFree:        {free_kib} kB\n\
                     Node {node} MemUsed:        {} kB\n\
                     Node {node} HugePages_Total: {}\n\
                     Node {node} HugePages_Free:  {}\n",
                    total_kib - free_kib,
                    self.free_hugepages_2m_per_node,
                    self.free_hugepages_2m_per_node,
                ),
            )?;
            let distances: Vec<String> = (0..nodes)
                .map(|other| {
                    // Rome/Milan NPS4's SLIT: the paired quadrant 11, the other two 12.
                    if other == node {
                        "10"
                    } else if other / 2 == node / 2 && self.nodes_per_socket > 1 {
                        "11"
                    } else if other / self.nodes_per_socket == node / self.nodes_per_socket {
                        "12"
                    } else {
                        "32"
                    }
                })
                .map(str::to_string)
                .collect();
            out.file(&format!("{dir}/distance"), &distances.join(" "))?;
            out.hugepages(&format!("{dir}/hugepages"), self, 1)?;
        }
        // What a kernel without NUMA would show instead (tests remove the node directory).
        let nodes = u64::from(nodes);
        out.file(
            "proc/meminfo",
            &format!(
                "MemTotal:       {} kB\nMemFree:        {} kB\nMemAvailable:   {} kB\n\
                 HugePages_Total: {}\nHugePages_Free:  {}\nHugepagesize:       2048 kB\n",
                total_kib * nodes,
                free_kib * nodes,
                free_kib * nodes,
                self.free_hugepages_2m_per_node * nodes,
                self.free_hugepages_2m_per_node * nodes,
            ),
        )?;
        out.hugepages("sys/kernel/mm/hugepages", self, nodes)
    }

    fn write_devices(&self, out: &Out) -> io::Result<()> {
        let pci_dir = "sys/bus/pci/devices";
        let bridge = format!("{pci_dir}/0000:00:00.0");
        out.file(&format!("{bridge}/class"), "0x060000")?;
        out.file(&format!("{bridge}/numa_node"), "0")?;
        let mut mounts = vec![
            "22 29 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw"
                .to_string(),
            "23 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:2 - sysfs sysfs rw"
                .to_string(),
        ];
        let mut root_mounted = false;
        let mut slots = std::collections::BTreeMap::new();
        for (k, nvme) in self.nvme.iter().enumerate() {
            let slot = slots.entry(nvme.node).or_insert(0u32);
            let pci = pci_address(nvme.node, 1 + *slot);
            *slot += 1;
            let dir = format!("{pci_dir}/{pci}");
            out.file(&format!("{dir}/class"), super::sysfs::NVME_CLASS)?;
            out.file(&format!("{dir}/vendor"), "0x144d")?;
            out.file(&format!("{dir}/numa_node"), &nvme.node.to_string())?;
            if !nvme.driver.is_empty() {
                out.file(&format!("{dir}/driver"), nvme.driver)?;
            }
            if nvme.driver == "nvme" {
                let controller = format!("{dir}/nvme/nvme{k}");
                // Padded as the kernel pads them (40 and 20 characters).
                let model = format!("PLINTH FIXTURE NVMe {} GiB", nvme.size_gib);
                out.file(&format!("{controller}/model"), &format!("{model:<40}"))?;
                let serial = format!("FIXTURE{:02}{k:04}", nvme.node);
                out.file(&format!("{controller}/serial"), &format!("{serial:<20}"))?;
                out.file(
                    &format!("{controller}/nvme{k}n1/size"),
                    &(nvme.size_gib * 1024 * 1024 * 2).to_string(),
                )?;
            }
            if nvme.host_disk {
                let id = 30 + 2 * k;
                if root_mounted {
                    mounts.push(format!(
                        "{id} 29 259:{} / /var/lib/host{k} rw,relatime shared:{id} - ext4 /dev/nvme{k}n1p1 rw",
                        8 * k + 1
                    ));
                } else {
                    mounts.insert(
                        0,
                        format!(
                            "29 1 259:{} / / ro,relatime shared:1 - ext4 /dev/nvme{k}n1p2 ro",
                            8 * k + 2
                        ),
                    );
                    mounts.push(format!(
                        "{id} 29 259:{} / /boot/efi rw,relatime shared:{id} - vfat /dev/nvme{k}n1p1 rw,fmask=0077,dmask=0077",
                        8 * k + 1
                    ));
                    root_mounted = true;
                }
            }
        }
        if !root_mounted {
            mounts.insert(
                0,
                "29 1 0:30 / / rw,relatime shared:1 - tmpfs tmpfs rw,mode=755".to_string(),
            );
        }
        mounts.push("90 29 0:25 / /run rw,nosuid,nodev shared:5 - tmpfs tmpfs rw,mode=755".into());
        out.file("proc/self/mountinfo", &(mounts.join("\n") + "\n"))?;

        let mut slots = std::collections::BTreeMap::new();
        for nic in &self.nics {
            let slot = slots.entry(nic.node).or_insert(0u32);
            let function = 17 + *slot;
            *slot += 1;
            let pci = pci_address(nic.node, function);
            let (domain, bus) = domain_bus(nic.node, function);
            let name = if domain == 0 {
                format!("enp{bus}s0f0")
            } else {
                format!("enP{domain}p{bus}s0f0")
            };
            let driver = if nic.speed_mbps > 10_000 {
                "mlx5_core"
            } else {
                "ixgbe"
            };
            let node = nic.node.to_string();
            let function_dir = format!("{pci_dir}/{pci}");
            let device_dir = format!("sys/class/net/{name}/device");
            for dir in [&function_dir, &device_dir] {
                out.file(&format!("{dir}/class"), "0x020000")?;
                out.file(&format!("{dir}/numa_node"), &node)?;
                out.file(&format!("{dir}/driver"), driver)?;
                out.file(
                    &format!("{dir}/uevent"),
                    &format!("DRIVER={driver}\nPCI_CLASS=20000\nPCI_SLOT_NAME={pci}\n"),
                )?;
            }
            let speed = if nic.speed_mbps == 0 {
                "-1".to_string()
            } else {
                nic.speed_mbps.to_string()
            };
            out.file(&format!("sys/class/net/{name}/speed"), &speed)?;
        }
        out.file("sys/class/net/lo/type", "772")?;
        out.file("sys/class/net/br0/type", "1")?;
        out.file("sys/class/net/br0/bridge/stp_state", "0")
    }
}

/// The (domain, bus) of the `index`-th function number of a node.
fn domain_bus(node: u32, index: u32) -> (u32, u32) {
    let bus = node * 2 * DEVICES_PER_NODE + index;
    (bus / 256, bus % 256)
}

fn pci_address(node: u32, index: u32) -> String {
    let (domain, bus) = domain_bus(node, index);
    format!("{domain:04x}:{bus:02x}:00.0")
}

/// Writes files under a root, making their directories (each once).
struct Out<'a> {
    root: &'a Path,
    made: std::cell::RefCell<std::collections::BTreeSet<std::path::PathBuf>>,
}

impl Out<'_> {
    /// Write `content` and a newline, as sysfs ends its values.
    fn file(&self, path: &str, content: &str) -> io::Result<()> {
        let path = self.root.join(path);
        if let Some(parent) = path.parent() {
            if !self.made.borrow().contains(parent) {
                fs::create_dir_all(parent)?;
                self.made.borrow_mut().insert(parent.to_path_buf());
            }
        }
        let mut content = content.to_string();
        if !content.ends_with('\n') {
            content.push('\n');
        }
        fs::write(path, content)
    }

    fn cache(&self, cpu: &str, index: usize, level: u32, id: u32, shared: &str) -> io::Result<()> {
        let dir = format!("{cpu}/cache/index{index}");
        self.file(&format!("{dir}/level"), &level.to_string())?;
        self.file(&format!("{dir}/id"), &id.to_string())?;
        self.file(&format!("{dir}/shared_cpu_list"), shared)
    }

    /// Both hugepage pools of `nodes` nodes of `machine` under `dir`.
    fn hugepages(&self, dir: &str, machine: &Machine, nodes: u64) -> io::Result<()> {
        for (size, count) in [
            ("2048kB", machine.free_hugepages_2m_per_node),
            ("1048576kB", machine.free_hugepages_1g_per_node),
        ] {
            let pool = format!("{dir}/hugepages-{size}");
            let count = (count * nodes).to_string();
            self.file(&format!("{pool}/nr_hugepages"), &count)?;
            self.file(&format!("{pool}/free_hugepages"), &count)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::sysfs::{read, TopologyError};
    use crate::topology::Topology;

    const GIB: u64 = 1 << 30;

    /// A preset with `cores_per_node` cores per node instead, for tests that do not need
    /// full-size trees (each 256-thread tree is some 2400 files).
    fn small(machine: Machine, cores_per_node: u32) -> Machine {
        Machine {
            cores_per_node,
            ..machine
        }
    }

    fn read_machine(machine: &Machine) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        machine.write(dir.path()).unwrap();
        read(dir.path()).unwrap()
    }

    fn cpus_of(topology: &Topology, node: u32) -> Vec<u32> {
        topology.node(node).unwrap().cpus.clone()
    }

    fn l3_groups(topology: &Topology) -> usize {
        let groups: std::collections::BTreeSet<_> =
            topology.cpus.iter().map(|c| c.l3.unwrap()).collect();
        groups.len()
    }

    #[test]
    fn one_socket() {
        let t = read_machine(&Machine::one_socket());
        assert_eq!(t.cpus.len(), 64);
        assert_eq!(t.nodes.len(), 1);
        assert!(t.smt());
        assert_eq!(t.cpu(0).unwrap().siblings, [0, 32]);
        assert_eq!(t.cpu(63).unwrap().siblings, [31, 63]);
        assert_eq!(l3_groups(&t), 4);
        let node = t.node(0).unwrap();
        assert_eq!(node.cpus, (0..64).collect::<Vec<_>>());
        assert_eq!(node.distances, [10]);
        assert_eq!(node.memory_total_bytes, 256 * GIB);
        assert_eq!(node.memory_free_bytes, (256 - 200 - 1) * GIB);
        assert_eq!(node.hugepages_1g.free, 200);
        assert_eq!(node.hugepages_1g.total, 200);
        assert_eq!(node.hugepages_2m.free, 0);
        assert_eq!(t.nvme.len(), 3);
        assert!(t.nvme.iter().all(|c| c.node == Some(0)));
        assert!(t.nvme.iter().all(|c| c.driver.as_deref() == Some("nvme")));
        assert_eq!(t.host_disks.iter().collect::<Vec<_>>(), ["nvme0n1"]);
        let host: Vec<bool> = t.nvme.iter().map(|c| t.is_host_disk(c)).collect();
        assert_eq!(host, [true, false, false]);
        assert_eq!(t.nics.len(), 1);
        assert_eq!(t.nics[0].speed_mbps, Some(10_000));
        assert_eq!(t.nics[0].driver.as_deref(), Some("ixgbe"));
    }

    #[test]
    fn two_socket_nps1() {
        let t = read_machine(&Machine::two_socket_nps1());
        assert_eq!(t.cpus.len(), 256);
        assert_eq!(t.nodes.len(), 2);
        let cpu0 = t.cpu(0).unwrap();
        assert_eq!(cpu0.siblings, [0, 128]);
        assert_eq!((cpu0.package, cpu0.core, cpu0.node), (0, 0, 0));
        let cpu64 = t.cpu(64).unwrap();
        assert_eq!((cpu64.package, cpu64.core, cpu64.node), (1, 0, 1));
        assert_eq!(cpu64.siblings, [64, 192]);
        let cpu128 = t.cpu(128).unwrap();
        assert_eq!((cpu128.package, cpu128.core, cpu128.node), (0, 0, 0));
        assert_eq!(cpu128.l3, cpu0.l3);
        assert_eq!(t.cpu(255).unwrap().siblings, [127, 255]);
        assert_eq!(l3_groups(&t), 16);
        let node0: Vec<u32> = (0..64).chain(128..192).collect();
        assert_eq!(cpus_of(&t, 0), node0);
        assert_eq!(t.node(0).unwrap().distances, [10, 32]);
        assert_eq!(t.node(1).unwrap().distances, [32, 10]);
        assert_eq!(t.distance(0, 1), 32);
        for node in &t.nodes {
            assert_eq!(node.memory_total_bytes, 512 * GIB);
            assert_eq!(node.hugepages_1g.free, 480);
        }
        assert_eq!(t.nvme.len(), 5);
        let host = t.find_nvme("nvme0n1").unwrap();
        assert_eq!(host.node, Some(0));
        assert!(t.is_host_disk(host));
        let data: Vec<_> = t.nvme.iter().filter(|c| !t.is_host_disk(c)).collect();
        assert_eq!(data.len(), 4);
        for c in &data {
            assert_eq!(c.node, Some(1));
            assert_eq!(c.driver.as_deref(), Some("nvme"));
            assert_eq!(c.namespaces.len(), 1);
            assert_eq!(c.namespaces[0].size_bytes, 3576 * GIB);
            assert_eq!(c.model.as_deref(), Some("PLINTH FIXTURE NVMe 3576 GiB"));
        }
        let pcis: Vec<&str> = t.nvme.iter().map(|c| c.pci.as_str()).collect();
        let mut sorted = pcis.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(pcis, sorted, "sorted and unique");
        assert_eq!(t.nics.len(), 1);
        assert_eq!(t.nics[0].node, Some(1));
        assert_eq!(t.nics[0].speed_mbps, Some(25_000));
        assert_eq!(t.nics[0].driver.as_deref(), Some("mlx5_core"));
        assert_eq!(t.nics[0].name, "enp49s0f0");
        assert_eq!(t.nics[0].pci, "0000:31:00.0");
    }

    #[test]
    fn two_socket_nps4() {
        let t = read_machine(&Machine::two_socket_nps4());
        assert_eq!(t.cpus.len(), 256);
        assert_eq!(t.nodes.len(), 8);
        assert_eq!(t.cpu(0).unwrap().siblings, [0, 128]);
        let node0: Vec<u32> = (0..16).chain(128..144).collect();
        assert_eq!(cpus_of(&t, 0), node0);
        let node5: Vec<u32> = (80..96).chain(208..224).collect();
        assert_eq!(cpus_of(&t, 5), node5);
        assert_eq!(
            t.node(0).unwrap().distances,
            [10, 11, 12, 12, 32, 32, 32, 32]
        );
        assert_eq!(
            t.node(5).unwrap().distances,
            [32, 32, 32, 32, 11, 10, 12, 12]
        );
        assert_eq!(t.distance(5, 4), 11);
        assert_eq!(t.distance(5, 6), 12);
        assert_eq!(t.distance(5, 0), 32);
        for node in &t.nodes {
            assert_eq!(node.cpus.len(), 32);
            assert_eq!(node.memory_total_bytes, 128 * GIB);
            assert_eq!(node.memory_free_bytes, 7 * GIB);
            assert_eq!(node.hugepages_1g.free, 120);
        }
        // Every CCX lies within one node.
        for cpu in &t.cpus {
            let peers = t.cpus.iter().filter(|c| c.l3 == cpu.l3);
            assert!(peers.clone().all(|c| c.node == cpu.node));
            assert_eq!(peers.count(), 16);
        }
        let data: Vec<_> = t.nvme.iter().filter(|c| !t.is_host_disk(c)).collect();
        assert_eq!(data.len(), 4);
        assert!(data.iter().all(|c| c.node == Some(5)));
        assert_eq!(t.find_nvme("nvme0").unwrap().node, Some(0));
        assert_eq!(t.host_disks.len(), 1);
        assert_eq!(t.nics[0].node, Some(5));
    }

    #[test]
    fn smt_off() {
        let mut machine = Machine::two_socket_nps1();
        machine.threads_per_core = 1;
        let t = read_machine(&machine);
        assert_eq!(t.cpus.len(), 128);
        assert!(!t.smt());
        assert_eq!(t.cpu(0).unwrap().siblings, [0]);
        assert_eq!(cpus_of(&t, 1), (64..128).collect::<Vec<_>>());
    }

    #[test]
    fn no_free_hugepages() {
        let mut machine = small(Machine::two_socket_nps4(), 4);
        machine.free_hugepages_1g_per_node = 0;
        machine.free_hugepages_2m_per_node = 1024;
        let t = read_machine(&machine);
        for node in &t.nodes {
            assert_eq!(node.hugepages_1g.free, 0);
            assert_eq!(node.hugepages_2m.free, 1024);
            assert_eq!(node.memory_free_bytes, (128 - 2 - 1) * GIB);
        }
    }

    #[test]
    fn missing_hugepage_sizes_have_none() {
        let dir = tempfile::tempdir().unwrap();
        Machine::one_socket().write(dir.path()).unwrap();
        fs::remove_dir_all(
            dir.path()
                .join("sys/devices/system/node/node0/hugepages/hugepages-1048576kB"),
        )
        .unwrap();
        let t = read(dir.path()).unwrap();
        assert_eq!(t.nodes[0].hugepages_1g, Default::default());
    }

    #[test]
    fn drivers_other_than_nvme() {
        let mut machine = small(Machine::two_socket_nps1(), 8);
        machine.nvme[1].driver = "vfio-pci";
        machine.nvme[2].driver = "";
        let t = read_machine(&machine);
        let vfio = &t.nvme[1];
        assert_eq!(vfio.driver.as_deref(), Some("vfio-pci"));
        assert_eq!((vfio.name.as_ref(), vfio.model.as_ref()), (None, None));
        assert!(vfio.namespaces.is_empty());
        assert_eq!(vfio.node, Some(1));
        let unbound = &t.nvme[2];
        assert_eq!(unbound.driver, None);
        assert!(unbound.namespaces.is_empty());
        assert_eq!(t.nvme[3].name.as_deref(), Some("nvme3"));
        assert_eq!(t.nvme[3].namespaces[0].name, "nvme3n1");
    }

    #[test]
    fn unknown_nodes_and_links_down() {
        let mut machine = Machine::one_socket();
        machine.nics[0].speed_mbps = 0;
        let dir = tempfile::tempdir().unwrap();
        machine.write(dir.path()).unwrap();
        let first = dir
            .path()
            .join("sys/bus/pci/devices/0000:01:00.0/numa_node");
        fs::write(first, "-1\n").unwrap();
        let t = read(dir.path()).unwrap();
        assert_eq!(t.nvme[0].node, None);
        assert_eq!(t.nics[0].speed_mbps, None);
    }

    #[test]
    fn no_host_disk() {
        let mut machine = Machine::one_socket();
        machine.nvme[0].host_disk = false;
        let t = read_machine(&machine);
        assert!(t.host_disks.is_empty());
        assert!(t.nvme.iter().all(|c| !t.is_host_disk(c)));
    }

    #[test]
    fn a_kernel_without_numa() {
        let dir = tempfile::tempdir().unwrap();
        small(Machine::two_socket_nps1(), 8)
            .write(dir.path())
            .unwrap();
        fs::remove_dir_all(dir.path().join("sys/devices/system/node")).unwrap();
        let t = read(dir.path()).unwrap();
        assert_eq!(t.nodes.len(), 1);
        let node = &t.nodes[0];
        assert_eq!(node.id, 0);
        assert_eq!(node.cpus, (0..32).collect::<Vec<_>>());
        assert_eq!(node.memory_total_bytes, 1024 * GIB);
        assert_eq!(node.memory_free_bytes, 62 * GIB);
        assert_eq!(node.hugepages_1g.free, 960);
        assert!(t.cpus.iter().all(|c| c.node == 0));
    }

    #[test]
    fn l3_ids_from_shared_cpu_lists() {
        let dir = tempfile::tempdir().unwrap();
        Machine::one_socket().write(dir.path()).unwrap();
        for cpu in 0..64 {
            let id = format!("sys/devices/system/cpu/cpu{cpu}/cache/index3/id");
            fs::remove_file(dir.path().join(id)).unwrap();
        }
        let t = read(dir.path()).unwrap();
        assert_eq!(t.cpu(0).unwrap().l3, Some(0));
        assert_eq!(t.cpu(9).unwrap().l3, Some(8));
        assert_eq!(t.cpu(40).unwrap().l3, Some(8));
        assert_eq!(l3_groups(&t), 4);
    }

    #[test]
    fn no_l3() {
        let mut machine = Machine::one_socket();
        machine.cores_per_l3 = 0;
        let t = read_machine(&machine);
        assert!(t.cpus.iter().all(|c| c.l3.is_none()));
    }

    #[test]
    fn deterministic() {
        let machine = small(Machine::two_socket_nps4(), 4);
        let a = read_machine(&machine);
        let b = read_machine(&machine);
        assert_eq!(a, b);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, serde_json::to_string(&b).unwrap());
        assert!(json.contains("\"host_disks\":[\"nvme0n1\"]"), "{json}");
    }

    #[test]
    fn bad_trees_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let machine = small(Machine::two_socket_nps4(), 4);
        machine.write(dir.path()).unwrap();
        let meminfo = dir.path().join("sys/devices/system/node/node3/meminfo");
        fs::write(&meminfo, "Node 3 MemTotal: many kB\n").unwrap();
        match read(dir.path()).unwrap_err() {
            TopologyError::Meminfo { path, field, found } => {
                assert_eq!(path, meminfo);
                assert_eq!(field, "MemTotal");
                assert!(found.contains("many"), "{found}");
            }
            other => panic!("unexpected {other:?}"),
        }

        machine.write(dir.path()).unwrap();
        let siblings = dir
            .path()
            .join("sys/devices/system/cpu/cpu7/topology/thread_siblings_list");
        fs::remove_file(&siblings).unwrap();
        match read(dir.path()).unwrap_err() {
            TopologyError::Read { path, .. } => assert_eq!(path, siblings),
            other => panic!("unexpected {other:?}"),
        }

        machine.write(dir.path()).unwrap();
        let core = dir
            .path()
            .join("sys/devices/system/cpu/cpu7/topology/core_id");
        fs::write(&core, "seven\n").unwrap();
        let error = read(dir.path()).unwrap_err();
        assert!(
            matches!(&error, TopologyError::Number { path, found, .. } if *path == core && found == "seven"),
            "{error:?}"
        );

        machine.write(dir.path()).unwrap();
        let cpulist = dir.path().join("sys/devices/system/node/node1/cpulist");
        fs::write(&cpulist, "\n").unwrap();
        let error = read(dir.path()).unwrap_err();
        assert!(
            matches!(error, TopologyError::CpuWithoutNode { cpu: 4, .. }),
            "{error:?}"
        );

        let empty = tempfile::tempdir().unwrap();
        let error = read(empty.path()).unwrap_err();
        assert!(
            error.to_string().contains("sys/devices/system/cpu/online"),
            "{error}"
        );
    }

    #[test]
    fn impossible_machines_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut machine = Machine::one_socket();
        machine.nvme[0].node = 1;
        assert_eq!(
            machine.write(dir.path()).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let mut machine = Machine::one_socket();
        machine.threads_per_core = 0;
        assert!(machine.write(dir.path()).is_err());
    }
}
