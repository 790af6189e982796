//! What this machine is, as certification needs it: CPU identity and sockets
//! (`/proc/cpuinfo`), NUMA memory, NVMe drives and NICs (the HostOS topology reader), PCI
//! RAID controllers, the TPM, and SEV-SNP's state. Read under a root that stands for `/`,
//! so tests and `--sysfs-root` point it at captured or generated trees.
//!
//! Three facts are not files in sysfs: the SNP firmware version (the `SNP_PLATFORM_STATUS`
//! ioctl on `/dev/sev`), the TPM's EK certificate (its NV index) and an NVMe drive's SMART
//! critical warning (a log page). On the live machine (root `/`) they are asked of the
//! devices (the EK certificate of the TPM the caller names, which may also be a test's
//! swtpm); a tree carries them as files under `plinth-capture/`: `snp-firmware` (`1.55`),
//! `ek-certificate.der`, and `nvme-smart/<controller>` (the critical warning byte, decimal).

pub use plinth_firmware::cpuinfo::{parse_cpuinfo, CpuIdentity};
use plinth_host::topology::{sysfs, Topology};
use serde::Serialize;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The largest /proc/cpuinfo read (a 2-socket EPYC with 512 threads: about 800 KiB).
const MAX_CPUINFO: u64 = 16 << 20;
/// The largest EK certificate read (they are about 1 KiB; an NV index at most 2 KiB).
const MAX_EK_CERT: u64 = 16 << 10;
/// The PCI class of a RAID bus controller (mass storage 01, RAID 04).
pub const RAID_CLASS_PREFIX: &str = "0x0104";

