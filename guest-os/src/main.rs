//! `plinth-guest`: the GuestOS agent: the boot report (with what the guest sees of its
//! machine), its TPM measurements, SEV-SNP attestation reports bound to a caller's nonce, and
//! a disk benchmark.
//!
//! Verbs arrive with the issues that build them; today: `boot-report`, run at boot by
//! `plinth-boot-report.service`, `measured-boot` (both in the crate `plinth-boot-report`),
//! `attest` (an SEV-SNP attestation report for a verifier's nonce, [`attest`]) and
//! `disk-bench` (direct-I/O throughput of scratch disks marked for `ci/bench-launch`, run at
//! boot by `plinth-disk-bench.service`, inert without such a disk: the crate
//! `plinth-disk-bench`).
//!
//! GuestOS's boot report prints, before its `PLINTH BOOT` marker, what the guest sees of its
//! machine: `PLINTH GUEST NUMA ...` lines (the node count, then each node's CPUs and memory)
//! and a `PLINTH GUEST DISK ...` line per disk (size, serial, rotational), read from sysfs by
//! [`machine`], so host-side tests can check the NUMA layout and disks HostOS gave the VM.

mod attest;
mod machine;

use clap::Subcommand;
use plinth_boot_report::agent::Agent;
use std::path::Path;
use std::process::ExitCode;

const AGENT: Agent = Agent {
    name: "plinth-guest",
    os: "guest-os",
    about: "The GuestOS agent: reports the boot and its measurements, requests SEV-SNP \
            attestation reports, benchmarks scratch disks.",
    version: env!("CARGO_PKG_VERSION"),
};

/// The GuestOS agent's own verbs (`boot-report`, whose report first prints the NUMA nodes and
/// disks the guest sees as `PLINTH GUEST ...` lines, and `measured-boot` are every agent's).
#[derive(Debug, Subcommand)]
enum Verb {
    /// Request an SEV-SNP attestation report bound to a nonce, with the host's
    /// certificates, for `plinth attest verify`.
    Attest(attest::AttestArgs),
    /// Benchmark the disks marked as scratch benchmark disks (direct I/O, sequential write
    /// and read, 4 KiB random reads) and print `PLINTH DISK BENCH ...` on every active
    /// console; without a marked disk, nothing.
    DiskBench(plinth_disk_bench::DiskBenchArgs),
}

fn main() -> ExitCode {
    AGENT.main(&|| machine::lines(Path::new("/sys")), |verb| match verb {
        Verb::Attest(args) => args.run(),
        Verb::DiskBench(args) => args.run(AGENT.name),
    })
}
