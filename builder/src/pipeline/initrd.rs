//! The initrd, made by dracut inside the image's own root (so its kernel modules, systemd and
//! libraries are the image's): systemd-based, with `systemd-veritysetup` to open the dm-verity
//! root, not host-specific, and reproducible (`--reproducible`, SOURCE_DATE_EPOCH). It runs in
//! a private mount namespace (the /proc, /sys and /dev it needs vanish with it) with no network,
//! under umask 022 (dracut's files and device nodes take their modes from the umask).
//!
//! dracut writes the cpio archive uncompressed; it is compressed here with the pinned libzstd
//! at [`ZSTD_LEVEL`], one thread (the image need not carry a compressor, and gzip -9 took
//! 75 s where this takes about 1.5 s and gives a smaller file). The kernel unpacks zstd
//! initramfs archives (CONFIG_RD_ZSTD).

use std::path::{Path, PathBuf};
use std::process::Command;

/// dracut modules every plinth initrd carries besides dracut's defaults.
pub const MODULES: &str = "systemd systemd-veritysetup";

/// What an OS's initrd carries beyond [`MODULES`]: more dracut modules, and programs (by
/// name, found on the image's PATH, with their libraries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extras {
    pub modules: Vec<&'static str>,
    /// Kernel modules (`--add-drivers`).
    pub drivers: Vec<&'static str>,
    pub install: Vec<&'static str>,
}

impl Extras {
    /// The cache key's words for these extras.
    pub fn describe(&self) -> String {
        let mut words = format!(
            "dracut --add '{} {}' --install '{}'",
            MODULES,
            self.modules.join(" "),
            self.install.join(" ")
        );
        if !self.drivers.is_empty() {
            words.push_str(&format!(" --add-drivers '{}'", self.drivers.join(" ")));
        }
        words
    }
}

/// zstd level of the initrd.
pub const ZSTD_LEVEL: i32 = 3;

/// The kernel found in a root and the initrd made for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initrd {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub kernel_release: String,
    /// The kernel image inside the root (`boot/vmlinuz-<release>`).
    pub kernel: PathBuf,
    /// The initrd written.
    pub initrd: PathBuf,
}

/// Why the initrd could not be made.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("{root}: expected exactly one kernel in lib/modules, found {found}\n  hint: the package set must hold one linux-image package")]
    Kernels { root: String, found: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("dracut failed ({status}):\n{output}\n  command: {command}")]
    Dracut {
        status: String,
        command: String,
        output: String,
    },
    #[error("cannot run unshare: {0}\n  hint: run plinth as root on Linux (util-linux)")]
    Unshare(std::io::Error),
}

/// `cpio` compressed into `out` as one zstd frame (single-threaded: the same bytes anywhere).
fn compress(cpio: &Path, out: &Path) -> std::io::Result<()> {
    let mut input = std::fs::File::open(cpio)?;
    let mut encoder = zstd::Encoder::new(std::fs::File::create(out)?, ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    std::io::copy(&mut input, &mut encoder)?;
    encoder.finish()?.sync_all()
}

impl Initrd {
    /// An initrd made earlier for the kernel in `root` (e.g. taken from the stage cache).
    pub fn existing(root: &Path, initrd: &Path) -> Result<Initrd, InitrdError> {
        let kernel_release = kernel_release(root)?;
        Ok(Initrd {
            kernel: root.join("boot").join(format!("vmlinuz-{kernel_release}")),
            kernel_release,
            initrd: initrd.to_path_buf(),
        })
    }
}

fn io(path: &Path, e: std::io::Error) -> InitrdError {
    InitrdError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The release of the one kernel in `root` (its directory in `usr/lib/modules`).
fn kernel_release(root: &Path) -> Result<String, InitrdError> {
    let modules = root.join("usr/lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&modules)
        .map_err(|e| io(&modules, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    releases.sort();
    let [kernel_release] = &releases[..] else {
        return Err(InitrdError::Kernels {
            root: root.display().to_string(),
            found: if releases.is_empty() {
                "none".into()
            } else {
                releases.join(", ")
            },
        });
    };
    Ok(kernel_release.clone())
}

/// Build the initrd of the kernel in `root` into `out`, with `extras`.
pub fn build(root: &Path, epoch: i64, extras: &Extras, out: &Path) -> Result<Initrd, InitrdError> {
    let kernel_release = &kernel_release(root)?;
    let modules = [MODULES]
        .iter()
        .chain(&extras.modules)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let mut install = if extras.install.is_empty() {
        String::new()
    } else {
        format!(" --install \"{}\"", extras.install.join(" "))
    };
    if !extras.drivers.is_empty() {
        install.push_str(&format!(" --add-drivers \"{}\"", extras.drivers.join(" ")));
    }
    let inside = "/var/tmp/plinth-initrd.img";
    let script = format!(
        "set -e
umask 022
mount -t proc proc \"$1/proc\"
mount --rbind /sys \"$1/sys\"
mount --rbind /dev \"$1/dev\"
chroot \"$1\" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin SOURCE_DATE_EPOCH={epoch} \
TZ=UTC LC_ALL=C.UTF-8 dracut --quiet --force --reproducible --no-hostonly \
--no-hostonly-cmdline --no-early-microcode --no-compress --add \"{modules}\"{install} --kver {kernel_release} {inside}"
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--net", "--", "sh", "-c", &script, "sh"])
        .arg(root);
    let output = cmd.output().map_err(InitrdError::Unshare)?;
    if !output.status.success() {
        return Err(InitrdError::Dracut {
            status: output.status.to_string(),
            command: format!("{cmd:?}"),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    let made = root.join(inside.trim_start_matches('/'));
    compress(&made, out).map_err(|e| io(out, e))?;
    std::fs::remove_file(&made).map_err(|e| io(&made, e))?;
    Ok(Initrd {
        kernel_release: kernel_release.clone(),
        kernel: root.join("boot").join(format!("vmlinuz-{kernel_release}")),
        initrd: out.to_path_buf(),
    })
}
