//! The node provider's `config.yaml`: what one node needs to know that no image can carry.
//! The provider writes it onto SetupOS's FAT `config` partition (from any laptop, or with
//! `plinth flash --config`); `plinth config check` and SetupOS read it with these types and
//! checks, so both refuse the same file with the same `file:line:col` errors as os.yaml's.
//!
//! ```yaml
//! format_version: 1
//! generation: gen2-genoa                  # the certified generation this machine is
//! acknowledged_warnings: [nvme.models]    # checks whose warnings the provider accepts
//! network:
//!   ipv6: {prefix: "2001:db8:1:2::/64", gateway: "2001:db8:1:2::1"}
//!   ipv4: {address: 192.0.2.10/24, gateway: 192.0.2.1}      # optional
//! node_operator_key: node_operator_private_key.pem          # beside config.yaml
//! admin_ssh_keys: ["ssh-ed25519 AAAAC3Nza... alice@laptop"]  # optional
//! target_disks: [{serial: S5GXNX0T123456}, {wwn: eui.0025388b11223344}]  # optional
//! ```
//!
//! The file is hostile until checked: it is read only as a regular file (no link followed)
//! of at most [`MAX_SIZE`] bytes, and every field is checked before anything uses it.

use base64::Engine as _;
use plinth_yaml::document;
use plinth_yaml::{PositionIndex, SpecError, SpecErrors};
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The config format this plinth reads.
pub const FORMAT_VERSION: u32 = 1;
/// The file's name on the config partition.
pub const FILE_NAME: &str = "config.yaml";
/// The largest config.yaml read (a real one is well under 4 KiB).
pub const MAX_SIZE: u64 = 64 << 10;
/// The largest node operator key file read.
pub const MAX_KEY_SIZE: u64 = 16 << 10;
/// The SSH key types accepted for admin access.
pub const SSH_KEY_TYPES: [&str; 4] = [
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "sk-ssh-ed25519@openssh.com",
];

/// One node's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub format_version: u32,
    /// The certified generation the provider says this machine is; SetupOS certifies the
    /// machine against it and refuses when the hardware is another.
    pub generation: String,
    /// Checks (by id, `nvme.models`) whose warnings the provider accepts. A warning not
    /// listed stops the install.
    #[serde(default)]
    pub acknowledged_warnings: Vec<String>,
    pub network: Network,
    /// The node operator's private key (PEM), a file beside config.yaml.
    pub node_operator_key: String,
    /// OpenSSH public keys allowed to log in as the admin user.
    #[serde(default)]
    pub admin_ssh_keys: Vec<String>,
    /// The disks to install onto; without it SetupOS takes every NVMe disk that is not the
    /// stick it booted from.
    #[serde(default)]
    pub target_disks: Vec<DiskId>,
    /// Install over disks that already hold partitions (a node installed before: its
    /// HostOS, GuestOS and their state are lost). Without it SetupOS refuses such disks, so
    /// a stick left in the machine never reinstalls a node by itself.
    #[serde(default)]
    pub reinstall: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub ipv6: Ipv6Config,
    #[serde(default)]
    pub ipv4: Option<Ipv4Config>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv6Config {
    /// The node's /64, `2001:db8:1:2::/64`.
    pub prefix: String,
    pub gateway: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv4Config {
    /// Address and prefix length, `192.0.2.10/24`.
    pub address: String,
    pub gateway: String,
}

/// A disk named by what the disk itself reports (exactly one of the two), never by a
/// kernel name like `/dev/nvme0n1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskId {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
}

/// The provider's config and the node operator key beside it, each read once: the bytes
/// checked are the bytes a caller copies on (`plinth flash --config`, the install), so a
/// file changed between two reads cannot slip past the checks.
#[derive(Debug, Clone)]
pub struct ProviderFiles {
    pub config: NodeConfig,
    /// config.yaml's bytes, as checked.
    pub config_bytes: Vec<u8>,
    /// The node operator key's bytes, as checked.
    pub key_bytes: Vec<u8>,
}

