//! The QEMU command line of a plan. Pure: the plan and the files to boot in, the arguments
//! out (the launcher runs them; the tests read them).
//!
//! What each part does:
//! - `-smp` gives the guest whole cores (`threads` = the plan's threads per core) and
//!   `-numa cpu` puts each vCPU (`core-id`, `thread-id`) on its guest node;
//! - each guest node's memory is its own backend bound to its host node (`host-nodes`,
//!   `policy=bind`, `prealloc=on`): memfd on 1 GiB or 2 MiB hugetlb pages, or, under
//!   SEV-SNP, plain memfd (private memory is guest_memfd, which hugetlbfs cannot back);
//! - every virtio-blk disk has its own I/O thread, one queue per vCPU, io_uring and
//!   `cache.direct` (no host page cache); a vfio-pci NVMe is passed through whole (a
//!   development launch may ask for QEMU's own defaults instead, [`DiskSettings`], the
//!   baseline of `ci/bench-launch`);
//! - SEV-SNP: `sev-snp-guest` with `kernel-hashes=on`, the AMD SEV OVMF as `-bios` and the
//!   slot's kernel, initrd and command line (so the launch digest covers them);
//!   otherwise OVMF in pflash boots the slot's UKI from the first disk;
//! - `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`
//!   (seccomp), a QMP socket for the supervisor, the serial console into a file, thread
//!   names (`debug-threads=on`) so the pinning can find the vCPU and I/O threads;
//! - `dump-guest-core=off`: a core dump of QEMU leaves the guest's RAM out;
//! - a development launch may give the guest a swtpm's TPM (`tpm-crb`), never an SEV-SNP
//!   one.
//!
//! Values from the configuration (paths, the vCPU model) never change the meaning of an
//! option string: every value placed into a `key=value,...` string goes through [`opt`]
//! (QEMU's rule: a comma inside a value is written twice), the `-blockdev` JSON is built
//! with serde_json, every path must be absolute UTF-8 without control characters ([`path`];
//! a relative name could be read as a protocol such as `json:`), and `-cpu` takes only a
//! model of [`VCPU_TYPES`] (a `-cpu` string also carries `,+feature` flags).

use crate::plan::{Boot, DiskPlan, MemoryBacking, Plan};
use std::path::{Path, PathBuf};

/// The files a launch boots from and writes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub accel: Accel,
    pub firmware: Firmware,
    /// The QMP socket the supervisor talks to.
    pub qmp_socket: PathBuf,
    /// The serial console's log.
    pub console_log: PathBuf,
    /// How the virtio-blk disks are rendered.
    pub disk_settings: DiskSettings,
    /// A software TPM for the guest (development launches): the control socket of a swtpm
    /// (`swtpm socket --ctrl type=unixio,path=...`) that QEMU connects to. Under SEV-SNP the
    /// guest's keys come from the chip, and a TPM the host emulates would be the host's.
    pub vtpm: Option<PathBuf>,
}

/// How QEMU is given the plan's virtio-blk disks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskSettings {
    /// The plan's (what nodes run): a `-blockdev` raw over file or host_device with the
    /// plan's aio (io_uring) and `cache.direct`, on the disk's own I/O thread with the
    /// plan's queue count.
    #[default]
    Planned,
    /// What QEMU does when told nothing, the baseline the benchmark compares the planned
    /// settings with (development only): `-drive if=none,format=raw` (writeback host page
    /// cache, aio=threads) and a `virtio-blk-pci` with no I/O thread and QEMU's own queue
    /// count (one per vCPU since QEMU 5.2). Serial and boot order stay the plan's.
    QemuDefault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Emulation (machines without usable KVM, like CI's); pinning still applies.
    Tcg,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// OVMF in pflash: code read-only, and a private copy of the variables, or none for a
    /// single-image firmware such as the GuestOS release's OVMF-AmdSev.fd.
    Pflash {
        code: PathBuf,
        vars: Option<PathBuf>,
    },
    /// SEV-SNP direct boot: the AMD SEV OVMF and the slot's kernel, initrd and command line.
    /// `vcpu_type` must be the one the published launch digest was computed for.
    SevSnp {
        ovmf: PathBuf,
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
        vcpu_type: String,
    },
}

