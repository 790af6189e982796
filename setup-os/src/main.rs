//! `plinth-setup`: the SetupOS agent. Today it reports the boot (`boot-report`, run at boot by
//! `plinth-boot-report.service`) and its measurements (`measured-boot`), both from the crate
//! `plinth-boot-report`. Checking the hardware and installing HostOS and GuestOS come with the
//! issues that build them.

use plinth_boot_report::agent::{Agent, NoOwnVerbs};
use std::process::ExitCode;

const AGENT: Agent = Agent {
    name: "plinth-setup",
    os: "setup-os",
    about: "The SetupOS agent: reports the boot and the TPM's measurements of it.",
    version: env!("CARGO_PKG_VERSION"),
};

fn main() -> ExitCode {
    AGENT.main(&Vec::new, |verb: NoOwnVerbs| match verb {})
}