impl ProviderFiles {
    /// Read and check `path` and the key it names (see [`NodeConfig::read`]).
    pub fn read(path: &Path, generations: &[&str]) -> Result<ProviderFiles, SpecErrors> {
        let file = path.display().to_string();
        let config_bytes = plinth_release::untrusted::read_untrusted(path, MAX_SIZE).map_err(|e| {
            SpecErrors::single(SpecError::io(
                &file,
                format!("cannot read it ({e}); a config.yaml is a regular file of at most {MAX_SIZE} bytes"),
            ))
        })?;
        let text = std::str::from_utf8(&config_bytes).map_err(|_| {
            SpecErrors::single(SpecError::io(
                &file,
                "not UTF-8 text; save it as plain UTF-8".into(),
            ))
        })?;
        let config = NodeConfig::parse(text, &file, generations)?;
        let key = path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&config.node_operator_key);
        let key_bytes = read_operator_key(&key).map_err(|why| {
            let index = PositionIndex::build(text).unwrap_or_default();
            SpecErrors::single(at(
                &file,
                &index,
                "node_operator_key",
                "a PEM private key file beside config.yaml",
                format!("`{}`: {why}", config.node_operator_key),
                "copy the node operator's private key onto the config partition under this name",
            ))
        })?;
        Ok(ProviderFiles {
            config,
            config_bytes,
            key_bytes,
        })
    }
}

impl NodeConfig {
    /// Read and check `path` (a file on the config partition, or one a provider is about to
    /// write there); `generations` are the certified generations' names. The node operator
    /// key is looked for beside it.
    pub fn read(path: &Path, generations: &[&str]) -> Result<NodeConfig, SpecErrors> {
        ProviderFiles::read(path, generations).map(|files| files.config)
    }

    /// Parse and check the text of a config named `file` (in errors).
    pub fn parse(text: &str, file: &str, generations: &[&str]) -> Result<NodeConfig, SpecErrors> {
        let (config, index): (NodeConfig, _) = document::parse(
            text,
            file,
            "a YAML mapping with format_version, generation, network and node_operator_key",
            "compare with the example in docs/node-config.md",
        )?;
        let errors = config.check(file, &index, generations);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(SpecErrors(errors))
        }
    }

    /// Every problem of a parsed config, in document order.
    fn check(&self, file: &str, index: &PositionIndex, generations: &[&str]) -> Vec<SpecError> {
        let mut errors = Vec::new();
        let mut fail = |path: &str, expected: &str, found: String, hint: &str| {
            errors.push(at(file, index, path, expected, found, hint))
        };
        if self.format_version != FORMAT_VERSION {
            fail(
                "format_version",
                &format!("{FORMAT_VERSION}"),
                format!("`{}`", self.format_version),
                "write the config for this plinth's SetupOS (docs/node-config.md)",
            );
        }
        if !generations.contains(&self.generation.as_str()) {
            fail(
                "generation",
                &format!("a certified generation: {}", generations.join(", ")),
                format!("`{}`", self.generation),
                "name the generation of the machine you bought (plinth-setup certify shows it)",
            );
        }
        for (i, id) in self.acknowledged_warnings.iter().enumerate() {
            if !is_check_id(id) {
                fail(
                    &format!("acknowledged_warnings[{i}]"),
                    "a check id like `nvme.models` (lowercase words joined by dots)",
                    format!("`{id}`"),
                    "copy the id from the warning plinth-setup certify printed",
                );
            }
        }
        if let Err((field, expected, found)) = check_ipv6(&self.network.ipv6) {
            fail(
                &format!("network.ipv6.{field}"),
                expected,
                found,
                "use the /64 and gateway your data center assigned",
            );
        }
        if let Some(v4) = &self.network.ipv4 {
            if let Err((field, expected, found)) = check_ipv4(v4) {
                fail(
                    &format!("network.ipv4.{field}"),
                    expected,
                    found,
                    "use the address and gateway your data center assigned, or remove ipv4",
                );
            }
        }
        if !is_plain_file_name(&self.node_operator_key) {
            fail(
                "node_operator_key",
                "the name of a file beside config.yaml (no directories)",
                format!("`{}`", self.node_operator_key),
                "put the key on the config partition and write its bare file name",
            );
        }
        for (i, key) in self.admin_ssh_keys.iter().enumerate() {
            if let Err(why) = check_ssh_key(key) {
                fail(
                    &format!("admin_ssh_keys[{i}]"),
                    "an OpenSSH public key line (`ssh-ed25519 AAAA... comment`)",
                    why,
                    "paste the one line of the key's .pub file",
                );
            }
        }
        for (i, disk) in self.target_disks.iter().enumerate() {
            let (field, value, ok) = match (&disk.serial, &disk.wwn) {
                (Some(s), None) => ("serial", s.as_str(), is_serial(s)),
                (None, Some(w)) => ("wwn", w.as_str(), is_wwn(w)),
                _ => {
                    fail(
                        &format!("target_disks[{i}]"),
                        "either `serial:` or `wwn:`",
                        "both or neither".into(),
                        "name each disk by one of the two",
                    );
                    continue;
                }
            };
            if !ok {
                fail(
                    &format!("target_disks[{i}].{field}"),
                    if field == "serial" {
                        "a disk serial: 1 to 40 letters, digits, `-`, `_` or `.`"
                    } else {
                        "a WWN as /sys/block/<disk>/wwid shows it, like \
                         `eui.0025388b11223344` or `naa.5000c500a1b2c3d4`"
                    },
                    format!("`{value}`"),
                    "read it from the disk's label or from plinth-setup certify's list",
                );
            }
        }
        if let Some(dup) = duplicate(&self.target_disks) {
            fail(
                &format!("target_disks[{dup}]"),
                "each disk once",
                "a disk listed twice".into(),
                "remove the second entry",
            );
        }
        errors.sort_by_key(|e| (e.line, e.column));
        errors
    }
}

