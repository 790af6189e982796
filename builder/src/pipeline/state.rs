//! What an image needs to keep sealed persistent state (the `plinth-state` crate): an OS
//! keeps state when its profile's overlays configure a key source
//! (`usr/lib/plinth/state.conf`, [`source`]). Its initrd then carries dracut's `crypt`
//! module, what that source needs (the TPM's libraries and systemd-cryptenroll, tpm2-tools,
//! or the sev-guest driver) and the tools creation needs ([`initrd_extras`]), and, appended
//! to dracut's archive, plinth's own files: the static `plinth-state` binary and the initrd
//! unit that runs it ([`appendix`]). The build never formats the data partition: the node
//! creates the state on its first boot.

use super::agent::{self, Linking};
use super::cpio::{self, Entry};
use super::initrd::Extras;
use crate::spec::Profile;
use plinth_state::key::{Derive, KeySource, Sealed};
use std::path::{Path, PathBuf};

/// The key source's configuration in an overlay (and so in the root).
pub const CONFIG: &str = "usr/lib/plinth/state.conf";
/// The crate and binary that opens the state.
pub const PACKAGE: &str = "plinth-state";
/// The initrd files of the state, beside its crate: its unit and the unit's enablement.
pub const INITRD_FILES: &str = "state/initrd";
/// zstd level of the appendix.
const ZSTD_LEVEL: i32 = 19;

/// Why the state's parts could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error(transparent)]
    Config(#[from] plinth_state::key::KeyError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |e| StateError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// The key source `profile` configures: the `state.conf` of its last overlay that has one
/// ([`super::overlay::dirs`]); `None` when the OS keeps no state.
pub fn source(workspace: &Path, profile: &Profile) -> Result<Option<KeySource>, StateError> {
    for dir in super::overlay::dirs(workspace, profile).iter().rev() {
        // The overlay copies a link as a link: what the build reads must be what the image
        // holds, so the configuration is a regular file.
        let conf = dir.join(CONFIG);
        if conf.symlink_metadata().is_ok_and(|m| !m.is_file()) {
            return Err(StateError::Io {
                path: conf.display().to_string(),
                message: "not a regular file (a link?): the key source's configuration must be one"
                    .into(),
            });
        }
        if let Some(source) = KeySource::load(dir)? {
            return Ok(Some(source));
        }
    }
    Ok(None)
}

/// Whether `source` seals to PCR values the release key signs (the UKI then carries
/// `.pcrpkey` and `.pcrsig` when the build has the key).
pub fn signs_pcr_policy(source: Option<&KeySource>) -> bool {
    matches!(
        source,
        Some(KeySource::Tpm2(Sealed {
            signed: Some(_),
            ..
        }))
    )
}

/// What dracut adds to the initrd of an OS with state (`source`): LUKS2 (dm-crypt,
/// cryptsetup) and the tools the first boot's creation runs, and what the source needs:
/// - sealed to the TPM: the tss2 libraries systemd loads at run time and
///   systemd-cryptenroll; when its UKI carries a signed PCR policy (`signed`),
///   systemd-pcrphase, which extends PCR 11 with `enter-initrd` before the state opens and
///   `leave-initrd` after, so that only the initrd holds the PCR values the release key
///   signed;
/// - the SEV-SNP derived key: the `sev-guest` driver (`/dev/sev-guest`);
/// - the TPM's HMAC (the test stand-in): the tss2 libraries and the tpm2-tools it runs.
pub fn initrd_extras(source: Option<&KeySource>, signed: bool) -> Extras {
    let Some(source) = source else {
        return Extras::default();
    };
    let mut extras = Extras {
        modules: vec!["crypt"],
        drivers: Vec::new(),
        install: vec!["cryptsetup", "mkfs.ext4", "e2fsck"],
    };
    match source {
        KeySource::Tpm2(_) => {
            extras.modules.push("tpm2-tss");
            if signed {
                extras.modules.push("systemd-pcrphase");
            }
            extras.install.insert(1, "systemd-cryptenroll");
        }
        KeySource::Derived(Derive::Snp { .. }) => {
            extras.drivers.push("sev-guest");
            extras.install.push("modprobe");
        }
        KeySource::Derived(Derive::TpmHmac { .. }) => {
            extras.modules.push("tpm2-tss");
            extras.install.extend([
                "tpm2_pcrread",
                "tpm2_createprimary",
                "tpm2_hmac",
                "tpm2_flushcontext",
            ]);
        }
    }
    extras
}

/// The files under `dir` (relative paths, sorted; directories before their contents).
fn tree(dir: &Path, rel: &str, out: &mut Vec<Entry>) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let name = name.to_string_lossy();
        let member = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(io(&path))?;
            out.push(Entry::Symlink {
                path: member,
                target: target.to_string_lossy().into_owned(),
            });
        } else if meta.is_dir() {
            out.push(Entry::Dir {
                path: member.clone(),
                mode: 0o755,
            });
            tree(&path, &member, out)?;
        } else {
            // Git keeps only the executable bit: the mode follows it.
            let exec = meta.permissions().mode() & 0o111 != 0;
            out.push(Entry::File {
                path: member,
                mode: if exec { 0o755 } else { 0o644 },
                data: std::fs::read(&path).map_err(io(&path))?,
            });
        }
    }
    Ok(())
}

