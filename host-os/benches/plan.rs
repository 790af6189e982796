//! Plan time for the GuestOS VM on a two-socket, 256-thread EPYC (NPS1 and NPS4 trees from
//! `topology::fixture`): the median of RUNS plans (target < 50 ms), with the time of reading the
//! same tree from disk (what every plan starts from) as the baseline in the same run
//! (ratio = plan / read). Prints a table, then one JSON line.
//!
//!   cargo bench -p plinth-host --bench plan        (env: RUNS=200)

use plinth_host::plan::{plan, VmRequest};
use plinth_host::topology::fixture::Machine;
use plinth_host::topology::sysfs;
use std::time::Instant;

const TARGET_MS: f64 = 50.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let mut json = Vec::new();
    println!(
        "{:<32} {:>10} {:>10} {:>8} {:>8}",
        "case", "plan ms", "read ms", "ratio", "target"
    );
    for (name, machine, vcpus, memory_gib) in [
        (
            "2-socket NPS1, 64 vCPUs, 768 GiB",
            Machine::two_socket_nps1(),
            64,
            768,
        ),
        (
            "2-socket NPS4, 64 vCPUs, 768 GiB",
            Machine::two_socket_nps4(),
            64,
            768,
        ),
        (
            "2-socket NPS4, 200 vCPUs, 64 GiB",
            Machine::two_socket_nps4(),
            200,
            64,
        ),
    ] {
        let dir = tempfile::tempdir().expect("a scratch directory");
        machine.write(dir.path()).expect("writing the tree");
        let topo = sysfs::read(dir.path()).expect("reading the tree");
        assert_eq!(topo.cpus.len(), 256);
        let disks: Vec<String> = topo
            .nvme
            .iter()
            .filter(|c| !topo.is_host_disk(c))
            .filter_map(|c| c.namespaces.first().map(|n| n.name.clone()))
            .collect();
        let req = VmRequest {
            vcpus,
            memory_gib,
            disks,
            sev: None,
            layout: Default::default(),
        };
        let mut plans = Vec::with_capacity(runs);
        let mut reads = Vec::with_capacity(runs);
        for _ in 0..runs {
            let t = Instant::now();
            let read = sysfs::read(dir.path()).expect("reading the tree");
            reads.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let p = plan(&read, &req).expect("the VM fits");
            plans.push(t.elapsed().as_secs_f64() * 1e3);
            std::hint::black_box(p);
        }
        let (p, r) = (median(plans), median(reads));
        println!(
            "{name:<32} {p:>10.3} {r:>10.3} {:>8.3} {:>8}",
            p / r,
            if p < TARGET_MS { "met" } else { "MISSED" }
        );
        json.push(format!(
            "{{\"case\":\"{name}\",\"plan_ms\":{p:.4},\"read_ms\":{r:.4},\"ratio_plan_to_read\":{:.4},\"target_ms\":{TARGET_MS},\"met\":{}}}",
            p / r,
            p < TARGET_MS
        ));
    }
    println!("{{\"runs\":{runs},\"cases\":[{}]}}", json.join(","));
}
