//! Where the state volume's key comes from, and the one thing each source does differently:
//! how a key slot it can open again is added (authorised by the format's temporary key, whose
//! slot it then removes), and how the volume is opened.
//!
//! - [`KeySource::Tpm2`] (`key_source=tpm2`, HostOS): sealed to the TPM by systemd 252's own
//!   code, `systemd-cryptenroll` to enrol and `systemd-cryptsetup attach` to open. Either
//!   bound to PCR values directly (`pcrs`), or to any PCR values the release key signed,
//!   through the UKI's `.pcrsig`/`.pcrpkey` (`signed`): an approved upgrade unseals without
//!   re-enrolment.
//! - [`KeySource::Derived`] (`key_source=snp`, GuestOS; `key_source=tpm2-hmac`, its test
//!   stand-in): the key is derived again on every boot ([`crate::derive`]) and opens the
//!   volume through `cryptsetup --key-file=-`; nothing is enrolled.
//!
//! The source is fixed at build time in the verity root ([`CONFIG_PATH`]); there is no fallback
//! from one source to another. Keys travel through pipes and `$PASSWORD` (which
//! systemd-cryptenroll reads and erases), never argv or files, and are zeroed when dropped.

pub use crate::derive::Derive;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// The key source's configuration inside the root (`key=value` lines).
pub const CONFIG_PATH: &str = "usr/lib/plinth/state.conf";

/// The most bytes read from the configuration.
const CONFIG_MAX: u64 = 4096;

/// A secret: bytes zeroed on drop.
pub type Secret = Zeroizing<Vec<u8>>;

/// How the key is sealed and unsealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The TPM, through systemd's tools.
    Tpm2(Sealed),
    /// A key derived on every boot.
    Derived(Derive),
}

/// A key sealed to the TPM by systemd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The TPM (`auto`, or a TCTI such as `swtpm:path=...`).
    pub device: String,
    /// PCRs the key is bound to by value (`7+11`), empty for none.
    pub pcrs: String,
    /// PCRs bound through the release key's signature, with the public key and the
    /// signature file (`11+12`, the PEM, the JSON the stub unpacks to `/.extra`).
    pub signed: Option<Signed>,
}

/// A signed PCR policy: any PCR values the release key signed for these PCRs unseal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub pcrs: String,
    pub public_key: PathBuf,
    pub signature: PathBuf,
}

/// Why the configuration or the source failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} line {line}: {message}\n  hint: the key source is set in the image's overlay ({CONFIG_PATH})")]
    Config {
        path: String,
        line: usize,
        message: String,
    },
}

/// The key sources a configuration may name.
const SOURCES: [&str; 3] = ["tpm2", "snp", "tpm2-hmac"];

/// The TCTI tpm2-tools takes for systemd's `tpm2-device` word: `auto` is the kernel's
/// resource manager, a path is that device, anything else is a TCTI already.
fn tcti_of(device: &str) -> String {
    match device {
        "auto" => "device:/dev/tpmrm0".into(),
        d if d.starts_with('/') => format!("device:{d}"),
        d => d.into(),
    }
}

/// PCR lists as systemd takes them: numbers 0..=23 joined by `+`.
fn valid_pcrs(s: &str) -> bool {
    let pcr = |n: &str| (n == "0" || !n.starts_with('0')) && n.parse::<u8>().is_ok_and(|i| i < 24);
    s.is_empty() || s.split('+').all(pcr)
}

