//! `plinth-host` as a library: what the HostOS agent's verbs are built from, for its binary
//! and for tests: the machine's topology ([`topology`]), read from /sys and /proc, and the
//! GuestOS VM's plan on it ([`plan`]) and its QEMU command line ([`launch`]).

pub mod launch;
pub mod plan;
pub mod topology;
