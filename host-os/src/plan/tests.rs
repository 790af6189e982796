//! Plans for generated sysfs trees of real machine shapes (topology::fixture): each checked
//! for the properties a plan must have, and its `--explain` text against a golden file in
//! host-os/fixtures/plan/ (`PLINTH_BLESS=1 cargo test -p plinth-host` rewrites them).

use super::*;
use crate::topology::fixture::Machine;
use crate::topology::sysfs;
use std::collections::BTreeSet;
use std::path::Path;

fn topology(m: &Machine) -> Topology {
    let dir = tempfile::tempdir().unwrap();
    m.write(dir.path()).unwrap();
    sysfs::read(dir.path()).unwrap()
}

/// The namespaces of the controllers the host does not use.
fn data_disks(t: &Topology) -> Vec<String> {
    t.nvme
        .iter()
        .filter(|c| !t.is_host_disk(c))
        .filter_map(|c| c.namespaces.first().map(|n| n.name.clone()))
        .collect()
}

fn request(t: &Topology, vcpus: u32, memory_gib: u64) -> VmRequest {
    VmRequest::plain(vcpus, memory_gib, data_disks(t))
}

/// The host threads the plan keeps from vCPUs: the host's, the emulator's, the I/O threads'.
fn reserved(p: &Plan) -> BTreeSet<u32> {
    let pl = &p.placement;
    pl.emulator_cpus
        .iter()
        .chain(&pl.iothread_cpus)
        .chain(&pl.host_cpus)
        .copied()
        .collect()
}

/// What every plan must hold.
fn check(t: &Topology, req: &VmRequest, p: &Plan) {
    // Every vCPU once, on its own host thread; no vCPU beside QEMU's or the host's threads.
    assert_eq!(p.placement.vcpu_pins.len() as u32, req.vcpus);
    let mut used = BTreeSet::new();
    for cpu in p
        .placement
        .vcpu_pins
        .iter()
        .map(|v| v.host_cpu)
        .chain(p.placement.emulator_cpus.iter().copied())
        .chain(p.placement.iothread_cpus.iter().copied())
        .chain(p.placement.host_cpus.iter().copied())
    {
        assert!(used.insert(cpu), "host thread {cpu} is used twice");
        assert!(t.cpu(cpu).is_some(), "host thread {cpu} does not exist");
    }
    // No vCPU shares a core with a QEMU or host thread.
    let reserved = reserved(p);
    for v in &p.placement.vcpu_pins {
        let siblings = &t.cpu(v.host_cpu).unwrap().siblings;
        assert!(
            siblings.iter().all(|s| !reserved.contains(s)),
            "vCPU {} on host thread {} shares its core with a reserved thread",
            v.vcpu,
            v.host_cpu
        );
    }
    // The guest NUMA layout mirrors the host: each guest node's vCPUs on its host node.
    for v in &p.placement.vcpu_pins {
        let g = &p.placement.guest_nodes[v.guest_node as usize];
        assert!(g.vcpus.contains(&v.vcpu));
        assert_eq!(t.cpu(v.host_cpu).unwrap().node, g.host_node);
    }
    let hosts: BTreeSet<u32> = p
        .placement
        .guest_nodes
        .iter()
        .map(|g| g.host_node)
        .collect();
    assert_eq!(
        hosts.len(),
        p.placement.guest_nodes.len(),
        "two guest nodes on one host node"
    );
    assert_eq!(
        p.placement
            .guest_nodes
            .iter()
            .map(|g| g.memory_gib)
            .sum::<u64>(),
        req.memory_gib
    );
    // With SMT, vCPUs 2k and 2k+1 are the two threads of one host core.
    if p.placement.threads_per_core == 2 {
        for pair in p.placement.vcpu_pins.chunks(2) {
            let a = t.cpu(pair[0].host_cpu).unwrap();
            assert_eq!(a.siblings, vec![pair[0].host_cpu, pair[1].host_cpu]);
        }
    }
    // Every guest node with vCPUs has memory of its own (QEMU refuses an empty backend).
    for g in &p.placement.guest_nodes {
        assert!(
            g.vcpus.is_empty() || g.memory_gib > 0,
            "guest node {} has no memory",
            g.id
        );
    }
    // Memory within what each node has.
    for g in &p.placement.guest_nodes {
        let n = t.node(g.host_node).unwrap();
        let cap = match p.placement.memory {
            MemoryBacking::Hugepages1G => n.hugepages_1g.free,
            MemoryBacking::Hugepages2M => n.hugepages_2m.free / 512,
            MemoryBacking::GuestMemfd | MemoryBacking::Memfd => {
                (n.memory_free_bytes >> 30).saturating_sub(2)
            }
        };
        assert!(
            g.memory_gib <= cap,
            "guest node {} over its host node",
            g.id
        );
    }
    // QEMU's threads on the home node.
    for c in p
        .placement
        .emulator_cpus
        .iter()
        .chain(&p.placement.iothread_cpus)
    {
        assert_eq!(t.cpu(*c).unwrap().node, p.home_node);
    }
}

