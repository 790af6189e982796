//! Identifiers derived from content, never drawn at random: filesystem UUIDs, GPT GUIDs, hash
//! seeds and verity salts are `sha256(os, version, role)`, so two builds of the same release
//! agree byte for byte and two different roles never collide.

use sha2::{Digest, Sha256};

/// What an identifier is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdSource<'a> {
    pub os: &'a str,
    pub version: &'a str,
}

impl IdSource<'_> {
    /// 32 bytes for `role` (e.g. `root-a/fs-uuid`, `disk-guid`, `verity-a/salt`).
    pub fn bytes(&self, role: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        // Length-prefixed fields: ("ab", "c") and ("a", "bc") must differ.
        for field in ["plinth-id-v1", self.os, self.version, role] {
            h.update((field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        h.finalize().into()
    }

    /// An RFC 9562 version 8 (custom) UUID for `role`, as its 16 bytes in textual order.
    pub fn uuid(&self, role: &str) -> [u8; 16] {
        let mut u = [0u8; 16];
        u.copy_from_slice(&self.bytes(role)[..16]);
        u[6] = (u[6] & 0x0f) | 0x80; // version 8
        u[8] = (u[8] & 0x3f) | 0x80; // variant 10
        u
    }

    /// The UUID for `role` in its usual text form, e.g. `1b4e28ba-2fa1-81d2-883f-0016d3cca427`.
    pub fn uuid_string(&self, role: &str) -> String {
        format_uuid(&self.uuid(role))
    }

    /// Lower-case hex of the 32 bytes for `role` (e.g. a verity salt).
    pub fn hex(&self, role: &str) -> String {
        hex::encode(self.bytes(role))
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` for 16 bytes in textual order.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_well_formed() {
        let a = IdSource {
            os: "guest-os",
            version: "1.0.0",
        };
        assert_eq!(a.uuid("root-a/fs-uuid"), a.uuid("root-a/fs-uuid"));
        assert_ne!(a.uuid("root-a/fs-uuid"), a.uuid("root-b/fs-uuid"));
        let other = IdSource {
            os: "guest-o",
            version: "s1.0.0",
        };
        assert_ne!(a.bytes("x"), other.bytes("x"));
        let s = a.uuid_string("disk-guid");
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "8", "version 8: {s}");
        assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "variant: {s}");
    }
}
