//! `plinth-setup certify` on generated machine trees: a certified Gen2 Genoa, then one tree
//! per single failing check, each judged by its verdict (the JSON's status per check id),
//! not only by its text; warnings pass only when the config acknowledges them.

use plinth_host::topology::fixture::{FixtureNic, FixtureNvme, Machine};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const SETUP: &str = env!("CARGO_BIN_EXE_plinth-setup");

/// A Gen2 Genoa node: 2 sockets of 16 cores with SMT, 256 GiB per socket, a boot NVMe and
/// 5 data NVMe of 6000 GiB, a 25 Gb/s NIC, SEV-SNP on with firmware 1.55, a TPM 2.0 whose
/// EK certificate chains to Infineon's RSA root.
struct Node {
    machine: Machine,
    cpu_family: u32,
    cpu_model: u32,
    sev_snp: &'static str,
    dev_sev: bool,
    snp_firmware: &'static str,
    tpm: Option<&'static str>,
    ek: Vec<u8>,
    smart: u8,
    raid: bool,
    /// The second socket holds another model.
    mixed: bool,
}

fn ek_cert() -> Vec<u8> {
    // An Infineon intermediate stands in for an EK certificate: its chain to the
    // catalog's Infineon root is checked the same way.
    let pem = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/tpm-ek-ca/inf_rsa_011.pem"),
    )
    .unwrap();
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

impl Node {
    fn genoa() -> Node {
        Node {
            machine: Machine {
                sockets: 2,
                nodes_per_socket: 1,
                cores_per_node: 16,
                threads_per_core: 2,
                cores_per_l3: 8,
                memory_per_node_gib: 256,
                free_hugepages_1g_per_node: 0,
                free_hugepages_2m_per_node: 0,
                nvme: std::iter::once(FixtureNvme {
                    node: 0,
                    driver: "nvme",
                    size_gib: 960,
                    host_disk: true,
                })
                .chain((0..5).map(|i| FixtureNvme {
                    node: i % 2,
                    driver: "nvme",
                    size_gib: 6000,
                    host_disk: false,
                }))
                .collect(),
                nics: vec![FixtureNic {
                    node: 0,
                    speed_mbps: 25_000,
                }],
            },
            cpu_family: 0x19,
            cpu_model: 0x11,
            sev_snp: "Y",
            dev_sev: true,
            snp_firmware: "1.55",
            tpm: Some("2"),
            ek: ek_cert(),
            smart: 0,
            raid: false,
            mixed: false,
        }
    }

    /// What CI's QEMU VM looks like: 1 socket of 2 threads (QEMU's EPYC: family 0x17), 4 GiB,
    /// a boot disk and 3 QEMU NVMe drives, no SEV.
    fn qemu() -> Node {
        Node {
            machine: Machine {
                sockets: 1,
                nodes_per_socket: 1,
                cores_per_node: 2,
                threads_per_core: 1,
                cores_per_l3: 8,
                memory_per_node_gib: 4,
                free_hugepages_1g_per_node: 0,
                free_hugepages_2m_per_node: 0,
                nvme: std::iter::once(FixtureNvme {
                    node: 0,
                    driver: "nvme",
                    size_gib: 4,
                    host_disk: true,
                })
                .chain((0..3).map(|_| FixtureNvme {
                    node: 0,
                    driver: "nvme",
                    size_gib: 8,
                    host_disk: false,
                }))
                .collect(),
                nics: vec![],
            },
            cpu_family: 0x17,
            cpu_model: 0x31,
            sev_snp: "N",
            dev_sev: false,
            snp_firmware: "0.0",
            tpm: Some("2"),
            ek: Vec::new(),
            smart: 0,
            raid: false,
            mixed: false,
        }
    }

