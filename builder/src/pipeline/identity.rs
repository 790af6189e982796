//! How an image names itself to the running system: `IMAGE_ID` and `IMAGE_VERSION` (systemd's
//! os-release fields for image-based systems) added to the packages' os-release, and
//! `plinth.slot=` on each slot's kernel command line. The agents' boot report
//! (`plinth-boot-report`) reads both; systemd-boot shows the UKI's `.osrel`, which is the
//! same os-release.

use crate::spec::Slot;
use plinth_release::Sha256;

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

/// A slot's kernel command line: the profile's arguments, the slot (`plinth.slot=A`; none
/// for an OS without slots), the verity root hash, where the root and its hash tree are (by
/// partition GUID) and the root read-only, through dm-verity.
pub fn cmdline(
    base: &[String],
    slot: Option<Slot>,
    root_hash: &Sha256,
    root_partuuid: &str,
    verity_partuuid: &str,
) -> String {
    let slot_arg = slot
        .map(|s| format!(" {}", s.cmdline_arg()))
        .unwrap_or_default();
    format!(
        "{}{slot_arg} roothash={root_hash} systemd.verity_root_data=PARTUUID={root_partuuid} systemd.verity_root_hash=PARTUUID={verity_partuuid} root=/dev/mapper/root ro",
        base.join(" "),
    )
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
    }

    #[test]
    fn the_command_line_names_the_slot_and_the_verity_root() {
        let hash = Sha256([0xab; 32]);
        let base = ["console=ttyS0".to_string(), "quiet".to_string()];
        let b = cmdline(&base, Some(Slot::B), &hash, "ROOT", "HASH");
        assert_eq!(
            b,
            format!("console=ttyS0 quiet plinth.slot=B roothash={hash} systemd.verity_root_data=PARTUUID=ROOT systemd.verity_root_hash=PARTUUID=HASH root=/dev/mapper/root ro")
        );
        assert!(b.contains(" plinth.slot=B "));
        let single = cmdline(&base, None, &hash, "ROOT", "HASH");
        assert!(
            single.starts_with("console=ttyS0 quiet roothash=abab"),
            "{single}"
        );
    }
}
