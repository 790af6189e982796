//! OS specifications: the `<os>/os.yaml` types, loading and validation.
//!
//! An `os.yaml` says what one OS image is made of: the Debian base, the packages, the disk
//! partitions (with A/B slots), the kernel command line and the profiles (`prod`, `test`).
//! [`load`] parses a spec strictly (unknown fields are errors) and validates it; every error
//! names the file, line and column, the field path, what was expected, what was found and a hint.
//! [`OsSpec::profile`] applies a profile and returns the effective settings the pipeline uses.

pub use plinth_yaml::position;
mod size;
mod validate;

pub use plinth_yaml::{SpecError, SpecErrors};
pub use size::Size;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The OSes plinth builds, in build order. Each lives in a directory of the same name.
pub use plinth_release::names::OS_NAMES;

/// One `os.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsSpec {
    /// The OS name; must equal the directory holding the spec (`guest-os`, `host-os`, `setup-os`).
    pub os: String,
    /// One line saying what the OS is for.
    pub description: String,
    pub base: Base,
    /// Packages to install on top of the variant's set, as `name` or `name/suite`.
    pub packages: Vec<PackageRequest>,
    pub disk: Disk,
    pub partitions: Vec<Partition>,
    pub kernel: Kernel,
    /// The guest firmware built with this OS (GuestOS: edk2's AMD SEV OVMF), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareSpec>,
    /// The SEV-SNP launch configurations whose digests the release publishes (needs
    /// `firmware`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpSpec>,
    /// The releases this OS carries on its ext4 `data` partition, of the same version and
    /// profile, built before it (SetupOS: the HostOS and GuestOS it installs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub carries: Vec<String>,
    /// Profiles by name; `prod` and `test` are required.
    pub profiles: BTreeMap<String, ProfileSpec>,
}

/// The guest firmware: edk2's `OvmfPkg/AmdSev` built from a Debian source package by
/// `firmware/ovmf/build.sh`, with a toolchain locked like the image's packages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSpec {
    /// The Debian source package to build from.
    pub source: SourceRequest,
    /// The build tools, installed from `base` (variant essential): compiler, assembler and
    /// ACPI compiler versions change the firmware's bytes, so they are locked.
    pub toolchain: Vec<PackageRequest>,
}

/// One version of one Debian source package, from a suite's signed `Sources` index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRequest {
    pub package: String,
    pub version: String,
    /// The suite whose index lists that version, e.g. `trixie`.
    pub suite: String,
}

/// The SEV-SNP launches HostOS may make of this OS: a digest is published for every vCPU
/// count × vCPU type × boot slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpSpec {
    pub vcpus: Vec<u32>,
    /// QEMU's vCPU model names, e.g. `EPYC-v4`, `EPYC-Milan`, `EPYC-Genoa`.
    pub vcpu_types: Vec<String>,
    /// Whether the guest may run on hosts with SMT enabled (the guest policy's SMT bit).
    pub smt: bool,
}

/// The name of the toolchain's package set in the OS's lock (beside the profiles).
pub const FIRMWARE_TOOLCHAIN: &str = "firmware-toolchain";

/// The Debian base of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// Always `debian`.
    pub distribution: String,
    /// The Debian release codename, e.g. `bookworm`.
    pub release: String,
    /// Debian architecture, e.g. `amd64`.
    pub architecture: String,
    /// mmdebstrap variant: `essential`, `apt`, `required`, `minbase`, `important` or `standard`.
    pub variant: String,
    /// Archive components, e.g. `[main]`.
    pub components: Vec<String>,
    /// Suites to resolve from: the release itself first, then any of `<release>-updates`,
    /// `<release>-security`, `<release>-backports`. Backports are used only for packages that
    /// name them (`name/<release>-backports`).
    pub suites: Vec<String>,
    /// Mirror for every suite but security (optional; see `packages::mirror` for precedence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Mirror for `<release>-security` (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_mirror: Option<String>,
}

