//! Parsing and validating an `os.yaml`.
//!
//! [`parse_and_validate`] runs three stages; each error names the file, line and column, the
//! field path, what was expected, what was found and a hint:
//!
//! 1. **YAML**: the text is indexed with [`PositionIndex`] (syntax errors and keys repeated in a
//!    mapping stop here).
//! 2. **Shape**: serde deserializes [`OsSpec`] strictly (unknown fields, missing fields and
//!    wrong types stop here; serde reports only the first such error).
//! 3. **Rules**: every check in [`CHECKS`] runs and all their errors are reported together,
//!    sorted by position. Each check is a small function named after what it checks; to find a
//!    rule, look for `fn check_<section>_<rule>` below.

use super::position::{join_index, join_key, Pos, PositionIndex};
use super::size::{Size, MIB};
use super::OS_NAMES;
use super::{Filesystem, OsSpec, PackageRequest, Partition, Role, Slot, SpecError, SpecErrors};
use crate::names::is_simple_name;
use plinth_yaml::document::{duplicate_key_errors, serde_problem, syntax_error, SerdeProblem};
use std::collections::HashMap;

/// Debian releases plinth knows how to build from.
pub const RELEASES: [&str; 2] = ["bookworm", "trixie"];
/// Debian architectures plinth builds for.
pub const ARCHITECTURES: [&str; 2] = ["amd64", "arm64"];
/// mmdebstrap variants.
pub const VARIANTS: [&str; 6] = [
    "essential",
    "apt",
    "required",
    "minbase",
    "important",
    "standard",
];
/// Debian archive areas.
pub const COMPONENTS: [&str; 4] = ["main", "contrib", "non-free", "non-free-firmware"];
/// Suites besides the release itself: `<release>-<pocket>`.
pub const POCKETS: [&str; 3] = ["updates", "security", "backports"];
/// Profiles every spec must define.
pub const REQUIRED_PROFILES: [&str; 2] = ["prod", "test"];
/// Kernel arguments the builder adds itself (prefixes).
pub const RESERVED_CMDLINE: [&str; 3] = ["root=", "roothash=", "systemd.verity"];
/// Disk space taken by the two GPT copies and 1 MiB alignment.
pub const GPT_OVERHEAD_MIB: u64 = 2;
/// The longest GPT partition name (36 UTF-16 code units).
pub const GPT_NAME_MAX: usize = 36;

/// Parse `text` as an `os.yaml` named `file` in directory `expected_os`, and validate it.
pub fn parse_and_validate(text: &str, file: &str, expected_os: &str) -> Result<OsSpec, SpecErrors> {
    let index =
        PositionIndex::build(text).map_err(|e| SpecErrors::single(syntax_error(file, e)))?;
    if index.value("").is_none() {
        return Err(SpecErrors::single(SpecError {
            file: file.to_string(),
            line: 1,
            column: 1,
            path: String::new(),
            expected: "a YAML mapping with os, description, base, packages, disk, partitions, \
                       kernel and profiles"
                .into(),
            found: "an empty document".into(),
            hint: "start from another OS's os.yaml".into(),
        }));
    }
    let duplicates = duplicate_key_errors(file, &index);
    if !duplicates.is_empty() {
        return Err(SpecErrors(duplicates));
    }
    let spec: OsSpec = serde_yaml::from_str(text)
        .map_err(|e| SpecErrors::single(serde_error(file, &index, &e)))?;
    let errors = validate(&spec, file, expected_os, &index);
    if errors.is_empty() {
        Ok(spec)
    } else {
        Err(SpecErrors(errors))
    }
}

/// Run every check on a deserialized spec; errors are sorted by position.
pub fn validate(
    spec: &OsSpec,
    file: &str,
    expected_os: &str,
    index: &PositionIndex,
) -> Vec<SpecError> {
    let mut cx = Checker {
        spec,
        file,
        expected_os,
        index,
        errors: Vec::new(),
    };
    for check in CHECKS {
        check(&mut cx);
    }
    cx.errors.sort_by_key(|e| (e.line, e.column));
    cx.errors
}

/// The rules, in the order of the spec's sections.
pub const CHECKS: &[fn(&mut Checker)] = &[
    check_os_name,
    check_description,
    check_base_distribution,
    check_base_release,
    check_base_architecture,
    check_base_variant,
    check_base_components,
    check_base_suites,
    check_base_mirrors,
    check_packages,
    check_partitions_not_empty,
    check_partition_names,
    check_partition_sizes,
    check_partition_roles,
    check_partition_slots,
    check_partitions_fit_disk,
    check_kernel_cmdline,
    check_firmware,
    check_snp,
    check_carries,
    check_profiles_required,
    check_profile_names,
    check_profile_packages,
    check_profile_partition_sizes,
    check_profile_cmdline,
    check_profile_overlay,
];

/// The state the checks share: the spec, where its fields are, and the errors so far.
pub struct Checker<'a> {
    spec: &'a OsSpec,
    file: &'a str,
    expected_os: &'a str,
    index: &'a PositionIndex,
    errors: Vec<SpecError>,
}

