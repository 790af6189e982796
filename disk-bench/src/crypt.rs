//! What the sealed state's encryption costs, in the same boot: a marked disk benchmarked raw
//! and then through a dm-crypt mapping with the open state volume's own cipher, key size and
//! sector size (plain dm-crypt, a fresh random key: the data path of a LUKS2 volume is the
//! same dm-crypt target, LUKS2 only adds the header), and the state volume itself read
//! against its own raw partition (the same blocks: ciphertext raw, plaintext through the
//! mapping; read only, nothing of the state is written). The ratios are the figures to read:
//! under TCG the absolute ones are the emulator's.

use crate::direct::{self, Figures, BLOCK, RESERVED};
use crate::scratch::{Header, MarkedDisk};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The device-mapper name of the open state volume (`plinth-state open --mapper`).
pub const STATE_MAPPER: &str = "plinth-state";
/// The device-mapper name of the benchmark's own mapping.
const BENCH_MAPPER: &str = "plinth-disk-bench";
/// Where the benchmark's mapping starts on the disk: past the header's MiB, in sectors.
const OFFSET_SECTORS: u64 = RESERVED / 512;
/// The most of the state volume read for the read comparison.
const STATE_READ_MAX: u64 = 256 << 20;

/// An open dm-crypt volume's parameters, as `cryptsetup status` prints them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// `aes-xts-plain64`.
    pub cipher: String,
    pub key_bits: u32,
    /// The encryption sector size in bytes.
    pub sector: u32,
    /// The device under the mapping.
    pub device: PathBuf,
    /// Where the data starts on it and how long it is, in 512-byte sectors.
    pub offset_sectors: u64,
    pub size_sectors: u64,
}

impl Params {
    /// Parse `cryptsetup status NAME`'s output.
    pub fn parse(text: &str) -> Result<Params, String> {
        let field = |key: &str| {
            text.lines()
                .filter_map(|l| l.trim().split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .map(|(_, v)| v.trim().to_string())
                .ok_or_else(|| format!("cryptsetup status printed no `{key}:`"))
        };
        let number = |key: &str, unit: &str| -> Result<u64, String> {
            let v = field(key)?;
            v.strip_suffix(unit)
                .unwrap_or(&v)
                .trim()
                .parse()
                .map_err(|_| format!("cryptsetup status: `{key}: {v}` is not a number"))
        };
        let cipher = field("cipher")?;
        if cipher.is_empty()
            || !cipher
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("cryptsetup status: unexpected cipher `{cipher}`"));
        }
        Ok(Params {
            cipher,
            key_bits: u32::try_from(number("keysize", "bits")?)
                .map_err(|_| "cryptsetup status: key size out of range".to_string())?,
            // Older output has no sector size: dm-crypt's default then.
            sector: field("sector size").ok().map_or(Ok(512), |v| {
                v.parse().map_err(|_| format!("sector size `{v}`"))
            })?,
            device: PathBuf::from(field("device")?),
            offset_sectors: number("offset", "sectors")?,
            size_sectors: number("size", "sectors")?,
        })
    }

    /// The parameters of the open volume `name`.
    pub fn of_open_volume(name: &str) -> Result<Params, String> {
        let out = Command::new("cryptsetup")
            .args(["status", name])
            .output()
            .map_err(|e| format!("cryptsetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "no open volume /dev/mapper/{name} to take the parameters from (cryptsetup status: {})",
                String::from_utf8_lossy(&out.stdout).trim()
            ));
        }
        Params::parse(&String::from_utf8_lossy(&out.stdout))
    }
}

/// The benchmark's dm-crypt mapping of a disk, closed when dropped.
struct Mapping;

