//! Small files read as root from places it does not fully trust (the state volume, the
//! config partition): never through a link, only a regular file, and never more than asked.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The text of the regular file at `path`, at most `max` bytes; a link is refused (`ELOOP`),
/// as are a longer file and anything not a regular file (`InvalidData`).
pub fn read_bounded(path: &Path, max: u64) -> std::io::Result<String> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(invalid("not a regular file".into()));
    }
    let mut text = String::new();
    file.take(max + 1).read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(invalid(format!("longer than {max} bytes")));
    }
    Ok(text)
}
