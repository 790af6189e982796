//! The state volume's life, driven through the real tools (cryptsetup, systemd-cryptenroll,
//! systemd-cryptsetup, mkfs.ext4, e2fsck, mount): open a committed volume, or create one on a
//! partition that never held anything, and never write to anything else.
//!
//! Creation is a sequence whose only commit point is the LUKS label: the volume is formatted
//! as `plinth-creating`, its key enrolled, the file system made and seeded (machine-id), and
//! only then relabelled `plinth-state`. A power loss anywhere before leaves a volume the next
//! boot recognises as unfinished and creates again; nothing the running system wrote can be
//! lost, because it never sees an uncommitted volume. Each step prints `PLINTH STATE step=…`
//! (for power-loss tests) and is timed.

use crate::header::{self, Content, LABEL_CREATING, LABEL_STATE};
use crate::key::{self, KeySource, Secret};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Where LUKS2's data begins, in 512-byte sectors: the classification relies on it.
const DATA_OFFSET_SECTORS: u64 = header::DATA_START / 512;
/// The machine id, in the state (systemd reads it when /etc/machine-id is empty).
const MACHINE_ID: &str = "lib/dbus/machine-id";
/// The boots this state has seen.
const BOOTS: &str = "lib/plinth/boots";
/// The most read from either: both are one short line.
const SMALL_MAX: u64 = 64;

/// A file of at most [`SMALL_MAX`] bytes, as text; a symlink is refused.
fn read_small(path: &Path) -> Result<String, StateError> {
    crate::files::read_bounded(path, SMALL_MAX).map_err(|e| StateError::io(path, e))
}

/// systemd-cryptsetup, not on PATH.
pub const SYSTEMD_CRYPTSETUP: &str = "/usr/lib/systemd/systemd-cryptsetup";

/// Why the state is not available.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{device} holds {what}; nothing was written\n  hint: to give this partition to plinth, wipe it on purpose (the node's configuration), never by accident")]
    Foreign { device: String, what: String },
    #[error("{device} could not be unlocked with the {source_name} key: {detail}\n  hint: this happens on another machine's TPM, or with a boot chain the key was not sealed to; the volume was left as it is")]
    Unlock {
        device: String,
        source_name: &'static str,
        detail: String,
    },
    #[error("the file system on {device} is corrupt (e2fsck exit {code}): {detail}")]
    Corrupt {
        device: String,
        code: i32,
        detail: String,
    },
    #[error("{tool} failed ({status}): {detail}")]
    Tool {
        tool: String,
        status: String,
        detail: String,
    },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl StateError {
    fn io(path: &Path, e: std::io::Error) -> StateError {
        StateError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// What to open or create, and with what.
#[derive(Debug, Clone)]
pub struct Volume {
    /// The partition (`/dev/vda7`).
    pub device: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The device-mapper name it is opened as.
    pub mapper: String,
    /// Where its file system is mounted (`/sysroot/var`).
    pub target: PathBuf,
    /// The key source.
    pub source: KeySource,
    /// The UUID of a volume the node's configuration asks to wipe ([`crate::config`]): if
    /// it is this partition's, the volume is wiped and created anew.
    pub wipe: Option<String>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the volume was created in this run.
    pub created: bool,
    /// The boots this state has seen, this one included (`lib/plinth/boots`).
    pub boots: u64,
    /// The machine id kept in the state.
    pub machine_id: String,
    /// Each step and its time in milliseconds.
    pub steps: Vec<(&'static str, u128)>,
    /// The volume's UUID (what a wipe request names).
    pub uuid: Option<String>,
}

/// The last lines of a tool's output, for an error.
fn tail(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(4)..].join(" / ")
}

/// What systemd-cryptsetup's words for a refused TPM2 unlock mean.
fn unlock_failure(detail: &str) -> &str {
    if detail.contains("policy digest does not match") {
        "the PCRs it is sealed to differ on this boot (a changed boot chain, UKI or command line)"
    } else if detail.contains("Couldn't find signature") {
        "the PCRs it is sealed to differ on this boot, and the release key signed no such values (a changed boot chain, UKI or command line)"
    } else if detail.contains("integrity check failed") || detail.contains("Failed to load") {
        "this TPM did not seal it (another machine's TPM, or a cleared one)"
    } else if detail.contains("No TPM2") || detail.contains("not available") {
        "no TPM2 device was found"
    } else {
        detail
    }
}

/// Run `cmd`, writing `stdin` (a key) to it if given; its output.
fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<std::process::Output, StateError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let spawn_err = |e: std::io::Error| StateError::Tool {
        tool: tool.clone(),
        status: "not started".into(),
        detail: e.to_string(),
    };
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe: its status says why.
        let _ = pipe.write_all(bytes);
    }
    child.wait_with_output().map_err(spawn_err)
}

