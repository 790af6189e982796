//! The state volume's life, driven through the real tools (cryptsetup, systemd-cryptenroll,
//! systemd-cryptsetup, mkfs.ext4, e2fsck, mount): open a committed volume, or create one on a
//! partition that never held anything, and never write to anything else.
//!
//! Creation is a sequence whose only commit point is the LUKS label: the partition is marked
//! (so that a format cut before cryptsetup writes a header is recognised, see
//! [`header::creation_mark`]), the volume formatted as `plinth-creating`, its key enrolled, the file system made and seeded (machine-id), and
//! only then relabelled `plinth-state`. A power loss anywhere before leaves a volume the next
//! boot recognises as unfinished and creates again; nothing the running system wrote can be
//! lost, because it never sees an uncommitted volume. Each step prints `PLINTH STATE step=…`
//! (for power-loss tests) and is timed.

use crate::derive::{self, Derive, SnpToken};
use crate::header::{self, Content, LABEL_CREATING, LABEL_STATE};
use crate::key::{self, KeySource, Sealed, Secret};
use crate::metadata;
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
    #[error("{device} could not be unlocked with the {source_name} key: {detail}\n  hint: this happens on another machine (its TPM or chip), or with a boot chain or software the key was not sealed to or derived under; the volume was left as it is")]
    Unlock {
        device: String,
        source_name: &'static str,
        detail: String,
    },
    #[error("{device}'s LUKS2 header is not one plinth-state made: {detail}; nothing was opened or written\n  hint: the header was changed outside plinth-state (whoever can write the disk can rewrite it); to start over, wipe the volume on purpose (the node's configuration)")]
    Header { device: String, detail: String },
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

