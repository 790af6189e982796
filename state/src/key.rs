//! Where the state volume's key comes from, and the one thing each source does differently:
//! how a key slot it can open again is added (authorised by the format's temporary key, whose
//! slot it then removes), and how the volume is opened.
//!
//! - [`KeySource::Tpm2`]: sealed to the TPM by systemd 252's own code, `systemd-cryptenroll`
//!   to enrol and `systemd-cryptsetup attach` to open. Either bound to PCR values directly
//!   (`pcrs`), or (HostOS) to any PCR values the release key signed, through the UKI's
//!   `.pcrsig`/`.pcrpkey` (`signed`): an approved upgrade unseals without re-enrolment.
//!
//! The source is fixed at build time in the verity root ([`CONFIG_PATH`]); there is no fallback
//! from one source to another. Keys travel through pipes and `$PASSWORD` (which
//! systemd-cryptenroll reads and erases), never argv or files, and are zeroed when dropped.

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
    Tpm2 {
        /// The TPM (`auto`, or a TCTI such as `swtpm:path=...`).
        device: String,
        /// PCRs the key is bound to by value (`7+11`), empty for none.
        pcrs: String,
        /// PCRs bound through the release key's signature, with the public key and the
        /// signature file (`11+12`, the PEM, the JSON the stub unpacks to `/.extra`).
        signed: Option<Signed>,
    },
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

/// PCR lists as systemd takes them: numbers 0..=23 joined by `+`.
fn valid_pcrs(s: &str) -> bool {
    let pcr = |n: &str| (n == "0" || !n.starts_with('0')) && n.parse::<u8>().is_ok_and(|i| i < 24);
    s.is_empty() || s.split('+').all(pcr)
}

impl KeySource {
    /// Parse the configuration's text (`path` for errors). Its files are the initrd's (the
    /// stub unpacks the UKI's `.pcrpkey` and `.pcrsig` to `/.extra`), not the new root's.
    pub fn parse(text: &str, path: &str) -> Result<KeySource, KeyError> {
        let mut source = None;
        let (mut device, mut pcrs) = ("auto".to_string(), String::new());
        let (mut signed_pcrs, mut public_key, mut signature) = (None, None, None);
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
                "key_source" if value == "tpm2" => source = Some(value.to_string()),
                "key_source" => {
                    return Err(fail(format!(
                        "`key_source`: expected tpm2, found `{}`",
                        value.escape_debug()
                    )))
                }
                "tpm2_device" => device = value.to_string(),
                "tpm2_pcrs" => pcrs = pcr_list(value)?,
                "tpm2_signed_pcrs" => signed_pcrs = Some(pcr_list(value)?),
                "tpm2_public_key" => public_key = Some(file(value)?),
                "tpm2_signature" => signature = Some(file(value)?),
                _ => return Err(fail(format!("unknown key `{}`", key.escape_debug()))),
            }
        }
        let missing = |message: &str| KeyError::Config {
            path: path.into(),
            line: text.lines().count(),
            message: message.into(),
        };
        if source.is_none() {
            return Err(missing("no `key_source` (expected key_source=tpm2)"));
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
        Ok(KeySource::Tpm2 {
            device,
            pcrs,
            signed,
        })
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
            KeySource::Tpm2 {
                device,
                pcrs,
                signed: Some(s),
            } if !s.public_key.exists() => KeySource::Tpm2 {
                device,
                pcrs: if pcrs.is_empty() {
                    s.pcrs
                } else {
                    format!("{pcrs}+{}", s.pcrs)
                },
                signed: None,
            },
            other => other,
        }
    }

    /// Its name in reports: `tpm2-signed` (PCR values the release key signed) or `tpm2`
    /// (PCR values themselves).
    pub fn name(&self) -> &'static str {
        match self {
            KeySource::Tpm2 {
                signed: Some(_), ..
            } => "tpm2-signed",
            KeySource::Tpm2 { .. } => "tpm2",
        }
    }

    /// systemd-cryptenroll's arguments for this source on `dev` (the temporary key arrives in
    /// `$PASSWORD`, and its slot is wiped once the new one works).
    pub fn enroll_args(&self, dev: &Path) -> Vec<String> {
        let KeySource::Tpm2 {
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
        let KeySource::Tpm2 { device, signed, .. } = self;
        let mut opts = vec![format!("tpm2-device={device}")];
        if let Some(s) = signed {
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
        let by_value = KeySource::parse("# test\nkey_source=tpm2\ntpm2_pcrs=7+11\n", "c").unwrap();
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
        let signed = KeySource::parse(
            "key_source = tpm2\ntpm2_signed_pcrs=11+12\ntpm2_public_key=/.extra/tpm2-pcr-public-key.pem\ntpm2_signature=/.extra/tpm2-pcr-signature.json\n",
            "c",
        )
        .unwrap();
        assert_eq!(signed.name(), "tpm2-signed");
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
            ("key_source=plain\n", 1, "expected tpm2"),
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
        let unsigned = KeySource::parse(&text, "c").unwrap().for_this_boot();
        assert_eq!(unsigned.name(), "tpm2");
        assert!(unsigned
            .enroll_args(Path::new("/dev/vda7"))
            .contains(&"--tpm2-pcrs=11+12".to_string()));
        // A key without its signature (stripped from the ESP) stays signed, and fails.
        std::fs::write(&key, "PEM").unwrap();
        let signed = KeySource::parse(&text, "c").unwrap().for_this_boot();
        assert_eq!(signed.name(), "tpm2-signed");
        assert!(signed
            .enroll_args(Path::new("/dev/vda7"))
            .contains(&"--tpm2-pcrs=".to_string()));
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
