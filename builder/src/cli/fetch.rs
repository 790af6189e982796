//! PLACEHOLDER
use super::{Global, Output};
#[derive(Debug, clap::Args)]
pub struct Args {}
pub fn run(_g: &Global, _o: &Output, _a: Args) -> anyhow::Result<()> { Ok(()) }
