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

/// The IMAGE argument and how to find a release for an OS name.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// guest-os, host-os or setup-os; a release directory; or a disk image.
    #[arg(value_name = "IMAGE")]
    pub image: String,
    /// The profile the release must hold [default: whichever it holds].
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Release directory root, for an OS name.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// Release version, for an OS name [default: the plinth version].
    #[arg(long, value_name = "VERSION")]
    pub release_version: Option<String>,
}

impl ImageArgs {
    /// What the arguments name.
    pub fn resolve(&self, g: &Global) -> anyhow::Result<Image> {
        resolve(g, self)
    }
}

fn resolve(g: &Global, l: &ImageArgs) -> anyhow::Result<Image> {
    let image = l.image.as_str();
    let given = Path::new(image);
    let is_os = crate::spec::OS_NAMES.contains(&image);
    let profile = l.profile.as_deref();
    if given.is_file() && !is_os {
        if profile.is_some() {
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
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string());
        let base = match &g.root {
            Some(root) if l.out.is_relative() => root.join(&l.out),
            _ => l.out.clone(),
        };
        let dir = base.join(image).join(&version);
        if !dir.is_dir() {
            return Err(BadInput(format!(
                "{}: no release of {image} {version}\n  hint: build it first: plinth build {image} --profile {}{}",
                dir.display(),
                profile.unwrap_or("test"),
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
    if let Some(p) = profile {
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
