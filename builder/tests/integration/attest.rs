//! `plinth attest verify` end to end with AMD's real Milan report and VCEK (from
//! firmware/testdata/snp/): exit codes 0, 1 and 2 with their messages, `--json`, the
//! certificate sources (--vcek, --certs, --cert-table), and `--fetch` from a KDS served on
//! 127.0.0.1, whose answer is cached and reused. And AWS EC2's kind of report (version 2,
//! chip id masked, signed by a VLEK), synthetic: firmware/testdata/snp/synthetic_vlek_*,
//! made with test keys, so that AMD's pinned root refuses its chain and nothing else.

use crate::support::Plinth;
use plinth_firmware::measurements::{Measurements, Platform, FORMAT_VERSION};
use plinth_firmware::snp::cert_table::{self, CertKind, TableEntry};
use plinth_firmware::snp::report::Report;
use plinth_firmware::snp::{Policy, SnpExpected};
use plinth_testkit::{Faults, TestServer};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../firmware/testdata/snp");
/// A catalog with the floors of 2023, when the real report was made (the built-in one is
/// newer, and refuses it).
const CATALOG_2023: &str = "format_version: 1\ngenerations:\n  - name: milan\n    cpu_family: 0x19\n    cpu_models: [[0x00, 0x0f]]\n    minimum_tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 }\n";

fn data(name: &str) -> PathBuf {
    Path::new(DATA).join(name)
}

fn real_report() -> Report {
    Report::read(&data("report_milan.hex")).unwrap()
}

