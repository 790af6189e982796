//! `guest-os.env`: how HostOS's `plinth-guest.service` launches GuestOS on this machine,
//! planned here with HostOS's own planner (`plinth-host`'s `plan`), so a node is never
//! installed with a VM its host cannot launch. The GuestOS disks are named by PCI address,
//! which stays the same across boots (namespace names do not).
//!
//! A certified generation launches under SEV-SNP with the largest vCPU count the GuestOS
//! release publishes a launch digest for, and the most memory (in steps of 1/8 of the home
//! node's) that fits beside HostOS, whose own share is taken off first. A test generation
//! (a TCG VM) launches in the development layout with 1 vCPU and 1 GiB.

use super::disks::Assignment;
use plinth_host::plan::{self, Layout, SevRequest, VmRequest};
use plinth_host::topology::Topology;

/// What HostOS keeps of each node's memory for itself.
const HOST_SHARE_BYTES: u64 = 4 << 30;

/// The VM chosen, and the file that asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestEnv {
    pub vcpus: u32,
    pub memory_gib: u64,
    pub disks: Vec<String>,
    pub sev: bool,
    pub development: bool,
}

impl GuestEnv {
    /// The file's text: `PLINTH_GUEST_*` variables, one per line.
    pub fn render(&self) -> String {
        let mut s = String::from(
            "# Written by plinth-setup install: how plinth-guest.service launches GuestOS.\n",
        );
        s.push_str(&format!("PLINTH_GUEST_VCPUS={}\n", self.vcpus));
        s.push_str(&format!("PLINTH_GUEST_MEMORY_GIB={}\n", self.memory_gib));
        s.push_str(&format!("PLINTH_GUEST_DISKS={}\n", self.disks.join(",")));
        s.push_str(&format!("PLINTH_GUEST_SEV={}\n", self.sev));
        if self.development {
            s.push_str("PLINTH_GUEST_DEVELOPMENT=true\n");
        }
        s
    }
}

/// Why no VM fits.
#[derive(Debug, thiserror::Error)]
#[error("no GuestOS VM fits this machine: {last}")]
pub struct NoFit {
    pub last: String,
}

/// Plan GuestOS on `topo` with the disks of `assignment`. `vcpu_counts` are the counts the
/// GuestOS release publishes SEV-SNP launch digests for; `smt` its policy's SMT bit.
pub fn plan(
    topo: &Topology,
    assignment: &Assignment,
    test_generation: bool,
    vcpu_counts: &[u32],
    smt: bool,
) -> Result<GuestEnv, NoFit> {
    let disks: Vec<String> = std::iter::once(&assignment.guest)
        .chain(&assignment.guest_data)
        .map(|t| t.pci.clone())
        .collect();
    if test_generation {
        let req = VmRequest {
            layout: Layout::Development { guest_nodes: 1 },
            ..VmRequest::plain(1, 1, disks.clone())
        };
        plan::plan(topo, &req).map_err(|e| NoFit {
            last: e.to_string(),
        })?;
        return Ok(GuestEnv {
            vcpus: 1,
            memory_gib: 1,
            disks,
            sev: false,
            development: true,
        });
    }
    // HostOS's view once installed: all of a node's memory free but its own share.
    let mut host = topo.clone();
    for node in &mut host.nodes {
        node.memory_free_bytes = node.memory_total_bytes.saturating_sub(HOST_SHARE_BYTES);
    }
    let home_gib = assignment
        .guest
        .node
        .and_then(|n| host.node(n))
        .or(host.nodes.first())
        .map(|n| n.memory_free_bytes >> 30)
        .unwrap_or(0);
    let mut counts = vcpu_counts.to_vec();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    counts.dedup();
    let mut last = "the GuestOS release publishes no SEV-SNP vCPU count".to_string();
    for &vcpus in &counts {
        for eighths in (1..=8).rev() {
            let memory_gib = home_gib * eighths / 8;
            if memory_gib == 0 {
                continue;
            }
            let req = VmRequest {
                sev: Some(SevRequest {
                    smt,
                    vcpu_counts: counts.clone(),
                }),
                ..VmRequest::plain(vcpus, memory_gib, disks.clone())
            };
            match plan::plan(&host, &req) {
                Ok(_) => {
                    return Ok(GuestEnv {
                        vcpus,
                        memory_gib,
                        disks,
                        sev: true,
                        development: false,
                    })
                }
                Err(e) => last = e.to_string(),
            }
        }
    }
    Err(NoFit { last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::disks;
    use plinth_host::topology::fixture::Machine;

    fn assignment(machine: &Machine) -> (Topology, Assignment) {
        let dir = tempfile::tempdir().unwrap();
        machine.write(dir.path()).unwrap();
        let topo = plinth_host::topology::sysfs::read(dir.path()).unwrap();
        let chosen = disks::candidates(dir.path(), &topo);
        (topo, disks::assign(chosen, 1, 1).unwrap())
    }

    #[test]
    fn a_certified_machine_gets_the_largest_published_vm_that_fits_beside_hostos() {
        let (topo, a) = assignment(&Machine::two_socket_nps1());
        let env = plan(&topo, &a, false, &[8, 16, 32, 64, 128, 256], true).unwrap();
        assert!(env.sev && !env.development);
        // The home node (the disks' node 1) has 128 threads; the planner reserves some.
        assert!(env.vcpus == 64 || env.vcpus == 128, "{env:?}");
        assert!(env.memory_gib >= 256 && env.memory_gib <= 508, "{env:?}");
        assert_eq!(
            env.disks.len(),
            3,
            "GuestOS's disk and two data disks: {env:?}"
        );
        assert!(env.disks.iter().all(|d| d.starts_with("0000:")), "{env:?}");
        let text = env.render();
        assert!(
            text.contains(&format!("PLINTH_GUEST_VCPUS={}\n", env.vcpus)),
            "{text}"
        );
        assert!(text.contains("PLINTH_GUEST_SEV=true\n"), "{text}");
        // What HostOS's service reads: the same variables `plinth-host guest plan` takes.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (key, _) = line.split_once('=').unwrap();
            assert!(key.starts_with("PLINTH_GUEST_"), "{line}");
        }
        // No published count fits: refused with the planner's reason.
        let err = plan(&topo, &a, false, &[4096], true).unwrap_err();
        assert!(err.to_string().contains("4096 vCPUs"), "{err}");
    }

    #[test]
    fn a_test_vm_gets_the_development_layout() {
        let (topo, a) = assignment(&Machine::one_socket());
        let env = plan(&topo, &a, true, &[], true).unwrap();
        assert_eq!(
            (env.vcpus, env.memory_gib, env.sev, env.development),
            (1, 1, false, true)
        );
        assert!(env.render().contains("PLINTH_GUEST_DEVELOPMENT=true\n"));
    }
}
