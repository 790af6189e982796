//! Lines for whoever watches the machine: printed on stdout (the journal) and written to
//! every active console (`/sys/class/tty/console/active`), so that a serial console sees
//! them whichever console the kernel made /dev/console. Used by the state's steps in the
//! initrd and by the boot report.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

/// Print `lines` on stdout and on every active console.
pub fn say(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
    let _ = std::io::stdout().flush();
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    for console in active.split_whitespace() {
        // Not as the controlling terminal: the service is a session leader.
        let tty = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
            .open(format!("/dev/{console}"));
        if let Ok(mut tty) = tty {
            let mut text = String::from("\r\n");
            for line in lines {
                text.push_str(line);
                text.push_str("\r\n");
            }
            let _ = tty.write_all(text.as_bytes());
        }
    }
}