fn at(
    file: &str,
    index: &PositionIndex,
    path: &str,
    expected: &str,
    found: String,
    hint: &str,
) -> SpecError {
    let pos = index.locate(path);
    SpecError {
        file: file.into(),
        line: pos.line,
        column: pos.column,
        path: path.into(),
        expected: expected.into(),
        found,
        hint: hint.into(),
    }
}

type FieldProblem = (&'static str, &'static str, String);

fn check_ipv6(v6: &Ipv6Config) -> Result<(Ipv6Addr, Ipv6Addr), FieldProblem> {
    const PREFIX: &str = "a global IPv6 /64 like `2001:db8:1:2::/64`";
    let (addr, len) =
        v6.prefix
            .split_once('/')
            .ok_or(("prefix", PREFIX, format!("`{}`", v6.prefix)))?;
    let net: Ipv6Addr = addr
        .parse()
        .map_err(|_| ("prefix", PREFIX, format!("`{}`", v6.prefix)))?;
    if len != "64" {
        return Err(("prefix", PREFIX, format!("a /{len}")));
    }
    if u128::from(net) & ((1u128 << 64) - 1) != 0 {
        return Err((
            "prefix",
            PREFIX,
            format!("`{}`, which has host bits set", v6.prefix),
        ));
    }
    if !is_global_v6(net) {
        return Err((
            "prefix",
            PREFIX,
            format!("`{}`, which is not global unicast", v6.prefix),
        ));
    }
    const GATEWAY: &str = "an IPv6 unicast address (in the node's /64, or link-local)";
    let gw: Ipv6Addr = v6
        .gateway
        .parse()
        .map_err(|_| ("gateway", GATEWAY, format!("`{}`", v6.gateway)))?;
    let in_prefix = u128::from(gw) >> 64 == u128::from(net) >> 64;
    let link_local = gw.segments()[0] & 0xffc0 == 0xfe80;
    if !(in_prefix || link_local) || gw == net || gw.is_multicast() {
        return Err(("gateway", GATEWAY, format!("`{}`", v6.gateway)));
    }
    Ok((net, gw))
}