    fn write(&self, root: &Path) {
        self.machine.write(root).unwrap();
        let threads = self.machine.sockets
            * self.machine.nodes_per_socket
            * self.machine.cores_per_node
            * self.machine.threads_per_core;
        let per_socket = threads / self.machine.sockets;
        let mut cpuinfo = String::new();
        for i in 0..threads {
            cpuinfo.push_str(&format!(
                "processor\t: {i}\nvendor_id\t: AuthenticAMD\ncpu family\t: {}\nmodel\t\t: {}\n\
                 model name\t: AMD EPYC 9124 16-Core Processor\nphysical id\t: {}\n\n",
                self.cpu_family,
                if self.mixed && i >= per_socket {
                    self.cpu_model + 1
                } else {
                    self.cpu_model
                },
                i / per_socket
            ));
        }
        let put = |rel: &str, text: &[u8]| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        put("proc/cpuinfo", cpuinfo.as_bytes());
        put(
            "sys/module/kvm_amd/parameters/sev_snp",
            format!("{}\n", self.sev_snp).as_bytes(),
        );
        if self.dev_sev {
            put("dev/sev", b"");
        }
        put("plinth-capture/snp-firmware", self.snp_firmware.as_bytes());
        if let Some(v) = self.tpm {
            put(
                "sys/class/tpm/tpm0/tpm_version_major",
                format!("{v}\n").as_bytes(),
            );
        }
        put("plinth-capture/ek-certificate.der", &self.ek);
        for k in 0..self.machine.nvme.len() {
            let smart = if k == 1 { self.smart } else { 0 };
            put(
                &format!("plinth-capture/nvme-smart/nvme{k}"),
                format!("{smart}\n").as_bytes(),
            );
        }
        if self.raid {
            put("sys/bus/pci/devices/0000:c1:00.0/class", b"0x010400\n");
        }
        if self.cpu_family == 0x17 {
            // QEMU's emulated NVMe controllers name themselves so.
            for dev in std::fs::read_dir(root.join("sys/bus/pci/devices")).unwrap() {
                let nvme = dev.unwrap().path().join("nvme");
                for ctrl in std::fs::read_dir(&nvme).into_iter().flatten() {
                    std::fs::write(ctrl.unwrap().path().join("model"), "QEMU NVMe Ctrl  \n")
                        .unwrap();
                }
            }
        }
    }
}

/// Certify `node`; the exit code and each check's status by id.
fn certify(node: &Node, extra: &[&str]) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    node.write(dir.path());
    let out = Command::new(SETUP)
        .args(["certify", "--json", "--sysfs-root"])
        .arg(dir.path())
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("no JSON ({e}): {stderr}"));
    (out.status.code().unwrap(), report)
}