/// The VM on the disks' node alone.
fn all_on_home(t: &Topology, p: &Plan) {
    let home = t.find_nvme(&data_disks(t)[0]).and_then(|c| c.node).unwrap();
    assert_eq!(p.home_node, home);
    assert_eq!(p.placement.guest_nodes.len(), 1);
    assert_eq!(p.placement.guest_nodes[0].host_node, home);
}

fn golden(name: &str, p: &Plan) {
    let text = p.render(true);
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/plan")
        .join(format!("{name}.txt"));
    if std::env::var_os("PLINTH_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{}: missing (PLINTH_BLESS=1 writes it)", path.display()));
    assert_eq!(
        text,
        want,
        "{name}: the plan differs from {}",
        path.display()
    );
}

#[test]
fn one_socket() {
    let t = topology(&Machine::one_socket());
    let req = request(&t, 16, 64);
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    all_on_home(&t, &p);
    assert_eq!(p.placement.threads_per_core, 2);
    assert_eq!(p.placement.memory, MemoryBacking::Hugepages1G);
    assert_eq!(p.boot, Boot::Disk);
    assert!(p.disks.iter().all(|d| matches!(
        d,
        DiskPlan::VirtioBlk {
            queues: 16,
            direct: true,
            aio: "io_uring",
            ..
        }
    )));
    golden("one-socket", &p);
}

#[test]
fn two_socket_nps1_production_shape_spans_for_memory() {
    // 64 vCPUs and most of the machine's memory: the memory does not fit the disks' node,
    // so the VM spans both sockets as two even guest nodes, each with half the vCPUs and
    // half the memory bound to its own host node.
    let t = topology(&Machine::two_socket_nps1());
    let free_1g: u64 = t.nodes.iter().map(|n| n.hugepages_1g.free).sum();
    let req = request(&t, 64, free_1g * 8 / 10);
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    let g = &p.placement.guest_nodes;
    assert_eq!(g.len(), 2);
    assert_eq!(g[0].host_node, p.home_node);
    assert_eq!((g[0].vcpus.len(), g[1].vcpus.len()), (32, 32));
    assert_eq!((g[0].memory_gib, g[1].memory_gib), (384, 384));
    golden("two-socket-nps1-64vcpu", &p);
}

