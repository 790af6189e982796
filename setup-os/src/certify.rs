//! Judging a machine ([`Inventory`]) against a certified generation of the catalog
//! (`firmware/certification.yaml`): one [`Check`] per requirement, each pass, warn or fail,
//! with what was expected, what was found and what to do. The generation is the one whose
//! CPU the machine has; the provider's config names the one they bought, and a difference
//! fails. A warning passes only when the config acknowledges its id.

use crate::inventory::Inventory;
use plinth_firmware::certification::{Certification, NodeGeneration};
use plinth_firmware::ek::Anchors;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One requirement's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `nvme.models`: what a config acknowledges.
    pub id: &'static str,
    pub status: Status,
    pub expected: String,
    pub found: String,
    /// What to do about a warning or a failure (empty on pass).
    pub action: String,
    /// A warning the config acknowledged.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub acknowledged: bool,
}

/// The verdict on a machine.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The generation judged against (`None`: the CPU is no certified generation's).
    pub generation: Option<String>,
    pub checks: Vec<Check>,
}

impl Verdict {
    /// Whether an install may go on: no failure, and every warning acknowledged.
    pub fn certified(&self) -> bool {
        self.checks
            .iter()
            .all(|c| c.status == Status::Pass || (c.status == Status::Warn && c.acknowledged))
    }

    /// The checks that stop an install.
    pub fn blocking(&self) -> impl Iterator<Item = &Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail || (c.status == Status::Warn && !c.acknowledged))
    }
}

/// What certification is told besides the machine.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    /// The generation the provider's config names.
    pub configured: Option<&'a str>,
    /// Warning ids the config acknowledges.
    pub acknowledged: &'a [String],
    /// Test generations (qemu-test) may be certified: a `test` SetupOS.
    pub test_generations: bool,
    /// Extra EK roots for a test generation (swtpm's local CA, made by the test).
    pub test_ek_roots: Vec<plinth_firmware::ek::CaCert>,
}

/// Judge `inv` against `catalog`.
pub fn certify(catalog: &Certification, inv: &Inventory, options: &Options) -> Verdict {
    let candidates: Vec<&NodeGeneration> = catalog
        .generations
        .iter()
        .filter(|g| options.test_generations || !g.test_only)
        .collect();
    // Every socket must hold the generation's CPU: a machine of mixed CPUs is none.
    let matched = candidates
        .iter()
        .find(|g| !inv.cpu.mixed && cpu_matches(g, inv))
        .copied();
    let mut checks = Vec::new();
    let names: Vec<&str> = candidates.iter().map(|g| g.name.as_str()).collect();
    let Some(generation) = matched else {
        checks.push(fail(
            "cpu.generation",
            format!("the CPU of a certified generation ({})", names.join(", ")),
            format!(
                "{} family {:#x} model {:#x} ({}){}",
                inv.cpu.vendor,
                inv.cpu.family,
                inv.cpu.model,
                inv.cpu.model_name,
                if inv.cpu.mixed {
                    ", and other CPUs in other sockets"
                } else {
                    ""
                }
            ),
            "this machine is not certified: install on a machine of a listed generation",
        ));
        return Verdict {
            generation: None,
            checks,
        };
    };
    let name = generation.name.as_str();
    checks.push(pass(
        "cpu.generation",
        format!("the CPU of a certified generation ({})", names.join(", ")),
        format!(
            "{name}: {} family {:#x} model {:#x}",
            inv.cpu.vendor, inv.cpu.family, inv.cpu.model
        ),
    ));
    if let Some(configured) = options.configured {
        checks.push(judge(
            "config.generation",
            configured == name,
            format!("config.yaml's generation to be this machine's ({name})"),
            format!("`{configured}`"),
            "correct `generation:` in config.yaml, or install on the machine you meant",
        ));
    }
    cpu_checks(generation, inv, &mut checks);
    memory_checks(generation, inv, &mut checks);
    sev_checks(generation, inv, &mut checks);
    tpm_checks(catalog, generation, inv, options, &mut checks);
    nvme_checks(generation, inv, &mut checks);
    nic_and_raid_checks(generation, inv, &mut checks);
    for check in &mut checks {
        if check.status == Status::Warn && options.acknowledged.iter().any(|a| a == check.id) {
            check.acknowledged = true;
        }
    }
    Verdict {
        generation: Some(name.to_string()),
        checks,
    }
}

fn cpu_matches(g: &NodeGeneration, inv: &Inventory) -> bool {
    g.cpu.vendor == inv.cpu.vendor
        && u32::from(g.cpu.family) == inv.cpu.family
        && g.cpu
            .models
            .iter()
            .any(|&[a, b]| (u32::from(a)..=u32::from(b)).contains(&inv.cpu.model))
}