/// A scratch directory with measurements.json expecting what the real report carries, and
/// the 2023 catalog.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let r = real_report().parsed;
        Scratch::expecting(
            &hex::encode(r.measurement),
            r.policy.smt_allowed(),
            r.vmpl,
            CATALOG_2023,
        )
    }

    /// measurements.json expecting `measurement` with `smt` at `vmpl`, and `catalog`.
    fn expecting(measurement: &str, smt: bool, vmpl: u32, catalog: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let base = SnpExpected::single(measurement.parse().unwrap(), "EPYC-Milan");
        let m = Measurements {
            format_version: FORMAT_VERSION,
            os: "guest-os".parse().unwrap(),
            version: "1.0.0".parse().unwrap(),
            platform: Platform {
                firmware: "OVMF".into(),
                secure_boot: false,
                bank: "sha256".into(),
            },
            slots: vec![],
            not_predicted: vec![],
            snp: Some(SnpExpected {
                policy: Policy { smt, ..base.policy },
                vmpl,
                ..base
            }),
        };
        std::fs::write(
            dir.path().join("measurements.json"),
            serde_json::to_string_pretty(&m).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("catalog-2023.yaml"), catalog).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// The nonce the real report was made for (all 64 bytes of its REPORT_DATA).
fn nonce() -> String {
    hex::encode(real_report().parsed.report_data)
}

fn plinth(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = env
        .iter()
        .fold(
            Plinth::new().args(args).env_remove("PLINTH_KDS_URL"),
            |p, (k, v)| p.env(k, v),
        )
        .output();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn verify_args<'a>(s: &'a Scratch, extra: &[&'a str]) -> Vec<String> {
    let mut v = vec![
        "attest".to_string(),
        "verify".into(),
        data("report_milan.hex").display().to_string(),
        "--expect".into(),
        s.path("measurements.json"),
    ];
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

fn run(args: &[String], env: &[(&str, &str)]) -> (i32, String, String) {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    plinth(&refs, env)
}

#[test]
fn exit_0_when_every_check_passes() {
    let s = Scratch::new();
    let (vcek, catalog, nonce) = (data("vcek_milan.der"), s.path("catalog-2023.yaml"), nonce());
    let vcek = vcek.display().to_string();
    let (code, stdout, stderr) = run(
        &verify_args(
            &s,
            &["--vcek", &vcek, "--catalog", &catalog, "--nonce", &nonce],
        ),
        &[],
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("SEV-SNP report of a Milan node"),
        "{stdout}"
    );
    assert!(
        stdout.contains("11 checks: 11 passed, 0 failed, 0 skipped"),
        "{stdout}"
    );
    for name in [
        "ark",
        "ask",
        "vek_tcb",
        "vek_hwid",
        "report_signature",
        "vmpl",
    ] {
        assert!(
            stdout.contains(&format!("ok   {name} ")),
            "{name}: {stdout}"
        );
    }

    // The certificates from a directory (KDS chain and VCEK) and from a certificate table.
    let dir = s.dir.path().join("certs");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(data("vcek_milan.der"), dir.join("vcek.der")).unwrap();
    std::fs::copy(data("cert_chain_milan"), dir.join("cert_chain.pem")).unwrap();
    let dir = dir.display().to_string();
    let (code, stdout, _) = run(
        &verify_args(
            &s,
            &["--certs", &dir, "--catalog", &catalog, "--nonce", &nonce],
        ),
        &[],
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("cert_chain.pem certificate 1"),
        "the given ASK: {stdout}"
    );
    let table = cert_table::encode(&[TableEntry {
        kind: CertKind::Vcek,
        data: std::fs::read(data("vcek_milan.der")).unwrap(),
    }]);
    std::fs::write(s.dir.path().join("certs.bin"), table).unwrap();
    let table = s.path("certs.bin");
    let (code, stdout, _) = run(
        &verify_args(&s, &["--cert-table", &table, "--catalog", &catalog]),
        &[],
    );
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("skip report_data"),
        "no nonce, no freshness: {stdout}"
    );
}

#[test]
fn exit_1_names_every_failed_check_and_its_values() {
    let s = Scratch::new();
    let vcek = data("vcek_milan.der").display().to_string();
    // The built-in catalog: the report's 2023 firmware is below today's floor.
    let (code, stdout, stderr) = run(
        &verify_args(&s, &["--vcek", &vcek, "--nonce", &nonce()]),
        &[],
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("FAIL tcb_minimum") && stdout.contains("snp 8 < 21"),
        "{stdout}"
    );
    assert!(
        stdout.contains("11 checks: 10 passed, 1 failed"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 11 checks failed: tcb_minimum"),
        "{stderr}"
    );

    // Another nonce, and the VCEK of another chip.
    let catalog = s.path("catalog-2023.yaml");
    let other = data("vcek_milan_azure.pem").display().to_string();
    let (code, stdout, stderr) = run(
        &verify_args(
            &s,
            &["--vcek", &other, "--catalog", &catalog, "--nonce", "abcd"],
        ),
        &[],
    );
    assert_eq!(code, 1);
    assert!(
        stdout.contains("FAIL report_data") && stdout.contains("not the nonce abcd"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL vek_hwid") && stdout.contains("hwID da8a5695b5aeafdb"),
        "{stdout}"
    );
    assert!(
        stderr.contains("3 of 11 checks failed: vek_hwid, report_signature, report_data"),
        "{stderr}"
    );
}

#[test]
fn json_output() {
    let s = Scratch::new();
    let vcek = data("vcek_milan.der").display().to_string();
    let (code, stdout, _) = run(&verify_args(&s, &["--vcek", &vcek, "--json"]), &[]);
    assert_eq!(code, 1, "tcb_minimum fails with the built-in catalog");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["generation"], "milan");
    assert_eq!(v["signed_by"], "VCEK");
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 11);
    let tcb = checks.iter().find(|c| c["check"] == "tcb_minimum").unwrap();
    assert_eq!(tcb["status"], "failed");
    assert!(tcb["detail"]
        .as_str()
        .unwrap()
        .contains("microcode 115 < 211"));
    let data_check = checks.iter().find(|c| c["check"] == "report_data").unwrap();
    assert_eq!(data_check["status"], "skipped");
}

#[test]
fn exit_2_for_bad_input() {
    let s = Scratch::new();
    let vcek = data("vcek_milan.der").display().to_string();
    let missing = s.path("nope.bin");
    let expect = s.path("measurements.json");
    let (code, _, stderr) = plinth(&["attest", "verify", &missing, "--expect", &expect], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("{missing}: cannot read")),
        "{stderr}"
    );

    std::fs::write(s.dir.path().join("short.bin"), [0u8; 100]).unwrap();
    let short = s.path("short.bin");
    let (code, _, stderr) = plinth(&["attest", "verify", &short, "--expect", &expect], &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("short.bin: 100 bytes: expected an SEV-SNP attestation report"),
        "{stderr}"
    );

    let (code, _, stderr) = run(&verify_args(&s, &[]), &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no VCEK to check the report with") && stderr.contains("--fetch"),
        "{stderr}"
    );

    let (code, _, stderr) = run(&verify_args(&s, &["--vcek", &vcek, "--nonce", "xyz"]), &[]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--nonce: the nonce `xyz` is not hex"),
        "{stderr}"
    );

    let text = std::fs::read_to_string(&expect).unwrap();
    let mut m = Measurements::parse(&text, "m").unwrap();
    m.snp = None;
    std::fs::write(&expect, serde_json::to_string(&m).unwrap()).unwrap();
    let (code, _, stderr) = run(&verify_args(&s, &["--vcek", &vcek]), &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("has no `snp` part"), "{stderr}");
}

#[test]
fn fetch_from_kds_and_reuse_the_cache() {
    let s = Scratch::new();
    let report = real_report().parsed;
    let path = format!("vcek/v1/Milan/{}", hex::encode(report.chip_id));
    let files = HashMap::from([(path.clone(), std::fs::read(data("vcek_milan.der")).unwrap())]);
    let kds = TestServer::start(files, Faults::none());
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().display().to_string();
    let env = [
        ("PLINTH_KDS_URL", kds.url()),
        ("PLINTH_CACHE_DIR", cache_dir.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let catalog = s.path("catalog-2023.yaml");
    let nonce = nonce();

    // A version 2 report names no generation: without a VCEK it must be given.
    let (code, _, stderr) = run(&verify_args(&s, &["--fetch", "--catalog", &catalog]), &env);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--generation milan|genoa|turin"),
        "{stderr}"
    );

    let args = verify_args(
        &s,
        &[
            "--fetch",
            "--generation",
            "milan",
            "--catalog",
            &catalog,
            "--nonce",
            &nonce,
        ],
    );
    let (code, stdout, stderr) = run(&args, &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "fetching {}/{path}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115",
            kds.url()
        )),
        "{stderr}"
    );
    assert_eq!(kds.requests_for(&path), 1);
    let cached = cache
        .path()
        .join("kds/vcek/v1/Milan")
        .join(hex::encode(report.chip_id))
        .join("blSPL_03_teeSPL_00_snpSPL_08_ucodeSPL_115.der");
    assert!(cached.is_file(), "{}", cached.display());

    // Again: from the cache, no request.
    let (code, stdout, stderr) = run(&args, &env);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stderr.contains("fetching"), "{stderr}");
    assert_eq!(kds.requests_for(&path), 1);

    // A KDS that does not know the chip: no VCEK, so bad input (exit 2), saying what to do.
    let empty = TestServer::start(HashMap::<String, Vec<u8>>::new(), Faults::none());
    let other_cache = tempfile::tempdir().unwrap();
    let other_cache = other_cache.path().display().to_string();
    let url = empty.url();
    let env = [
        ("PLINTH_KDS_URL", url.as_str()),
        ("PLINTH_CACHE_DIR", other_cache.as_str()),
    ];
    let (code, _, stderr) = run(&args, &env);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("HTTP 404") && stderr.contains("--vcek"),
        "{stderr}"
    );
}