/// Why the plan and the launch do not go together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuError {
    #[error("the plan is for SEV-SNP ({boot}) but the launch has no SEV-SNP firmware, kernel and initrd\n  hint: give the GuestOS release's OVMF-AmdSev.fd, vmlinuz, initrd.img and the slot's command line")]
    NeedsSevFiles { boot: String },
    #[error(
        "the launch boots SEV-SNP files but the plan is not for SEV-SNP\n  hint: plan with --sev"
    )]
    NotSev,
    #[error("SEV-SNP needs KVM: TCG cannot launch an SEV-SNP guest")]
    SevUnderTcg,
    #[error("a vTPM (--vtpm) is for development launches, not SEV-SNP: the host would hold the guest's TPM\n  hint: an SEV-SNP GuestOS keys its state with the chip's derived key")]
    VtpmUnderSev,
    #[error("vCPU type `{given}` (--vcpu-type, PLINTH_GUEST_VCPU_TYPE) is not one of {list}\n  hint: the vCPU model the GuestOS release's launch digests were computed for", list = VCPU_TYPES.join(", "))]
    VcpuType { given: String },
    #[error("{what} {path:?}: {why}\n  hint: {hint}")]
    BadPath {
        what: &'static str,
        path: String,
        why: &'static str,
        hint: &'static str,
    },
}

/// The vCPU models `-cpu` may name under SEV-SNP: those a launch digest is computed for.
pub use plinth_firmware::snp::digest::VCPU_TYPES;

/// Refuse a vCPU model that is not one of [`VCPU_TYPES`].
pub fn check_vcpu_type(given: &str) -> Result<(), QemuError> {
    if VCPU_TYPES.contains(&given) {
        Ok(())
    } else {
        Err(QemuError::VcpuType {
            given: given.to_string(),
        })
    }
}

/// `value` as a value inside a QEMU option string (`key=value,key=value`): a comma is
/// written twice, so it cannot end the value and start another option. Every value placed
/// into an option string goes through here.
pub fn opt(value: &str) -> String {
    value.replace(',', ",,")
}

/// `p` as QEMU is given it: absolute (a relative name may be read as a protocol, e.g.
/// `json:{...}`), UTF-8 (so the name QEMU opens is the one given), no control characters
/// (a newline cannot be passed through QEMU's option and log syntax).
pub fn path<'p>(what: &'static str, p: &'p Path) -> Result<&'p str, QemuError> {
    let bad = |why, hint| QemuError::BadPath {
        what,
        path: p.display().to_string(),
        why,
        hint,
    };
    let Some(text) = p.to_str() else {
        return Err(bad(
            "not UTF-8",
            "rename the file; QEMU is given only UTF-8 paths",
        ));
    };
    if text.chars().any(char::is_control) {
        return Err(bad(
            "contains a control character (newline, tab, ...)",
            "rename the file",
        ));
    }
    if !p.is_absolute() {
        return Err(bad("not absolute", "give the absolute path"));
    }
    Ok(text)
}