fn cpu_checks(g: &NodeGeneration, inv: &Inventory, checks: &mut Vec<Check>) {
    checks.push(judge(
        "cpu.sockets",
        inv.cpu.sockets == g.cpu.sockets,
        format!("{} socket(s)", g.cpu.sockets),
        format!("{}", inv.cpu.sockets),
        "populate every socket the generation has, with the same CPU model",
    ));
    checks.push(judge(
        "cpu.threads",
        inv.cpu.threads >= g.cpu.min_threads,
        format!("at least {} threads", g.cpu.min_threads),
        format!("{}", inv.cpu.threads),
        "enable SMT and every core in the firmware setup (BIOS)",
    ));
}

fn memory_checks(g: &NodeGeneration, inv: &Inventory, checks: &mut Vec<Check>) {
    let nodes = &inv.topology.nodes;
    let total = nodes
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(n.memory_total_bytes));
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    // The kernel keeps some memory for itself: MemTotal is ~1-2% under what is installed.
    let needed = g.memory.min_gib << 30;
    checks.push(judge(
        "memory.total",
        total >= needed - needed / 32,
        format!("at least {} GiB", g.memory.min_gib),
        format!("{:.1} GiB", gib(total)),
        "install the memory the generation lists",
    ));
    if nodes.len() > 1 {
        let mean = total / nodes.len() as u64;
        let worst = nodes
            .iter()
            .map(|n| {
                (
                    n.id,
                    n.memory_total_bytes.abs_diff(mean) * 100 / mean.max(1),
                )
            })
            .max_by_key(|(_, d)| *d)
            .unwrap_or((0, 0));
        let ok = worst.1 <= u64::from(g.memory.max_node_deviation_percent);
        let per_node: Vec<String> = nodes
            .iter()
            .map(|n| format!("node {}: {:.1} GiB", n.id, gib(n.memory_total_bytes)))
            .collect();
        let check = Check {
            id: "memory.balance",
            status: if ok { Status::Pass } else { Status::Warn },
            expected: format!(
                "every NUMA node within {}% of the mean",
                g.memory.max_node_deviation_percent
            ),
            found: format!(
                "{} (node {} off by {}%)",
                per_node.join(", "),
                worst.0,
                worst.1
            ),
            action: if ok {
                String::new()
            } else {
                "populate every memory channel of every socket alike; or acknowledge \
                 memory.balance in config.yaml"
                    .into()
            },
            acknowledged: false,
        };
        checks.push(check);
    }
}

fn sev_checks(g: &NodeGeneration, inv: &Inventory, checks: &mut Vec<Check>) {
    let Some(rule) = &g.sev_snp else {
        return;
    };
    let s = &inv.sev_snp;
    checks.push(judge(
        "sev_snp.enabled",
        s.kvm_amd_sev_snp == Some(true),
        "kvm_amd's sev_snp parameter Y".into(),
        match s.kvm_amd_sev_snp {
            Some(true) => "Y".into(),
            Some(false) => "N".into(),
            None => "no kvm_amd module".into(),
        },
        "enable SEV-SNP, SMEE and RMP table in the firmware setup (BIOS) and update the \
         SEV firmware",
    ));
    checks.push(judge(
        "sev_snp.device",
        s.dev_sev,
        "/dev/sev".into(),
        if s.dev_sev { "present" } else { "absent" }.into(),
        "the ccp driver did not initialise the PSP: enable SEV in the firmware setup",
    ));
    let min = rule.min_version().unwrap_or((u8::MAX, u8::MAX));
    let (ok, found) = match &s.firmware {
        Ok(v) => (*v >= min, format!("{}.{}", v.0, v.1)),
        Err(why) => (false, why.clone()),
    };
    checks.push(judge(
        "sev_snp.firmware",
        ok,
        format!("SNP firmware {} or later", rule.min_firmware),
        found,
        "update the BIOS to one carrying a newer SEV firmware (AMD's security bulletins \
         list them)",
    ));
}

fn tpm_checks(
    catalog: &Certification,
    g: &NodeGeneration,
    inv: &Inventory,
    options: &Options,
    checks: &mut Vec<Check>,
) {
    let present = inv.tpm.version_major == Some(2);
    checks.push(judge(
        "tpm.present",
        present,
        "a TPM 2.0".into(),
        match inv.tpm.version_major {
            Some(v) => format!("TPM {v}"),
            None => "no TPM".into(),
        },
        "enable the TPM (fTPM or discrete, TPM 2.0 mode) in the firmware setup",
    ));
    let mut anchors: Anchors = catalog.anchors(g);
    if g.test_only {
        anchors.roots.extend(options.test_ek_roots.iter().cloned());
    }
    let expected = format!(
        "an EK certificate issued by {}",
        if g.tpm.ek_cas.is_empty() {
            "the test's EK CA".to_string()
        } else {
            g.tpm.ek_cas.join(", ")
        }
    );
    let (ok, found) = match (&inv.tpm.ek_certificate, present) {
        (_, false) => (false, "no TPM".to_string()),
        (Err(why), _) => (false, why.clone()),
        (Ok(der), _) => match plinth_firmware::ek::verify_chain(der, &anchors) {
            Ok(chain) => match &inv.tpm.ek_key_matches {
                Some(Ok(false)) => (
                    false,
                    "a valid certificate, but not of this TPM's endorsement key (copied?)"
                        .to_string(),
                ),
                Some(Err(why)) => (
                    false,
                    format!("the TPM's own EK could not be compared: {why}"),
                ),
                _ => (true, chain.join(" <- ")),
            },
            Err(why) => (false, why),
        },
    };
    checks.push(judge(
        "tpm.ek_certificate",
        ok,
        expected,
        found,
        "use a TPM from a listed manufacturer; a TPM without its EK certificate cannot \
         prove it is one",
    ));
}