/// A package request: `name` or `name/suite` (apt's target-release syntax).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PackageRequest {
    pub name: String,
    pub suite: Option<String>,
}

/// The whole disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    /// Total size of the disk image; partitions (plus GPT overhead) must fit.
    pub size: Size,
}

/// One GPT partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Lower-case letters, digits and `-`; unique within the spec.
    pub name: String,
    pub size: Size,
    pub filesystem: Filesystem,
    pub role: Role,
    /// `A` or `B` for partitions that come in update slots; both halves must exist and match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<Slot>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Vfat,
    Ext4,
    /// No filesystem: raw space (e.g. an LVM physical volume or a verity hash device).
    Raw,
}

pub use plinth_release::{Role, Slot};

/// Kernel settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Kernel command line arguments (`root=` and verity arguments are added by the builder).
    pub cmdline: Vec<String>,
    /// How UEFI firmware reaches the slot's UKI on the ESP.
    #[serde(default)]
    pub boot_loader: BootLoader,
}

/// How UEFI firmware reaches the UKI.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootLoader {
    /// systemd-boot as `\EFI\BOOT\BOOTX64.EFI`, the slot's UKI in `\EFI\Linux\` (its
    /// default entry names it).
    #[default]
    SystemdBoot,
    /// No boot loader: the slot's UKI itself is `\EFI\BOOT\BOOTX64.EFI` (an OS that a VMM
    /// launches by direct kernel boot in production, and that chooses its slot there).
    None,
}

/// What a profile changes relative to the spec's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    #[serde(default)]
    pub description: String,
    /// Packages added in this profile.
    #[serde(default)]
    pub add_packages: Vec<PackageRequest>,
    /// Packages of the main list left out in this profile (by name).
    #[serde(default)]
    pub remove_packages: Vec<String>,
    /// Partition sizes overridden in this profile, by partition name.
    #[serde(default)]
    pub partition_sizes: BTreeMap<String, Size>,
    /// Disk size in this profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_size: Option<Size>,
    /// Kernel command line arguments appended in this profile.
    #[serde(default)]
    pub cmdline_append: Vec<String>,
    /// A directory beside os.yaml whose files are laid over `rootfs/` in this profile: what
    /// a profile changes that a package list cannot (a test key source, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<String>,
}

/// The effective settings of one OS in one profile: what the pipeline consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Profile {
    pub os: String,
    pub profile: String,
    pub base: Base,
    /// Sorted by name, deduplicated.
    pub packages: Vec<PackageRequest>,
    pub disk_size: Size,
    pub partitions: Vec<Partition>,
    pub cmdline: Vec<String>,
    pub boot_loader: BootLoader,
    /// The profile's own overlay directory (beside os.yaml), laid over `rootfs/`.
    pub overlay: Option<String>,
    /// The releases carried on the data partition (the spec's `carries`).
    pub carries: Vec<String>,
}

impl OsSpec {
    /// The names of this spec's profiles, sorted.
    pub fn profile_names(&self) -> Vec<&str> {
        self.profiles.keys().map(String::as_str).collect()
    }

    /// Apply profile `name`. Validation guarantees the profile's references exist, so this only
    /// fails for an unknown profile name.
    pub fn profile(&self, name: &str) -> Result<Profile, UnknownProfile> {
        let p = self.profiles.get(name).ok_or_else(|| UnknownProfile {
            os: self.os.clone(),
            name: name.to_string(),
            known: self.profiles.keys().cloned().collect(),
        })?;
        let mut packages: Vec<PackageRequest> = self
            .packages
            .iter()
            .filter(|r| !p.remove_packages.contains(&r.name))
            .chain(p.add_packages.iter())
            .cloned()
            .collect();
        packages.sort();
        packages.dedup();
        let partitions = self
            .partitions
            .iter()
            .map(|part| {
                let mut part = part.clone();
                if let Some(size) = p.partition_sizes.get(&part.name) {
                    part.size = *size;
                }
                part
            })
            .collect();
        let mut cmdline = self.kernel.cmdline.clone();
        cmdline.extend(p.cmdline_append.iter().cloned());
        Ok(Profile {
            os: self.os.clone(),
            profile: name.to_string(),
            base: self.base.clone(),
            packages,
            disk_size: p.disk_size.unwrap_or(self.disk.size),
            partitions,
            cmdline,
            boot_loader: self.kernel.boot_loader,
            overlay: p.overlay.clone(),
            carries: self.carries.clone(),
        })
    }

