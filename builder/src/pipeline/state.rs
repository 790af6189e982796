//! What an image needs to keep sealed persistent state (the `plinth-state` crate): an OS
//! keeps state when its overlay configures a key source (`usr/lib/plinth/state.conf`). Its
//! initrd then carries dracut's `crypt` and `tpm2-tss` modules and the tools creation needs
//! ([`initrd_extras`]), and, appended to dracut's archive, plinth's own files: the static
//! `plinth-state` binary and the initrd unit that runs it ([`appendix`]). The build never
//! formats the data partition: the node creates the state on its first boot.

use super::agent::{self, Linking};
use super::cpio::{self, Entry};
use super::initrd::Extras;
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
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StateError + '_ {
    move |e| StateError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Whether `os` keeps persistent state (its overlay in `workspace` configures a key source).
pub fn wanted(workspace: &Path, os: &str) -> bool {
    workspace.join(os).join("rootfs").join(CONFIG).is_file()
}

/// What dracut adds to the initrd of an OS with state: LUKS2 and the TPM (systemd-cryptsetup,
/// dm-crypt, the tss2 libraries systemd loads at run time) and the tools the first boot's
/// creation runs; and when its UKI carries a signed PCR policy (`signed`), systemd-pcrphase,
/// which extends PCR 11 with `enter-initrd` before the state opens and `leave-initrd` after,
/// so that only the initrd holds the PCR values the release key signed.
pub fn initrd_extras(wanted: bool, signed: bool) -> Extras {
    if !wanted {
        return Extras::default();
    }
    let mut modules = vec!["crypt", "tpm2-tss"];
    if signed {
        modules.push("systemd-pcrphase");
    }
    Extras {
        modules,
        install: vec!["cryptsetup", "systemd-cryptenroll", "mkfs.ext4", "e2fsck"],
    }
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
    fn extras_only_for_an_os_with_state() {
        assert_eq!(initrd_extras(false, true), Extras::default());
        assert!(initrd_extras(true, false).modules.contains(&"crypt"));
        assert!(!initrd_extras(true, false)
            .modules
            .contains(&"systemd-pcrphase"));
        assert!(initrd_extras(true, true)
            .modules
            .contains(&"systemd-pcrphase"));
    }
}