impl Checker<'_> {
    /// An error about the value at `path` (or, if it is absent, its nearest parent).
    fn at(
        &mut self,
        path: &str,
        expected: impl Into<String>,
        found: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let pos = self.index.locate(path);
        self.push(pos, path, expected.into(), found.into(), hint.into());
    }

    /// An error about the key of the mapping entry at `path`.
    fn at_key(
        &mut self,
        path: &str,
        expected: impl Into<String>,
        found: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let pos = self.index.locate_key(path);
        self.push(pos, path, expected.into(), found.into(), hint.into());
    }

    fn push(&mut self, pos: Pos, path: &str, expected: String, found: String, hint: String) {
        self.errors.push(SpecError {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.column,
            path: path.to_string(),
            expected,
            found,
            hint,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// os, description

/// `os` is one of the OS names and equals the directory holding the spec.
fn check_os_name(cx: &mut Checker) {
    let spec = cx.spec;
    let os = &spec.os;
    if !OS_NAMES.contains(&os.as_str()) {
        let hint = match closest(os, &OS_NAMES) {
            Some(s) => format!("did you mean `{s}`?"),
            None => "os names the OS this spec builds, as its directory is named".into(),
        };
        cx.at("os", one_of(&OS_NAMES), q(os), hint);
    } else if os != cx.expected_os {
        let expected = format!("`{}` (the directory holding this spec)", cx.expected_os);
        let hint = format!(
            "a spec describes the OS of its own directory; write `os: {}`",
            cx.expected_os
        );
        cx.at("os", expected, q(os), hint);
    }
}

/// `description` is one non-empty line.
fn check_description(cx: &mut Checker) {
    let d = cx.spec.description.trim();
    if d.is_empty() {
        cx.at(
            "description",
            "a one-line description of what the OS is for",
            "an empty string",
            "e.g. `description: The VM image that runs the replica`",
        );
    } else if d.contains('\n') {
        let lines = d.lines().count();
        cx.at(
            "description",
            "a single line",
            format!("{lines} lines"),
            "keep the description to one line; put details in the OS's README",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// base

/// `base.distribution` is `debian`.
fn check_base_distribution(cx: &mut Checker) {
    let spec = cx.spec;
    let d = &spec.base.distribution;
    if d != "debian" {
        cx.at(
            "base.distribution",
            "`debian`",
            q(d),
            "plinth builds Debian-based images only",
        );
    }
}

/// `base.release` is a known Debian codename.
fn check_base_release(cx: &mut Checker) {
    let spec = cx.spec;
    let r = &spec.base.release;
    if RELEASES.contains(&r.as_str()) {
        return;
    }
    let hint = match r.to_ascii_lowercase().as_str() {
        "12" => "write the codename, not the version: `bookworm`".to_string(),
        "13" => "write the codename, not the version: `trixie`".to_string(),
        "stable" | "testing" | "unstable" | "sid" | "oldstable" => {
            "name a fixed release, not a moving suite, so builds stay reproducible".to_string()
        }
        lower if RELEASES.contains(&lower) => format!("codenames are lower case: `{lower}`"),
        _ => format!("plinth knows the releases {}", RELEASES.join(", ")),
    };
    cx.at("base.release", one_of(&RELEASES), q(r), hint);
}

/// `base.architecture` is a Debian architecture plinth builds for.
fn check_base_architecture(cx: &mut Checker) {
    let spec = cx.spec;
    let a = &spec.base.architecture;
    if ARCHITECTURES.contains(&a.as_str()) {
        return;
    }
    let hint = match a.as_str() {
        "x86_64" | "x86-64" | "x64" => "Debian calls it `amd64`".to_string(),
        "aarch64" | "arm" | "armv8" => "Debian calls it `arm64`".to_string(),
        _ => "use the Debian architecture name".to_string(),
    };
    cx.at("base.architecture", one_of(&ARCHITECTURES), q(a), hint);
}

/// `base.variant` is an mmdebstrap variant.
fn check_base_variant(cx: &mut Checker) {
    let spec = cx.spec;
    let v = &spec.base.variant;
    if !VARIANTS.contains(&v.as_str()) {
        let hint = match closest(v, &VARIANTS) {
            Some(s) => format!("did you mean `{s}`? (see mmdebstrap(1), --variant)"),
            None => "these are mmdebstrap's variants; see mmdebstrap(1), --variant".into(),
        };
        cx.at("base.variant", one_of(&VARIANTS), q(v), hint);
    }
}

/// `base.components`: at least one, each a Debian archive area, none twice.
fn check_base_components(cx: &mut Checker) {
    let components = &cx.spec.base.components;
    if components.is_empty() {
        cx.at(
            "base.components",
            "at least one archive component",
            "an empty list",
            "write `components: [main]`",
        );
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, c) in components.iter().enumerate() {
        let path = join_index("base.components", i);
        if let Some(first) = seen.get(c.as_str()) {
            cx.at(
                &path,
                "each component once",
                format!("`{c}` again (first at base.components[{first}])"),
                "remove the repeated entry",
            );
            continue;
        }
        seen.insert(c, i);
        if !COMPONENTS.contains(&c.as_str()) {
            let hint = match closest(c, &COMPONENTS) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "these are Debian's archive areas".into(),
            };
            cx.at(&path, one_of(&COMPONENTS), q(c), hint);
        }
    }
}

/// `base.suites`: the release first, then `<release>-updates|security|backports`, none twice.
fn check_base_suites(cx: &mut Checker) {
    let spec = cx.spec;
    let release = &spec.base.release;
    let suites = &spec.base.suites;
    let allowed: Vec<String> = std::iter::once(release.clone())
        .chain(POCKETS.iter().map(|p| format!("{release}-{p}")))
        .collect();
    if suites.is_empty() {
        cx.at(
            "base.suites",
            format!("the release's suites, starting with `{release}`"),
            "an empty list",
            format!("e.g. `suites: [{release}, {release}-updates, {release}-security]`"),
        );
        return;
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, s) in suites.iter().enumerate() {
        let path = join_index("base.suites", i);
        if let Some(first) = seen.get(s.as_str()) {
            cx.at(
                &path,
                "each suite once",
                format!("`{s}` again (first at base.suites[{first}])"),
                "remove the repeated entry",
            );
            continue;
        }
        seen.insert(s, i);
        let (suite_release, pocket) = match s.split_once('-') {
            Some((r, p)) => (r, Some(p)),
            None => (s.as_str(), None),
        };
        let known_pocket = pocket.is_none_or(|p| POCKETS.contains(&p));
        if i == 0 && s != release {
            cx.at(
                &path,
                format!("`{release}` (base.release) as the first suite"),
                q(s),
                format!(
                    "the release's own suite comes first: `suites: [{release}, ...]`; \
                     updates, security and backports follow"
                ),
            );
        } else if suite_release != release && known_pocket {
            let fixed = match pocket {
                Some(p) => format!("{release}-{p}"),
                None => release.clone(),
            };
            cx.at(
                &path,
                format!("a suite of base.release `{release}`"),
                format!("`{s}`, a suite of `{suite_release}`"),
                format!(
                    "mixing releases breaks dependency resolution; write `{fixed}` \
                     or change base.release"
                ),
            );
        } else if !allowed.contains(s) {
            let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
            cx.at(
                &path,
                one_of(&names),
                q(s),
                "plinth resolves packages only from the release and its updates, \
                 security and backports suites",
            );
        }
    }
}

/// `base.mirror`, `base.security_mirror`: http(s) or file URLs without spaces.
fn check_base_mirrors(cx: &mut Checker) {
    let mirrors = [
        ("base.mirror", &cx.spec.base.mirror),
        ("base.security_mirror", &cx.spec.base.security_mirror),
    ];
    for (path, url) in mirrors {
        let Some(url) = url else { continue };
        let expected = "a URL starting with `http://`, `https://` or `file://`";
        if url.chars().any(char::is_whitespace) {
            cx.at(
                path,
                "a URL without spaces",
                q(url),
                "remove the spaces (percent-encode a space in a path as `%20`)",
            );
        } else if let Some(rest) = ["http://", "https://", "file://"]
            .iter()
            .find_map(|s| url.strip_prefix(s))
        {
            if rest.trim_matches('/').is_empty() {
                cx.at(
                    path,
                    expected,
                    q(url),
                    "the URL names no host or path, e.g. `http://deb.debian.org/debian`",
                );
            }
        } else {
            cx.at(
                path,
                expected,
                q(url),
                "e.g. `http://deb.debian.org/debian`; use `file:///path` for a local mirror",
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// packages

/// `packages`: at least one; each a valid `name[/suite]` with a suite from base.suites; no
/// name twice.
fn check_packages(cx: &mut Checker) {
    let packages = &cx.spec.packages;
    if packages.is_empty() {
        cx.at(
            "packages",
            "at least one package",
            "an empty list",
            "list what to install on top of the variant, e.g. `- systemd`",
        );
    }
    check_package_list(cx, "packages", packages);
}

/// Each request in `list` (at `path`) is well-formed, and no name appears twice.
fn check_package_list(cx: &mut Checker, path: &str, list: &[PackageRequest]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, req) in list.iter().enumerate() {
        let item = join_index(path, i);
        check_package_request(cx, &item, req);
        if let Some(first) = seen.get(req.name.as_str()) {
            cx.at(
                &item,
                "each package once",
                format!("`{req}` again (first at {path}[{first}])"),
                "remove one of them; a single `name/suite` entry picks the suite",
            );
        } else {
            seen.insert(&req.name, i);
        }
    }
}

/// One `name[/suite]`: a Debian package name, and a suite listed in base.suites.
fn check_package_request(cx: &mut Checker, path: &str, req: &PackageRequest) {
    if !is_package_name(&req.name) {
        let shown = req.to_string();
        let hint = if shown.contains('=') {
            "write only the name; plinth pins versions in packages.lock".to_string()
        } else if shown.chars().any(char::is_whitespace) {
            "write one package per list item".to_string()
        } else if shown.contains(':') {
            "architecture qualifiers (`name:arch`) are not supported".to_string()
        } else if shown.chars().any(|c| c.is_ascii_uppercase()) {
            format!(
                "Debian package names are lower case: `{}`",
                req.name.to_lowercase()
            )
        } else {
            "see Debian policy 5.6.1: lower-case letters, digits, `+`, `-` and `.`".to_string()
        };
        cx.at(
            path,
            "a Debian package name (lower-case letters, digits, `+`, `-`, `.`; at least 2 \
             characters, starting with a letter or digit)",
            q(&shown),
            hint,
        );
        return;
    }
    let Some(suite) = &req.suite else { return };
    let suites = &cx.spec.base.suites;
    if suite.is_empty() {
        cx.at(
            path,
            "a suite after `/`",
            q(req.to_string()),
            format!("write `{}` or `{}/<suite>`", req.name, req.name),
        );
    } else if !suites.contains(suite) {
        cx.at(
            path,
            format!("a suite listed in base.suites ({})", suites.join(", ")),
            q(req.to_string()),
            format!("add `{suite}` to base.suites, or drop `/{suite}`"),
        );
    }
}

/// Debian policy: `[a-z0-9][a-z0-9+.-]+`.
fn is_package_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c))
}

// ---------------------------------------------------------------------------------------------
// partitions

fn check_partitions_not_empty(cx: &mut Checker) {
    if cx.spec.partitions.is_empty() {
        cx.at(
            "partitions",
            "at least one partition",
            "an empty list",
            "an image needs at least an `esp` and A/B root partitions",
        );
    }
}

/// Partition names: `[a-z][a-z0-9-]*`, at most 36 characters, unique.
fn check_partition_names(cx: &mut Checker) {
    let partitions = &cx.spec.partitions;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, p) in partitions.iter().enumerate() {
        let path = format!("partitions[{i}].name");
        let name = p.name.as_str();
        if !is_simple_name(name) {
            cx.at(
                &path,
                "a name of lower-case letters, digits and `-`, starting with a letter",
                q(name),
                "it becomes the GPT partition label, e.g. `root-a`",
            );
        } else if name.chars().count() > GPT_NAME_MAX {
            cx.at(
                &path,
                format!("at most {GPT_NAME_MAX} characters (the GPT name limit)"),
                format!("`{name}` ({} characters)", name.chars().count()),
                "shorten the name",
            );
        }
        if let Some(first) = seen.get(name) {
            cx.at(
                &path,
                "a name no other partition has",
                format!("`{name}` again (first at partitions[{first}])"),
                "rename one of them",
            );
        } else {
            seen.insert(name, i);
        }
    }
}

/// Partition sizes: whole MiB, at least 1 MiB (the size parser guarantees this for YAML).
fn check_partition_sizes(cx: &mut Checker) {
    let partitions = &cx.spec.partitions;
    for (i, p) in partitions.iter().enumerate() {
        if p.size.bytes() < MIB || !p.size.is_whole_mib() {
            cx.at(
                &format!("partitions[{i}].size"),
                "a whole number of MiB, at least `1MiB`",
                q(p.size.to_string()),
                "plinth aligns partitions to 1 MiB",
            );
        }
    }
}

/// Roles and filesystems: one `esp` and it is vfat; vfat only for the esp; root is ext4 and
/// has a slot; verity is raw.
fn check_partition_roles(cx: &mut Checker) {
    let partitions = &cx.spec.partitions;
    let mut esp: Option<usize> = None;
    // A spec either has A/B slots (an OS that updates in place) or none (e.g. the installer).
    let slotted = partitions.iter().any(|p| p.slot.is_some());
    let mut single_root: Option<usize> = None;
    for (i, p) in partitions.iter().enumerate() {
        let fs_path = format!("partitions[{i}].filesystem");
        let fs = fs_name(p.filesystem);
        match (p.role, p.filesystem) {
            (Role::Esp, Filesystem::Vfat)
            | (Role::Config, Filesystem::Vfat)
            | (Role::Root, Filesystem::Ext4)
            | (Role::Verity, Filesystem::Raw) => {}
            (Role::Esp, _) => cx.at(
                &fs_path,
                "`vfat` (the EFI system partition is FAT)",
                q(fs),
                "the firmware reads the ESP; write `filesystem: vfat`",
            ),
            (Role::Root, _) => cx.at(
                &fs_path,
                "`ext4` (root filesystems are ext4)",
                q(fs),
                "write `filesystem: ext4`",
            ),
            (Role::Verity, _) => cx.at(
                &fs_path,
                "`raw` (a verity hash tree has no filesystem)",
                q(fs),
                "write `filesystem: raw`",
            ),
            (_, Filesystem::Vfat) => cx.at(
                &fs_path,
                "`ext4` or `raw` (vfat is only for the `esp` and `config` roles)",
                q(fs),
                "FAT is for the EFI system partition and for configuration a node provider \
                 writes from any computer; use ext4 for a filesystem",
            ),
            _ => {}
        }
        if p.role == Role::Esp {
            if let Some(first) = esp {
                cx.at(
                    &format!("partitions[{i}].role"),
                    "at most one partition with role `esp`",
                    format!(
                        "a second `esp` (the first is partitions[{first}] `{}`)",
                        partitions[first].name
                    ),
                    "the firmware boots from a single ESP; give this partition another role",
                );
            } else {
                esp = Some(i);
            }
        }
        if p.role == Role::Root && p.slot.is_none() && slotted {
            cx.at(
                &format!("partitions[{i}].slot"),
                "`slot: A` or `slot: B` (this spec has A/B slots, so its root comes in a pair)",
                format!("`{}` without a slot", p.name),
                "updates write the inactive slot; define `root-a` (slot A) and `root-b` (slot B)",
            );
        }
        if p.role == Role::Root && p.slot.is_none() && !slotted {
            if let Some(first) = single_root {
                cx.at(
                    &format!("partitions[{i}].role"),
                    "one root partition (a spec without slots has a single root)",
                    format!(
                        "a second root (the first is partitions[{first}] `{}`)",
                        partitions[first].name
                    ),
                    "give this partition another role, or use A/B slots for both halves",
                );
            } else {
                single_root = Some(i);
            }
        }
    }
}

/// A/B slots: a slot A partition is named `<base>-a`, a slot B one `<base>-b`, and each has a
/// partner of the other slot with the same role, filesystem and size.
fn check_partition_slots(cx: &mut Checker) {
    let partitions = &cx.spec.partitions;
    for (i, p) in partitions.iter().enumerate() {
        let Some(slot) = p.slot else { continue };
        let other_slot = slot.other();
        let suffix = format!("-{}", slot.file_suffix());
        let other_suffix = format!("-{}", other_slot.file_suffix());
        let Some(base) = p.name.strip_suffix(&suffix) else {
            let base = p.name.trim_end_matches("-a").trim_end_matches("-b");
            cx.at(
                &format!("partitions[{i}].name"),
                format!(
                    "a name ending in `{suffix}` (the partition is in slot {})",
                    slot.as_str()
                ),
                q(&p.name),
                format!("name the halves `<base>-a` and `<base>-b`, e.g. `{base}{suffix}`"),
            );
            continue;
        };
        let other_name = format!("{base}{other_suffix}");
        let Some((j, other)) = partitions
            .iter()
            .enumerate()
            .find(|(_, o)| o.name == other_name)
        else {
            cx.at(
                &format!("partitions[{i}].slot"),
                format!("a slot {other_slot} partition `{other_name}` to pair with"),
                format!("only the slot {} half `{}`", slot.as_str(), p.name),
                format!(
                    "add a partition `{other_name}` with `slot: {other_slot}` and the same \
                     role, filesystem and size"
                ),
            );
            continue;
        };
        if slot == Slot::B {
            continue; // the A half compares the pair
        }
        if other.slot.is_none() {
            cx.at(
                &format!("partitions[{j}].slot"),
                format!("`slot: {other_slot}` (the partner of `{}`)", p.name),
                format!("`{other_name}` without a slot"),
                format!("add `slot: {other_slot}`"),
            );
            continue;
        }
        let same = "A/B halves must be interchangeable: same role, filesystem and size";
        if other.role != p.role {
            cx.at(
                &format!("partitions[{j}].role"),
                format!("`{}` like its slot A half `{}`", role_name(p.role), p.name),
                q(role_name(other.role)),
                same,
            );
        }
        if other.filesystem != p.filesystem {
            cx.at(
                &format!("partitions[{j}].filesystem"),
                format!(
                    "`{}` like its slot A half `{}`",
                    fs_name(p.filesystem),
                    p.name
                ),
                q(fs_name(other.filesystem)),
                same,
            );
        }
        if other.size != p.size {
            cx.at(
                &format!("partitions[{j}].size"),
                format!("`{}` like its slot A half `{}`", p.size, p.name),
                q(other.size.to_string()),
                same,
            );
        }
    }
}

/// The partitions plus the GPT overhead fit the disk: in the default layout and in every
/// profile that overrides sizes.
fn check_partitions_fit_disk(cx: &mut Checker) {
    let spec = cx.spec;
    let plain: Vec<&str> = spec
        .profiles
        .iter()
        .filter(|(_, p)| p.partition_sizes.is_empty() && p.disk_size.is_none())
        .map(|(n, _)| n.as_str())
        .collect();
    let layout = if plain.is_empty() {
        "the default layout".to_string()
    } else {
        format!("the default layout (profiles {})", plain.join(", "))
    };
    let sizes: Vec<Size> = spec.partitions.iter().map(|p| p.size).collect();
    check_fit(cx, "disk.size", &layout, &sizes, spec.disk.size);
    for (name, profile) in &spec.profiles {
        if profile.partition_sizes.is_empty() && profile.disk_size.is_none() {
            continue;
        }
        let sizes: Vec<Size> = spec
            .partitions
            .iter()
            .map(|p| *profile.partition_sizes.get(&p.name).unwrap_or(&p.size))
            .collect();
        let disk = profile.disk_size.unwrap_or(spec.disk.size);
        let path = if profile.disk_size.is_some() {
            format!("profiles.{name}.disk_size")
        } else {
            format!("profiles.{name}.partition_sizes")
        };
        check_fit(cx, &path, &format!("profile `{name}`"), &sizes, disk);
    }
}

fn check_fit(cx: &mut Checker, path: &str, layout: &str, sizes: &[Size], disk: Size) {
    let sum: u64 = sizes.iter().map(|s| s.mib()).sum();
    let needed = sum + GPT_OVERHEAD_MIB;
    let have = disk.mib();
    if needed > have {
        cx.at(
            path,
            format!(
                "a disk of at least {}: the partitions ({sum} MiB) plus {GPT_OVERHEAD_MIB} MiB \
                 for the GPT and alignment",
                Size::from_mib(needed)
            ),
            format!("`{disk}`, {} MiB too small in {layout}", needed - have),
            "grow the disk size or shrink partitions",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// kernel

/// `kernel.cmdline`: see [`check_cmdline_list`].
fn check_kernel_cmdline(cx: &mut Checker) {
    let cmdline = &cx.spec.kernel.cmdline;
    check_cmdline_list(cx, "kernel.cmdline", cmdline);
}

/// Each argument is non-empty, has no whitespace and is not one the builder sets itself.
fn check_cmdline_list(cx: &mut Checker, path: &str, args: &[String]) {
    for (i, arg) in args.iter().enumerate() {
        let item = join_index(path, i);
        if arg.trim().is_empty() {
            cx.at(
                &item,
                "a kernel argument like `console=ttyS0`",
                "an empty string",
                "remove the empty entry",
            );
        } else if arg.chars().any(char::is_whitespace) {
            let parts: Vec<String> = arg.split_whitespace().map(q).collect();
            cx.at(
                &item,
                "one kernel argument per list item (no spaces)",
                q(arg),
                format!("split it into {}", parts.join(", ")),
            );
        } else if !arg.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            cx.at(
                &item,
                "a kernel argument `name` or `name=value`, the name starting with a letter",
                q(arg),
                "in a flow list `[a, b]` a comma ends the item: quote arguments that contain \
                 commas, e.g. `\"console=ttyS0,115200\"`",
            );
        } else if let Some(reserved) = RESERVED_CMDLINE.iter().find(|r| arg.starts_with(**r)) {
            cx.at(
                &item,
                "an argument the builder does not set itself",
                q(arg),
                format!(
                    "the builder adds `root=`, `roothash=` and `systemd.verity*` from the \
                     dm-verity setup; remove `{reserved}...`"
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// profiles

/// `prod` and `test` exist.
fn check_profiles_required(cx: &mut Checker) {
    let names: Vec<String> = cx.spec.profiles.keys().cloned().collect();
    for required in REQUIRED_PROFILES {
        if !names.iter().any(|n| n == required) {
            let found = if names.is_empty() {
                "no profiles".to_string()
            } else {
                format!(
                    "only {}",
                    names.iter().map(q).collect::<Vec<_>>().join(", ")
                )
            };
            cx.at(
                &format!("profiles.{required}"),
                format!("a profile `{required}`"),
                found,
                format!(
                    "every OS is built as `prod` and `test`; write `{required}: {{}}` if it \
                     changes nothing"
                ),
            );
        }
    }
}

/// Profile names: `[a-z][a-z0-9-]*`.
fn check_profile_names(cx: &mut Checker) {
    let names: Vec<String> = cx.spec.profiles.keys().cloned().collect();
    for name in names {
        if !is_simple_name(&name) {
            cx.at_key(
                &join_key("profiles", &name),
                "a profile name of lower-case letters, digits and `-`, starting with a letter",
                q(&name),
                "profile names appear in file names and on the command line",
            );
        } else if name == super::FIRMWARE_TOOLCHAIN {
            cx.at_key(
                &join_key("profiles", &name),
                "a profile name other than the lock's own package sets",
                q(&name),
                "the lock keeps the firmware's toolchain under that name: choose another",
            );
        }
    }
}

/// `add_packages` are valid and new; `remove_packages` name main packages, once each.
fn check_profile_packages(cx: &mut Checker) {
    let spec = cx.spec;
    let main: Vec<&str> = spec.packages.iter().map(|r| r.name.as_str()).collect();
    for (name, profile) in &spec.profiles {
        let add_path = format!("profiles.{name}.add_packages");
        check_package_list(cx, &add_path, &profile.add_packages);
        for (i, req) in profile.add_packages.iter().enumerate() {
            let removed = profile.remove_packages.contains(&req.name);
            if let Some(j) = main.iter().position(|m| *m == req.name) {
                if !removed {
                    cx.at(
                        &join_index(&add_path, i),
                        "a package not already in the main list",
                        format!("`{req}`, already packages[{j}]"),
                        "profiles inherit the main packages; drop it here (or also list it \
                         in remove_packages to take it from another suite)",
                    );
                }
            }
        }
        let remove_path = format!("profiles.{name}.remove_packages");
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, pkg) in profile.remove_packages.iter().enumerate() {
            let item = join_index(&remove_path, i);
            if let Some(first) = seen.get(pkg.as_str()) {
                cx.at(
                    &item,
                    "each package once",
                    format!("`{pkg}` again (first at {remove_path}[{first}])"),
                    "remove the repeated entry",
                );
                continue;
            }
            seen.insert(pkg, i);
            if !main.contains(&pkg.as_str()) {
                let hint = if let Some((bare, _)) = pkg.split_once('/') {
                    format!("remove packages by name only: `{bare}`")
                } else if let Some(c) = closest(pkg, &main) {
                    format!("did you mean `{c}`?")
                } else {
                    "remove_packages can only leave out packages of the main list".into()
                };
                cx.at(
                    &item,
                    "the name of a package in the main `packages` list",
                    q(pkg),
                    hint,
                );
            }
        }
    }
}

/// `partition_sizes` keys name partitions; A/B halves are overridden together, equally.
fn check_profile_partition_sizes(cx: &mut Checker) {
    let partitions = &cx.spec.partitions;
    let names: Vec<&str> = partitions.iter().map(|p| p.name.as_str()).collect();
    for (profile, spec) in &cx.spec.profiles {
        let base = format!("profiles.{profile}.partition_sizes");
        for (part, size) in &spec.partition_sizes {
            let path = join_key(&base, part);
            let Some(p) = partitions.iter().find(|p| p.name == *part) else {
                let hint = match closest(part, &names) {
                    Some(c) => format!("did you mean `{c}`?"),
                    None => "partition_sizes overrides sizes of the spec's partitions".into(),
                };
                cx.at_key(
                    &path,
                    format!("the name of a partition ({})", names.join(", ")),
                    q(part),
                    hint,
                );
                continue;
            };
            let Some(partner) = slot_partner(partitions, p) else {
                continue;
            };
            match spec.partition_sizes.get(&partner.name) {
                None => cx.at_key(
                    &path,
                    format!("an override for `{}` too (its A/B partner)", partner.name),
                    format!("only `{part}` overridden"),
                    format!(
                        "A/B halves must have the same size; add `{}: {size}`",
                        partner.name
                    ),
                ),
                Some(other) if other != size && p.slot == Some(Slot::B) => cx.at(
                    &path,
                    format!("`{other}` like `{}` (its A/B partner)", partner.name),
                    q(size.to_string()),
                    "A/B halves must have the same size",
                ),
                Some(_) => {}
            }
        }
    }
}

/// `cmdline_append`: the kernel.cmdline rules.
fn check_profile_cmdline(cx: &mut Checker) {
    for (name, profile) in &cx.spec.profiles {
        let path = format!("profiles.{name}.cmdline_append");
        check_cmdline_list(cx, &path, &profile.cmdline_append);
    }
}

/// `overlay`: one directory name beside os.yaml, `rootfs-` and a simple name.
fn check_profile_overlay(cx: &mut Checker) {
    let overlays: Vec<(String, String)> = cx
        .spec
        .profiles
        .iter()
        .filter_map(|(name, p)| Some((name.clone(), p.overlay.clone()?)))
        .collect();
    for (name, dir) in overlays {
        let ok = dir.strip_prefix("rootfs-").is_some_and(is_simple_name);
        if !ok {
            cx.at(
                &format!("profiles.{name}.overlay"),
                "a directory beside os.yaml named rootfs-<name> (lower-case letters, digits, `-`)",
                q(&dir),
                "the profile's files are laid over rootfs/ from that directory",
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// firmware, snp

/// The only source package the firmware recipe (`firmware/ovmf/build.sh`) knows how to build.
pub const FIRMWARE_SOURCE: &str = "edk2";

/// `firmware`: edk2 from a known Debian release, a version, a non-empty toolchain.
fn check_firmware(cx: &mut Checker) {
    let Some(firmware) = &cx.spec.firmware else {
        return;
    };
    let source = &firmware.source;
    if source.package != FIRMWARE_SOURCE {
        cx.at(
            "firmware.source.package",
            format!("`{FIRMWARE_SOURCE}` (the recipe builds edk2's OvmfPkg/AmdSev)"),
            q(&source.package),
            format!("write `package: {FIRMWARE_SOURCE}`"),
        );
    }
    if source.version.trim().is_empty() || source.version.chars().any(char::is_whitespace) {
        cx.at(
            "firmware.source.version",
            "a Debian source version, e.g. `2025.02-8+deb13u1`",
            q(&source.version),
            "copy the version from the suite's Sources index (`apt-cache showsrc edk2`)",
        );
    }
    let suite_release = source.suite.split('-').next().unwrap_or_default();
    if !RELEASES.contains(&suite_release) {
        cx.at(
            "firmware.source.suite",
            format!("a suite of {}", one_of(&RELEASES)),
            q(&source.suite),
            "the suite whose signed Sources index lists that version, e.g. `trixie`",
        );
    }
    if firmware.toolchain.is_empty() {
        cx.at(
            "firmware.toolchain",
            "the build tools to install (compiler, nasm, iasl, python3, quilt)",
            "an empty list",
            "e.g. `toolchain: [build-essential, nasm, acpica-tools, uuid-dev, python3, quilt, xz-utils]`",
        );
    }
    let toolchain = firmware.toolchain.clone();
    check_package_list(cx, "firmware.toolchain", &toolchain);
}

/// `carries`: other OSes, each once, built before this one, and an ext4 data partition to
/// carry them on.
fn check_carries(cx: &mut Checker) {
    let spec = cx.spec;
    let own = OS_NAMES.iter().position(|o| *o == spec.os);
    for (i, os) in spec.carries.iter().enumerate() {
        let path = format!("carries[{i}]");
        let position = OS_NAMES.iter().position(|o| o == os);
        if position.is_none() || position >= own {
            cx.at(
                &path,
                format!(
                    "an OS built before {} ({})",
                    spec.os,
                    one_of(&OS_NAMES[..own.unwrap_or(0)])
                ),
                q(os),
                "list the OSes whose releases this one installs",
            );
        } else if spec.carries[..i].contains(os) {
            cx.at(&path, "each OS once", q(os), "remove the repetition");
        }
    }
    let data = spec
        .partitions
        .iter()
        .filter(|p| p.role == Role::Data && p.filesystem == Filesystem::Ext4)
        .count();
    if !spec.carries.is_empty() && data != 1 {
        cx.at(
            "carries",
            "one ext4 partition with `role: data` to carry the releases on",
            format!("{data}"),
            "add `{name: data, size: 1536MiB, filesystem: ext4, role: data}`",
        );
    }
}

/// `snp`: needs `firmware`; vCPU counts and types the digest can model, each once.
fn check_snp(cx: &mut Checker) {
    use plinth_firmware::snp::digest::{MAX_VCPUS, VCPU_TYPES};
    let Some(snp) = &cx.spec.snp else {
        return;
    };
    if cx.spec.firmware.is_none() {
        cx.at(
            "snp",
            "a `firmware` section beside `snp` (the digests measure that firmware)",
            "no `firmware`",
            "add `firmware:` with the edk2 source and toolchain, or remove `snp`",
        );
    }
    if snp.vcpus.is_empty() {
        cx.at(
            "snp.vcpus",
            "the vCPU counts HostOS may launch the guest with",
            "an empty list",
            "e.g. `vcpus: [4, 16, 64]`",
        );
    }
    let vcpus = snp.vcpus.clone();
    for (i, n) in vcpus.iter().enumerate() {
        let item = join_index("snp.vcpus", i);
        if *n == 0 || *n > MAX_VCPUS {
            cx.at(
                &item,
                format!("a vCPU count from 1 to {MAX_VCPUS}"),
                n.to_string(),
                "remove or correct the entry",
            );
        } else if vcpus[..i].contains(n) {
            cx.at(
                &item,
                "each count once",
                n.to_string(),
                "remove the repeated entry",
            );
        }
    }
    if snp.vcpu_types.is_empty() {
        cx.at(
            "snp.vcpu_types",
            "QEMU vCPU models, e.g. `EPYC-v4`",
            "an empty list",
            "e.g. `vcpu_types: [EPYC-v4, EPYC-Milan, EPYC-Genoa]`",
        );
    }
    let types = snp.vcpu_types.clone();
    for (i, t) in types.iter().enumerate() {
        let item = join_index("snp.vcpu_types", i);
        if !VCPU_TYPES.contains(&t.as_str()) {
            let hint = match closest(t, VCPU_TYPES) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "QEMU's names of the EPYC models, as `qemu -cpu help` lists them".into(),
            };
            cx.at(&item, one_of(VCPU_TYPES), q(t), hint);
        } else if types[..i].contains(t) {
            cx.at(&item, "each type once", q(t), "remove the repeated entry");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// helpers

/// The other half of an A/B pair (`root-a` ↔ `root-b`), if both exist with slots.
fn slot_partner<'p>(partitions: &'p [Partition], p: &Partition) -> Option<&'p Partition> {
    let other = match p.slot? {
        Slot::A => format!("{}-b", p.name.strip_suffix("-a")?),
        Slot::B => format!("{}-a", p.name.strip_suffix("-b")?),
    };
    partitions
        .iter()
        .find(|o| o.name == other && o.slot.is_some())
}

fn fs_name(fs: Filesystem) -> &'static str {
    match fs {
        Filesystem::Vfat => "vfat",
        Filesystem::Ext4 => "ext4",
        Filesystem::Raw => "raw",
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Esp => "esp",
        Role::Root => "root",
        Role::Verity => "verity",
        Role::Config => "config",
        Role::Data => "data",
    }
}

/// `` `s` ``
fn q(s: impl AsRef<str>) -> String {
    format!("`{}`", s.as_ref())
}

/// "one of `a`, `b`, `c`"
fn one_of(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(q).collect();
    format!("one of {}", quoted.join(", "))
}

/// The candidate closest to `word` by edit distance (ignoring case), if close enough to be a
/// likely typo: within a third of the candidate's length.
fn closest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let lower = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= c.chars().count() / 3)
        .min()
        .map(|(_, c)| c)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let next = (row[j + 1] + 1).min(row[j] + 1).min(prev + cost);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

// ---------------------------------------------------------------------------------------------
// YAML and serde errors

/// Examples for fields serde reports missing, by field name.
const FIELD_EXAMPLES: &[(&str, &str)] = &[
    ("os", "os: guest-os"),
    ("description", "description: What this OS is for"),
    (
        "base",
        "base: (distribution, release, architecture, variant, components, suites)",
    ),
    ("distribution", "distribution: debian"),
    ("release", "release: bookworm"),
    ("architecture", "architecture: amd64"),
    ("variant", "variant: minbase"),
    ("components", "components: [main]"),
    (
        "suites",
        "suites: [bookworm, bookworm-updates, bookworm-security]",
    ),
    ("packages", "packages: [systemd]"),
    ("disk", "disk: {size: 20GiB}"),
    ("size", "size: 512MiB"),
    (
        "partitions",
        "partitions: (a list of name, size, filesystem, role)",
    ),
    ("name", "name: root-a"),
    ("filesystem", "filesystem: ext4"),
    ("role", "role: root"),
    ("kernel", "kernel: {cmdline: [console=ttyS0]}"),
    ("cmdline", "cmdline: [console=ttyS0]"),
    ("profiles", "profiles: {prod: {}, test: {}}"),
];

/// Turn a serde_yaml error into a SpecError, with os.yaml's hints (the field's example, the
/// closest known field).
fn serde_error(file: &str, index: &PositionIndex, err: &serde_yaml::Error) -> SpecError {
    let SerdeProblem {
        path,
        location,
        pos,
        message: msg,
    } = serde_problem(index, err);
    let make = |path: String, pos: Pos, expected: String, found: String, hint: String| SpecError {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        path,
        expected,
        found,
        hint,
    };

    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed = backticked(rest);
        let full_path = join_key(&path, field);
        let pos = location.unwrap_or_else(|| index.locate_key(&full_path));
        let expected = if allowed.is_empty() {
            "no fields here".to_string()
        } else {
            format!(
                "one of the fields {}",
                allowed.iter().map(q).collect::<Vec<_>>().join(", ")
            )
        };
        let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let hint = match closest(field, &names) {
            Some(c) => format!("did you mean `{c}`?"),
            None => "remove it; os.yaml accepts only the fields listed".to_string(),
        };
        return make(
            full_path,
            pos,
            expected,
            format!("an unknown field `{field}`"),
            hint,
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let full_path = join_key(&path, field);
        let pos = index
            .key(&path)
            .or_else(|| index.value(&path))
            .unwrap_or(pos);
        let hint = match FIELD_EXAMPLES.iter().find(|(f, _)| *f == field) {
            Some((_, example)) => format!("add `{example}`"),
            None => format!("add `{field}:`"),
        };
        let where_ = if path.is_empty() {
            "the spec".to_string()
        } else {
            format!("`{path}`")
        };
        return make(
            full_path,
            pos,
            format!("a field `{field}`"),
            format!("no `{field}` in {where_}"),
            hint,
        );
    }
    if let Some(rest) = msg.strip_prefix("duplicate field `") {
        let field = rest.split('`').next().unwrap_or(rest);
        let full_path = join_key(&path, field);
        let pos = index.locate_key(&full_path);
        return make(
            full_path,
            pos,
            "each field once".into(),
            format!("`{field}` twice"),
            "merge the two entries".into(),
        );
    }
    if let Some(rest) = msg.strip_prefix("unknown variant `") {
        let (value, rest) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed = backticked(rest);
        let names: Vec<&str> = allowed.iter().map(String::as_str).collect();
        let hint = match closest(value, &names) {
            Some(c) => format!("did you mean `{c}`?"),
            None => variant_hint(&path),
        };
        return make(path, pos, one_of(&names), q(value), hint);
    }
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, "?"));
            let expected = describe_expected(expected);
            let hint = type_hint(&expected);
            return make(path, pos, expected, describe_found(found), hint);
        }
    }
    if let Some(rest) = msg.strip_prefix("expected ") {
        // Our own structured errors (sizes): "expected E, found F\n  hint: H".
        let (body, hint) = rest.split_once("\n  hint: ").unwrap_or((rest, ""));
        if let Some((expected, found)) = body.split_once(", found ") {
            return make(path, pos, expected.into(), found.into(), hint.into());
        }
    }
    let hint = if msg.contains("more than one document") {
        "an os.yaml holds one YAML document; remove the second `---`".to_string()
    } else {
        String::new()
    };
    make(path, pos, "a valid os.yaml".into(), msg, hint)
}

/// `msg at line 3 column 5` → `msg`.
/// The `backticked` words in `s`.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// serde's "expected" wording → ours.
fn describe_expected(e: &str) -> String {
    if e.starts_with("struct ") || e == "a map" || e == "map" {
        "a mapping of `field: value` lines".into()
    } else if e == "a sequence" {
        "a list".into()
    } else {
        e.to_string()
    }
}

/// serde's "found" wording → ours.
fn describe_found(f: &str) -> String {
    match f {
        "map" => "a mapping".into(),
        "sequence" => "a list".into(),
        "unit value" => "nothing (an empty value)".into(),
        _ => {
            if let Some(s) = f.strip_prefix("string ") {
                format!("the string `{}`", s.trim_matches('"'))
            } else if let Some(rest) = f.strip_prefix("integer ") {
                format!("the integer {rest}")
            } else if let Some(rest) = f.strip_prefix("boolean ") {
                format!("the boolean {rest}")
            } else {
                f.to_string()
            }
        }
    }
}

fn type_hint(expected: &str) -> String {
    if expected == "a list" {
        "write one `- item` per line, or `[a, b]`".into()
    } else if expected.starts_with("a mapping") {
        "indent the fields under the key, one `field: value` per line".into()
    } else if expected.contains("string") {
        "quote the value if YAML reads it as something else".into()
    } else {
        String::new()
    }
}

/// Why an enum field has the values it has.
fn variant_hint(path: &str) -> String {
    let field = path.rsplit('.').next().unwrap_or(path);
    match field {
        "filesystem" => "plinth formats vfat (ESP) and ext4; raw is unformatted space".into(),
        "role" => "esp, root and verity are the boot chain; config and data hold state".into(),
        "slot" => "slots are `A` and `B` (upper case)".into(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_follow_policy() {
        for ok in [
            "systemd",
            "g++",
            "libc6",
            "0ad",
            "python3.11",
            "linux-image-amd64",
        ] {
            assert!(is_package_name(ok), "{ok}");
        }
        for bad in [
            "", "a", "Systemd", "-x", "+x", "foo_bar", "foo bar", "foo=1.0",
        ] {
            assert!(!is_package_name(bad), "{bad}");
        }
    }

    #[test]
    fn simple_names() {
        assert!(is_simple_name("root-a"));
        assert!(is_simple_name("x"));
        assert!(!is_simple_name("Root"));
        assert!(!is_simple_name("1root"));
        assert!(!is_simple_name("root_a"));
        assert!(!is_simple_name(""));
    }

    #[test]
    fn closest_suggests_typos_only() {
        assert_eq!(closest("minbse", &VARIANTS), Some("minbase"));
        assert_eq!(
            closest("filesytem", &["filesystem", "size"]),
            Some("filesystem")
        );
        assert_eq!(closest("zzz", &VARIANTS), None);
        assert_eq!(closest("C", &["A", "B"]), None);
        assert_eq!(closest("a", &["A", "B"]), Some("A"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
