//! Bad os.yaml specs and the errors they produce.
//!
//! Every case starts from [`BASE`] (a realistic, valid GuestOS spec), applies one textual edit,
//! and asserts that `plinth::spec::parse` reports an error with the expected field path, on the
//! line of a marker substring of the edited text (and, for most cases, at the marker's column),
//! whose message quotes what was found and which carries a hint.
//! The last tests run `plinth check` on a temporary workspace for its exit codes and JSON.

use plinth::spec::{self, SpecError, SpecErrors};
use std::path::Path;

/// A valid spec. Edits below refer to its lines textually, so each edited snippet is unique.
const BASE: &str = r#"# GuestOS, as the tests know it.
os: guest-os
description: Replica VM with a verity-protected root
base:
  distribution: debian
  release: bookworm
  architecture: amd64
  variant: minbase
  components: [main, non-free-firmware]
  suites:
    - bookworm
    - bookworm-updates
    - bookworm-security
    - bookworm-backports
  mirror: http://deb.debian.org/debian
  security_mirror: http://security.debian.org/debian-security
packages:
  - linux-image-amd64/bookworm-backports
  - systemd
  - systemd-sysv
  - udev
  - cryptsetup-bin
  - lvm2
  - chrony
  - g++
disk:
  size: 16GiB
partitions:
  - name: esp
    size: 256MiB
    filesystem: vfat
    role: esp
  - name: root-a
    size: 3GiB
    filesystem: ext4
    role: root
    slot: A
  - name: verity-a
    size: 64MiB
    filesystem: raw
    role: verity
    slot: A
  - name: root-b
    size: 3GiB
    filesystem: ext4
    role: root
    slot: B
  - name: verity-b
    size: 64MiB
    filesystem: raw
    role: verity
    slot: B
  - {name: config, size: 128MiB, filesystem: ext4, role: config}
  - {name: data, size: 8GiB, filesystem: raw, role: data}
kernel:
  cmdline: [console=ttyS0, panic=10, "console=ttyS1,115200"]
firmware:
  source: {package: edk2, version: 2025.02-8+deb13u1, suite: trixie}
  toolchain: [build-essential, nasm]
snp:
  vcpus: [4, 16]
  vcpu_types: [EPYC-v4, EPYC-Milan]
  smt: true
profiles:
  prod:
    description: What nodes run
  test:
    description: Small enough for CI
    add_packages: [strace, gdb]
    remove_packages: [chrony]
    disk_size: 4GiB
    partition_sizes:
      root-a: 1GiB
      root-b: 1GiB
      data: 1GiB
    cmdline_append:
      - systemd.show_status=1
"#;

const PACKAGES_BLOCK: &str = "packages:
  - linux-image-amd64/bookworm-backports
  - systemd
  - systemd-sysv
  - udev
  - cryptsetup-bin
  - lvm2
  - chrony
  - g++
";

const PARTITIONS_BLOCK: &str = "partitions:
  - name: esp
    size: 256MiB
    filesystem: vfat
    role: esp
  - name: root-a
    size: 3GiB
    filesystem: ext4
    role: root
    slot: A
  - name: verity-a
    size: 64MiB
    filesystem: raw
    role: verity
    slot: A
  - name: root-b
    size: 3GiB
    filesystem: ext4
    role: root
    slot: B
  - name: verity-b
    size: 64MiB
    filesystem: raw
    role: verity
    slot: B
  - {name: config, size: 128MiB, filesystem: ext4, role: config}
  - {name: data, size: 8GiB, filesystem: raw, role: data}
";

const VERITY_B_BLOCK: &str = "  - name: verity-b
    size: 64MiB
    filesystem: raw
    role: verity
    slot: B
";

/// One bad spec: replace `from` (unique in BASE) by `to`; expect an error at `path` on the
/// line of `marker` (unique in the edited text), whose message contains `found`. With
/// `exact`, the error's column is the marker's column too.
struct Case {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    path: &'static str,
    marker: &'static str,
    found: &'static str,
    exact: bool,
}

