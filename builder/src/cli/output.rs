//! Where messages go: results on stdout (text or JSON), progress and diagnostics on stderr,
//! filtered by `-v`/`-q`.

use super::Global;
use std::io::IsTerminal;

/// Verbosity and format settings for one run.
#[derive(Debug, Clone)]
pub struct Output {
    pub verbose: u8,
    pub quiet: bool,
    pub json: bool,
}

impl Output {
    pub fn new(g: &Global) -> Output {
        Output {
            verbose: g.verbose,
            quiet: g.quiet,
            json: g.json,
        }
    }

    /// A status line on stderr (hidden by `-q`).
    pub fn info(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// Detail on stderr, shown with `-v`.
    pub fn detail(&self, msg: impl AsRef<str>) {
        if self.verbose > 0 && !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }

    /// A warning on stderr (always shown).
    pub fn warn(&self, msg: impl AsRef<str>) {
        eprintln!("warning: {}", msg.as_ref());
    }

    /// The final error, with its causes.
    pub fn error(&self, err: &anyhow::Error) {
        let mut text = format!("error: {err}");
        for cause in err.chain().skip(1) {
            text.push_str(&format!("\n  caused by: {cause}"));
        }
        eprintln!("{text}");
    }

    /// Whether progress bars should be drawn (stderr is a terminal and not quiet).
    pub fn progress_bars(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    /// How downloads report progress: bars on a terminal, periodic lines otherwise, nothing
    /// with `-q`.
    pub fn download_progress(&self) -> crate::packages::fetch::Progress {
        use crate::packages::fetch::Progress;
        if self.progress_bars() {
            Progress::Bars
        } else if self.quiet {
            Progress::Hidden
        } else {
            Progress::Lines
        }
    }

    /// Print a machine-readable result on stdout.
    pub fn json_result<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}