#[test]
fn two_socket_nps4_spans_the_nearest_node() {
    let t = topology(&Machine::two_socket_nps4());
    let home = t.find_nvme(&data_disks(&t)[0]).unwrap().node.unwrap();
    // More vCPUs than a 16-core node has after QEMU's two cores.
    let req = request(&t, 40, 96);
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    assert_eq!(p.placement.guest_nodes.len(), 2);
    assert_eq!(p.placement.guest_nodes[0].host_node, home);
    let other = p.placement.guest_nodes[1].host_node;
    let nearest = t
        .nodes
        .iter()
        .filter(|n| n.id != home)
        .map(|n| t.distance(home, n.id))
        .min()
        .unwrap();
    assert_eq!(
        t.distance(home, other),
        nearest,
        "the second node is the nearest one"
    );
    assert_eq!(t.distance(home, other), 11, "NPS4: the paired quadrant");
    // Even guest nodes: 10 cores each, memory in proportion.
    let (a, b) = (&p.placement.guest_nodes[0], &p.placement.guest_nodes[1]);
    assert_eq!((a.vcpus.len(), b.vcpus.len()), (20, 20));
    assert_eq!((a.memory_gib, b.memory_gib), (48, 48));
    golden("two-socket-nps4-40vcpu", &p);
}

#[test]
fn nps4_small_vm_stays_on_the_disks_node() {
    let t = topology(&Machine::two_socket_nps4());
    let req = request(&t, 16, 64);
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    all_on_home(&t, &p);
}

#[test]
fn nvme_on_node_0_vs_node_1() {
    let mut m = Machine::two_socket_nps1();
    for d in m.nvme.iter_mut().filter(|d| !d.host_disk) {
        d.node = 0;
    }
    let t0 = topology(&m);
    let req = request(&t0, 32, 128);
    let p0 = plan(&t0, &req).unwrap();
    check(&t0, &req, &p0);
    all_on_home(&t0, &p0);
    assert_eq!(p0.home_node, 0);
    let t1 = topology(&Machine::two_socket_nps1());
    let p1 = plan(&t1, &request(&t1, 32, 128)).unwrap();
    all_on_home(&t1, &p1);
    assert_eq!(p1.home_node, 1);
    // On node 0 the host's own core (cpu 0's) is not the VM's.
    assert!(p0
        .placement
        .vcpu_pins
        .iter()
        .all(|v| !p0.placement.host_cpus.contains(&v.host_cpu)));
    golden("two-socket-nps1-disks-node0", &p0);
}

#[test]
fn smt_off() {
    let mut m = Machine::two_socket_nps1();
    m.threads_per_core = 1;
    let t = topology(&m);
    assert!(!t.smt());
    let req = request(&t, 33, 64);
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    all_on_home(&t, &p);
    assert_eq!(p.placement.threads_per_core, 1);
    golden("two-socket-nps1-smt-off", &p);
}

#[test]
fn odd_vcpus_with_smt_on_are_refused() {
    let t = topology(&Machine::one_socket());
    let err = plan(&t, &request(&t, 15, 16)).unwrap_err();
    assert_eq!(err, PlanError::OddVcpus { vcpus: 15 });
    assert!(err.to_string().contains("even number"), "{err}");
}

#[test]
fn no_free_1g_hugepages_falls_back_to_2m_and_none_is_refused() {
    let mut m = Machine::one_socket();
    m.free_hugepages_1g_per_node = 0;
    m.free_hugepages_2m_per_node = 40 * 512;
    let t = topology(&m);
    let req = request(&t, 8, 32);
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    assert_eq!(p.placement.memory, MemoryBacking::Hugepages2M);
    assert!(p.render(true).contains("not enough free 1 GiB pages"));

    m.free_hugepages_2m_per_node = 0;
    let t = topology(&m);
    let err = plan(&t, &request(&t, 8, 32)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(
        err,
        PlanError::NotEnoughMemory { memory_gib: 32, .. }
    ));
    assert!(
        text.contains("node 0: 0 free 1 GiB pages, 0 free 2 MiB pages")
            && text.contains("hugepagesz=1G hugepages=0:32"),
        "{text}"
    );
}

