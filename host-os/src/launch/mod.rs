//! Launching the GuestOS VM from its plan: the QEMU command line and process (`qemu`, run
//! as an unprivileged user), the devices and limits that user is given (`access`), its
//! cgroup (`cgroup`), the QMP client (`qmp`) and the pinning of QEMU's threads (`pin`); the
//! process that becomes QEMU (`jail`: cgroup, locked-memory limit, user, death signal,
//! exec) and the supervisor that starts, watches, restarts and stops it (`supervise`).
//!
//! Why a QEMU command line and not a libvirt domain: HostOS carries no libvirtd (a daemon,
//! its RPC and its own sandbox policy in the node's TCB); the SEV-SNP objects, guest NUMA
//! layout and thread pinning are all plain QEMU options and QMP commands; and the command
//! line is data a test can read whole.

pub mod access;
pub mod cgroup;
pub mod jail;
pub mod notify;
pub mod pin;
pub mod qemu;
pub mod qmp;
pub mod supervise;
