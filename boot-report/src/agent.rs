//! The one command-line skeleton of the three agents (`plinth-setup`, `plinth-host`,
//! `plinth-guest`): the verbs every agent has ([`CommonVerb`]) and then the agent's own, parsed
//! under the agent's name, and dispatched. An agent's `main` is one call to [`Agent::main`].

use crate::CommonVerb;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

/// Who the agent is.
pub struct Agent {
    /// The program's name (`plinth-host`).
    pub name: &'static str,
    /// The OS it runs on, as its boot report names it (`host-os`).
    pub os: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// Its version (the agent crate's `CARGO_PKG_VERSION`).
    pub version: &'static str,
}

/// An agent that has only the common verbs.
#[derive(Debug, Subcommand)]
pub enum NoOwnVerbs {}

#[derive(Debug, Parser)]
struct AgentCli<V: Subcommand> {
    #[command(subcommand)]
    verb: AgentVerb<V>,
}

#[derive(Debug, Subcommand)]
enum AgentVerb<V: Subcommand> {
    #[command(flatten)]
    Common(CommonVerb),
    #[command(flatten)]
    Own(V),
}

impl Agent {
    /// The agent's whole command line: the common verbs, then its own (`V`).
    pub fn command<V: Subcommand>(&self) -> clap::Command {
        AgentCli::<V>::command()
            .name(self.name)
            .bin_name(self.name)
            .about(self.about)
            .version(self.version)
    }

    /// Parse the process's arguments and run the verb: a common one as the agent of its OS
    /// (the boot report first printing `machine()`, the agent's lines about its machine), an
    /// own one through `own`. The process's exit code.
    pub fn main<V: Subcommand>(
        &self,
        machine: &dyn Fn() -> Vec<String>,
        own: impl FnOnce(V) -> ExitCode,
    ) -> ExitCode {
        let mut command = self.command::<V>();
        let matches = command.get_matches_mut();
        let cli = AgentCli::<V>::from_arg_matches(&matches)
            .unwrap_or_else(|e| e.format(&mut command).exit());
        match cli.verb {
            AgentVerb::Common(verb) => verb.run(self.os, machine),
            AgentVerb::Own(verb) => own(verb),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: Agent = Agent {
        name: "plinth-test",
        os: "setup-os",
        about: "A test agent",
        version: "9.9.9",
    };

    #[derive(Debug, Subcommand)]
    enum Own {
        /// Its own verb.
        Hello {
            #[arg(long)]
            name: String,
        },
    }

    fn parse<V: Subcommand>(args: &[&str]) -> Result<AgentVerb<V>, clap::Error> {
        let matches = AGENT.command::<V>().try_get_matches_from(args)?;
        Ok(AgentCli::<V>::from_arg_matches(&matches)?.verb)
    }

    #[test]
    fn common_and_own_verbs_under_the_agents_name() {
        AGENT.command::<Own>().debug_assert();
        AGENT.command::<NoOwnVerbs>().debug_assert();
        assert!(matches!(
            parse::<Own>(&["plinth-test", "boot-report"]),
            Ok(AgentVerb::Common(CommonVerb::BootReport))
        ));
        assert!(matches!(
            parse::<Own>(&["plinth-test", "hello", "--name", "x"]),
            Ok(AgentVerb::Own(Own::Hello { name })) if name == "x"
        ));
        assert!(parse::<NoOwnVerbs>(&["plinth-test", "hello"]).is_err());
        let help = AGENT.command::<Own>().render_help().to_string();
        assert!(
            help.contains("A test agent") && help.contains("plinth-test"),
            "{help}"
        );
        assert!(
            help.contains("boot-report") && help.contains("hello"),
            "{help}"
        );
        let version = AGENT.command::<Own>().render_version();
        assert_eq!(version.trim(), "plinth-test 9.9.9");
    }
}
