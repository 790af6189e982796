//! `plinth-testserver`: serve a directory over HTTP/1.1 on 127.0.0.1 (Range and keep-alive
//! supported, no faults), for benchmarks and manual tests. Prints `listening on URL` on
//! stdout once ready and runs until Ctrl-C or SIGTERM.

use anyhow::Context;
use clap::Parser;
use plinth_testkit::{Faults, Files, TestServer};
use std::io::Write;
use std::path::PathBuf;

/// Serve a directory on 127.0.0.1 for plinth benchmarks and tests.
#[derive(Debug, Parser)]
#[command(
    name = "plinth-testserver",
    after_help = "Example:\n  plinth-testserver --dir /tmp/debs --port 8080"
)]
struct Args {
    /// Directory to serve.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.dir.is_dir(), "not a directory: {}", args.dir.display());
    let server = TestServer::try_start(Files::Dir(args.dir.clone()), Faults::none(), args.port)
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", server.url()).context("write to stdout")?;
    out.flush().context("write to stdout")?;
    drop(out);
    server.wait_for_signal().context("wait for a signal")?;
    Ok(())
}