fn statuses(report: &Value) -> Vec<(String, String)> {
    report["verdict"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_certified_machine_passes_every_check() {
    let (code, report) = certify(&Node::genoa(), &[]);
    let all = statuses(&report);
    assert_eq!(code, 0, "{all:?}");
    assert_eq!(report["verdict"]["generation"], "gen2-genoa");
    assert_eq!(report["certified"], true);
    for id in [
        "cpu.generation",
        "cpu.sockets",
        "cpu.threads",
        "memory.total",
        "memory.balance",
        "sev_snp.enabled",
        "sev_snp.device",
        "sev_snp.firmware",
        "tpm.present",
        "tpm.ek_certificate",
        "nvme.count",
        "nvme.size",
        "nvme.smart",
        "nic.speed",
        "raid.absent",
    ] {
        assert!(
            all.iter().any(|(i, s)| i == id && s == "pass"),
            "{id} did not pass: {all:?}"
        );
    }
    assert!(all.iter().all(|(_, s)| s == "pass"), "{all:?}");
}

/// Each tree breaks one thing; exactly that check fails and the machine is refused.
#[test]
fn each_failing_check_alone_refuses_the_machine() {
    type Break = fn(&mut Node);
    let cases: [(&str, Break); 15] = [
        ("cpu.generation", |n| n.mixed = true),
        ("cpu.sockets", |n| {
            n.machine.sockets = 1;
            n.machine.cores_per_node = 32;
            n.machine.memory_per_node_gib = 512;
            for d in &mut n.machine.nvme {
                d.node = 0;
            }
        }),
        ("cpu.threads", |n| n.machine.threads_per_core = 1),
        ("memory.total", |n| n.machine.memory_per_node_gib = 128),
        ("sev_snp.enabled", |n| n.sev_snp = "N"),
        ("sev_snp.device", |n| n.dev_sev = false),
        ("sev_snp.firmware", |n| n.snp_firmware = "1.51"),
        ("tpm.present", |n| n.tpm = None),
        ("tpm.ek_certificate", |n| {
            let i = n.ek.len() / 2;
            n.ek[i] ^= 0x40
        }),
        ("nvme.count", |n| {
            n.machine.nvme.truncate(4);
        }),
        ("nvme.size", |n| n.machine.nvme[3].size_gib = 3576),
        ("nvme.smart", |n| n.smart = 0x04),
        ("nic.speed", |n| n.machine.nics[0].speed_mbps = 1000),
        ("raid.absent", |n| n.raid = true),
        ("cpu.generation", |n| n.cpu_family = 0x17),
    ];
    for (id, breaks) in cases {
        let mut node = Node::genoa();
        breaks(&mut node);
        let (code, report) = certify(&node, &[]);
        let all = statuses(&report);
        assert_eq!(code, 1, "{id}: {all:?}");
        assert_eq!(report["certified"], false, "{id}");
        let failed: Vec<&str> = all
            .iter()
            .filter(|(_, s)| s != "pass")
            .map(|(i, _)| i.as_str())
            .collect();
        // Without a TPM there is no EK certificate either: the one consequence allowed.
        let expected: &[&str] = match id {
            "tpm.present" => &["tpm.present", "tpm.ek_certificate"],
            _ => &[id],
        };
        assert_eq!(failed, expected, "{id}: {all:?}");
        let check = report["verdict"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap();
        assert_eq!(check["status"], "fail", "{id}");
        assert!(
            !check["action"].as_str().unwrap().is_empty(),
            "{id}: no action"
        );
    }
}

/// An unbalanced memory population warns; the warning stops the install until the config
/// acknowledges it.
#[test]
fn a_warning_needs_the_configs_acknowledgement() {
    let mut node = Node::genoa();
    node.machine.memory_per_node_gib = 320;
    // The generator gives every node the same memory: write the tree, then shrink node 1's.
    let dir = tempfile::tempdir().unwrap();
    node.write(dir.path());
    let meminfo = dir.path().join("sys/devices/system/node/node1/meminfo");
    let text = std::fs::read_to_string(&meminfo).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.contains("MemTotal:") {
                format!("Node 1 MemTotal:       {} kB", 200u64 << 20)
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&meminfo, text + "\n").unwrap();
    let run = |config: Option<&Path>| {
        let mut cmd = Command::new(SETUP);
        cmd.args(["certify", "--json", "--sysfs-root"])
            .arg(dir.path());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().unwrap();
        let report: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap(), report)
    };
    let (code, report) = run(None);
    let all = statuses(&report);
    assert_eq!(code, 1, "{all:?}");
    assert!(
        all.contains(&("memory.balance".into(), "warn".into())),
        "{all:?}"
    );

    let cfg_dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/node-config.example.yaml"),
    )
    .unwrap();
    std::fs::write(
        cfg_dir.path().join("node_operator_private_key.pem"),
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let config = cfg_dir.path().join("config.yaml");
    std::fs::write(
        &config,
        example.replace("[nvme.models]", "[memory.balance]"),
    )
    .unwrap();
    let (code, report) = run(Some(&config));
    assert_eq!(code, 0, "{:?}", statuses(&report));
    let check = report["verdict"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "memory.balance")
        .unwrap();
    assert_eq!(check["acknowledged"], true);

    // A config naming another generation fails, whatever the machine.
    std::fs::write(&config, example.replace("gen2-genoa", "gen2-milan")).unwrap();
    let (code, report) = run(Some(&config));
    assert_eq!(code, 1);
    assert!(statuses(&report).contains(&("config.generation".into(), "fail".into())));
}

#[test]
fn the_console_text_names_what_to_do_and_an_unreadable_tree_exits_2() {
    let mut node = Node::genoa();
    node.raid = true;
    let dir = tempfile::tempdir().unwrap();
    node.write(dir.path());
    let report = dir.path().join("setup-report.json");
    let out = Command::new(SETUP)
        .args(["certify", "--sysfs-root"])
        .arg(dir.path())
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL  raid.absent"), "{text}");
    assert!(text.contains("NOT CERTIFIED: 1 check(s)"), "{text}");
    assert!(text.contains("do: remove the RAID controller"), "{text}");
    let bytes = std::fs::read(&report).unwrap();
    let sha = plinth_release::Sha256::of(&bytes).to_hex();
    assert!(
        text.contains(&format!("setup-report.json sha256 {sha}")),
        "{text}"
    );

    let out = Command::new(SETUP)
        .args(["certify", "--sysfs-root", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// A swtpm on 127.0.0.1 (tss-esapi's swtpm TCTI speaks TCP), manufactured with an EK
/// certificate by swtpm's local CA in `dir/ca` (made by `swtpm_setup` on first use).
struct TcpSwtpm {
    child: std::process::Child,
    tcti: String,
}

impl TcpSwtpm {
    fn start(dir: &Path, ca: &Path) -> TcpSwtpm {
        let state = dir.join("state");
        plinth_testkit::swtpm::manufacture_with_ek(&state, ca);
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .args([
                "--server",
                &format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            ])
            .args([
                "--ctrl",
                &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            ])
            .args(["--flags", "not-need-init,startup-clear"])
            .spawn()
            .unwrap();
        let tpm = TcpSwtpm {
            child,
            tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "swtpm did not listen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tpm
    }
}

impl Drop for TcpSwtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The EK certificate comes from a real (software) TPM, chains to the CA the test made and
/// handed over, and the report's sha256 lands in PCR 15. Another CA's TPM fails the EK
/// check, and without --test-generations the test VM is no certified machine.
#[test]
fn a_test_vm_with_swtpm_certifies_as_qemu_test_and_measures_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let tpm = TcpSwtpm::start(&dir.path().join("tpm"), &ca);
    let tree = dir.path().join("tree");
    Node::qemu().write(&tree);
    let report = dir.path().join("setup-report.json");
    let run = |extra: &[&str]| {
        let out = Command::new(SETUP)
            .args(["certify", "--sysfs-root"])
            .arg(&tree)
            .args(["--tcti", &tpm.tcti, "--report"])
            .arg(&report)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let issuer = ca.join("issuercert.pem");
    let issuer = issuer.to_str().unwrap();
    let (code, text, err) = run(&[
        "--test-generations",
        "--test-ek-ca",
        issuer,
        "--extend-pcr",
        "--qr",
    ]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(text.contains("against generation qemu-test"), "{text}");
    assert!(text.contains("pass  tpm.ek_certificate"), "{text}");
    assert!(text.contains("swtpm-localca"), "the chain is named: {text}");
    assert!(text.contains("measured into PCR 15"), "{text}");
    assert!(
        text.contains('\u{2580}') || text.contains('\u{2584}') || text.contains('\u{2588}'),
        "no QR code: {text}"
    );

    // PCR 15 = sha256(zeros || sha256(setup-report.json)).
    use sha2::Digest;
    let report_digest = sha2::Sha256::digest(std::fs::read(&report).unwrap());
    let mut h = sha2::Sha256::new();
    h.update([0u8; 32]);
    h.update(report_digest);
    let expected = hex::encode(h.finalize());
    let out = Command::new("tpm2_pcrread")
        .args(["sha256:15", "-o"])
        .arg(dir.path().join("pcr15.bin"))
        .env("TPM2TOOLS_TCTI", &tpm.tcti)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pcr = hex::encode(std::fs::read(dir.path().join("pcr15.bin")).unwrap());
    assert_eq!(pcr, expected);

    // The certificate must be of this TPM's own EK: another TPM's (copied) is refused.
    let (der, key) = plinth_setup::tpm::ek_certificate(&tpm.tcti).unwrap();
    assert!(plinth_setup::tpm::certifies(&der, &key).unwrap());
    let other = TcpSwtpm::start(&dir.path().join("copied-tpm"), &ca);
    let (other_der, other_key) = plinth_setup::tpm::ek_certificate(&other.tcti).unwrap();
    assert!(!plinth_setup::tpm::certifies(&other_der, &key).unwrap());
    assert!(!plinth_setup::tpm::certifies(&der, &other_key).unwrap());
    drop(other);
    let report_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(
        report_json["ek_certificate_sha256"],
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&der))
    );

    // Another local CA: the TPM's EK was not issued by it.
    let other = TcpSwtpm::start(&dir.path().join("other-tpm"), &dir.path().join("other-ca"));
    let other_issuer = dir.path().join("other-ca/issuercert.pem");
    let (code, text, _) = run(&[
        "--test-generations",
        "--test-ek-ca",
        other_issuer.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL  tpm.ek_certificate"), "{text}");
    drop(other);

    // A prod SetupOS does not certify the test VM.
    let (code, text, _) = run(&[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("FAIL  cpu.generation"), "{text}");
}