#[test]
fn help_has_examples() {
    let (code, stdout, _) = plinth(&["attest", "verify", "--help"], &[]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Examples:") && stdout.contains("plinth-guest attest --nonce"),
        "{stdout}"
    );
}

/// The synthetic AWS EC2 report's TCB as the floor (firmware's `testing::SYNTHETIC_TCB`).
const CATALOG_SYNTHETIC: &str = "format_version: 1\ngenerations:\n  - name: milan\n    cpu_family: 0x19\n    cpu_models: [[0x00, 0x0f]]\n    minimum_tcb: { bootloader: 4, tee: 0, snp: 21, microcode: 211 }\n";

/// The synthetic AWS EC2 case: `synthetic_vlek_report_milan.bin` (version 2, CHIP_ID zero,
/// signed by a Milan VLEK without productName, REPORT_DATA the nonce "a fresh nonce from
/// the verifier"), with measurements.json expecting what it carries, and these
/// certificate sources: `certs/` (vlek.pem and the KDS chain: ASVK `SEV-VLEK-Milan`, then
/// the test `ARK-Milan`), `asvk/` (vlek.pem and asvk.pem: the pinned ARK is used) and
/// `table.bin` (the host's certificate table: the VLEK only, as AWS's is). Read as bytes:
/// the report is not parsed here.
struct Aws {
    scratch: Scratch,
    report: String,
    nonce: String,
}