/// The binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// The seccomp sandbox QEMU runs in.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// QEMU's arguments (after the binary) for `plan` launched as `launch`.
pub fn args(plan: &Plan, launch: &Launch) -> Result<Vec<String>, QemuError> {
    let sev = matches!(plan.boot, Boot::SevSnpDirect { .. });
    match (&plan.boot, &launch.firmware) {
        (Boot::SevSnpDirect { .. }, Firmware::Pflash { .. }) => {
            return Err(QemuError::NeedsSevFiles {
                boot: "Boot::SevSnpDirect".into(),
            })
        }
        (Boot::Disk, Firmware::SevSnp { .. }) => return Err(QemuError::NotSev),
        _ => {}
    }
    if sev && launch.accel == Accel::Tcg {
        return Err(QemuError::SevUnderTcg);
    }
    if sev && launch.vtpm.is_some() {
        return Err(QemuError::VtpmUnderSev);
    }
    let p = &plan.placement;
    let mut a = Args::default();
    a.push("-name", "guest-os,debug-threads=on");
    a.push("-nodefaults", "");
    a.push("-no-user-config", "");
    a.push("-display", "none");
    // The guest's RAM stays out of any core dump of QEMU.
    let mut machine = format!(
        "q35,accel={},dump-guest-core=off",
        match launch.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    );
    if sev {
        machine.push_str(",confidential-guest-support=sev0");
    }
    a.push("-machine", &machine);
    let cpu = match (&launch.firmware, launch.accel) {
        (Firmware::SevSnp { vcpu_type, .. }, _) => {
            check_vcpu_type(vcpu_type)?;
            vcpu_type.as_str()
        }
        (_, Accel::Kvm) => "host",
        (_, Accel::Tcg) => "max",
    };
    a.push("-cpu", cpu);
    let threads = p.threads_per_core.max(1);
    a.push(
        "-smp",
        &format!(
            "{},sockets=1,cores={},threads={threads}",
            plan.vcpus,
            plan.vcpus.div_ceil(threads)
        ),
    );
    a.push("-m", &format!("{}G", plan.memory_gib));
    for g in &p.guest_nodes {
        let backend = match p.memory {
            MemoryBacking::Hugepages1G => format!(
                "memory-backend-memfd,id=mem{},size={}G,hugetlb=on,hugetlbsize=1G,prealloc=on,host-nodes={},policy=bind",
                g.id, g.memory_gib, g.host_node
            ),
            MemoryBacking::Hugepages2M => format!(
                "memory-backend-memfd,id=mem{},size={}G,hugetlb=on,hugetlbsize=2M,prealloc=on,host-nodes={},policy=bind",
                g.id, g.memory_gib, g.host_node
            ),
            MemoryBacking::GuestMemfd | MemoryBacking::Memfd => format!(
                "memory-backend-memfd,id=mem{},size={}G,prealloc=on,host-nodes={},policy=bind",
                g.id, g.memory_gib, g.host_node
            ),
        };
        a.push("-object", &backend);
        a.push("-numa", &format!("node,nodeid={},memdev=mem{}", g.id, g.id));
    }
    for v in &p.vcpu_pins {
        a.push(
            "-numa",
            &format!(
                "cpu,node-id={},socket-id=0,core-id={},thread-id={}",
                v.guest_node,
                v.vcpu / threads,
                v.vcpu % threads
            ),
        );
    }
    if let Firmware::SevSnp {
        ovmf,
        kernel,
        initrd,
        cmdline,
        ..
    } = &launch.firmware
    {
        let Boot::SevSnpDirect {
            policy,
            cbitpos,
            reduced_phys_bits,
            kernel_hashes,
        } = &plan.boot
        else {
            unreachable!("checked above");
        };
        a.push(
            "-object",
            &format!(
                "sev-snp-guest,id=sev0,cbitpos={cbitpos},reduced-phys-bits={reduced_phys_bits},policy={policy},kernel-hashes={}",
                if *kernel_hashes { "on" } else { "off" }
            ),
        );
        // Plain file names, not option strings.
        a.push("-bios", path("the SEV-SNP firmware", ovmf)?);
        a.push("-kernel", path("the kernel", kernel)?);
        a.push("-initrd", path("the initrd", initrd)?);
        a.push("-append", cmdline);
    }
    if let Firmware::Pflash { code, vars } = &launch.firmware {
        a.push(
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                opt(path("the firmware", code)?)
            ),
        );
        if let Some(vars) = vars {
            a.push(
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    opt(path("the firmware variables", vars)?)
                ),
            );
        }
    }
    if let Some(socket) = &launch.vtpm {
        a.push(
            "-chardev",
            &format!(
                "socket,id=vtpm,path={}",
                opt(path("the vTPM's socket", socket)?)
            ),
        );
        a.push("-tpmdev", "emulator,id=vtpm0,chardev=vtpm");
        a.push("-device", "tpm-crb,tpmdev=vtpm0");
    }
    let mut first_disk = true;
    for (i, d) in plan.disks.iter().enumerate() {
        // Without SEV the firmware boots the UKI from the first disk.
        let boot = if first_disk && !sev {
            ",bootindex=1"
        } else {
            ""
        };
        first_disk = false;
        match d {
            DiskPlan::Vfio { pci, .. } => {
                a.push(
                    "-device",
                    &format!("vfio-pci,host={},id=pt{i}{boot}", opt(pci)),
                );
            }
            DiskPlan::VirtioBlk {
                path: disk_path,
                iothread,
                queues,
                aio,
                direct,
                serial,
                ..
            } => {
                let file = path_of_disk(disk_path)?;
                let serial = opt(serial);
                if launch.disk_settings == DiskSettings::QemuDefault {
                    a.push(
                        "-drive",
                        &format!("file={},format=raw,if=none,id=disk{i}", opt(file)),
                    );
                    a.push(
                        "-device",
                        &format!("virtio-blk-pci,drive=disk{i},id=vd{i},serial={serial}{boot}"),
                    );
                    continue;
                }
                let driver = if file.starts_with("/dev/") {
                    "host_device"
                } else {
                    "file"
                };
                a.push("-object", &format!("iothread,id=io{iothread}"));
                // JSON syntax: serde_json quotes the path; no option-string escaping.
                let blockdev = serde_json::json!({
                    "driver": "raw",
                    "node-name": format!("disk{i}"),
                    "file": {
                        "driver": driver,
                        "filename": file,
                        "aio": aio,
                        "cache": { "direct": direct },
                    },
                });
                a.push("-blockdev", &blockdev.to_string());
                a.push(
                    "-device",
                    &format!(
                        "virtio-blk-pci,drive=disk{i},id=vd{i},iothread=io{iothread},num-queues={queues},serial={serial}{boot}"
                    ),
                );
            }
        }
    }
    a.push(
        "-chardev",
        &format!(
            "file,id=console,path={},append=on",
            opt(path("the console log", &launch.console_log)?)
        ),
    );
    a.push("-serial", "chardev:console");
    a.push(
        "-qmp",
        &format!(
            "unix:{},server=on,wait=off",
            opt(path("the QMP socket", &launch.qmp_socket)?)
        ),
    );
    a.push("-sandbox", SANDBOX);
    a.push("-msg", "timestamp=on");
    Ok(a.0)
}

