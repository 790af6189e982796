//! HostOS's configuration partition (ext4, GPT name `config`): what SetupOS leaves for the
//! installed node. Written with debugfs straight into the partition's span of the HostOS
//! disk (`DEVICE?offset=N`), so nothing is mounted; then e2fsck checks the filesystem and
//! every file is read back.
//!
//! Files: `guest-os.env` (how GuestOS is launched), `network.env` (the provider's
//! addresses), `node_operator_private_key.pem` (0600), `admin_ssh_keys` (authorized_keys
//! lines) when the config has any, and `setup-report.json` (the certification).

use std::io::Write as _;
use std::path::Path;
use std::process::Command;

/// One file to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// A plain file name in the partition's root.
    pub name: String,
    pub bytes: Vec<u8>,
    /// Permission bits (0o644, 0o600).
    pub mode: u32,
}

/// The files of a node's configuration.
pub fn files(
    config: &plinth_node_config::NodeConfig,
    operator_key: Vec<u8>,
    guest_env: &str,
    setup_report: Vec<u8>,
) -> Vec<ConfigFile> {
    let n = &config.network;
    let mut network = format!(
        "# Written by plinth-setup install from config.yaml.\nPLINTH_IPV6_PREFIX={}\nPLINTH_IPV6_GATEWAY={}\n",
        n.ipv6.prefix, n.ipv6.gateway
    );
    if let Some(v4) = &n.ipv4 {
        network.push_str(&format!(
            "PLINTH_IPV4_ADDRESS={}\nPLINTH_IPV4_GATEWAY={}\n",
            v4.address, v4.gateway
        ));
    }
    let mut out = vec![
        file("guest-os.env", guest_env.as_bytes().to_vec(), 0o644),
        file("network.env", network.into_bytes(), 0o644),
        file("node_operator_private_key.pem", operator_key, 0o600),
        file("setup-report.json", setup_report, 0o644),
    ];
    if !config.admin_ssh_keys.is_empty() {
        let mut keys = config.admin_ssh_keys.join("\n");
        keys.push('\n');
        out.push(file("admin_ssh_keys", keys.into_bytes(), 0o644));
    }
    out
}

fn file(name: &str, bytes: Vec<u8>, mode: u32) -> ConfigFile {
    ConfigFile {
        name: name.into(),
        bytes,
        mode,
    }
}

/// Write `files` into the ext4 filesystem at `offset` of `device`, check it, read them back.
/// `scratch` is a private (0700) directory for the files' bytes on their way.
pub fn write(
    device: &Path,
    offset: u64,
    files: &[ConfigFile],
    scratch: &Path,
) -> Result<(), String> {
    // debugfs reads its commands by words (spaces, quotes): every path in them must be plain.
    let plain_path = |p: &Path| {
        p.to_str().is_some_and(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
        })
    };
    if !plain_path(scratch) {
        return Err(format!(
            "{}: the scratch path has characters debugfs would split on",
            scratch.display()
        ));
    }
    let target = format!("{}?offset={offset}", device.display());
    let mut commands = String::new();
    for f in files {
        let plain = !f.name.is_empty()
            && f.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !plain {
            return Err(format!("`{}` is not a plain file name", f.name));
        }
        let src = scratch.join(&f.name);
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_private()
            .open(&src)
            .map_err(|e| format!("{}: {e}", src.display()))?;
        out.write_all(&f.bytes)
            .map_err(|e| format!("{}: {e}", src.display()))?;
        // debugfs commands are one per line; the paths are ours (checked names, a scratch
        // directory without spaces is required below).
        commands.push_str(&format!("rm {}\n", f.name));
        commands.push_str(&format!("write {} {}\n", src.display(), f.name));
        commands.push_str(&format!("sif {} mode 0{:o}\n", f.name, 0o100000 | f.mode));
        commands.push_str(&format!("sif {} uid 0\nsif {} gid 0\n", f.name, f.name));
    }
    let cmdfile = scratch.join("debugfs.cmd");
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_private()
        .open(&cmdfile)
        .map_err(|e| format!("{}: {e}", cmdfile.display()))?;
    out.write_all(commands.as_bytes())
        .map_err(|e| format!("{}: {e}", cmdfile.display()))?;
    drop(out);
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&cmdfile)
        .arg(&target))?;
    run(Command::new("e2fsck").arg("-fn").arg(&target))?;
    for f in files {
        let out = run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("cat {}", f.name))
            .arg(&target))?;
        if out != f.bytes {
            return Err(format!(
                "{}: read back {} bytes that differ from the {} written",
                f.name,
                out.len(),
                f.bytes.len()
            ));
        }
    }
    Ok(())
}

trait Private {
    fn mode_private(&mut self) -> &mut Self;
}

impl Private for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: cannot start: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} failed ({}): {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_into_an_ext4_span_of_a_disk_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let offset = 4u64 << 20;
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let mk = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E"])
            .arg(format!("offset={offset}"))
            .arg(&disk)
            .arg("16M")
            .output()
            .unwrap();
        assert!(
            mk.status.success(),
            "{}",
            String::from_utf8_lossy(&mk.stderr)
        );
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).unwrap();
        let files = vec![
            file("guest-os.env", b"PLINTH_GUEST_VCPUS=2\n".to_vec(), 0o644),
            file(
                "node_operator_private_key.pem",
                b"-----BEGIN PRIVATE KEY-----\n".to_vec(),
                0o600,
            ),
        ];
        write(&disk, offset, &files, &scratch).unwrap();
        let stat = Command::new("debugfs")
            .args(["-R", "stat node_operator_private_key.pem"])
            .arg(format!("{}?offset={offset}", disk.display()))
            .output()
            .unwrap();
        let stat = String::from_utf8_lossy(&stat.stdout);
        assert!(stat.contains("Mode:  0600"), "{stat}");
        // Nothing outside the span changed: the first 4 MiB are still zeros.
        let bytes = std::fs::read(&disk).unwrap();
        assert!(bytes[..offset as usize].iter().all(|&b| b == 0));
        // Bad names are refused before anything is written.
        let bad = vec![file("../x", Vec::new(), 0o644)];
        let scratch2 = dir.path().join("scratch2");
        std::fs::create_dir(&scratch2).unwrap();
        assert!(write(&disk, offset, &bad, &scratch2)
            .unwrap_err()
            .contains("plain file name"));
    }
}
