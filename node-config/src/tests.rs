use super::*;

const GENERATIONS: [&str; 2] = ["gen2-genoa", "qemu-test"];

/// The example in docs/node-config.md: it must stay valid.
pub const EXAMPLE: &str = include_str!("../../docs/node-config.example.yaml");

fn errors(text: &str) -> Vec<String> {
    match NodeConfig::parse(text, "config.yaml", &GENERATIONS) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

fn with(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "the example has no `{from}`");
    EXAMPLE.replace(from, to)
}

#[test]
fn the_documented_example_is_valid() {
    let c = NodeConfig::parse(EXAMPLE, "config.yaml", &GENERATIONS).unwrap();
    assert_eq!(c.generation, "gen2-genoa");
    assert_eq!(c.network.ipv6.prefix, "2001:db8:1:2::/64");
    assert!(c.network.ipv4.is_some());
    assert_eq!(c.admin_ssh_keys.len(), 1);
    assert_eq!(c.target_disks.len(), 2);
    assert_eq!(c.acknowledged_warnings, ["nvme.models"]);
}

#[test]
fn each_bad_field_is_named_with_its_line() {
    let cases = [
        ("generation: gen2-genoa", "generation: gen9", "generation"),
        ("/64\"", "/48\"", "network.ipv6.prefix"),
        (
            "2001:db8:1:2::/64",
            "fd00:1:2:3::/64",
            "network.ipv6.prefix",
        ),
        (
            "2001:db8:1:2::/64",
            "2001:db8:1:2::5/64",
            "network.ipv6.prefix",
        ),
        (
            "2001:db8:1:2::1\"",
            "2001:db8:9:9::1\"",
            "network.ipv6.gateway",
        ),
        ("192.0.2.10/24", "192.0.2.10/40", "network.ipv4.address"),
        ("192.0.2.10/24", "192.0.2.10/+24", "network.ipv4.address"),
        (
            "gateway: 192.0.2.1",
            "gateway: 198.51.100.1",
            "network.ipv4.gateway",
        ),
        (
            "node_operator_key: node_operator_private_key.pem",
            "node_operator_key: ../etc/shadow",
            "node_operator_key",
        ),
        ("ssh-ed25519 AAAA", "ssh-rsa AAAA", "admin_ssh_keys[0]"),
        (
            "serial: S5GXNX0T123456",
            "serial: /dev/sda",
            "target_disks[0].serial",
        ),
        (
            "wwn: eui.0025388b11223344",
            "wwn: eui.12",
            "target_disks[1].wwn",
        ),
        ("[nvme.models]", "[NVMe models]", "acknowledged_warnings[0]"),
        ("format_version: 1", "format_version: 2", "format_version"),
    ];
    for (from, to, field) in cases {
        let text = with(from, to);
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{to}: {errs:?}");
        let line = text
            .lines()
            .position(|l| l.contains(to.trim_end_matches('"')))
            .unwrap()
            + 1;
        assert!(
            errs[0].starts_with(&format!("config.yaml:{line}:")),
            "{to}: expected line {line}: {}",
            errs[0]
        );
        assert!(
            errs[0].contains(&format!(": {field}: expected ")),
            "{}",
            errs[0]
        );
        assert!(errs[0].contains("\n  hint: "), "{}", errs[0]);
    }
}

#[test]
fn structure_errors_are_positioned() {
    let errs = errors(&with("admin_ssh_keys:", "admin_keys:"));
    assert!(errs[0].contains("unknown field `admin_keys`"), "{errs:?}");
    assert!(errs[0].starts_with("config.yaml:"), "{errs:?}");
    let errs = errors(&with("  - serial: S5GXNX0T123456", "  - name: /dev/sda"));
    assert!(errs[0].contains("target_disks[0]"), "{errs:?}");
    let errs = errors(&format!("{EXAMPLE}generation: qemu-test\n"));
    assert!(errs[0].contains("each key once"), "{errs:?}");
    let errs = errors("");
    assert!(errs[0].contains("an empty document"), "{errs:?}");
}

#[test]
fn a_disk_listed_twice_is_refused() {
    let text = with(
        "  - wwn: eui.0025388b11223344",
        "  - serial: S5GXNX0T123456",
    );
    let errs = errors(&text);
    assert!(
        errs[0].contains("target_disks[1]") && errs[0].contains("each disk once"),
        "{errs:?}"
    );
}

#[test]
fn reading_checks_the_file_and_the_key_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, EXAMPLE).unwrap();
    let err = NodeConfig::read(&config, &GENERATIONS)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node_operator_key") && err.contains("cannot read"),
        "{err}"
    );
    let key = dir.path().join("node_operator_private_key.pem");
    std::fs::write(&key, "not a key").unwrap();
    let err = NodeConfig::read(&config, &GENERATIONS)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a PEM private key"), "{err}");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    NodeConfig::read(&config, &GENERATIONS).unwrap();
    // The bytes checked are the bytes handed on, for the flash and the install to copy.
    let files = ProviderFiles::read(&config, &GENERATIONS).unwrap();
    assert_eq!(files.config_bytes, EXAMPLE.as_bytes());
    assert_eq!(files.key_bytes, std::fs::read(&key).unwrap());
    assert_eq!(
        files.config,
        NodeConfig::read(&config, &GENERATIONS).unwrap()
    );

    // A link planted for the key or the config is not followed.
    std::fs::remove_file(&key).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", &key).unwrap();
    assert!(NodeConfig::read(&config, &GENERATIONS).is_err());
    let link = dir.path().join("link.yaml");
    std::os::unix::fs::symlink(&config, &link).unwrap();
    let err = NodeConfig::read(&link, &GENERATIONS)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read"), "{err}");

    // Too large, not UTF-8.
    std::fs::write(&config, vec![b'#'; MAX_SIZE as usize + 1]).unwrap();
    assert!(NodeConfig::read(&config, &GENERATIONS).is_err());
    std::fs::write(&config, b"generation: \xff\n").unwrap();
    let err = NodeConfig::read(&config, &GENERATIONS)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not UTF-8"), "{err}");
}

#[test]
fn names() {
    assert!(is_wwn("eui.0025388b11223344"));
    assert!(is_wwn("naa.5000c500a1b2c3d45000c500a1b2c3d4"));
    assert!(is_wwn("nvme.1b36-504c494e5448-51454d55-00000001"));
    assert!(!is_wwn("0x5000c500a1b2c3d4"), "never a wwid's form");
    assert!(!is_wwn("eui.0025388b1122334"));
    assert!(!is_wwn("nvme0n1"));
    assert!(is_serial("S5GXNX0T123456"));
    assert!(!is_serial("a b"));
    assert!(!is_serial(""));
    assert!(is_check_id("memory.balance"));
    assert!(!is_check_id("memory..balance"));
}