/// The unprivileged account QEMU runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// The QEMU process for `args`: an empty environment but PATH, no stdin, and, with `run_as`,
/// that user and group with no supplementary groups (the standard library drops them when
/// root sets a uid) before QEMU starts.
pub fn command(args: &[String], run_as: Option<RunAs>) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(QEMU);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(std::process::Stdio::null());
    if let Some(u) = run_as {
        cmd.gid(u.gid).uid(u.uid);
    }
    cmd
}

/// A disk's path, checked as [`path`] checks a file's.
fn path_of_disk(p: &str) -> Result<&str, QemuError> {
    path("the disk", Path::new(p))
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    /// `flag value`, or the flag alone when `value` is empty.
    fn push(&mut self, flag: &str, value: &str) {
        self.0.push(flag.to_string());
        if !value.is_empty() {
            self.0.push(value.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, SevRequest, VmRequest};
    use crate::topology::fixture::Machine;
    use crate::topology::{sysfs, Topology};

    fn topology(m: &Machine) -> Topology {
        let dir = tempfile::tempdir().unwrap();
        m.write(dir.path()).unwrap();
        sysfs::read(dir.path()).unwrap()
    }

    fn launch(firmware: Firmware, accel: Accel) -> Launch {
        Launch {
            accel,
            firmware,
            qmp_socket: "/run/plinth/guest/qmp.sock".into(),
            console_log: "/var/log/plinth/guest-console.log".into(),
            disk_settings: DiskSettings::Planned,
            vtpm: None,
        }
    }

    fn pflash() -> Firmware {
        Firmware::Pflash {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: Some("/run/plinth/guest/OVMF_VARS.fd".into()),
        }
    }

    /// The value after each occurrence of `flag`.
    fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn a_two_node_plan_becomes_two_bound_guest_nodes() {
        let t = topology(&Machine::two_socket_nps4());
        let disks: Vec<String> = t
            .nvme
            .iter()
            .filter(|c| !t.is_host_disk(c))
            .map(|c| c.namespaces[0].name.clone())
            .take(2)
            .collect();
        let p = plan(&t, &VmRequest::plain(40, 96, disks)).unwrap();
        let a = args(&p, &launch(pflash(), Accel::Kvm)).unwrap();
        assert_eq!(values(&a, "-smp"), ["40,sockets=1,cores=20,threads=2"]);
        assert_eq!(values(&a, "-m"), ["96G"]);
        assert_eq!(crate::launch::access::memlock_bytes(&p), None);
        assert_eq!(values(&a, "-cpu"), ["host"]);
        let objects = values(&a, "-object");
        for g in &p.placement.guest_nodes {
            let backend = format!(
                "memory-backend-memfd,id=mem{},size={}G,hugetlb=on,hugetlbsize=1G,prealloc=on,host-nodes={},policy=bind",
                g.id, g.memory_gib, g.host_node
            );
            assert!(objects.contains(&backend.as_str()), "{backend}");
        }
        let numa = values(&a, "-numa");
        assert!(numa.contains(&"node,nodeid=0,memdev=mem0"));
        assert!(numa.contains(&"node,nodeid=1,memdev=mem1"));
        // One `-numa cpu` per vCPU, on the vCPU's guest node, core and thread.
        for v in &p.placement.vcpu_pins {
            let cpu = format!(
                "cpu,node-id={},socket-id=0,core-id={},thread-id={}",
                v.guest_node,
                v.vcpu / 2,
                v.vcpu % 2
            );
            assert!(numa.contains(&cpu.as_str()), "{cpu}");
        }
        // Each virtio-blk disk: its own I/O thread, one queue per vCPU, io_uring, no cache.
        assert!(objects.contains(&"iothread,id=io0") && objects.contains(&"iothread,id=io1"));
        let blockdevs = values(&a, "-blockdev");
        assert_eq!(blockdevs.len(), 2);
        let b: serde_json::Value = serde_json::from_str(blockdevs[0]).unwrap();
        assert_eq!(b["file"]["driver"], "host_device");
        assert_eq!(b["file"]["aio"], "io_uring");
        assert_eq!(b["file"]["cache"]["direct"], true);
        let devices = values(&a, "-device");
        assert!(devices
            .contains(&"virtio-blk-pci,drive=disk0,id=vd0,iothread=io0,num-queues=40,serial=plinth-disk0,bootindex=1"));
        assert!(devices.contains(
            &"virtio-blk-pci,drive=disk1,id=vd1,iothread=io1,num-queues=40,serial=plinth-disk1"
        ));
        assert_eq!(values(&a, "-sandbox"), [SANDBOX]);
        assert_eq!(
            values(&a, "-qmp"),
            ["unix:/run/plinth/guest/qmp.sock,server=on,wait=off"]
        );
        assert!(values(&a, "-drive")[0].contains("readonly=on"));
        assert!(!a.iter().any(|x| x == "-kernel"));
        assert!(values(&a, "-tpmdev").is_empty(), "no TPM unless asked");
        // A development launch's vTPM: QEMU connects to the swtpm's control socket.
        let with_tpm = Launch {
            vtpm: Some("/run/swtpm/ctrl.sock".into()),
            ..launch(pflash(), Accel::Tcg)
        };
        let a = args(&p, &with_tpm).unwrap();
        assert!(values(&a, "-chardev").contains(&"socket,id=vtpm,path=/run/swtpm/ctrl.sock"));
        assert_eq!(values(&a, "-tpmdev"), ["emulator,id=vtpm0,chardev=vtpm"]);
        assert!(values(&a, "-device").contains(&"tpm-crb,tpmdev=vtpm0"));
    }

    #[test]
    fn sev_snp_boots_the_slot_directly_with_kernel_hashes() {
        let mut m = Machine::one_socket();
        m.free_hugepages_1g_per_node = 0;
        let t = topology(&m);
        let p = plan(
            &t,
            &VmRequest {
                vcpus: 16,
                memory_gib: 32,
                disks: vec!["nvme1n1".into()],
                sev: Some(SevRequest {
                    smt: true,
                    vcpu_counts: vec![4, 16, 64],
                }),
                layout: Default::default(),
            },
        )
        .unwrap();
        let sev = Firmware::SevSnp {
            ovmf: "/var/lib/plinth/guest/A/OVMF-AmdSev.fd".into(),
            kernel: "/var/lib/plinth/guest/A/vmlinuz".into(),
            initrd: "/var/lib/plinth/guest/A/initrd.img".into(),
            cmdline: "console=ttyS0 roothash=ab".into(),
            vcpu_type: "EPYC-Milan".into(),
        };
        let a = args(&p, &launch(sev.clone(), Accel::Kvm)).unwrap();
        assert_eq!(
            values(&a, "-machine"),
            ["q35,accel=kvm,dump-guest-core=off,confidential-guest-support=sev0"]
        );
        assert_eq!(values(&a, "-cpu"), ["EPYC-Milan"]);
        let objects = values(&a, "-object");
        assert!(objects.contains(
            &"sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,policy=0x30000,kernel-hashes=on"
        ));
        assert!(objects.contains(
            &"memory-backend-memfd,id=mem0,size=32G,prealloc=on,host-nodes=0,policy=bind"
        ));
        assert_eq!(
            values(&a, "-bios"),
            ["/var/lib/plinth/guest/A/OVMF-AmdSev.fd"]
        );
        assert_eq!(values(&a, "-append"), ["console=ttyS0 roothash=ab"]);
        assert!(values(&a, "-drive").is_empty(), "no pflash under SEV-SNP");
        // The disk is data, not the boot device.
        assert!(values(&a, "-device")
            .iter()
            .all(|d| !d.contains("bootindex")));
        assert!(values(&a, "-tpmdev").is_empty());
        // Mismatches are refused, and so is a host-emulated TPM for an SEV-SNP guest.
        let vtpm = Launch {
            vtpm: Some("/run/swtpm/ctrl.sock".into()),
            ..launch(sev.clone(), Accel::Kvm)
        };
        assert_eq!(args(&p, &vtpm).unwrap_err(), QemuError::VtpmUnderSev);
        assert_eq!(
            args(&p, &launch(sev, Accel::Tcg)).unwrap_err(),
            QemuError::SevUnderTcg
        );
        assert!(matches!(
            args(&p, &launch(pflash(), Accel::Kvm)).unwrap_err(),
            QemuError::NeedsSevFiles { .. }
        ));
    }

    #[test]
    fn qemu_default_disk_settings_leave_cache_aio_and_queues_to_qemu() {
        let t = topology(&Machine::one_socket());
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("guest.img");
        // A comma in a path is doubled in -drive's option syntax.
        let bench = dir.path().join("bench,1.img");
        for f in [&boot, &bench] {
            std::fs::write(f, b"").unwrap();
        }
        let p = plan(
            &t,
            &VmRequest {
                vcpus: 2,
                memory_gib: 2,
                disks: vec![boot.display().to_string(), bench.display().to_string()],
                sev: None,
                layout: crate::plan::Layout::Development { guest_nodes: 2 },
            },
        )
        .unwrap();
        let mut l = launch(pflash(), Accel::Tcg);
        // The default is the plan's settings.
        assert_eq!(l.disk_settings, DiskSettings::default());
        assert_eq!(values(&args(&p, &l).unwrap(), "-blockdev").len(), 2);
        l.disk_settings = DiskSettings::QemuDefault;
        let a = args(&p, &l).unwrap();
        assert!(values(&a, "-blockdev").is_empty());
        assert!(values(&a, "-object")
            .iter()
            .all(|o| !o.starts_with("iothread")));
        let drives = values(&a, "-drive");
        // The firmware's pflash drives, then one per disk: no cache, aio or discard options.
        assert_eq!(
            drives[2..],
            [
                format!("file={},format=raw,if=none,id=disk0", boot.display()),
                format!(
                    "file={}/bench,,1.img,format=raw,if=none,id=disk1",
                    dir.path().display()
                ),
            ]
        );
        assert_eq!(
            values(&a, "-device"),
            [
                "virtio-blk-pci,drive=disk0,id=vd0,serial=plinth-disk0,bootindex=1",
                "virtio-blk-pci,drive=disk1,id=vd1,serial=plinth-disk1",
            ]
        );
    }

    #[test]
    fn every_path_in_an_option_string_has_its_commas_doubled() {
        let t = topology(&Machine::one_socket());
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("x,file=evil");
        std::fs::create_dir(&odd).unwrap();
        let disk = odd.join("disk,readonly=off.img");
        std::fs::write(&disk, b"").unwrap();
        let p = plan(
            &t,
            &VmRequest {
                vcpus: 2,
                memory_gib: 2,
                disks: vec![disk.display().to_string()],
                sev: None,
                layout: crate::plan::Layout::Development { guest_nodes: 1 },
            },
        )
        .unwrap();
        let mut l = launch(
            Firmware::Pflash {
                code: odd.join("code,readonly=off.fd"),
                vars: Some(odd.join("vars.fd")),
            },
            Accel::Tcg,
        );
        l.qmp_socket = odd.join("qmp,server=off.sock");
        l.console_log = odd.join("console.log");
        let doubled = |p: &Path| p.display().to_string().replace(',', ",,");
        let a = args(&p, &l).unwrap();
        let drives = values(&a, "-drive");
        assert_eq!(
            drives[0],
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                doubled(&odd.join("code,readonly=off.fd"))
            )
        );
        assert_eq!(
            drives[1],
            format!(
                "if=pflash,format=raw,unit=1,file={}",
                doubled(&odd.join("vars.fd"))
            )
        );
        assert_eq!(
            values(&a, "-chardev"),
            [format!(
                "file,id=console,path={},append=on",
                doubled(&l.console_log)
            )]
        );
        assert_eq!(
            values(&a, "-qmp"),
            [format!(
                "unix:{},server=on,wait=off",
                doubled(&l.qmp_socket)
            )]
        );
        // -blockdev is JSON: the path is a JSON string, whole.
        let b: serde_json::Value = serde_json::from_str(values(&a, "-blockdev")[0]).unwrap();
        assert_eq!(b["file"]["filename"], disk.display().to_string());
        l.disk_settings = DiskSettings::QemuDefault;
        let a = args(&p, &l).unwrap();
        assert_eq!(
            values(&a, "-drive")[2],
            format!("file={},format=raw,if=none,id=disk0", doubled(&disk))
        );
    }

    #[test]
    fn paths_qemu_cannot_take_and_unknown_vcpu_types_are_refused() {
        let t = topology(&Machine::one_socket());
        let p = plan(&t, &VmRequest::plain(2, 2, vec![])).unwrap();
        for (bad, why) in [
            ("/tmp/vars\n.fd", "control character"),
            ("vars.fd", "not absolute"),
            ("json:{\"driver\":\"nbd\"}", "not absolute"),
        ] {
            let l = launch(
                Firmware::Pflash {
                    code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                    vars: Some(bad.into()),
                },
                Accel::Kvm,
            );
            let e = args(&p, &l).unwrap_err().to_string();
            assert!(
                e.starts_with("the firmware variables") && e.contains(why),
                "{e}"
            );
        }
        use std::os::unix::ffi::OsStrExt;
        let l = launch(
            Firmware::Pflash {
                code: std::ffi::OsStr::from_bytes(b"/tmp/\xff.fd").into(),
                vars: None,
            },
            Accel::Kvm,
        );
        assert!(args(&p, &l).unwrap_err().to_string().contains("not UTF-8"));
        // A -cpu string also takes `,+feature` flags: only a known model name goes in.
        for bad in [
            "EPYC-Milan,+svm",
            "host",
            "EPYC-Milan,kvm=off",
            "epyc-milan",
        ] {
            let e = check_vcpu_type(bad).unwrap_err().to_string();
            assert!(
                e.contains("PLINTH_GUEST_VCPU_TYPE") && e.contains("EPYC-Milan, EPYC-Milan-v1"),
                "{e}"
            );
        }
        for good in VCPU_TYPES {
            check_vcpu_type(good).unwrap();
        }
    }

    #[test]
    fn vfio_nvme_is_passed_through_as_the_boot_disk() {
        let mut m = Machine::one_socket();
        m.nvme[1].driver = "vfio-pci";
        let t = topology(&m);
        let pci = t.nvme[1].pci.clone();
        let p = plan(&t, &VmRequest::plain(4, 8, vec![pci.clone()])).unwrap();
        let a = args(&p, &launch(pflash(), Accel::Tcg)).unwrap();
        assert_eq!(
            values(&a, "-device"),
            [format!("vfio-pci,host={pci},id=pt0,bootindex=1").as_str()]
        );
        assert!(values(&a, "-object")
            .iter()
            .all(|o| !o.starts_with("iothread")));
        assert_eq!(values(&a, "-cpu"), ["max"]);
        // All 8 GiB pinned for DMA, and 1 GiB for QEMU.
        assert_eq!(crate::launch::access::memlock_bytes(&p), Some(9 << 30));
    }
}