impl KeySource {
    /// Parse the configuration's text (`path` for errors). Its files are the initrd's (the
    /// stub unpacks the UKI's `.pcrpkey` and `.pcrsig` to `/.extra`), not the new root's.
    pub fn parse(text: &str, path: &str) -> Result<KeySource, KeyError> {
        let mut source: Option<(String, usize)> = None;
        // The first key other than key_source, and its line: the derived sources refuse
        // the sealing keys.
        let mut sealing_only: Option<(String, usize)> = None;
        let (mut device, mut pcrs) = ("auto".to_string(), String::new());
        let (mut signed_pcrs, mut public_key, mut signature) = (None, None, None);
        // snp_min_tcb and its line.
        let mut min_tcb: Option<(u64, usize)> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let fail = |message: String| KeyError::Config {
                path: path.into(),
                line: i + 1,
                message,
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(fail(format!(
                    "expected key=value, found `{}`",
                    line.escape_debug()
                )));
            };
            let (key, value) = (key.trim(), value.trim());
            let pcr_list = |v: &str| {
                if valid_pcrs(v) {
                    Ok(v.to_string())
                } else {
                    Err(fail(format!(
                        "`{key}`: expected PCR numbers joined by + (11+12), found `{}`",
                        v.escape_debug()
                    )))
                }
            };
            let file = |v: &str| {
                if v.starts_with('/') && !v.split('/').any(|c| c == "..") {
                    Ok(PathBuf::from(v))
                } else {
                    Err(fail(format!(
                        "`{key}`: expected an absolute path without .., found `{}`",
                        v.escape_debug()
                    )))
                }
            };
            match key {
                "key_source" if SOURCES.contains(&value) => {
                    source = Some((value.to_string(), i + 1))
                }
                "key_source" => {
                    return Err(fail(format!(
                        "`key_source`: expected one of {}, found `{}`",
                        SOURCES.join(", "),
                        value.escape_debug()
                    )))
                }
                "tpm2_device" => device = value.to_string(),
                "tpm2_pcrs" => pcrs = pcr_list(value)?,
                "tpm2_signed_pcrs" => signed_pcrs = Some(pcr_list(value)?),
                "tpm2_public_key" => public_key = Some(file(value)?),
                "tpm2_signature" => signature = Some(file(value)?),
                "snp_min_tcb" => {
                    let tcb = (value.len() == 16)
                        .then(|| u64::from_str_radix(value, 16).ok())
                        .flatten()
                        .ok_or_else(|| {
                            fail(format!(
                                "`snp_min_tcb`: expected the TCB_VERSION as 16 hexadecimal digits (as an attestation report's, little-endian bytes read as a number), found `{}`",
                                value.escape_debug()
                            ))
                        })?;
                    min_tcb = Some((tcb, i + 1));
                }
                _ => return Err(fail(format!("unknown key `{}`", key.escape_debug()))),
            }
            if !["key_source", "tpm2_device", "snp_min_tcb"].contains(&key) {
                sealing_only.get_or_insert((key.to_string(), i + 1));
            }
        }
        let missing = |message: &str| KeyError::Config {
            path: path.into(),
            line: text.lines().count(),
            message: message.into(),
        };
        let Some((source, source_line)) = source else {
            return Err(missing(&format!(
                "no `key_source` (expected key_source= one of {})",
                SOURCES.join(", ")
            )));
        };
        if let Some((_, line)) = min_tcb.filter(|_| source != "snp") {
            return Err(KeyError::Config {
                path: path.into(),
                line,
                message: format!("`snp_min_tcb` is for key_source=snp only, not {source}"),
            });
        }
        if source != "tpm2" {
            // The derived sources take only the TPM's device (tpm2-hmac).
            if let Some((key, line)) = sealing_only {
                return Err(KeyError::Config {
                    path: path.into(),
                    line,
                    message: format!("`{key}` is for key_source=tpm2 only, not {source}"),
                });
            }
            return Ok(KeySource::Derived(match source.as_str() {
                "snp" if device != "auto" => {
                    return Err(KeyError::Config {
                        path: path.into(),
                        line: source_line,
                        message: "key_source=snp takes no tpm2_device".into(),
                    })
                }
                "snp" => Derive::Snp {
                    min_tcb: min_tcb.map(|(tcb, _)| tcb),
                },
                _ => Derive::TpmHmac {
                    tcti: tcti_of(&device),
                },
            }));
        }
        let signed = match (signed_pcrs, public_key, signature) {
            (None, None, None) => None,
            (Some(pcrs), Some(public_key), Some(signature)) => Some(Signed {
                pcrs,
                public_key,
                signature,
            }),
            _ => return Err(missing(
                "a signed policy needs all of tpm2_signed_pcrs, tpm2_public_key and tpm2_signature",
            )),
        };
        if pcrs.is_empty() && signed.is_none() {
            return Err(missing(
                "the key would be bound to nothing: set tpm2_pcrs, or a signed policy",
            ));
        }
        Ok(KeySource::Tpm2(Sealed {
            device,
            pcrs,
            signed,
        }))
    }

    /// Read the configuration from `root` ([`CONFIG_PATH`]); `None` when the image has none
    /// (an OS without persistent state).
    pub fn load(root: &Path) -> Result<Option<KeySource>, KeyError> {
        use std::io::Read;
        let path = root.join(CONFIG_PATH);
        let shown = path.display().to_string();
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(KeyError::Read {
                    path: shown,
                    message: e.to_string(),
                })
            }
        };
        let mut text = String::new();
        file.take(CONFIG_MAX)
            .read_to_string(&mut text)
            .map_err(|e| KeyError::Read {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        KeySource::parse(&text, &shown).map(Some)
    }

    /// The source as this boot can use it: a signed policy whose UKI carries no release key
    /// (a build without one: no `.pcrpkey`, so no `/.extra/tpm2-pcr-public-key.pem`) binds
    /// the same PCRs by value instead, so that the state opens with this build alone. The
    /// choice follows `.pcrpkey`, which the stub measures into PCR 11, never the unmeasured
    /// `.pcrsig`: a UKI with a key and no signature fails to enrol rather than falling back.
    /// A volume enrolled under a signature keeps needing one: systemd-cryptsetup reads the
    /// policy from the volume's token, not from here.
    pub fn for_this_boot(self) -> KeySource {
        match self {
            KeySource::Tpm2(Sealed {
                device,
                pcrs,
                signed: Some(s),
            }) if !s.public_key.exists() => KeySource::Tpm2(Sealed {
                device,
                pcrs: if pcrs.is_empty() {
                    s.pcrs
                } else {
                    format!("{pcrs}+{}", s.pcrs)
                },
                signed: None,
            }),
            other => other,
        }
    }

    /// Its name in reports: `tpm2-signed` (PCR values the release key signed), `tpm2` (PCR
    /// values themselves), `snp` or `tpm2-hmac` (derived).
    pub fn name(&self) -> &'static str {
        match self {
            KeySource::Tpm2(Sealed {
                signed: Some(_), ..
            }) => "tpm2-signed",
            KeySource::Tpm2(_) => "tpm2",
            KeySource::Derived(d) => d.name(),
        }
    }
}

