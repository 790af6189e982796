//! What the ESP holds to boot a slot. With systemd-boot: the loader at the firmware's default
//! path and at its own, the slot's UKI in `EFI/Linux/`, and a `loader.conf` that boots it at
//! once. Without a boot loader: the UKI alone at the firmware's default path, which the
//! firmware starts itself.

use super::esp::FatFile;
use super::measure::LOADER_PATH;
use crate::spec::BootLoader;
use std::path::Path;

/// Where systemd-boot keeps itself on the ESP (beside the firmware's default path).
pub const SYSTEMD_BOOT_PATH: &str = "EFI/systemd/systemd-bootx64.efi";

/// One slot's boot entry on the ESP.
pub struct EspLayout<'a> {
    pub boot_loader: &'a BootLoader,
    /// The UKI's file name in `EFI/Linux/`: `guest-os-a.efi`.
    pub entry: &'a str,
    pub uki: &'a Path,
    /// systemd-boot, from the image's own packages.
    pub loader: &'a Path,
    /// Where `loader.conf` is written before it is copied.
    pub loader_conf: &'a Path,
}

impl EspLayout<'_> {
    /// The files to copy into the ESP (writing `loader.conf` first, where there is one).
    pub fn files(&self) -> std::io::Result<Vec<FatFile>> {
        match self.boot_loader {
            BootLoader::SystemdBoot => {
                std::fs::write(self.loader_conf, loader_conf(self.entry))?;
                Ok(vec![
                    FatFile::new(LOADER_PATH, self.loader),
                    FatFile::new(SYSTEMD_BOOT_PATH, self.loader),
                    FatFile::new(format!("EFI/Linux/{}", self.entry), self.uki),
                    FatFile::new("loader/loader.conf", self.loader_conf),
                ])
            }
            BootLoader::None => Ok(vec![FatFile::new(LOADER_PATH, self.uki)]),
        }
    }
}

/// systemd-boot's configuration: no menu, `entry` by default.
pub fn loader_conf(entry: &str) -> String {
    format!("timeout 0\ndefault {entry}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_boot_boots_the_slot_at_once_and_the_firmware_starts_a_lone_uki() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("loader.conf");
        let layout = |boot_loader| EspLayout {
            boot_loader,
            entry: "host-os-a.efi",
            uki: Path::new("uki.efi"),
            loader: Path::new("sd-boot.efi"),
            loader_conf: &conf,
        };
        let files = layout(&BootLoader::SystemdBoot).files().unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                LOADER_PATH,
                SYSTEMD_BOOT_PATH,
                "EFI/Linux/host-os-a.efi",
                "loader/loader.conf"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "timeout 0\ndefault host-os-a.efi\n"
        );
        let lone = layout(&BootLoader::None).files().unwrap();
        assert_eq!(lone.len(), 1);
        assert_eq!(lone[0].path, LOADER_PATH);
        assert_eq!(lone[0].source, Path::new("uki.efi"));
    }
}