#[test]
fn a_machine_too_small_is_refused_with_what_is_left() {
    let t = topology(&Machine::one_socket());
    let threads = t.cpus.len() as u32;
    let err = plan(&t, &request(&t, threads, 16)).unwrap_err();
    // 3 cores (6 threads) are reserved: the host's, the emulator's, the I/O threads'.
    let left = threads - 6;
    assert_eq!(
        err,
        PlanError::TooManyVcpus {
            vcpus: threads,
            available: left,
            found: match &err {
                PlanError::TooManyVcpus { found, .. } => found.clone(),
                _ => unreachable!(),
            },
        }
    );
    assert!(
        err.to_string()
            .contains(&format!("ask for at most {left} vCPUs")),
        "{err}"
    );
    assert!(plan(&t, &request(&t, left, 16)).is_ok());
}

#[test]
fn sev_snp_binds_guest_memfd_and_boots_direct() {
    let mut m = Machine::one_socket();
    m.free_hugepages_1g_per_node = 0;
    let t = topology(&m);
    let mut req = request(&t, 8, 32);
    req.sev = Some(SevRequest {
        smt: true,
        vcpu_counts: vec![4, 8, 16],
    });
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    assert_eq!(p.placement.memory, MemoryBacking::GuestMemfd);
    assert_eq!(p.boot, Boot::sev_snp("0x30000".into()));
    let text = p.render(true);
    assert!(text.contains("cannot back with hugetlbfs"), "{text}");
    golden("one-socket-sev", &p);
}

#[test]
fn vfio_bound_nvme_is_passed_through() {
    let mut m = Machine::one_socket();
    for d in m.nvme.iter_mut().filter(|d| !d.host_disk) {
        d.driver = "vfio-pci";
    }
    let t = topology(&m);
    let vfio: Vec<String> = t
        .nvme
        .iter()
        .filter(|c| c.driver.as_deref() == Some("vfio-pci"))
        .map(|c| c.pci.clone())
        .collect();
    assert!(!vfio.is_empty());
    let req = VmRequest::plain(8, 16, vfio.clone());
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    assert!(
        p.placement.iothread_cpus.is_empty(),
        "no virtio-blk disk, no I/O thread core"
    );
    for (d, pci) in p.disks.iter().zip(&vfio) {
        assert_eq!(
            d,
            &DiskPlan::Vfio {
                pci: pci.clone(),
                node: Some(0)
            }
        );
    }
}

#[test]
fn missing_repeated_and_host_disks_are_refused() {
    let t = topology(&Machine::one_socket());
    let mut req = request(&t, 8, 16);
    req.disks = vec!["nvme9n1".into()];
    let err = plan(&t, &req).unwrap_err();
    assert!(matches!(&err, PlanError::DiskMissing { name, .. } if name == "nvme9n1"));
    assert!(err.to_string().contains("NVMe here: 0000:"), "{err}");

    let host = t.nvme.iter().find(|c| t.is_host_disk(c)).unwrap();
    req.disks = vec![host.namespaces[0].name.clone()];
    let err = plan(&t, &req).unwrap_err();
    assert!(matches!(err, PlanError::DiskInUse { .. }), "{err}");

    let d = data_disks(&t)[0].clone();
    req.disks = vec![d.clone(), d];
    assert!(matches!(
        plan(&t, &req).unwrap_err(),
        PlanError::DiskTwice { .. }
    ));
}

#[test]
fn nps4_plans_of_every_size_hold() {
    // From one core to most of the machine: the fewer nodes the better, nearest first.
    let t = topology(&Machine::two_socket_nps4());
    for vcpus in [2, 64, 128, 200] {
        let req = request(&t, vcpus, 64);
        let p = plan(&t, &req).unwrap();
        check(&t, &req, &p);
        // No fewer nodes could hold the vCPUs: home (the disks' node, always in the set)
        // with the largest free thread counts of the others, one node less, falls short.
        let used = reserved(&p);
        let free = |n: &crate::topology::NumaNode| {
            n.cpus.iter().filter(|c| !used.contains(c)).count() as u32
        };
        let home = free(t.node(p.home_node).unwrap());
        let mut others: Vec<u32> = t
            .nodes
            .iter()
            .filter(|n| n.id != p.home_node)
            .map(free)
            .collect();
        others.sort_unstable_by(|a, b| b.cmp(a));
        let k = p.placement.guest_nodes.len();
        assert!(
            home + others.iter().take(k.saturating_sub(2)).sum::<u32>() < vcpus || k == 1,
            "{vcpus} vCPUs: {k} nodes where fewer would do:\n{}",
            p.render(true)
        );
    }
}

