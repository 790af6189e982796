//! `plinth-host guest launch`: plan the GuestOS VM on this machine, then start and
//! supervise it ([`plinth_host::launch::supervise`]) until SIGTERM, SIGINT or the restart
//! policy ends it. HostOS runs it as `plinth-guest.service`.

use super::super::BadInput;
use super::VmArgs;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use plinth_host::launch::access::Roots;
use plinth_host::launch::notify::Notifier;
use plinth_host::launch::qemu::{Accel, DiskSettings, Firmware, Launch, RunAs};
use plinth_host::launch::supervise::{supervise, Options, Restart, State, SuperviseError};
use std::path::PathBuf;
use std::time::Duration;

/// Debian's OVMF (`ovmf`): code and the variable store template.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Plan the GuestOS VM, start QEMU as an unprivileged user in its own cgroup under seccomp,
/// pin its threads, and supervise it: serial log kept, boot report detected, restarts by
/// policy, a clean ACPI power-down on SIGTERM (`guest stop`, `systemctl stop`).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Files in --state-dir: status.json (read by `guest status`), \
console.log (the serial console, every start appended), qemu.log (QEMU's output and \
command lines), qemu/ (QEMU's own, made fresh for every start: QMP socket, firmware \
variables). The state directory must be writable by root alone.\n\n\
HostOS runs it as plinth-guest.service, its options from the environment (the \
[env: PLINTH_GUEST_…] of each) set by /run/plinth/config/guest-os.env.\n\n\
Exit status: 0 stopped on request, or the guest powered off; 1 QEMU failed past the \
restart policy; 2 the VM cannot be planned or set up.\n\nExamples:\n  \
plinth-host guest launch --vcpus 64 --memory 480 --disk nvme1n1 --disk nvme2n1\n  \
plinth-host guest launch --vcpus 2 --memory 2 --development --guest-nodes 2 \\\n    \
--disk /var/tmp/guest.img --firmware OVMF-AmdSev.fd --accel tcg --user nobody"
)]
pub struct LaunchArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// The UEFI firmware QEMU maps as pflash; a single-image firmware (the GuestOS
    /// release's OVMF-AmdSev.fd) needs no --vars.
    #[arg(long, value_name = "FILE", default_value = OVMF_CODE, env = "PLINTH_GUEST_FIRMWARE")]
    firmware: PathBuf,
    /// The variable store template (copied; the copy is QEMU's). Default: Debian's, when
    /// --firmware is Debian's too.
    #[arg(long, value_name = "FILE", env = "PLINTH_GUEST_VARS")]
    vars: Option<PathBuf>,
    /// SEV-SNP direct boot: the AMD SEV OVMF (-bios), and the slot's kernel, initrd and
    /// command line, whose hashes the launch digest covers.
    #[arg(long, value_name = "FILE", requires_all = ["kernel", "initrd", "cmdline"], env = "PLINTH_GUEST_SEV_OVMF")]
    sev_ovmf: Option<PathBuf>,
    #[arg(
        long,
        value_name = "FILE",
        requires = "sev_ovmf",
        env = "PLINTH_GUEST_KERNEL"
    )]
    kernel: Option<PathBuf>,
    #[arg(
        long,
        value_name = "FILE",
        requires = "sev_ovmf",
        env = "PLINTH_GUEST_INITRD"
    )]
    initrd: Option<PathBuf>,
    #[arg(
        long,
        value_name = "TEXT",
        requires = "sev_ovmf",
        env = "PLINTH_GUEST_CMDLINE"
    )]
    cmdline: Option<String>,
    /// The vCPU model the release's launch digest was computed for.
    #[arg(
        long,
        value_name = "MODEL",
        default_value = "EPYC-Milan",
        env = "PLINTH_GUEST_VCPU_TYPE"
    )]
    vcpu_type: String,
    /// kvm (HostOS) or tcg (emulation, for machines without usable KVM).
    #[arg(long, value_enum, default_value = "kvm")]
    accel: AccelArg,
    /// The unprivileged user QEMU runs as.
    #[arg(long, value_name = "NAME", default_value = "plinth-qemu")]
    user: String,
    #[arg(long, value_name = "DIR", default_value = "/run/plinth/guest")]
    state_dir: PathBuf,
    #[arg(long, value_enum, default_value = "on-failure")]
    restart: Restart,
    /// Starts in a row that end before the boot report before giving up.
    #[arg(long, value_name = "N", default_value_t = 5)]
    max_failures: u32,
    /// Seconds the guest gets to power down before QEMU is told to quit.
    #[arg(long, value_name = "S", default_value_t = 60)]
    stop_timeout: u64,
    /// The VM cgroup's parent, below the cgroup mount (default: the mount's root; the VM's
    /// cgroup is `plinth-guest-os` there).
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<PathBuf>,
    /// The service's own cgroup was delegated to it (systemd's Delegate=yes, cgroup v2):
    /// the supervisor moves into its leaf `supervisor` and the VM's cgroup goes beside it.
    #[arg(long, conflicts_with = "cgroup_parent")]
    cgroup_delegated: bool,
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/cgroup")]
    cgroup_mount: PathBuf,
    /// The virtio-blk disks with the plan's settings (chosen), or with QEMU's defaults
    /// (qemu-default: writeback cache, aio=threads, no I/O thread), the baseline of
    /// ci/bench-launch; development layout only.
    #[arg(long, value_enum, default_value = "chosen", requires = "development")]
    disk_settings: DiskSettingsArg,
    /// Give the guest a software TPM: the control socket of a running swtpm (`swtpm socket
    /// --tpm2 --ctrl type=unixio,path=SOCKET`), which QEMU's user must be able to connect
    /// to; development layout only (a GuestOS `test` image keys its state with it).
    #[arg(
        long,
        value_name = "SOCKET",
        requires = "development",
        conflicts_with = "sev_ovmf"
    )]
    vtpm: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DiskSettingsArg {
    Chosen,
    QemuDefault,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AccelArg {
    Kvm,
    Tcg,
}

impl LaunchArgs {
    /// Until the VM ends: setup errors (flags, files, the plan, the state directory) are
    /// bad input (exit 2), the VM's failure exit 1.
    pub fn run(self) -> anyhow::Result<()> {
        self.launch()?.map_err(anyhow::Error::from)
    }

    /// The outer error is bad input; the inner, the supervised VM's failure.
    fn launch(mut self) -> Result<Result<(), SuperviseError>, BadInput> {
        // Before anything starts: the vCPU model goes into `-cpu`, and every path into QEMU's
        // option strings, which take only absolute ones (see launch::qemu).
        plinth_host::launch::qemu::check_vcpu_type(&self.vcpu_type).map_err(|e| e.to_string())?;
        for p in [&mut self.firmware, &mut self.state_dir]
            .into_iter()
            .chain(self.vars.as_mut())
            .chain(self.sev_ovmf.as_mut())
            .chain(self.kernel.as_mut())
            .chain(self.initrd.as_mut())
            .chain(self.vtpm.as_mut())
        {
            *p = std::path::absolute(&*p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        // Signals are read from a signalfd (blocked here; QEMU's mask is reset at spawn).
        let mut mask = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block()
            .map_err(|e| format!("blocking signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK)
            .map_err(|e| format!("signalfd: {e}"))?;
        let plan = self.vm.plan().map_err(|e| format!("{e:#}"))?;
        let user = nix::unistd::User::from_name(&self.user)
            .map_err(|e| format!("user {}: {e}", self.user))?
            .ok_or_else(|| {
                format!(
                    "no user {} on this machine\n  hint: HostOS has plinth-qemu (sysusers.d); elsewhere pass --user with an unprivileged account",
                    self.user
                )
            })?;
        if user.uid.is_root() {
            return Err(format!("--user {}: QEMU must not run as root", self.user).into());
        }
        let firmware = match &self.sev_ovmf {
            Some(ovmf) => Firmware::SevSnp {
                ovmf: ovmf.clone(),
                kernel: self.kernel.clone().unwrap_or_default(),
                initrd: self.initrd.clone().unwrap_or_default(),
                cmdline: self.cmdline.clone().unwrap_or_default(),
                vcpu_type: self.vcpu_type.clone(),
            },
            None => Firmware::Pflash {
                vars: self.vars.clone().or_else(|| {
                    (self.firmware == std::path::Path::new(OVMF_CODE)).then(|| OVMF_VARS.into())
                }),
                code: self.firmware.clone(),
            },
        };
        for f in [&self.firmware]
            .into_iter()
            .chain(self.sev_ovmf.iter())
            .chain(self.vars.iter())
        {
            if !f.is_file() {
                return Err(format!("{}: no such firmware file", f.display()).into());
            }
        }
        let launch = Launch {
            accel: match self.accel {
                AccelArg::Kvm => Accel::Kvm,
                AccelArg::Tcg => Accel::Tcg,
            },
            firmware,
            qmp_socket: PathBuf::new(),
            console_log: PathBuf::new(),
            disk_settings: match self.disk_settings {
                DiskSettingsArg::Chosen => DiskSettings::Planned,
                DiskSettingsArg::QemuDefault => DiskSettings::QemuDefault,
            },
            vtpm: self.vtpm.clone(),
        };
        let cgroup_parent = match (self.cgroup_delegated, &self.cgroup_parent) {
            (true, _) => {
                plinth_host::launch::cgroup::take_delegated(&self.cgroup_mount, "supervisor")
                    .map_err(|e| format!("--cgroup-delegated: {e}"))?
            }
            (false, parent) => parent.clone().unwrap_or_default(),
        };
        let opts = Options {
            state_dir: self.state_dir.clone(),
            run_as: Some(RunAs {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            cgroup_mount: self.cgroup_mount.clone(),
            cgroup_parent,
            jail: std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?,
            restart: self.restart,
            max_failures: self.max_failures,
            stop_timeout: Duration::from_secs(self.stop_timeout),
            marker: "PLINTH BOOT ".into(),
            roots: Roots {
                sysfs: self.vm.sysfs_root.join("sys"),
                dev: self.vm.sysfs_root.join("dev"),
            },
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            // Root's alone (the supervisor checks it, and the directories above it).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&opts.state_dir)
                .map_err(|e| format!("{}: {e}", opts.state_dir.display()))?;
        }
        println!(
            "plinth-host: {} vCPUs, {} GiB on guest nodes {:?} as {}; state in {}",
            plan.vcpus,
            plan.memory_gib,
            plan.placement
                .guest_nodes
                .iter()
                .map(|g| (g.id, g.host_node))
                .collect::<Vec<_>>(),
            self.user,
            opts.state_dir.display()
        );
        // Under systemd (plinth-guest.service, Type=notify): ready once QEMU first runs.
        let notify = Notifier::from_env();
        let stop = std::cell::Cell::new(false);
        let stop_requested = || {
            if let Ok(Some(sig)) = signals.read_signal() {
                println!("plinth-host: signal {}: stopping the VM", sig.ssi_signo);
                notify.send("STOPPING=1");
                stop.set(true);
            }
            stop.get()
        };
        let say = |state: Option<State>, line: &str| {
            println!("plinth-host: {line}");
            notify.status(line);
            if state == Some(State::Running) {
                notify.send("READY=1");
            }
        };
        match supervise(&plan, &launch, &opts, &stop_requested, &say) {
            Err(SuperviseError::Setup(e)) => Err(BadInput(e)),
            other => Ok(other),
        }
    }
}