impl Aws {
    fn new() -> Aws {
        let bytes = std::fs::read(data("synthetic_vlek_report_milan.bin")).unwrap();
        assert_eq!(&bytes[0..4], &[2, 0, 0, 0], "version 2");
        assert!(
            bytes[0x1a0..0x1e0].iter().all(|&b| b == 0),
            "CHIP_ID masked"
        );
        let policy = u64::from_le_bytes(bytes[0x08..0x10].try_into().unwrap());
        let vmpl = u32::from_le_bytes(bytes[0x30..0x34].try_into().unwrap());
        let scratch = Scratch::expecting(
            &hex::encode(&bytes[0x90..0xc0]),
            policy & (1 << 16) != 0,
            vmpl,
            CATALOG_SYNTHETIC,
        );
        let vlek = std::fs::read(data("synthetic_vlek_milan.pem")).unwrap();
        let chain = std::fs::read_to_string(data("synthetic_vlek_cert_chain_milan.pem")).unwrap();
        let end = "-----END CERTIFICATE-----";
        let asvk = &chain[..chain.find(end).unwrap() + end.len()];
        let root = scratch.dir.path();
        for (dir, files) in [
            (
                "certs",
                [
                    ("vlek.pem", &vlek[..]),
                    ("cert_chain.pem", chain.as_bytes()),
                ],
            ),
            (
                "asvk",
                [("vlek.pem", &vlek[..]), ("asvk.pem", asvk.as_bytes())],
            ),
        ] {
            std::fs::create_dir(root.join(dir)).unwrap();
            for (name, content) in files {
                std::fs::write(root.join(dir).join(name), content).unwrap();
            }
        }
        let vlek_der = plinth_firmware::snp::certs::parse_cert(&vlek, "vlek.pem")
            .unwrap()
            .der;
        let table = cert_table::encode(&[TableEntry {
            kind: CertKind::Vlek,
            data: vlek_der,
        }]);
        std::fs::write(root.join("table.bin"), table).unwrap();
        Aws {
            report: data("synthetic_vlek_report_milan.bin")
                .display()
                .to_string(),
            nonce: hex::encode("a fresh nonce from the verifier"),
            scratch,
        }
    }

    /// `attest verify` of the report with the synthetic catalog, the nonce and `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let s = &self.scratch;
        let mut v: Vec<String> = vec![
            "attest".into(),
            "verify".into(),
            self.report.clone(),
            "--expect".into(),
            s.path("measurements.json"),
            "--catalog".into(),
            s.path("catalog-2023.yaml"),
            "--nonce".into(),
            self.nonce.clone(),
        ];
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    }

    fn path(&self, name: &str) -> String {
        self.scratch.path(name)
    }
}

/// The checks the synthetic VLEK report passes whatever root is pinned.
const VLEK_CHECKS_OK: [&str; 8] = [
    "vek",
    "vek_tcb",
    "report_signature",
    "measurement",
    "policy",
    "tcb_minimum",
    "report_data",
    "vmpl",
];

fn assert_vlek_checks_ran(stdout: &str) {
    for name in VLEK_CHECKS_OK {
        assert!(
            stdout.contains(&format!("ok   {name} ")),
            "{name}: {stdout}"
        );
    }
    assert!(
        stdout.contains("skip vek_hwid") && stdout.contains("a VLEK belongs to a cloud provider"),
        "{stdout}"
    );
}

/// Issue 18, 9: AWS EC2's reports were refused as "its processor generation cannot be
/// told". Now the chain's names tell it (Milan), and every check runs: all pass but the
/// chain's, whose test root is not AMD's pinned one.
#[test]
fn aws_vlek_report_with_masked_chip_id_gets_every_check() {
    let aws = Aws::new();
    let certs = aws.path("certs");
    let (code, stdout, stderr) = run(&aws.args(&["--certs", &certs]), &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.starts_with(
            "SEV-SNP report of a Milan node (generation: the ARK's subject `ARK-Milan`), signed by a VLEK:"
        ),
        "{stdout}"
    );
    assert_vlek_checks_ran(&stdout);
    assert!(
        stdout.contains("FAIL ark") && stdout.contains("is not the pinned Milan ARK"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL ask") && stdout.contains("is not signed by the pinned Milan ARK"),
        "{stdout}"
    );
    assert!(
        stdout.contains("11 checks: 8 passed, 2 failed, 1 skipped"),
        "{stdout}"
    );
    assert!(
        stderr.contains("2 of 11 checks failed: ark, ask"),
        "{stderr}"
    );

    // The ASVK alone (the pinned ARK is used): only `ask` fails, the generation from its name.
    let asvk = aws.path("asvk");
    let mut args = aws.args(&["--certs", &asvk, "--json"]);
    let (code, stdout, stderr) = run(&args, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["generation"], "milan");
    assert_eq!(v["generation_from"], "the ASVK's subject `SEV-VLEK-Milan`");
    assert_eq!(v["signed_by"], "VLEK");
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "failed")
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["ask"], "{stdout}");
    assert!(stderr.contains("1 of 11 checks failed: ask"), "{stderr}");
    // --generation agrees with the chain.
    args.extend(["--generation".to_string(), "milan".to_string()]);
    let (code, stdout, _) = run(&args, &[]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("\"generation_from\": \"--generation\""),
        "{stdout}"
    );
}