#[test]
fn a_core_with_an_offline_sibling_is_not_a_vcpu_core() {
    let dir = tempfile::tempdir().unwrap();
    Machine::one_socket().write(dir.path()).unwrap();
    let mut t = sysfs::read(dir.path()).unwrap();
    // cpu 40 (the sibling of cpu 8) goes offline.
    t.cpus.retain(|c| c.id != 40);
    for c in &mut t.cpus {
        c.siblings.retain(|s| *s != 40);
    }
    let req = request(&t, 10, 16);
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    assert!(p.placement.vcpu_pins.iter().all(|v| v.host_cpu != 8));
    assert!(p
        .render(true)
        .contains("host threads 8 are not given to vCPUs"));
}

#[test]
fn memory_only_nodes_are_used_last() {
    // A CPU-less (CXL) node nearest to home: the VM stays on nodes with CPUs while they hold it.
    let dir = tempfile::tempdir().unwrap();
    Machine::two_socket_nps1().write(dir.path()).unwrap();
    let mut t = sysfs::read(dir.path()).unwrap();
    let mut cxl = t.nodes[0].clone();
    cxl.id = 2;
    cxl.cpus.clear();
    for n in &mut t.nodes {
        n.distances.push(14);
    }
    cxl.distances = vec![14, 14, 10];
    t.nodes.push(cxl);
    let req = request(&t, 32, 600);
    let p = plan(&t, &req).unwrap();
    check(&t, &req, &p);
    let hosts: Vec<u32> = p
        .placement
        .guest_nodes
        .iter()
        .map(|g| g.host_node)
        .collect();
    assert_eq!(hosts, vec![1, 0]);
}

#[test]
fn sev_refuses_counts_without_a_digest_and_smt_against_the_policy() {
    let t = topology(&Machine::one_socket());
    let mut req = request(&t, 8, 16);
    req.sev = Some(SevRequest {
        smt: true,
        vcpu_counts: vec![4, 16, 64],
    });
    let err = plan(&t, &req).unwrap_err();
    assert_eq!(
        err,
        PlanError::SevVcpus {
            vcpus: 8,
            allowed: "4, 16, 64".into()
        }
    );
    req.sev = Some(SevRequest {
        smt: false,
        vcpu_counts: vec![],
    });
    assert_eq!(plan(&t, &req).unwrap_err(), PlanError::SevSmt);
    // SMT off on the host, SMT-free policy: planned, policy bit 16 clear.
    let mut m = Machine::one_socket();
    m.threads_per_core = 1;
    m.free_hugepages_1g_per_node = 0;
    let t = topology(&m);
    req.disks = data_disks(&t);
    let p = plan(&t, &req).unwrap();
    assert_eq!(p.boot, Boot::sev_snp("0x20000".into()));
}

#[test]
fn a_disk_without_a_namespace_or_node_is_handled() {
    let mut m = Machine::one_socket();
    m.nvme[1].driver = "";
    let t = topology(&m);
    let unbound = t
        .nvme
        .iter()
        .find(|c| c.driver.is_none())
        .unwrap()
        .pci
        .clone();
    let mut req = request(&t, 8, 16);
    req.disks = vec![unbound.clone()];
    let err = plan(&t, &req).unwrap_err();
    assert!(
        matches!(&err, PlanError::DiskUnusable { pci, .. } if *pci == unbound),
        "{err}"
    );
    assert!(err.to_string().contains("bind it to vfio-pci"), "{err}");

    // The firmware does not say where the disks are: the NIC's node is home.
    let dir = tempfile::tempdir().unwrap();
    Machine::two_socket_nps1().write(dir.path()).unwrap();
    let mut t = sysfs::read(dir.path()).unwrap();
    for c in &mut t.nvme {
        c.node = None;
    }
    let nic = t.nics[0].node.unwrap();
    let req = request(&t, 8, 16);
    let p = plan(&t, &req).unwrap();
    assert_eq!(p.home_node, nic);
    assert!(p.render(true).contains("the NIC's"));
}