fn is_global_v6(a: Ipv6Addr) -> bool {
    // 2000::/3 is the global unicast space.
    a.segments()[0] & 0xe000 == 0x2000
}

fn check_ipv4(v4: &Ipv4Config) -> Result<(), FieldProblem> {
    const ADDRESS: &str = "an IPv4 address with its prefix length, like `192.0.2.10/24`";
    let bad = || ("address", ADDRESS, format!("`{}`", v4.address));
    let (addr, len) = v4.address.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let len: u32 = len.parse().map_err(|_| bad())?;
    if !(8..=32).contains(&len) || addr.is_unspecified() || addr.is_multicast() {
        return Err(bad());
    }
    const GATEWAY: &str = "an IPv4 address in the address's subnet";
    let gw: Ipv4Addr = v4
        .gateway
        .parse()
        .map_err(|_| ("gateway", GATEWAY, format!("`{}`", v4.gateway)))?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    if u32::from(gw) & mask != u32::from(addr) & mask || gw == addr {
        return Err(("gateway", GATEWAY, format!("`{}`", v4.gateway)));
    }
    Ok(())
}

fn check_ssh_key(line: &str) -> Result<(), String> {
    let mut parts = line.split_ascii_whitespace();
    let (kind, blob) = match (parts.next(), parts.next()) {
        (Some(k), Some(b)) => (k, b),
        _ => return Err("a line without a key".into()),
    };
    if line.contains(['\n', '\r']) {
        return Err("more than one line".into());
    }
    if !SSH_KEY_TYPES.contains(&kind) {
        return Err(format!(
            "a `{kind}` key; accepted: {}",
            SSH_KEY_TYPES.join(", ")
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|_| "a key whose data is not base64".to_string())?;
    // The blob starts with its own type, as an SSH string (u32 length, bytes).
    let inner = bytes
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| bytes.get(4..4 + n));
    if inner != Some(kind.as_bytes()) {
        return Err(format!("a key whose data is not a `{kind}` key"));
    }
    Ok(())
}

/// The node operator key at `path`: a regular file of at most [`MAX_KEY_SIZE`] bytes that
/// looks like a PEM private key.
fn read_operator_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = plinth_release::untrusted::read_untrusted(path, MAX_KEY_SIZE)
        .map_err(|e| format!("cannot read it: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let pem = text.trim_start();
    if !(pem.starts_with("-----BEGIN ") && pem.contains("PRIVATE KEY-----")) {
        return Err("not a PEM private key (no `-----BEGIN ... PRIVATE KEY-----`)".into());
    }
    Ok(bytes)
}

/// A check id as `plinth-setup certify` names them: `nvme.models`, `memory.balance`.
pub fn is_check_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .split('.')
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
}

/// One plain file name, as a release's file names are ([`plinth_release::names`]).
fn is_plain_file_name(name: &str) -> bool {
    plinth_release::names::check_file_name(name).is_ok()
}

/// A serial as disks report it (NVMe: 20 printable ASCII characters, space-padded; SCSI
/// VPD 0x80): letters, digits, `-`, `_`, `.`.
pub fn is_serial(s: &str) -> bool {
    (1..=40).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A namespace's WWN as Linux shows it in `/sys/block/<namespace>/wwid`: `eui.` or `naa.`
/// and 16 or 32 hex digits, or, for a drive without either, `nvme.` and the
/// vendor-serial-model-namespace form the kernel makes up (hex and `-`, at most 128).
pub fn is_wwn(s: &str) -> bool {
    let hex = |h: &str| matches!(h.len(), 16 | 32) && h.bytes().all(|b| b.is_ascii_hexdigit());
    match s.split_once('.') {
        Some(("eui" | "naa", h)) => hex(h),
        Some(("nvme", h)) => {
            (1..=128).contains(&h.len()) && h.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        }
        _ => false,
    }
}

fn duplicate(disks: &[DiskId]) -> Option<usize> {
    (1..disks.len()).find(|&i| disks[..i].contains(&disks[i]))
}

#[cfg(test)]
mod tests;