/// A new random (version 4) UUID, as cryptsetup takes it.
fn new_uuid() -> std::io::Result<String> {
    let mut b = key::random_key(16)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(&*b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
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
        let content = self.content()?;
        crate::console::say(&[format!("PLINTH STATE found={}", content.word())]);
        let created = match content {
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

    /// Wipe the volume so that nothing of it can be opened again: the creation mark first
    /// (synced), then zeros over the rest of the partition's first [`header::SCAN_END`] bytes
    /// (both LUKS2 headers, the key slots, the start of the data). A power cut at any point
    /// leaves either the old header (the wipe request, naming its UUID, still matches) or the
    /// mark with no header: a creation to start again, never bytes read as somebody's data.
    pub fn wipe_volume(&self) -> Result<(), StateError> {
        use std::os::unix::fs::FileExt;
        let f = self.open_exclusive()?;
        self.write_mark(&f)?;
        let zeros = vec![0u8; 1 << 20];
        let mark_end = header::DATA_START + header::MARK_LEN as u64;
        let mut at = 0;
        while at < header::SCAN_END {
            let end = (at + zeros.len() as u64).min(header::SCAN_END);
            // Around the mark: [at, DATA_START) and [mark end, end).
            for (from, to) in [(at, end.min(header::DATA_START)), (at.max(mark_end), end)] {
                if from < to {
                    f.write_all_at(&zeros[..(to - from) as usize], from)
                        .map_err(|e| StateError::io(&self.device, e))?;
                }
            }
            at = end;
        }
        f.sync_all().map_err(|e| StateError::io(&self.device, e))
    }

    /// The partition opened for writing with O_EXCL: a block device that is mounted or held
    /// (an open dm-crypt mapping) is refused (EBUSY), never written under its user; a regular
    /// file (the tests' partitions) ignores the flag.
    fn open_exclusive(&self) -> Result<std::fs::File, StateError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_EXCL)
            .open(&self.device)
            .map_err(|e| StateError::io(&self.device, e))
    }

    /// Write the creation mark at the data's start, durably, before any format.
    pub fn mark_creating(&self) -> Result<(), StateError> {
        self.write_mark(&self.open_exclusive()?)
    }

    /// The creation mark written through `f` (the partition, opened exclusively), synced.
    fn write_mark(&self, f: &std::fs::File) -> Result<(), StateError> {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&header::creation_mark(), header::DATA_START)
            .and_then(|()| f.sync_all())
            .map_err(|e| StateError::io(&self.device, e))
    }

    fn create(&self, steps: &mut Steps) -> Result<(), StateError> {
        steps.run("mark", || self.mark_creating())?;
        match &self.source {
            KeySource::Tpm2(sealed) => {
                // Hex: systemd-cryptenroll takes the unlocking key as a string in $PASSWORD.
                let temp: Secret = {
                    let raw = key::random_key(32)
                        .map_err(|e| StateError::io(Path::new("/dev/urandom"), e))?;
                    zeroize::Zeroizing::new(hex::encode(&*raw).into_bytes())
                };
                steps.run("luks", || self.format(&temp))?;
                steps.run("enroll", || self.enroll(sealed, &temp))?;
                drop(temp);
                steps.run("unlock", || self.unlock())?;
            }
            KeySource::Derived(derive) => {
                // The key depends on the volume's UUID: chosen here, given to the format.
                let uuid = new_uuid().map_err(|e| StateError::io(Path::new("/dev/urandom"), e))?;
                let (key, token) = steps.run("derive", || self.derive(derive, &uuid, None))?;
                steps.run("luks", || self.format_as(&key, Some(&uuid)))?;
                if let Some(token) = token {
                    steps.run("token", || self.import_token(token))?;
                }
                steps.run("unlock", || self.open_with(derive, &key))?;
            }
        }
        steps.run("mkfs", || self.mkfs())?;
        steps.run("mount", || self.mount())?;
        steps.run("seed", || self.seed())?;
        steps.run("count", || self.count_boot())?;
        steps.run("commit", || self.relabel(LABEL_STATE))
    }

    /// The derived source's key for the volume `uuid`, and the SNP token to record (given
    /// `token`, the one recorded).
    fn derive(
        &self,
        derive: &Derive,
        uuid: &str,
        token: Option<SnpToken>,
    ) -> Result<(Secret, Option<SnpToken>), StateError> {
        let (ikm, token) = derive.ikm(token).map_err(|e| StateError::Unlock {
            device: self.device(),
            source_name: derive.name(),
            detail: format!("no key could be derived: {e}"),
        })?;
        Ok((derive::volume_key(&ikm, uuid), token))
    }

    /// Record the SNP derivation's TCB in the volume's header.
    pub fn import_token(&self, token: SnpToken) -> Result<(), StateError> {
        check(
            Command::new("cryptsetup")
                .args([
                    "token",
                    "import",
                    "--json-file=-",
                    "--disable-external-tokens",
                ])
                .arg(&self.device),
            Some(token.to_json().as_bytes()),
        )
    }

    /// The volume's LUKS2 metadata as cryptsetup reads it (its token plugins off: the
    /// header's token types are not trusted to pick code).
    fn metadata(&self) -> Result<String, StateError> {
        let out = run(
            Command::new("cryptsetup")
                .args([
                    "luksDump",
                    "--dump-json-metadata",
                    "--disable-external-tokens",
                ])
                .arg(&self.device),
            None,
        )?;
        if !out.status.success() {
            return Err(StateError::Tool {
                tool: "cryptsetup luksDump".into(),
                status: out.status.to_string(),
                detail: tail(&out),
            });
        }
        String::from_utf8(out.stdout).map_err(|_| StateError::Header {
            device: self.device(),
            detail: "the metadata is not UTF-8".into(),
        })
    }

    /// The metadata, checked to be what this key source makes ([`metadata::check`]).
    pub fn checked_metadata(&self) -> Result<String, StateError> {
        let tokens: &[&str] = match &self.source {
            KeySource::Tpm2(_) => &["systemd-tpm2"],
            KeySource::Derived(Derive::Snp { .. }) => &[derive::SNP_TOKEN],
            KeySource::Derived(Derive::TpmHmac { .. }) => &[],
        };
        let json = self.metadata()?;
        metadata::check(&json, tokens).map_err(|detail| StateError::Header {
            device: self.device(),
            detail,
        })?;
        Ok(json)
    }

    /// The SNP token recorded in the volume's header, if any.
    pub fn recorded_token(&self) -> Result<Option<SnpToken>, StateError> {
        SnpToken::from_metadata(&self.metadata()?).map_err(|e| StateError::Header {
            device: self.device(),
            detail: e.to_string(),
        })
    }

    /// LUKS2 with a temporary key: cheap PBKDF (the key is 256 random bits, its slot is
    /// wiped at enrolment), 4 KiB sectors, data at [`header::DATA_START`].
    pub fn format(&self, temp: &[u8]) -> Result<(), StateError> {
        self.format_as(temp, None)
    }

    /// LUKS2 opened by `key` (256 bits from a random source or a derivation: a cheap PBKDF),
    /// with the UUID `uuid` if given, labelled as being created.
    pub fn format_as(&self, key: &[u8], uuid: Option<&str>) -> Result<(), StateError> {
        let mut cmd = Command::new("cryptsetup");
        cmd.args(["luksFormat", "--batch-mode", "--type", "luks2"])
            .args(["--label", LABEL_CREATING, "--sector-size", "4096"])
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
            .arg(format!("--offset={DATA_OFFSET_SECTORS}"))
            .args(["--key-file=-"]);
        if let Some(uuid) = uuid {
            cmd.arg(format!("--uuid={uuid}"));
        }
        check(cmd.arg(&self.device), Some(key))
    }

    /// Seal a new key slot to the TPM and wipe the temporary key's.
    pub fn enroll(&self, sealed: &Sealed, temp: &[u8]) -> Result<(), StateError> {
        let password = std::str::from_utf8(temp).map_err(|_| StateError::Tool {
            tool: "systemd-cryptenroll".into(),
            status: "not started".into(),
            detail: "the temporary key is not text".into(),
        })?;
        check(
            Command::new("systemd-cryptenroll")
                .args(sealed.enroll_args(&self.device))
                .env("PASSWORD", password),
            None,
        )
    }

    /// Open the volume through the key source.
    pub fn unlock(&self) -> Result<(), StateError> {
        let meta = self.checked_metadata()?;
        match &self.source {
            KeySource::Tpm2(sealed) => self.attach(sealed),
            KeySource::Derived(derive) => {
                let uuid = self.uuid()?.ok_or_else(|| StateError::Unlock {
                    device: self.device(),
                    source_name: derive.name(),
                    detail: "the volume has no UUID to derive its key for".into(),
                })?;
                let token = match derive {
                    Derive::Snp { .. } => {
                        let token =
                            SnpToken::from_metadata(&meta).map_err(|e| StateError::Header {
                                device: self.device(),
                                detail: e.to_string(),
                            })?;
                        Some(token.ok_or_else(|| StateError::Header {
                            device: self.device(),
                            detail: format!(
                                "no `{}` token records the TCB its key was derived for",
                                derive::SNP_TOKEN
                            ),
                        })?)
                    }
                    Derive::TpmHmac { .. } => None,
                };
                let (key, _) = self.derive(derive, &uuid, token)?;
                self.open_with(derive, &key)
            }
        }
    }

    /// Open a sealed volume with systemd-cryptsetup, which unseals its key from the TPM.
    fn attach(&self, sealed: &Sealed) -> Result<(), StateError> {
        let out = run(
            Command::new(SYSTEMD_CRYPTSETUP)
                .args(["attach", &self.mapper])
                .arg(&self.device)
                .arg("-")
                .arg(sealed.attach_options()),
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

    /// Open the volume with a derived key.
    fn open_with(&self, derive: &Derive, key: &[u8]) -> Result<(), StateError> {
        let out = run(
            Command::new("cryptsetup")
                .args(["open", "--type", "luks2", "--disable-external-tokens"])
                .arg("--key-file=-")
                .arg(&self.device)
                .arg(&self.mapper),
            Some(key),
        )?;
        if out.status.success() && self.mapped().exists() {
            Ok(())
        } else {
            let detail = tail(&out);
            eprintln!("cryptsetup open {}: {detail}", self.device());
            Err(StateError::Unlock {
                device: self.device(),
                source_name: derive.name(),
                detail: if detail.contains("No key available") {
                    format!(
                        "the key derived on this boot does not open it ({})",
                        match derive {
                            Derive::Snp { .. } => "another chip, or a launch measurement or policy it was not created under",
                            Derive::TpmHmac { .. } => "another machine's TPM, or a UKI it was not created under",
                        }
                    )
                } else {
                    detail
                },
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
    fn new_uuids_are_random_version_4() {
        let (a, b) = (new_uuid().unwrap(), new_uuid().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
        assert!(a.split('-').map(str::len).eq([8, 4, 4, 4, 12]));
    }

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