/// The appendix: `plinth-state` built static from `workspace` (in `agent_target`), at
/// `usr/bin/plinth-state`, and the files of [`INITRD_FILES`], as one zstd-compressed newc
/// archive written to `out`.
pub fn appendix(
    workspace: &Path,
    agent_target: &Path,
    epoch: i64,
    out: &Path,
) -> Result<(), StateError> {
    let bin = agent::build_linked(workspace, PACKAGE, agent_target, Linking::Static)?;
    let mut entries = Vec::new();
    tree(&workspace.join(INITRD_FILES), "", &mut entries)?;
    entries.push(Entry::File {
        path: format!("usr/bin/{PACKAGE}"),
        mode: 0o755,
        data: std::fs::read(&bin).map_err(io(&bin))?,
    });
    let mut archive = Vec::new();
    cpio::write(
        &mut archive,
        &entries,
        epoch.clamp(0, u32::MAX as i64) as u32,
    )?;
    let compressed = zstd::bulk::compress(&archive, ZSTD_LEVEL).map_err(io(out))?;
    std::fs::write(out, compressed).map_err(io(out))
}

/// The UKI's initrd: dracut's, then the appendix (the kernel unpacks both, in order).
pub fn combine(dracut: &Path, appendix: &Path, out: &Path) -> Result<PathBuf, StateError> {
    let mut bytes = std::fs::read(dracut).map_err(io(dracut))?;
    bytes.extend(std::fs::read(appendix).map_err(io(appendix))?);
    std::fs::write(out, bytes).map_err(io(out))?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initrd_files_are_archived_in_order_with_their_links() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("usr/lib/systemd/system");
        std::fs::create_dir_all(d.join("initrd-fs.target.wants")).unwrap();
        std::fs::write(d.join("plinth-state.service"), "[Unit]\n").unwrap();
        std::os::unix::fs::symlink(
            "../plinth-state.service",
            d.join("initrd-fs.target.wants/plinth-state.service"),
        )
        .unwrap();
        let mut entries = Vec::new();
        tree(t.path(), "", &mut entries).unwrap();
        let paths: Vec<String> = entries
            .iter()
            .map(|e| match e {
                Entry::Dir { path, .. } => format!("{path}/"),
                Entry::File { path, mode, .. } => format!("{path} {mode:o}"),
                Entry::Symlink { path, target } => format!("{path} -> {target}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                "usr/",
                "usr/lib/",
                "usr/lib/systemd/",
                "usr/lib/systemd/system/",
                "usr/lib/systemd/system/initrd-fs.target.wants/",
                "usr/lib/systemd/system/initrd-fs.target.wants/plinth-state.service -> ../plinth-state.service",
                "usr/lib/systemd/system/plinth-state.service 644",
            ]
        );
    }

    #[test]
    fn extras_follow_the_key_source() {
        let parse = |text: &str| KeySource::parse(text, "state.conf").unwrap();
        assert_eq!(initrd_extras(None, true), Extras::default());
        let sealed = parse("key_source=tpm2\ntpm2_pcrs=11\n");
        assert!(initrd_extras(Some(&sealed), false)
            .modules
            .contains(&"crypt"));
        assert!(!initrd_extras(Some(&sealed), false)
            .modules
            .contains(&"systemd-pcrphase"));
        assert!(initrd_extras(Some(&sealed), true)
            .modules
            .contains(&"systemd-pcrphase"));
        let snp = initrd_extras(Some(&parse("key_source=snp\n")), false);
        assert_eq!(snp.drivers, ["sev-guest"]);
        assert!(!snp.modules.contains(&"tpm2-tss"));
        assert!(!snp.install.contains(&"systemd-cryptenroll"));
        let hmac = initrd_extras(Some(&parse("key_source=tpm2-hmac\n")), false);
        assert!(hmac.modules.contains(&"tpm2-tss") && hmac.install.contains(&"tpm2_hmac"));
        assert!(hmac.drivers.is_empty());
        assert!(!signs_pcr_policy(Some(&sealed)) && !signs_pcr_policy(None));
        let signed = parse("key_source=tpm2\ntpm2_signed_pcrs=11+12\ntpm2_public_key=/.extra/k.pem\ntpm2_signature=/.extra/s.json\n");
        assert!(signs_pcr_policy(Some(&signed)));
    }
}