fn nvme_checks(g: &NodeGeneration, inv: &Inventory, checks: &mut Vec<Check>) {
    let drives: Vec<_> = inv
        .topology
        .nvme
        .iter()
        .filter(|c| !inv.topology.is_host_disk(c))
        .collect();
    checks.push(judge(
        "nvme.count",
        drives.len() as u32 >= g.nvme.min_count,
        format!("at least {} NVMe drives", g.nvme.min_count),
        format!("{}", drives.len()),
        "install the NVMe drives the generation lists (no SATA or RAID)",
    ));
    let min = g.nvme.min_size_gb * 1_000_000_000;
    let small: Vec<String> = drives
        .iter()
        .filter(|c| {
            c.namespaces
                .iter()
                .fold(0u64, |sum, n| sum.saturating_add(n.size_bytes))
                < min
        })
        .map(|c| c.name.clone().unwrap_or_else(|| c.pci.clone()))
        .collect();
    checks.push(judge(
        "nvme.size",
        small.is_empty(),
        format!("every drive at least {} GB", g.nvme.min_size_gb),
        if small.is_empty() {
            "all are".into()
        } else {
            format!("smaller: {}", small.join(", "))
        },
        "replace the small drives (or delete namespaces that split them)",
    ));
    if !g.nvme.models.is_empty() {
        let unknown: Vec<String> = drives
            .iter()
            .filter(|c| {
                let model = c.model.as_deref().unwrap_or("").trim();
                !g.nvme.models.iter().any(|m| m == model)
            })
            .map(|c| {
                format!(
                    "{} `{}`",
                    c.name.as_deref().unwrap_or(&c.pci),
                    c.model.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let ok = unknown.is_empty();
        checks.push(Check {
            id: "nvme.models",
            status: if ok { Status::Pass } else { Status::Warn },
            expected: format!("models {}", g.nvme.models.join(", ")),
            found: if ok {
                "all are".into()
            } else {
                unknown.join(", ")
            },
            action: if ok {
                String::new()
            } else {
                "use a listed model, or acknowledge nvme.models in config.yaml".into()
            },
            acknowledged: false,
        });
    }
    let mut bad = Vec::new();
    for (name, warning) in &inv.nvme_critical_warnings {
        match warning {
            Ok(0) => {}
            Ok(w) => bad.push(format!("{name}: critical warning {w:#04x}")),
            Err(why) => bad.push(format!("{name}: {why}")),
        }
    }
    checks.push(judge(
        "nvme.smart",
        bad.is_empty(),
        "no SMART critical warning".into(),
        if bad.is_empty() {
            "none".into()
        } else {
            bad.join("; ")
        },
        "replace the drive (spare exhausted, read-only, or over temperature)",
    ));
}

fn nic_and_raid_checks(g: &NodeGeneration, inv: &Inventory, checks: &mut Vec<Check>) {
    let fastest = inv
        .topology
        .nics
        .iter()
        .filter_map(|n| n.speed_mbps.map(|s| (s, n.name.as_str())))
        .max();
    checks.push(judge(
        "nic.speed",
        fastest.map_or(g.nic.min_speed_mbps == 0, |(s, _)| {
            s >= g.nic.min_speed_mbps
        }),
        format!("a link of at least {} Mb/s", g.nic.min_speed_mbps),
        match fastest {
            Some((s, name)) => format!("{name}: {s} Mb/s"),
            None => "no link up".into(),
        },
        "connect the node's fast NIC to the data center switch",
    ));
    checks.push(judge(
        "raid.absent",
        inv.raid_controllers.is_empty(),
        "no hardware RAID controller (PCI class 0104)".into(),
        if inv.raid_controllers.is_empty() {
            "none".into()
        } else {
            inv.raid_controllers.join(", ")
        },
        "remove the RAID controller and connect the drives directly (NVMe)",
    ));
}

fn judge(id: &'static str, ok: bool, expected: String, found: String, action: &str) -> Check {
    if ok {
        pass(id, expected, found)
    } else {
        fail(id, expected, found, action)
    }
}

fn pass(id: &'static str, expected: String, found: String) -> Check {
    Check {
        id,
        status: Status::Pass,
        expected,
        found,
        action: String::new(),
        acknowledged: false,
    }
}

fn fail(id: &'static str, expected: String, found: String, action: &str) -> Check {
    Check {
        id,
        status: Status::Fail,
        expected,
        found,
        action: action.into(),
        acknowledged: false,
    }
}