impl Mapping {
    fn open(disk: &Path, p: &Params) -> Result<Mapping, String> {
        let mut key = vec![0u8; p.key_bits as usize / 8];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        let mut child = Command::new("cryptsetup")
            .args([
                "open",
                "--type",
                "plain",
                "--batch-mode",
                "--cipher",
                &p.cipher,
            ])
            .arg(format!("--key-size={}", p.key_bits))
            .arg(format!("--sector-size={}", p.sector))
            .arg(format!("--offset={OFFSET_SECTORS}"))
            .arg("--key-file=-")
            .arg(format!("--keyfile-size={}", key.len()))
            .arg(disk)
            .arg(BENCH_MAPPER)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cryptsetup: {e}"))?;
        if let Some(mut pipe) = child.stdin.take() {
            let _ = pipe.write_all(&key);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("cryptsetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cryptsetup open --type plain {}: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mapping)
    }

    fn path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(BENCH_MAPPER)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let _ = Command::new("cryptsetup")
            .args(["close", BENCH_MAPPER])
            .status();
    }
}

/// The marked `disk` raw and through dm-crypt with the state volume's parameters, the same
/// number of bytes each, then the state volume against its raw partition: the lines to print.
pub fn compare(disk: &MarkedDisk, header: &Header) -> Result<Vec<String>, String> {
    let state = Params::of_open_volume(STATE_MAPPER)?;
    let mapped = disk
        .capacity
        .checked_sub(OFFSET_SECTORS * 512)
        .ok_or_else(|| format!("{} is smaller than its header's MiB", disk.path.display()))?;
    let room = mapped.saturating_sub(RESERVED) / BLOCK as u64 * BLOCK as u64;
    let header = Header {
        bytes: Some(header.bytes.unwrap_or(room)),
        ..header.clone()
    };
    let raw = direct::bench(&disk.path, disk.capacity, &header, true)?;
    let (crypt, driver) = {
        let mapping = Mapping::open(&disk.path, &state)?;
        let figures = direct::bench(&mapping.path(), mapped, &header, true)?;
        // While the mapping holds it, the kernel's implementation of the cipher is listed.
        let crypto = std::fs::read_to_string("/proc/crypto").unwrap_or_default();
        (figures, kernel_driver(&crypto, &state.cipher))
    };
    let layer = format!(
        "layer=dm-crypt cipher={} key_bits={} sector={} driver={}",
        state.cipher,
        state.key_bits,
        state.sector,
        driver.as_deref().unwrap_or("unknown")
    );
    let mut lines = vec![
        direct::line(&disk.name, "layer=raw", &raw),
        direct::line(&disk.name, &layer, &crypt),
        ratio_line(&disk.name, &raw, &crypt),
    ];
    lines.push(state_read(&state)?);
    Ok(lines)
}

/// The kernel's implementation that dm-crypt uses for `cipher` (`aes-xts-plain64`: the
/// highest-priority `xts(aes)` of `/proc/crypto`, such as `xts-aes-aesni` with AES-NI or
/// `xts(ecb(aes-generic))` without).
fn kernel_driver(proc_crypto: &str, cipher: &str) -> Option<String> {
    let mut parts = cipher.split('-');
    let (algorithm, mode) = (parts.next()?, parts.next()?);
    let wanted = format!("{mode}({algorithm})");
    proc_crypto
        .split("\n\n")
        .filter_map(|block| {
            let field = |key: &str| {
                block
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim() == key)
                    .map(|(_, v)| v.trim())
            };
            (field("name")? == wanted).then_some(())?;
            let priority: u32 = field("priority")?.parse().ok()?;
            Some((priority, field("driver")?.to_string()))
        })
        .max()
        .map(|(_, driver)| driver)
}

/// `crypt` against `raw`, each figure a throughput ratio (above 1: dm-crypt is faster).
fn ratio_line(disk: &str, raw: &Figures, crypt: &Figures) -> String {
    let ratio = |raw: Duration, crypt: Duration| raw.as_secs_f64() / crypt.as_secs_f64().max(1e-9);
    let mut line = format!(
        "PLINTH DISK BENCH disk={disk} dm-crypt/raw write={:.2} read={:.2}",
        ratio(raw.write, crypt.write),
        ratio(raw.read, crypt.read)
    );
    if raw.random_reads > 0 {
        line.push_str(&format!(
            " randread_4k={:.2}",
            ratio(raw.random, crypt.random)
        ));
    }
    line
}