const fn case(
    name: &'static str,
    from: &'static str,
    to: &'static str,
    path: &'static str,
    marker: &'static str,
    found: &'static str,
) -> Case {
    Case {
        name,
        from,
        to,
        path,
        marker,
        found,
        exact: true,
    }
}

/// Like [`case`], but only the line is checked.
const fn line_case(
    name: &'static str,
    from: &'static str,
    to: &'static str,
    path: &'static str,
    marker: &'static str,
    found: &'static str,
) -> Case {
    Case {
        exact: false,
        ..case(name, from, to, path, marker, found)
    }
}

const CASES: &[Case] = &[
    // --- YAML and shape (serde) ---------------------------------------------------------------
    line_case(
        "yaml syntax error",
        "  variant: minbase\n",
        "  variant: minbase\n    oops: indent\n",
        "base.variant",
        "oops: indent",
        "syntax error",
    ),
    line_case(
        "unclosed flow list",
        "  components: [main, non-free-firmware]\n",
        "  components: [main, non-free-firmware\n",
        "base.components",
        "  suites:",
        "syntax error",
    ),
    case(
        "unknown top-level field",
        "disk:\n",
        "extra: 1\ndisk:\n",
        "extra",
        "extra: 1",
        "extra",
    ),
    case(
        "unknown field in base",
        "  variant: minbase\n",
        "  variant: minbase\n  flavour: slim\n",
        "base.flavour",
        "flavour: slim",
        "flavour",
    ),
    case(
        "unknown field in a partition",
        "    role: esp\n",
        "    role: esp\n    type: ef00\n",
        "partitions[0].type",
        "type: ef00",
        "type",
    ),
    case(
        "misspelt field in a partition",
        "  - name: root-b\n    size: 3GiB\n    filesystem: ext4\n",
        "  - name: root-b\n    size: 3GiB\n    filesytem: ext4\n",
        "partitions[3].filesytem",
        "filesytem: ext4",
        "filesytem",
    ),
    case(
        "unknown field in a profile",
        "    description: What nodes run\n",
        "    description: What nodes run\n    packages: [vim]\n",
        "profiles.prod.packages",
        "packages: [vim]",
        "packages",
    ),
    case(
        "duplicate key",
        "  release: bookworm\n",
        "  release: bookworm\n  release: trixie\n",
        "base.release",
        "release: trixie",
        "release",
    ),
    case(
        "missing required field in base",
        "  variant: minbase\n",
        "",
        "base.variant",
        "base:",
        "variant",
    ),
    case(
        "missing field in a partition",
        "    filesystem: vfat\n",
        "",
        "partitions[0].filesystem",
        "name: esp",
        "filesystem",
    ),
    case(
        "missing top-level field",
        "kernel:\n  cmdline: [console=ttyS0, panic=10, \"console=ttyS1,115200\"]\n",
        "",
        "kernel",
        "os: guest-os",
        "kernel",
    ),
    case(
        "string where a list belongs",
        "  components: [main, non-free-firmware]",
        "  components: main",
        "base.components",
        "main",
        "main",
    ),
    case(
        "list where a string belongs",
        "description: Replica VM with a verity-protected root",
        "description: [Replica, VM]",
        "description",
        "[Replica",
        "a list",
    ),
    case(
        "scalar where a partition belongs",
        "  - {name: data, size: 8GiB, filesystem: raw, role: data}",
        "  - data",
        "partitions[6]",
        "data\n",
        "data",
    ),
    case(
        "unknown filesystem",
        "  - {name: data, size: 8GiB, filesystem: raw, role: data}",
        "  - {name: data, size: 8GiB, filesystem: ntfs, role: data}",
        "partitions[6].filesystem",
        "ntfs",
        "ntfs",
    ),
    case(
        "unknown slot",
        "    role: root\n    slot: A\n",
        "    role: root\n    slot: C\n",
        "partitions[1].slot",
        "C\n",
        "C",
    ),
    // --- sizes ----------------------------------------------------------------------------
    case(
        "decimal unit",
        "  - name: verity-a\n    size: 64MiB",
        "  - name: verity-a\n    size: 64MB",
        "partitions[2].size",
        "64MB",
        "64MB",
    ),
    case(
        "size without a unit",
        "  size: 16GiB",
        "  size: 16384",
        "disk.size",
        "16384",
        "16384",
    ),
    case(
        "fractional size",
        "      data: 1GiB",
        "      data: 1.5GiB",
        "profiles.test.partition_sizes.data",
        "1.5GiB",
        "1.5GiB",
    ),
    case(
        "zero size",
        "    size: 256MiB",
        "    size: 0MiB",
        "partitions[0].size",
        "0MiB",
        "0MiB",
    ),
    case(
        "garbage size",
        "    disk_size: 4GiB",
        "    disk_size: big",
        "profiles.test.disk_size",
        "big",
        "big",
    ),
    // --- os, description --------------------------------------------------------------------
    case(
        "os is not an OS",
        "os: guest-os",
        "os: guest",
        "os",
        "guest\n",
        "guest",
    ),
    case(
        "os is another directory",
        "os: guest-os",
        "os: host-os",
        "os",
        "host-os",
        "host-os",
    ),
    case(
        "empty description",
        "description: Replica VM with a verity-protected root",
        "description: \"\"",
        "description",
        "\"\"",
        "an empty string",
    ),
    // --- base -----------------------------------------------------------------------------
    case(
        "not debian",
        "  distribution: debian",
        "  distribution: ubuntu",
        "base.distribution",
        "ubuntu",
        "ubuntu",
    ),
    case(
        "unknown release",
        "  release: bookworm",
        "  release: buster",
        "base.release",
        "buster",
        "buster",
    ),
    case(
        "unknown architecture",
        "  architecture: amd64",
        "  architecture: x86_64",
        "base.architecture",
        "x86_64",
        "x86_64",
    ),
    case(
        "unknown variant",
        "  variant: minbase",
        "  variant: minimal",
        "base.variant",
        "minimal",
        "minimal",
    ),
    case(
        "no components",
        "  components: [main, non-free-firmware]",
        "  components: []",
        "base.components",
        "[]",
        "an empty list",
    ),
    case(
        "unknown component",
        "  components: [main, non-free-firmware]",
        "  components: [main, universe]",
        "base.components[1]",
        "universe",
        "universe",
    ),
    case(
        "duplicate component",
        "  components: [main, non-free-firmware]",
        "  components: [main, non-free-firmware, main]",
        "base.components[2]",
        "main]",
        "main",
    ),
    case(
        "no suites",
        "  suites:\n    - bookworm\n    - bookworm-updates\n    - bookworm-security\n    - bookworm-backports\n",
        "  suites: []\n",
        "base.suites",
        "[]",
        "an empty list",
    ),
    case(
        "release is not the first suite",
        "    - bookworm\n    - bookworm-updates\n",
        "    - bookworm-updates\n    - bookworm\n",
        "base.suites[0]",
        "bookworm-updates",
        "bookworm-updates",
    ),
    case(
        "suite of another release",
        "    - bookworm-updates",
        "    - trixie-updates",
        "base.suites[1]",
        "trixie-updates",
        "trixie-updates",
    ),
    case(
        "unknown suite",
        "    - bookworm-updates",
        "    - bookworm-proposed-updates",
        "base.suites[1]",
        "bookworm-proposed-updates",
        "bookworm-proposed-updates",
    ),
    case(
        "duplicate suite",
        "    - bookworm-backports",
        "    - bookworm-security",
        "base.suites[3]",
        "bookworm-security\n  mirror",
        "bookworm-security",
    ),
    case(
        "mirror without a scheme",
        "  mirror: http://deb.debian.org/debian",
        "  mirror: ftp://deb.debian.org/debian",
        "base.mirror",
        "ftp://",
        "ftp://deb.debian.org/debian",
    ),
    case(
        "mirror with a space",
        "  security_mirror: http://security.debian.org/debian-security",
        "  security_mirror: \"http://security.debian.org/debian security\"",
        "base.security_mirror",
        "\"http://security",
        "debian security",
    ),
    // --- packages -------------------------------------------------------------------------
    case(
        "no packages",
        PACKAGES_BLOCK,
        "packages: []\n",
        "packages",
        "[]",
        "an empty list",
    ),
    case(
        "upper-case package",
        "  - udev",
        "  - Udev",
        "packages[3]",
        "Udev",
        "Udev",
    ),
    case(
        "one-letter package",
        "  - udev",
        "  - u",
        "packages[3]",
        "u\n",
        "`u`",
    ),
    case(
        "package with a version",
        "  - systemd\n",
        "  - systemd=252.1\n",
        "packages[1]",
        "systemd=252.1",
        "systemd=252.1",
    ),
    case(
        "duplicate package",
        "  - lvm2\n",
        "  - lvm2\n  - systemd/bookworm-updates\n",
        "packages[6]",
        "systemd/bookworm-updates",
        "systemd/bookworm-updates",
    ),
    case(
        "package from a suite not in base.suites",
        "  - chrony",
        "  - chrony/bookworm-proposed",
        "packages[6]",
        "chrony/bookworm-proposed",
        "chrony/bookworm-proposed",
    ),
    case(
        "invalid add_packages entry",
        "[strace, gdb]",
        "[strace, GDB]",
        "profiles.test.add_packages[1]",
        "GDB",
        "GDB",
    ),
    case(
        "add_packages repeats a main package",
        "[strace, gdb]",
        "[strace, udev]",
        "profiles.test.add_packages[1]",
        "udev]",
        "udev",
    ),
    case(
        "add_packages from an unlisted suite",
        "[strace, gdb]",
        "[strace, gdb/trixie]",
        "profiles.test.add_packages[1]",
        "gdb/trixie",
        "gdb/trixie",
    ),
    case(
        "remove_packages names an unknown package",
        "    remove_packages: [chrony]",
        "    remove_packages: [chronyd]",
        "profiles.test.remove_packages[0]",
        "chronyd",
        "chronyd",
    ),
    case(
        "remove_packages twice",
        "    remove_packages: [chrony]",
        "    remove_packages: [chrony, udev, chrony]",
        "profiles.test.remove_packages[2]",
        "chrony]",
        "chrony",
    ),
    // --- partitions -----------------------------------------------------------------------
    case(
        "no partitions",
        PARTITIONS_BLOCK,
        "partitions: []\n",
        "partitions",
        "[]",
        "an empty list",
    ),
    case(
        "bad partition name",
        "{name: config,",
        "{name: Config,",
        "partitions[5].name",
        "Config",
        "Config",
    ),
    case(
        "partition name too long",
        "{name: config,",
        "{name: configuration-of-the-node-and-more-words,",
        "partitions[5].name",
        "configuration-of",
        "configuration-of-the-node-and-more-words",
    ),
    case(
        "duplicate partition name",
        "{name: data,",
        "{name: config,",
        "partitions[6].name",
        "config, size: 8GiB",
        "config",
    ),
    case(
        "second esp",
        "{name: config, size: 128MiB, filesystem: ext4, role: config}",
        "{name: config, size: 128MiB, filesystem: vfat, role: esp}",
        "partitions[5].role",
        "esp}",
        "second `esp`",
    ),
    case(
        "esp not vfat",
        "    filesystem: vfat",
        "    filesystem: ext4",
        "partitions[0].filesystem",
        "ext4\n    role: esp",
        "ext4",
    ),
    case(
        "root not ext4",
        "  - name: root-a\n    size: 3GiB\n    filesystem: ext4",
        "  - name: root-a\n    size: 3GiB\n    filesystem: raw",
        "partitions[1].filesystem",
        "raw\n    role: root",
        "raw",
    ),
    case(
        "verity not raw",
        "  - name: verity-a\n    size: 64MiB\n    filesystem: raw",
        "  - name: verity-a\n    size: 64MiB\n    filesystem: ext4",
        "partitions[2].filesystem",
        "ext4\n    role: verity\n    slot: A",
        "ext4",
    ),
    case(
        "vfat for data",
        "{name: data, size: 8GiB, filesystem: raw,",
        "{name: data, size: 8GiB, filesystem: vfat,",
        "partitions[6].filesystem",
        "vfat, role: data",
        "vfat",
    ),
    case(
        "root without a slot",
        "    role: root\n    slot: A\n",
        "    role: root\n",
        "partitions[1].slot",
        "name: root-a",
        "root-a",
    ),
    case(
        "slot B name without -b",
        "  - name: verity-b",
        "  - name: verity-c",
        "partitions[4].name",
        "verity-c",
        "verity-c",
    ),
    case(
        "slot A without its B half",
        VERITY_B_BLOCK,
        "",
        "partitions[2].slot",
        "A\n  - name: root-b",
        "verity-a",
    ),
    case(
        "slot B without its A half",
        "  - name: root-a\n",
        "  - name: rootfs-a\n",
        "partitions[3].slot",
        "B\n  - name: verity-b",
        "root-b",
    ),
    case(
        "A/B sizes differ",
        "  - name: root-b\n    size: 3GiB",
        "  - name: root-b\n    size: 2GiB",
        "partitions[3].size",
        "2GiB",
        "2GiB",
    ),
    case(
        "A/B roles differ",
        "    role: verity\n    slot: B",
        "    role: data\n    slot: B",
        "partitions[4].role",
        "data\n    slot: B",
        "data",
    ),
    case(
        "partitions overflow the disk",
        "  size: 16GiB",
        "  size: 8GiB",
        "disk.size",
        "8GiB\npartitions",
        "8GiB",
    ),
    case(
        "partitions overflow the disk in a profile",
        "    disk_size: 4GiB",
        "    disk_size: 3GiB",
        "profiles.test.disk_size",
        "3GiB\n    partition_sizes",
        "profile `test`",
    ),
    // --- kernel ---------------------------------------------------------------------------
    case(
        "cmdline argument with a space",
        "panic=10,",
        "\"panic=10 quiet\",",
        "kernel.cmdline[1]",
        "\"panic=10 quiet\"",
        "panic=10 quiet",
    ),
    case(
        "reserved cmdline argument",
        "panic=10,",
        "root=/dev/sda2,",
        "kernel.cmdline[1]",
        "root=/dev/sda2",
        "root=/dev/sda2",
    ),
    case(
        "empty cmdline argument",
        "panic=10,",
        "\"\",",
        "kernel.cmdline[1]",
        "\"\",",
        "an empty string",
    ),
    case(
        "unquoted comma in a flow list",
        "\"console=ttyS1,115200\"",
        "console=ttyS1,115200",
        "kernel.cmdline[3]",
        "115200",
        "115200",
    ),
    case(
        "reserved argument in cmdline_append",
        "      - systemd.show_status=1",
        "      - systemd.verity_root_options=panic-on-corruption",
        "profiles.test.cmdline_append[0]",
        "systemd.verity_root",
        "systemd.verity_root_options",
    ),
    // --- profiles -------------------------------------------------------------------------
    case(
        "missing prod profile",
        "  prod:\n",
        "  staging:\n",
        "profiles.prod",
        "profiles:",
        "staging",
    ),
    case(
        "bad profile name",
        "profiles:\n",
        "profiles:\n  Debug: {}\n",
        "profiles.Debug",
        "Debug",
        "Debug",
    ),
    case(
        "profile overlay outside rootfs-<name>",
        "    cmdline_append:\n",
        "    overlay: ../etc\n    cmdline_append:\n",
        "profiles.test.overlay",
        "../etc",
        "../etc",
    ),
    case(
        "partition_sizes names no partition",
        "      data: 1GiB",
        "      datta: 1GiB",
        "profiles.test.partition_sizes.datta",
        "datta",
        "datta",
    ),
    case(
        "partition_sizes overrides one A/B half",
        "      root-b: 1GiB\n",
        "",
        "profiles.test.partition_sizes.root-a",
        "root-a: 1GiB",
        "root-a",
    ),
    case(
        "firmware from another source package",
        "package: edk2",
        "package: edk3",
        "firmware.source.package",
        "edk3",
        "edk3",
    ),
    case(
        "firmware source from an unknown release",
        "suite: trixie}",
        "suite: jessie}",
        "firmware.source.suite",
        "jessie",
        "jessie",
    ),
    case(
        "firmware toolchain package misspelt",
        "toolchain: [build-essential, nasm]",
        "toolchain: [build-essential, NASM]",
        "firmware.toolchain[1]",
        "NASM",
        "NASM",
    ),
    case(
        "snp vCPU type QEMU does not know",
        "vcpu_types: [EPYC-v4, EPYC-Milan]",
        "vcpu_types: [EPYC-v4, EPYC-Milano]",
        "snp.vcpu_types[1]",
        "EPYC-Milano",
        "EPYC-Milano",
    ),
    case(
        "snp vCPU count zero",
        "vcpus: [4, 16]",
        "vcpus: [4, 0]",
        "snp.vcpus[1]",
        "0]",
        "0",
    ),
    case(
        "snp without firmware",
        "firmware:\n  source: {package: edk2, version: 2025.02-8+deb13u1, suite: trixie}\n  toolchain: [build-essential, nasm]\n",
        "",
        "snp",
        "vcpus: [4, 16]",
        "no `firmware`",
    ),
    case(
        "partition_sizes gives A/B halves different sizes",
        "      root-b: 1GiB",
        "      root-b: 2GiB",
        "profiles.test.partition_sizes.root-b",
        "2GiB",
        "2GiB",
    ),
];

