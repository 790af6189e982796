//! Opening the files of a downloaded release, which are hostile: never through a link, never
//! blocking on a FIFO, only regular files, and text read whole only below a cap.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The most a release's text file (manifest, SBOM, command line) may hold to be read whole.
pub const MAX_TEXT: u64 = 64 << 20;

/// Open a file of a release (hostile): never through a link (`O_NOFOLLOW`), never blocking
/// on a FIFO (`O_NONBLOCK`), and only a regular file; a link, a device or a FIFO planted in
/// a release directory (`/dev/zero`, a pipe nobody writes) is an error naming it.
pub fn open_untrusted(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(code) if code == nix::libc::ELOOP => io::Error::new(
                io::ErrorKind::InvalidData,
                "a symbolic link: a release's files must be regular files",
            ),
            _ => e,
        })?;
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file (a device, FIFO, socket or directory): a release's files must be regular files",
        ));
    }
    Ok(file)
}

/// The bytes of the release file `path` ([`open_untrusted`]), refused when it holds more
/// than `cap` bytes: nothing larger is read into memory.
pub fn read_untrusted(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let file = open_untrusted(path)?;
    let len = file.metadata()?.len();
    if len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{len} bytes, more than the {cap} a release's text file may hold"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("grew past the {cap} bytes a release's text file may hold"),
        ));
    }
    Ok(bytes)
}
