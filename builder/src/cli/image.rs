//! What an IMAGE argument names (`plinth run`, `plinth measure`): an OS (its release in
//! `<out>/<os>/<version>`), a release directory (checked against its manifest), or a raw disk
//! image file. A bare OS name wins over a directory of that name (the source tree has one
//! per OS).

use super::{BadInput, Global};
use crate::compare::release::Release;
use std::path::{Path, PathBuf};

/// A resolved IMAGE.
pub enum Image {
    Disk(PathBuf),
    Release(Box<Release>),
}

/// How to find a release for an OS name.
pub struct Lookup<'a> {
    pub out: &'a Path,
    pub release_version: Option<&'a str>,
    /// The profile the release must hold.
    pub profile: Option<&'a str>,
}

/// Resolve `image`.
pub fn resolve(g: &Global, image: &str, l: &Lookup<'_>) -> anyhow::Result<Image> {
    let given = Path::new(image);
    let is_os = crate::spec::OS_NAMES.contains(&image);
    if given.is_file() && !is_os {
        if l.profile.is_some() {
            return Err(BadInput(format!(
                "{}: a disk image has no profile to check\n  hint: drop --profile, or name an OS or a release directory",
                given.display()
            ))
            .into());
        }
        return Ok(Image::Disk(given.to_path_buf()));
    }
    let dir = if is_os {
        let version = l
            .release_version
            .map(str::to_string)
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
        let base = match &g.root {
            Some(root) if l.out.is_relative() => root.join(l.out),
            _ => l.out.to_path_buf(),
        };
        let dir = base.join(image).join(&version);
        if !dir.is_dir() {
            return Err(BadInput(format!(
                "{}: no release of {image} {version}\n  hint: build it first: plinth build {image} --profile {}{}",
                dir.display(),
                l.profile.unwrap_or("test"),
                if l.release_version.is_some() {
                    format!(" --release-version {version}")
                } else {
                    String::new()
                }
            ))
            .into());
        }
        dir
    } else if given.is_dir() {
        given.to_path_buf()
    } else {
        return Err(BadInput(format!(
            "`{image}` is not an OS (guest-os, host-os, setup-os), a release directory or a disk image file"
        ))
        .into());
    };
    let release = Release::open(&dir).map_err(|e| BadInput(e.to_string()))?;
    let m = &release.manifest;
    if let Some(p) = l.profile {
        if m.profile != p {
            return Err(BadInput(format!(
                "{}: holds the {} profile of {}, not {p}\n  hint: plinth build {} --profile {p}",
                dir.display(),
                m.profile,
                m.os,
                m.os
            ))
            .into());
        }
    }
    Ok(Image::Release(Box::new(release)))
}