fn parse(text: &str) -> Result<spec::OsSpec, SpecErrors> {
    spec::parse(text, "guest-os/os.yaml", "guest-os")
}

/// 1-based (line, column) of the unique occurrence of `marker` in `text`.
fn position_of(text: &str, marker: &str) -> (usize, usize) {
    try_position_of(text, marker).unwrap_or_else(|e| panic!("{e}"))
}

fn try_position_of(text: &str, marker: &str) -> Result<(usize, usize), String> {
    let found: Vec<usize> = text.match_indices(marker).map(|(i, _)| i).collect();
    if found.len() != 1 {
        return Err(format!("marker `{marker}` occurs {} times", found.len()));
    }
    let before = &text[..found[0]];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    Ok((line, column))
}

fn describe(errors: &[SpecError]) -> String {
    errors
        .iter()
        .map(|e| format!("  [{}] {e}", e.path))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn base_spec_is_valid_and_both_profiles_apply() {
    let spec = parse(BASE).unwrap_or_else(|e| panic!("base spec must be valid:\n{e}"));
    assert_eq!(spec.profile_names(), ["prod", "test"]);
    let prod = spec.profile("prod").unwrap();
    let test = spec.profile("test").unwrap();
    assert_eq!(prod.disk_size.to_string(), "16GiB");
    assert_eq!(test.disk_size.to_string(), "4GiB");
    let root_a = |p: &spec::Profile| {
        p.partitions
            .iter()
            .find(|p| p.name == "root-a")
            .unwrap()
            .size
    };
    assert_eq!(root_a(&prod).to_string(), "3GiB");
    assert_eq!(root_a(&test).mib(), 1024);
    let names = |p: &spec::Profile| p.packages.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    assert!(names(&prod).contains(&"chrony".to_string()));
    assert!(!names(&test).contains(&"chrony".to_string()));
    assert!(names(&test).contains(&"gdb".to_string()));
    assert!(names(&prod).contains(&"linux-image-amd64/bookworm-backports".to_string()));
    assert_eq!(
        test.cmdline,
        [
            "console=ttyS0",
            "panic=10",
            "console=ttyS1,115200",
            "systemd.show_status=1"
        ]
    );
    // A spec survives a YAML round trip (sizes serialize back to their shortest form).
    let yaml = serde_yaml::to_string(&spec).unwrap();
    assert_eq!(parse(&yaml).unwrap(), spec);
}

#[test]
fn bad_specs_report_path_position_found_and_hint() {
    assert!(CASES.len() >= 30);
    let mut failures = Vec::new();
    for c in CASES {
        assert_eq!(
            BASE.matches(c.from).count(),
            1,
            "{}: `from` must occur exactly once in BASE",
            c.name
        );
        let text = BASE.replacen(c.from, c.to, 1);
        let (line, column) = match try_position_of(&text, c.marker) {
            Ok(pos) => pos,
            Err(e) => {
                failures.push(format!("{}: {e}", c.name));
                continue;
            }
        };
        let errors = match parse(&text) {
            Ok(_) => {
                failures.push(format!("{}: the spec was accepted", c.name));
                continue;
            }
            Err(e) => e.0,
        };
        let Some(err) = errors.iter().find(|e| e.path == c.path) else {
            failures.push(format!(
                "{}: no error at `{}`; got:\n{}",
                c.name,
                c.path,
                describe(&errors)
            ));
            continue;
        };
        let mut problems = Vec::new();
        if err.line != line {
            problems.push(format!("line {} (expected {line})", err.line));
        }
        if c.exact && err.column != column {
            problems.push(format!("column {} (expected {column})", err.column));
        }
        let rendered = err.to_string();
        if !rendered.contains(c.found) {
            problems.push(format!("message lacks `{}`", c.found));
        }
        if err.file != "guest-os/os.yaml" || err.expected.is_empty() || err.found.is_empty() {
            problems.push("file, expected or found is empty".into());
        }
        if err.hint.is_empty() {
            problems.push("no hint".into());
        }
        let prefix = format!(
            "guest-os/os.yaml:{}:{}: {}: expected ",
            err.line, err.column, c.path
        );
        if !rendered.starts_with(&prefix) || !rendered.contains("\n  hint: ") {
            problems.push("rendering is not `file:line:col: path: expected ..`".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}\n  {rendered}", c.name, problems.join(", ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn all_rule_violations_are_reported_together() {
    let text = BASE
        .replacen("  distribution: debian", "  distribution: ubuntu", 1)
        .replacen("  - udev", "  - Udev", 1)
        .replacen("panic=10,", "root=/dev/sda2,", 1)
        .replacen("[chrony]", "[chronyd]", 1);
    let errors = parse(&text).unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "base.distribution",
            "packages[3]",
            "kernel.cmdline[1]",
            "profiles.test.remove_packages[0]"
        ],
        "errors are sorted by position:\n{errors}"
    );
    assert_eq!(errors.to_string().lines().count(), 8);
}

#[test]
fn empty_and_unreadable_specs() {
    let e = parse("- os: guest-os\n").unwrap_err();
    assert_eq!(
        (e.0[0].line, e.0[0].column, e.0[0].path.as_str()),
        (1, 1, "")
    );
    assert!(e.to_string().contains("found a list"), "{e}");
    let e = parse("# nothing here\n").unwrap_err();
    assert_eq!(e.0[0].line, 1);
    assert!(e.to_string().contains("empty document"), "{e}");
    let e = spec::load(
        Path::new("/nonexistent/guest-os/os.yaml"),
        "guest-os/os.yaml",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("guest-os/os.yaml: cannot read the file"),
        "{e}"
    );
}

#[test]
fn errors_are_std_errors_that_anyhow_can_carry() {
    let err: anyhow::Error = parse("os: [").unwrap_err().into();
    assert!(err.chain().any(|e| e.is::<SpecErrors>()));
    assert_eq!(plinth::cli::exit_code(&err), 2);
}

// --- plinth check ------------------------------------------------------------------------------

/// A workspace with the base spec for all three OSes; `guest-os` gets `guest_text`.
fn workspace(guest_text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for os in spec::OS_NAMES {
        let text = if os == "guest-os" {
            guest_text.to_string()
        } else {
            BASE.replacen("os: guest-os", &format!("os: {os}"), 1)
        };
        std::fs::create_dir_all(dir.path().join(os)).unwrap();
        std::fs::write(dir.path().join(os).join("os.yaml"), text).unwrap();
    }
    dir
}

fn plinth_check(root: &Path, extra: &[&str]) -> std::process::Output {
    crate::support::Plinth::new()
        .root(root)
        .args(["check"])
        .args(extra)
        .output()
}

#[test]
fn plinth_check_exit_codes() {
    let good = workspace(BASE);
    let out = plinth_check(good.path(), &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(
        stdout.contains("ok guest-os/os.yaml (profiles: prod, test)"),
        "{stdout}"
    );

    let bad = workspace(&BASE.replacen("  size: 16GiB", "  size: 16GB", 1));
    // A second bad spec: its errors are reported too.
    let host = bad.path().join("host-os/os.yaml");
    let host_text = std::fs::read_to_string(&host).unwrap();
    std::fs::write(&host, host_text.replacen("  - udev", "  - Udev", 1)).unwrap();
    let out = plinth_check(bad.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let (line, col) = position_of(&BASE.replacen("  size: 16GiB", "  size: 16GB", 1), "16GB");
    assert!(
        stderr.contains(&format!(
            "guest-os/os.yaml:{line}:{col}: disk.size: expected"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("host-os/os.yaml:"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok setup-os/os.yaml"));

    let out = plinth_check(bad.path(), &["guest-os", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["specs"].as_array().unwrap().len(), 1);
    let spec = &json["specs"][0];
    assert_eq!(spec["file"], "guest-os/os.yaml");
    assert_eq!(spec["ok"], false);
    let err = &spec["errors"][0];
    assert_eq!(err["path"], "disk.size");
    assert_eq!(err["line"], line);
    assert_eq!(err["column"], col);
    for field in ["file", "expected", "found", "hint"] {
        assert!(err[field].is_string(), "{field} in {err}");
    }

    let out = plinth_check(good.path(), &["all", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["specs"].as_array().unwrap().len(), 3);

    let out = plinth_check(good.path(), &["windows-os"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The project's own specs are valid; SetupOS is the single-slot case (no A/B, one root, a FAT
/// config partition for the node provider).
#[test]
fn project_specs_are_valid_and_a_single_slot_spec_has_one_root() {
    for (os, text) in [
        ("guest-os", include_str!("../../../guest-os/os.yaml")),
        ("host-os", include_str!("../../../host-os/os.yaml")),
        ("setup-os", include_str!("../../../setup-os/os.yaml")),
    ] {
        let file = format!("{os}/os.yaml");
        if let Err(e) = plinth::spec::parse(text, &file, os) {
            panic!("{file} is invalid:\n{e}");
        }
    }
    let setup = include_str!("../../../setup-os/os.yaml");
    let verity = "  - {name: verity, size: 32MiB, filesystem: raw, role: verity}";
    assert!(setup.contains(verity));
    let two_roots = setup.replace(
        verity,
        "  - {name: root2, size: 32MiB, filesystem: ext4, role: root}",
    );
    let errs = plinth::spec::parse(&two_roots, "setup-os/os.yaml", "setup-os").unwrap_err();
    let line = two_roots
        .lines()
        .position(|l| l.contains("name: root2"))
        .unwrap()
        + 1;
    let e = errs
        .iter()
        .find(|e| e.path.ends_with("].role") && e.found.contains("a second root"))
        .unwrap_or_else(|| panic!("no second-root error in:\n{errs}"));
    assert_eq!(e.line, line, "{e}");
}
