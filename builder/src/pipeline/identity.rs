//! How an image names itself to the running system: `IMAGE_ID` and `IMAGE_VERSION` (systemd's
//! os-release fields for image-based systems) added to the packages' os-release, and
//! `plinth.slot=` on each slot's kernel command line. The agents' boot report
//! (`plinth-boot-report`) reads both; systemd-boot shows the UKI's `.osrel`, which is the
//! same os-release.

use crate::spec::Slot;

/// Where os-release is in the root (`/etc/os-release` links to it).
pub const OS_RELEASE: &str = "usr/lib/os-release";

/// `base` (os-release text) without any `IMAGE_ID=` or `IMAGE_VERSION=` line, then those two
/// for `os` and `version`.
pub fn os_release(base: &[u8], os: &str, version: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(base);
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("IMAGE_ID={os}\nIMAGE_VERSION={version}\n"));
    out.into_bytes()
}

/// The command line argument naming `slot`.
pub fn slot_arg(slot: Slot) -> String {
    let name = match slot {
        Slot::A => "A",
        Slot::B => "B",
    };
    format!("plinth.slot={name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_fields_replace_earlier_ones() {
        let base = b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nIMAGE_VERSION=old\nID=debian";
        let out = String::from_utf8(os_release(base, "host-os", "1.2.0")).unwrap();
        assert_eq!(
            out,
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nIMAGE_ID=host-os\nIMAGE_VERSION=1.2.0\n"
        );
        assert_eq!(slot_arg(Slot::B), "plinth.slot=B");
    }
}