/// AWS's certificate table carries the VLEK only (no productName here): the generation
/// cannot be told without --generation, which then also says where to fetch the ASVK.
#[test]
fn aws_vlek_report_with_only_the_vlek_needs_the_generation() {
    let aws = Aws::new();
    let chain = std::fs::read(data("synthetic_vlek_cert_chain_milan.pem")).unwrap();
    let files = HashMap::from([("vlek/v1/Milan/cert_chain".to_string(), chain)]);
    let kds = TestServer::start(files, Faults::none());
    let cache = tempfile::tempdir().unwrap();
    let cache_dir = cache.path().display().to_string();
    let url = kds.url();
    let env = [
        ("PLINTH_KDS_URL", url.as_str()),
        ("PLINTH_CACHE_DIR", cache_dir.as_str()),
    ];
    let table = aws.path("table.bin");

    let (code, stdout, stderr) = run(&aws.args(&["--cert-table", &table, "--fetch"]), &env);
    assert_eq!(code, 2, "{stdout}{stderr}");
    for part in [
        "the processor generation cannot be told",
        "the report (version 2) has no CPUID",
        "no --generation",
        "has no productName",
        "no ARK given; no ASVK given",
        "hint: pass --generation milan|genoa|turin",
    ] {
        assert!(stderr.contains(part), "`{part}` not in: {stderr}");
    }
    assert_eq!(kds.requests_for("vlek/v1/Milan/cert_chain"), 0);

    let (code, stdout, stderr) = run(
        &aws.args(&["--cert-table", &table, "--fetch", "--generation", "milan"]),
        &env,
    );
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("fetching {url}/vlek/v1/Milan/cert_chain")),
        "{stderr}"
    );
    assert!(
        stdout.starts_with(
            "SEV-SNP report of a Milan node (generation: --generation), signed by a VLEK:"
        ),
        "{stdout}"
    );
    assert_vlek_checks_ran(&stdout);
    assert!(
        stderr.contains("2 of 11 checks failed: ark, ask"),
        "the test root is not AMD's: {stderr}"
    );
}

/// A chain of another generation than --generation says fails the `ask` check, naming both.
#[test]
fn aws_vlek_report_with_a_chain_of_another_generation() {
    let aws = Aws::new();
    let asvk = aws.path("asvk");
    let (code, stdout, stderr) = run(&aws.args(&["--certs", &asvk, "--generation", "genoa"]), &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("FAIL ask")
            && stdout.contains(
                "its subject `SEV-VLEK-Milan` names Milan, the node is Genoa (--generation)"
            ),
        "{stdout}"
    );
    assert!(stderr.contains("ask"), "{stderr}");
}

/// A VCEK-signed report with CHIP_ID masked: KDS cannot be asked for its VCEK (it finds
/// one by chip id); given, the VCEK's signature binds the report to the chip and vek_hwid
/// is skipped. (The real report with its chip id zeroed: its signature no longer holds.)
#[test]
fn masked_chip_id_vcek_report() {
    let s = Scratch::new();
    let mut bytes = real_report().bytes().to_vec();
    bytes[0x1a0..0x1e0].fill(0);
    std::fs::write(s.dir.path().join("masked.bin"), &bytes).unwrap();
    let masked = s.path("masked.bin");
    let expect = s.path("measurements.json");
    let catalog = s.path("catalog-2023.yaml");
    let nonce = nonce();
    let base = [
        "attest",
        "verify",
        &masked,
        "--expect",
        &expect,
        "--catalog",
        &catalog,
        "--nonce",
        &nonce,
    ];
    let mut fetch = base.to_vec();
    fetch.extend(["--fetch", "--generation", "milan"]);
    let (code, _, stderr) = plinth(&fetch, &[("PLINTH_KDS_URL", "http://127.0.0.1:1")]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("CHIP_ID is zero (masked by the host's MASK_CHIP_ID), so AMD's KDS cannot be asked for its VCEK")
            && stderr.contains("--vcek"),
        "{stderr}"
    );
    let vcek = data("vcek_milan.der").display().to_string();
    let mut given = base.to_vec();
    given.extend(["--vcek", &vcek]);
    let (code, stdout, stderr) = plinth(&given, &[]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("skip vek_hwid") && stdout.contains("CHIP_ID is zero"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of 11 checks failed: report_signature"),
        "{stderr}"
    );
}
