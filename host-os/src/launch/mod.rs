//! Launching the GuestOS VM from its plan. Today: the QEMU command line (`qemu`); running it
//! unprivileged in its own cgroup, pinning its threads through QMP and supervising it come
//! next (issue 6).
//!
//! Why a QEMU command line and not a libvirt domain: HostOS carries no libvirtd (a daemon,
//! its RPC and its own sandbox policy in the node's TCB); the SEV-SNP objects, guest NUMA
//! layout and thread pinning are all plain QEMU options and QMP commands; and the command
//! line is data a test can read whole.

pub mod qemu;