/// The open state volume read through its mapping and its partition read raw, the same
/// blocks (at most [`STATE_READ_MAX`]), after one untimed raw pass so that both find the
/// host's cache in the same state.
fn state_read(state: &Params) -> Result<String, String> {
    let bytes = (state.size_sectors * 512).min(STATE_READ_MAX) / BLOCK as u64 * BLOCK as u64;
    if bytes == 0 {
        return Err(format!(
            "the state volume on {} is empty",
            state.device.display()
        ));
    }
    let start = state.offset_sectors * 512;
    let mapper = Path::new("/dev/mapper").join(STATE_MAPPER);
    direct::read_range(&state.device, start, bytes)?;
    let raw = direct::read_range(&state.device, start, bytes)?;
    let crypt = direct::read_range(&mapper, 0, bytes)?;
    let mib_s = |d: Duration| bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64().max(1e-9);
    Ok(format!(
        "PLINTH DISK BENCH state={} bytes={bytes} raw_read_mib_s={:.1} dm_crypt_read_mib_s={:.1} read_ratio={:.2}",
        state.device.display(),
        mib_s(raw),
        mib_s(crypt),
        raw.as_secs_f64() / crypt.as_secs_f64().max(1e-9)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_volume_status_is_parsed() {
        // cryptsetup 2.6.1's words for the state volume, as a booted HostOS printed them.
        let status = "/dev/mapper/plinth-state is active and is in use.\n  type:    LUKS2\n  cipher:  aes-xts-plain64\n  keysize: 512 bits\n  key location: keyring\n  device:  /dev/vda7\n  sector size:  4096\n  offset:  32768 sectors\n  size:    491520 sectors\n  mode:    read/write\n";
        assert_eq!(
            Params::parse(status).unwrap(),
            Params {
                cipher: "aes-xts-plain64".into(),
                key_bits: 512,
                sector: 4096,
                device: "/dev/vda7".into(),
                offset_sectors: 32768,
                size_sectors: 491520,
            }
        );
        let no_cipher = status.replace("  cipher:  aes-xts-plain64\n", "");
        assert!(Params::parse(&no_cipher).unwrap_err().contains("`cipher:`"));
        let odd = status.replace("aes-xts-plain64", "aes,xts");
        assert!(Params::parse(&odd)
            .unwrap_err()
            .contains("unexpected cipher"));
        let bad = status.replace("512 bits", "many bits");
        assert!(Params::parse(&bad).unwrap_err().contains("not a number"));
    }

    #[test]
    fn the_kernel_driver_is_the_highest_priority_one() {
        let crypto = "name         : xts(aes)\ndriver       : xts(ecb(aes-generic))\nmodule       : kernel\npriority     : 100\n\nname         : xts(aes)\ndriver       : xts-aes-aesni\nmodule       : aesni_intel\npriority     : 401\n\nname         : aes\ndriver       : aes-generic\npriority     : 100\n";
        assert_eq!(
            kernel_driver(crypto, "aes-xts-plain64").as_deref(),
            Some("xts-aes-aesni")
        );
        assert_eq!(kernel_driver(crypto, "serpent-xts-plain64"), None);
        assert_eq!(kernel_driver("", "aes-xts-plain64"), None);
    }

    #[test]
    fn ratios_are_throughput_ratios() {
        let raw = Figures {
            bytes: 1 << 20,
            write: Duration::from_secs(1),
            read: Duration::from_secs(1),
            random_reads: 8,
            random: Duration::from_secs(2),
        };
        let crypt = Figures {
            write: Duration::from_secs(2),
            read: Duration::from_millis(1250),
            random: Duration::from_secs(2),
            ..raw.clone()
        };
        assert_eq!(
            ratio_line("vdb", &raw, &crypt),
            "PLINTH DISK BENCH disk=vdb dm-crypt/raw write=0.50 read=0.80 randread_4k=1.00"
        );
    }
}