impl Sealed {
    /// systemd-cryptenroll's arguments for this source on `dev` (the temporary key arrives in
    /// `$PASSWORD`, and its slot is wiped once the new one works).
    pub fn enroll_args(&self, dev: &Path) -> Vec<String> {
        let Sealed {
            device,
            pcrs,
            signed,
        } = self;
        let mut args = vec![format!("--tpm2-device={device}")];
        if let Some(s) = signed {
            args.push(format!("--tpm2-public-key={}", s.public_key.display()));
            args.push(format!("--tpm2-public-key-pcrs={}", s.pcrs));
            args.push(format!("--tpm2-signature={}", s.signature.display()));
        }
        // Empty means none: systemd-cryptenroll binds PCR 7 by default.
        args.push(format!("--tpm2-pcrs={pcrs}"));
        args.push("--wipe-slot=password".into());
        args.push(dev.display().to_string());
        args
    }

    /// systemd-cryptsetup's options for opening with this source.
    pub fn attach_options(&self) -> String {
        let mut opts = vec![format!("tpm2-device={}", self.device)];
        if let Some(s) = &self.signed {
            opts.push(format!("tpm2-signature={}", s.signature.display()));
        }
        opts.push("headless=true".into());
        opts.join(",")
    }
}

/// A fresh random key of `len` bytes from the kernel.
pub fn random_key(len: usize) -> std::io::Result<Secret> {
    use std::io::Read;
    let mut key = Zeroizing::new(vec![0u8; len]);
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tpm2_source_by_value_and_signed() {
        let sealed = |text: &str| match KeySource::parse(text, "c").unwrap() {
            KeySource::Tpm2(s) => s,
            other => panic!("{other:?}"),
        };
        let by_value = sealed("# test\nkey_source=tpm2\ntpm2_pcrs=7+11\n");
        assert_eq!(
            by_value.enroll_args(Path::new("/dev/vda7")),
            [
                "--tpm2-device=auto",
                "--tpm2-pcrs=7+11",
                "--wipe-slot=password",
                "/dev/vda7"
            ]
        );
        assert_eq!(by_value.attach_options(), "tpm2-device=auto,headless=true");
        let text = "key_source = tpm2\ntpm2_signed_pcrs=11+12\ntpm2_public_key=/.extra/tpm2-pcr-public-key.pem\ntpm2_signature=/.extra/tpm2-pcr-signature.json\n";
        assert_eq!(KeySource::parse(text, "c").unwrap().name(), "tpm2-signed");
        let signed = sealed(text);
        let args = signed.enroll_args(Path::new("/dev/vda7"));
        assert!(args.contains(&"--tpm2-public-key=/.extra/tpm2-pcr-public-key.pem".to_string()));
        assert!(args.contains(&"--tpm2-pcrs=".to_string()));
        assert_eq!(
            signed.attach_options(),
            "tpm2-device=auto,tpm2-signature=/.extra/tpm2-pcr-signature.json,headless=true"
        );
    }

    #[test]
    fn bad_configurations_name_their_line() {
        let cases = [
            (
                "key_source=plain\n",
                1,
                "expected one of tpm2, snp, tpm2-hmac",
            ),
            (
                "key_source=snp\ntpm2_pcrs=11\n",
                2,
                "for key_source=tpm2 only, not snp",
            ),
            (
                "key_source=tpm2-hmac\ntpm2_device=auto\ntpm2_signed_pcrs=11\n",
                3,
                "for key_source=tpm2 only",
            ),
            (
                "tpm2_device=/dev/tpm0\nkey_source=snp\n",
                2,
                "snp takes no tpm2_device",
            ),
            ("key_source=tpm2\ntpm2_pcrs=11+24\n", 2, "PCR numbers"),
            ("key_source=tpm2\ntpm2_pcrs=011\n", 2, "PCR numbers"),
            ("key_source=tpm2\nwipe=yes\n", 2, "unknown key `wipe`"),
            ("key_source=tpm2\n", 1, "bound to nothing"),
            ("tpm2_pcrs=11\n", 1, "no `key_source`"),
            ("key_source=tpm2\ntpm2_signed_pcrs=11\n", 2, "needs all of"),
            ("key_source=tpm2\ntpm2_signature=../x\n", 2, "absolute path"),
            ("key_source tpm2\n", 1, "expected key=value"),
        ];
        for (text, line, want) in cases {
            let e = KeySource::parse(text, "state.conf").unwrap_err();
            let KeyError::Config { line: l, .. } = &e else {
                panic!("{e}")
            };
            assert_eq!(*l, line, "{text:?}: {e}");
            assert!(e.to_string().contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_uki_without_a_release_key_binds_the_signed_pcrs_by_value() {
        let t = tempfile::tempdir().unwrap();
        let key = t.path().join("tpm2-pcr-public-key.pem");
        let text = format!(
            "key_source=tpm2\ntpm2_signed_pcrs=11+12\ntpm2_public_key={}\ntpm2_signature=/.extra/s.json\n",
            key.display()
        );
        let sealed = |source: KeySource| match source {
            KeySource::Tpm2(s) => s,
            other => panic!("{other:?}"),
        };
        let unsigned = KeySource::parse(&text, "c").unwrap().for_this_boot();
        assert_eq!(unsigned.name(), "tpm2");
        assert!(sealed(unsigned)
            .enroll_args(Path::new("/dev/vda7"))
            .contains(&"--tpm2-pcrs=11+12".to_string()));
        // A key without its signature (stripped from the ESP) stays signed, and fails.
        std::fs::write(&key, "PEM").unwrap();
        let signed = KeySource::parse(&text, "c").unwrap().for_this_boot();
        assert_eq!(signed.name(), "tpm2-signed");
        assert!(sealed(signed)
            .enroll_args(Path::new("/dev/vda7"))
            .contains(&"--tpm2-pcrs=".to_string()));
    }

    #[test]
    fn derived_sources_and_their_tpm() {
        assert_eq!(
            KeySource::parse("key_source=snp\n", "c").unwrap(),
            KeySource::Derived(Derive::Snp { min_tcb: None })
        );
        assert_eq!(
            KeySource::parse("key_source=snp\nsnp_min_tcb=d315000000000004\n", "c").unwrap(),
            KeySource::Derived(Derive::Snp {
                min_tcb: Some(0xd315_0000_0000_0004)
            })
        );
        for (device, tcti) in [
            ("", "device:/dev/tpmrm0"),
            ("tpm2_device=auto\n", "device:/dev/tpmrm0"),
            ("tpm2_device=/dev/tpm0\n", "device:/dev/tpm0"),
            ("tpm2_device=swtpm:path=/run/s\n", "swtpm:path=/run/s"),
        ] {
            let text = format!("key_source=tpm2-hmac\n{device}");
            let source = KeySource::parse(&text, "c").unwrap();
            assert_eq!(source.name(), "tpm2-hmac");
            assert_eq!(
                source.for_this_boot(),
                KeySource::Derived(Derive::TpmHmac { tcti: tcti.into() })
            );
        }
    }

    #[test]
    fn no_configuration_means_no_state() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(KeySource::load(t.path()).unwrap(), None);
        let conf = t.path().join(CONFIG_PATH);
        std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
        std::fs::write(&conf, "key_source=tpm2\ntpm2_pcrs=11\n").unwrap();
        assert!(KeySource::load(t.path()).unwrap().is_some());
    }

    #[test]
    fn random_keys_differ() {
        assert_ne!(*random_key(32).unwrap(), *random_key(32).unwrap());
    }
}