#[test]
fn refusals_read_as_expected() {
    // The texts an operator gets, as a golden file too.
    let mut m = Machine::one_socket();
    m.free_hugepages_1g_per_node = 0;
    m.free_hugepages_2m_per_node = 0;
    let t = topology(&m);
    let no_pages = plan(&t, &request(&t, 8, 32)).unwrap_err().to_string();
    let t = topology(&Machine::one_socket());
    let too_small = plan(&t, &request(&t, 64, 16)).unwrap_err().to_string();
    let text = format!("no free hugepages:\n{no_pages}\n\nmachine too small:\n{too_small}\n");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/plan/refusals.txt");
    if std::env::var_os("PLINTH_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert_eq!(text, std::fs::read_to_string(&path).unwrap());
}

#[test]
fn development_layout_splits_the_guest_on_one_node_and_takes_image_files() {
    let t = topology(&Machine::one_socket());
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("guest.img");
    std::fs::write(&image, b"").unwrap();
    let image = image.display().to_string();
    let mut req = request(&t, 4, 4);
    req.disks = vec![image.clone()];
    // An image file is a disk only in the development layout.
    assert!(matches!(plan(&t, &req), Err(PlanError::DiskFile { .. })));
    req.layout = Layout::Development { guest_nodes: 2 };
    let p = plan(&t, &req).unwrap();
    assert!(p.placement.host_cpus.is_empty());
    assert_eq!(p.placement.guest_nodes.len(), 2);
    for g in &p.placement.guest_nodes {
        assert_eq!(
            (g.host_node, g.vcpus.len(), g.memory_gib),
            (p.home_node, 2, 2)
        );
    }
    // vCPUs on the home node's threads in turn, one each; QEMU's beside them.
    let home: Vec<u32> = {
        let mut v: Vec<u32> = t
            .cpus
            .iter()
            .filter(|c| c.node == p.home_node)
            .map(|c| c.id)
            .collect();
        v.sort_unstable();
        v
    };
    for pin in &p.placement.vcpu_pins {
        assert_eq!(pin.host_cpu, home[pin.vcpu as usize]);
    }
    assert_eq!(p.placement.memory, MemoryBacking::Hugepages1G);
    match &p.disks[..] {
        [DiskPlan::VirtioBlk {
            path,
            pci,
            node,
            serial,
            ..
        }] => {
            assert_eq!(
                (path, pci, node, serial.as_str()),
                (&image, &None, &None, "plinth-disk0")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(p
        .reasons
        .iter()
        .any(|r| r.text.contains("development layout")));
    // Every guest node needs a vCPU and 1 GiB; a missing file is named.
    req.layout = Layout::Development { guest_nodes: 5 };
    assert!(matches!(plan(&t, &req), Err(PlanError::GuestNodes { .. })));
    req.layout = Layout::Development { guest_nodes: 1 };
    req.disks = vec!["/nonexistent/guest.img".into()];
    let e = plan(&t, &req).unwrap_err().to_string();
    assert!(
        e.contains("/nonexistent/guest.img") && e.contains("cannot be read"),
        "{e}"
    );
    // No hugepages: ordinary pages, still bound and preallocated.
    let mut m = Machine::one_socket();
    m.free_hugepages_1g_per_node = 0;
    m.free_hugepages_2m_per_node = 0;
    let t = topology(&m);
    req.disks = vec![image];
    let p = plan(&t, &req).unwrap();
    assert_eq!(p.placement.memory, MemoryBacking::Memfd);
}