    /// The firmware's toolchain as a package set the lock, fetch and package stages take
    /// like a profile's: the spec's base (variant essential, as the images), the toolchain's
    /// packages, no disk.
    pub fn firmware_toolchain(&self) -> Option<Profile> {
        let firmware = self.firmware.as_ref()?;
        let mut packages = firmware.toolchain.clone();
        packages.sort();
        packages.dedup();
        Some(Profile {
            os: self.os.clone(),
            profile: FIRMWARE_TOOLCHAIN.to_string(),
            base: Base {
                variant: "essential".into(),
                ..self.base.clone()
            },
            packages,
            disk_size: Size::from_mib(0),
            partitions: Vec::new(),
            cmdline: Vec::new(),
            boot_loader: BootLoader::None,
            overlay: None,
            carries: Vec::new(),
        })
    }
}

/// A profile name that the spec does not define.
#[derive(Debug, thiserror::Error)]
#[error("{os} has no profile `{name}` (it has: {})", known.join(", "))]
pub struct UnknownProfile {
    pub os: String,
    pub name: String,
    pub known: Vec<String>,
}

impl std::fmt::Display for PackageRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.suite {
            Some(s) => write!(f, "{}/{}", self.name, s),
            None => f.write_str(&self.name),
        }
    }
}

impl From<PackageRequest> for String {
    fn from(r: PackageRequest) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for PackageRequest {
    type Error = String;
    /// Splits `name[/suite]`; the well-formedness of both parts is checked in validation, so
    /// that its error can name the line.
    fn try_from(s: String) -> Result<Self, String> {
        match s.split_once('/') {
            Some((name, suite)) => Ok(PackageRequest {
                name: name.to_string(),
                suite: Some(suite.to_string()),
            }),
            None => Ok(PackageRequest {
                name: s,
                suite: None,
            }),
        }
    }
}

/// Load and validate the spec at `path` (e.g. `guest-os/os.yaml`). `display_path` is how errors
/// name the file (relative to the workspace). The spec's `os` must equal its directory name.
pub fn load(path: &Path, display_path: &str) -> Result<OsSpec, SpecErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecErrors::single(SpecError::io(
            display_path,
            format!("cannot read the file: {e}"),
        ))
    })?;
    let dir_name = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    parse(&text, display_path, dir_name)
}

/// Parse and validate spec text; `expected_os` is the directory name the spec lives in.
pub fn parse(text: &str, display_path: &str, expected_os: &str) -> Result<OsSpec, SpecErrors> {
    validate::parse_and_validate(text, display_path, expected_os)
}

/// The 1-based line and column of the value at `path` (e.g. `packages[3]`) in spec `text`, for
/// errors found after validation (e.g. a package the archive does not have).
pub fn locate(text: &str, path: &str) -> Option<(usize, usize)> {
    let index = position::PositionIndex::build(text).ok()?;
    let pos = index.value(path)?;
    Some((pos.line, pos.column))
}

impl OsSpec {
    /// The field path that requests package `name` in profile `profile`: `packages[i]`, or
    /// `profiles.<profile>.add_packages[j]`.
    pub fn package_path(&self, profile: &str, name: &str) -> Option<String> {
        if let Some(p) = self.profiles.get(profile) {
            if let Some(j) = p.add_packages.iter().position(|r| r.name == name) {
                return Some(format!("profiles.{profile}.add_packages[{j}]"));
            }
        }
        let i = self.packages.iter().position(|r| r.name == name)?;
        Some(format!("packages[{i}]"))
    }
}