/// Run `cmd` and require success.
fn check(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<(), StateError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let out = run(cmd, stdin)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(StateError::Tool {
            tool,
            status: out.status.to_string(),
            detail: tail(&out),
        })
    }
}

/// Announce a step on the console and time it.
struct Steps {
    done: Vec<(&'static str, u128)>,
}

impl Steps {
    fn run<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        crate::console::say(&[format!("PLINTH STATE step={name}")]);
        let start = Instant::now();
        let value = f()?;
        self.done.push((name, start.elapsed().as_millis()));
        Ok(value)
    }
}

impl Volume {
    fn device(&self) -> String {
        self.device.display().to_string()
    }

    fn mapped(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.mapper)
    }

    /// What the partition holds now.
    pub fn content(&self) -> Result<Content, StateError> {
        let mut f =
            std::fs::File::open(&self.device).map_err(|e| StateError::io(&self.device, e))?;
        header::classify(&mut f, self.size).map_err(|e| StateError::io(&self.device, e))
    }

    /// The UUID of the LUKS2 volume on the partition, if any.
    pub fn uuid(&self) -> Result<Option<String>, StateError> {
        let mut f =
            std::fs::File::open(&self.device).map_err(|e| StateError::io(&self.device, e))?;
        header::volume_uuid(&mut f).map_err(|e| StateError::io(&self.device, e))
    }

    /// Open the committed volume, or create it where nothing was ever written, and mount it.
    /// A volume the node's configuration asks to wipe (by its UUID) is wiped first, and so
    /// created anew.
    pub fn open_or_create(&self) -> Result<Outcome, StateError> {
        let mut steps = Steps { done: Vec::new() };
        if let Some(wanted) = &self.wipe {
            if self.uuid()?.as_deref() == Some(wanted) {
                steps.run("wipe", || self.wipe_volume())?;
            }
        }
        let created = match self.content()? {
            Content::State => {
                steps.run("unlock", || self.unlock())?;
                steps.run("fsck", || self.fsck())?;
                steps.run("mount", || self.mount())?;
                steps.run("count", || self.count_boot())?;
                false
            }
            Content::Blank { .. } | Content::Creating => {
                self.create(&mut steps)?;
                true
            }
            Content::Foreign(what) => {
                return Err(StateError::Foreign {
                    device: self.device(),
                    what,
                })
            }
        };
        steps.run("done", || Ok(()))?;
        let boots = read_small(&self.target.join(BOOTS))?
            .trim()
            .parse()
            .map_err(|_| self.bad_file(BOOTS, "a decimal count"))?;
        let machine_id = read_small(&self.target.join(MACHINE_ID))?
            .trim()
            .to_string();
        if machine_id.len() != 32 || !machine_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.bad_file(MACHINE_ID, "32 hexadecimal digits"));
        }
        Ok(Outcome {
            created,
            boots,
            machine_id,
            steps: steps.done,
            uuid: self.uuid()?,
        })
    }

    /// Zero the partition's first [`header::SCAN_END`] bytes (both LUKS2 headers, the key
    /// slots, the start of the data), so that it reads as blank: nothing of the old volume
    /// can be opened again.
    pub fn wipe_volume(&self) -> Result<(), StateError> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.device)
            .map_err(|e| StateError::io(&self.device, e))?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < header::SCAN_END {
            f.write_all_at(&zeros, at)
                .map_err(|e| StateError::io(&self.device, e))?;
            at += zeros.len() as u64;
        }
        f.sync_all().map_err(|e| StateError::io(&self.device, e))
    }

    fn create(&self, steps: &mut Steps) -> Result<(), StateError> {
        // Hex: systemd-cryptenroll takes the unlocking key as a string in $PASSWORD.
        let temp: Secret = {
            let raw =
                key::random_key(32).map_err(|e| StateError::io(Path::new("/dev/urandom"), e))?;
            zeroize::Zeroizing::new(hex::encode(&*raw).into_bytes())
        };
        steps.run("luks", || self.format(&temp))?;
        steps.run("enroll", || self.enroll(&temp))?;
        drop(temp);
        steps.run("unlock", || self.unlock())?;
        steps.run("mkfs", || self.mkfs())?;
        steps.run("mount", || self.mount())?;
        steps.run("seed", || self.seed())?;
        steps.run("count", || self.count_boot())?;
        steps.run("commit", || self.relabel(LABEL_STATE))
    }

    /// LUKS2 with a temporary key: cheap PBKDF (the key is 256 random bits, its slot is
    /// wiped at enrolment), 4 KiB sectors, data at [`header::DATA_START`].
    pub fn format(&self, temp: &[u8]) -> Result<(), StateError> {
        check(
            Command::new("cryptsetup")
                .args(["luksFormat", "--batch-mode", "--type", "luks2"])
                .args(["--label", LABEL_CREATING, "--sector-size", "4096"])
                .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
                .arg(format!("--offset={DATA_OFFSET_SECTORS}"))
                .args(["--key-file=-"])
                .arg(&self.device),
            Some(temp),
        )
    }

    /// Seal a new key slot to the source and wipe the temporary key's.
    pub fn enroll(&self, temp: &[u8]) -> Result<(), StateError> {
        let password = std::str::from_utf8(temp).map_err(|_| StateError::Tool {
            tool: "systemd-cryptenroll".into(),
            status: "not started".into(),
            detail: "the temporary key is not text".into(),
        })?;
        check(
            Command::new("systemd-cryptenroll")
                .args(self.source.enroll_args(&self.device))
                .env("PASSWORD", password),
            None,
        )
    }

    /// Open the volume through the key source.
    pub fn unlock(&self) -> Result<(), StateError> {
        let out = run(
            Command::new(SYSTEMD_CRYPTSETUP)
                .args(["attach", &self.mapper])
                .arg(&self.device)
                .arg("-")
                .arg(self.source.attach_options()),
            None,
        )?;
        if out.status.success() && self.mapped().exists() {
            Ok(())
        } else {
            let detail = tail(&out);
            // The tool's own words go to the journal; the report gets what they mean.
            eprintln!("{SYSTEMD_CRYPTSETUP} attach {}: {detail}", self.device());
            Err(StateError::Unlock {
                device: self.device(),
                source_name: self.source.name(),
                detail: unlock_failure(&detail).to_string(),
            })
        }
    }

    fn mkfs(&self) -> Result<(), StateError> {
        check(
            Command::new("mkfs.ext4")
                .args(["-q", "-L", "plinth-var"])
                .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
                .arg(self.mapped()),
            None,
        )
    }

    /// e2fsck's automatic repair: 0 to 3 are fine (fixed, or fixed and a reboot advised), 4
    /// and above leave a file system that must not be mounted.
    fn fsck(&self) -> Result<(), StateError> {
        let out = run(Command::new("e2fsck").arg("-p").arg(self.mapped()), None)?;
        match out.status.code() {
            Some(0..=3) => Ok(()),
            code => Err(StateError::Corrupt {
                device: self.device(),
                code: code.unwrap_or(-1),
                detail: tail(&out),
            }),
        }
    }

    fn mount(&self) -> Result<(), StateError> {
        check(
            Command::new("mount")
                .args(["-t", "ext4", "-o", "nodev,nosuid"])
                .arg(self.mapped())
                .arg(&self.target),
            None,
        )
    }

    /// What a fresh state holds before it is committed: the machine's id (systemd reads it
    /// from here when /etc/machine-id is empty and read-only) and the state's format version,
    /// each synced.
    fn seed(&self) -> Result<(), StateError> {
        let id = key::random_key(16).map_err(|e| StateError::io(Path::new("/dev/urandom"), e))?;
        let files = [
            (MACHINE_ID, format!("{}\n", hex::encode(&*id))),
            ("lib/plinth/state-version", "1\n".to_string()),
        ];
        for (rel, text) in files {
            let path = self.target.join(rel);
            let dir = path.parent().unwrap_or(&self.target);
            std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
            let mut f = std::fs::File::create(&path).map_err(|e| StateError::io(&path, e))?;
            f.write_all(text.as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| StateError::io(&path, e))?;
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StateError::io(dir, e))?;
        }
        let root =
            std::fs::File::open(&self.target).map_err(|e| StateError::io(&self.target, e))?;
        nix::unistd::syncfs(&root).map_err(|e| StateError::io(&self.target, e.into()))
    }

    /// Count this boot in `lib/plinth/boots` (none yet on a fresh state): a new file synced
    /// and renamed over the old, so a power loss leaves the old count or the new one.
    fn count_boot(&self) -> Result<(), StateError> {
        let path = self.target.join(BOOTS);
        let before: u64 = match read_small(&path) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|_| self.bad_file(BOOTS, "a decimal count"))?,
            Err(StateError::Io { .. }) if !path.exists() => 0,
            Err(e) => return Err(e),
        };
        let dir = path.parent().unwrap_or(&self.target);
        let tmp = dir.join(".boots.new");
        let mut f = std::fs::File::create(&tmp).map_err(|e| StateError::io(&tmp, e))?;
        f.write_all(format!("{}\n", before.saturating_add(1)).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| StateError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| StateError::io(&path, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StateError::io(dir, e))
    }

    fn bad_file(&self, rel: &str, expected: &str) -> StateError {
        StateError::Io {
            path: self.target.join(rel).display().to_string(),
            message: format!(
                "expected {expected}; the state volume's file was changed outside plinth-state"
            ),
        }
    }

    /// Set the LUKS label (the commit point: `plinth-state`).
    pub fn relabel(&self, label: &str) -> Result<(), StateError> {
        check(
            Command::new("cryptsetup")
                .args(["config", "--label", label])
                .arg(&self.device),
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_unlocks_are_named_by_what_they_mean() {
        // systemd-cryptsetup 252's words, as a booted HostOS printed them.
        let other_tpm = "ERROR:esys:src/tss2-esys/api/Esys_Load.c:112:Esys_Load() Esys Finish ErrorCode (0x000001df)  / Failed to load HMAC key in TPM: tpm:parameter(1):integrity check failed / TPM2 operation failed, falling back to traditional unlocking: State not recoverable / No passphrase or recovery key registered.";
        let changed_chain = "Current policy digest does not match stored policy digest, cancelling TPM2 authentication attempt. / Set cipher aes, mode xts-plain64, key size 512 bits for device /dev/vda7. / No passphrase or recovery key registered.";
        assert!(unlock_failure(other_tpm).contains("another machine's TPM"));
        assert!(unlock_failure(changed_chain).contains("PCRs it is sealed to differ"));
        let unsigned_values =
            "Couldn't find signature for this PCR bank, PCR index and public key.";
        assert!(unlock_failure(unsigned_values).contains("the release key signed no such values"));
        assert_eq!(unlock_failure("something new"), "something new");
    }
}