/// Everything certification looks at.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub cpu: CpuIdentity,
    pub topology: Topology,
    /// PCI addresses of RAID bus controllers.
    pub raid_controllers: Vec<String>,
    pub sev_snp: SevSnp,
    pub tpm: Tpm,
    /// SMART critical warning per NVMe controller name (`nvme0`), where it could be read.
    pub nvme_critical_warnings: Vec<(String, Result<u8, String>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SevSnp {
    /// kvm_amd's `sev_snp` parameter: `Some(true)` for `Y`/`1`; `None` without kvm_amd.
    pub kvm_amd_sev_snp: Option<bool>,
    pub dev_sev: bool,
    /// The SNP firmware (API) version, or why it could not be read.
    pub firmware: Result<(u8, u8), String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tpm {
    /// `tpm_version_major` of the first TPM, `None` without one.
    pub version_major: Option<u32>,
    /// The EK certificate's DER, or why it could not be read.
    #[serde(skip)]
    pub ek_certificate: Result<Vec<u8>, String>,
    /// Whether the certificate's key is the TPM's own EK (asked of a live TPM; `None` for a
    /// captured tree, which has no TPM to ask).
    #[serde(skip)]
    pub ek_key_matches: Option<Result<bool, String>>,
}

/// An inventory that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: {message}", path.display())]
    Malformed { path: PathBuf, message: String },
    #[error(transparent)]
    Topology(#[from] sysfs::TopologyError),
}

impl Inventory {
    /// Read the machine under `root`. `tpm` names the TPM (a TCTI) to read the EK
    /// certificate from; without one it comes from the tree's `plinth-capture/`.
    pub fn read(root: &Path, tpm: Option<&str>) -> Result<Inventory, InventoryError> {
        let live = root == Path::new("/");
        let topology = sysfs::read(root)?;
        let cpu = read_cpuinfo(root)?;
        let raid_controllers = read_raid(root)?;
        let sev_snp = SevSnp {
            kvm_amd_sev_snp: read_small(&root.join("sys/module/kvm_amd/parameters/sev_snp"))
                .map(|v| matches!(v.trim(), "Y" | "y" | "1")),
            dev_sev: root.join("dev/sev").exists(),
            firmware: if live {
                live::snp_firmware()
            } else {
                capture(root, "snp-firmware").and_then(|t| {
                    plinth_firmware::certification::parse_version(&t).ok_or(format!(
                        "plinth-capture/snp-firmware: `{}` is not major.minor",
                        t.trim()
                    ))
                })
            },
        };
        let (ek_certificate, ek_key_matches) = match tpm {
            Some(tcti) => match crate::tpm::ek_certificate(tcti) {
                Ok((der, key)) => {
                    let matches = crate::tpm::certifies(&der, &key);
                    (Ok(der), Some(matches))
                }
                Err(e) => (Err(e), None),
            },
            None => {
                let path = root.join("plinth-capture/ek-certificate.der");
                let der = plinth_release::untrusted::read_untrusted(&path, MAX_EK_CERT)
                    .map_err(|e| format!("{}: {e}", path.display()));
                (der, None)
            }
        };
        let tpm_dir = root.join("sys/class/tpm/tpm0");
        let tpm = Tpm {
            version_major: read_small(&tpm_dir.join("tpm_version_major"))
                .and_then(|v| v.trim().parse().ok()),
            ek_certificate,
            ek_key_matches,
        };
        let nvme_critical_warnings = topology
            .nvme
            .iter()
            .filter_map(|c| c.name.clone())
            .map(|name| {
                let warning = if live {
                    live::smart_critical_warning(&name)
                } else {
                    capture(root, &format!("nvme-smart/{name}")).and_then(|t| {
                        t.trim()
                            .parse()
                            .map_err(|_| format!("nvme-smart/{name}: `{}` is not a byte", t.trim()))
                    })
                };
                (name, warning)
            })
            .collect();
        Ok(Inventory {
            cpu,
            topology,
            raid_controllers,
            sev_snp,
            tpm,
            nvme_critical_warnings,
        })
    }
}

fn capture(root: &Path, name: &str) -> Result<String, String> {
    read_small(&root.join("plinth-capture").join(name))
        .ok_or_else(|| format!("the tree has no plinth-capture/{name}"))
}

/// A small text file, or `None` when it is missing or unreadable.
fn read_small(path: &Path) -> Option<String> {
    let bytes = plinth_release::untrusted::read_untrusted(path, 4096).ok()?;
    String::from_utf8(bytes).ok()
}

/// Vendor, family, model and name of the first processor, the sockets (distinct
/// `physical id`s) and the processors listed.
fn read_cpuinfo(root: &Path) -> Result<CpuIdentity, InventoryError> {
    let path = root.join("proc/cpuinfo");
    let bytes = read_bounded(&path, MAX_CPUINFO)?;
    let text = String::from_utf8_lossy(&bytes);
    parse_cpuinfo(&text).map_err(|message| InventoryError::Malformed { path, message })
}

fn read_raid(root: &Path) -> Result<Vec<String>, InventoryError> {
    let dir = root.join("sys/bus/pci/devices");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(InventoryError::Read { path: dir, source }),
    };
    let mut raid = Vec::new();
    for entry in entries.flatten() {
        let class = read_small(&entry.path().join("class")).unwrap_or_default();
        if class.trim().starts_with(RAID_CLASS_PREFIX) {
            raid.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    raid.sort();
    Ok(raid)
}

fn read_bounded(path: &Path, cap: u64) -> Result<Vec<u8>, InventoryError> {
    use std::io::Read;
    let file = fs::File::open(path).map_err(|source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > cap {
        return Err(InventoryError::Malformed {
            path: path.to_path_buf(),
            message: format!("larger than {cap} bytes"),
        });
    }
    Ok(bytes)
}

/// The facts asked of the live machine's devices.
mod live {
    pub fn snp_firmware() -> Result<(u8, u8), String> {
        let mut fw = sev::firmware::host::Firmware::open()
            .map_err(|e| format!("/dev/sev: cannot open: {e}"))?;
        let status = fw
            .snp_platform_status()
            .map_err(|e| format!("SNP_PLATFORM_STATUS failed: {e}"))?;
        Ok(status.version)
    }

    /// The critical warning byte of the controller's SMART log, through nvme-cli.
    pub fn smart_critical_warning(controller: &str) -> Result<u8, String> {
        let out = std::process::Command::new("nvme")
            .args([
                "smart-log",
                &format!("/dev/{controller}"),
                "--output-format=json",
            ])
            .output()
            .map_err(|e| format!("nvme smart-log: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nvme smart-log /dev/{controller}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("nvme smart-log /dev/{controller}: not JSON: {e}"))?;
        v["critical_warning"]
            .as_u64()
            .and_then(|w| u8::try_from(w).ok())
            .ok_or_else(|| format!("nvme smart-log /dev/{controller}: no critical_warning"))
    }
}
