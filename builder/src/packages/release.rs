//! A suite's signed `InRelease`: fetch it, verify its OpenPGP signature with the archive
//! keyring (Debian's `gpgv`), and parse the verified text: codename, validity and the SHA256
//! list of the suite's index files. Only text that `gpgv` says is signed is ever parsed.

use super::deb822;
use plinth_release::Sha256;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The keyring Debian's archive signs with (package debian-archive-keyring).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Something wrong with a suite's archive metadata. Each names the suite and the file.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{suite}: fetching {url}: {source}")]
    Download {
        suite: String,
        url: String,
        source: super::http::HttpError,
    },
    #[error("{suite}: the signature of {url} does not verify with the keyring {keyring}:\n{gpgv}\n  hint: the mirror may be tampered with or stale; if you use your own archive, pass its key with --keyring")]
    BadSignature {
        suite: String,
        url: String,
        keyring: String,
        gpgv: String,
    },
    #[error("cannot run gpgv to check {url}: {source}\n  hint: run ci/setup (installs gpgv and debian-archive-keyring)")]
    NoGpgv { url: String, source: std::io::Error },
    #[error("{suite}: the keyring {keyring} does not exist\n  hint: install debian-archive-keyring (ci/setup does), or pass --keyring FILE")]
    NoKeyring { suite: String, keyring: String },
    #[error("{suite}: {url} is signed but says Codename `{found}`, expected `{suite}`\n  hint: the mirror serves another suite under this name (a replay or a misconfigured mirror)")]
    WrongSuite {
        suite: String,
        url: String,
        found: String,
    },
    #[error("{suite}: {url} expired at {valid_until} (Valid-Until); it is now {now}\n  hint: the mirror is stale or replaying old metadata; use an up-to-date mirror")]
    Expired {
        suite: String,
        url: String,
        valid_until: String,
        now: String,
    },
    #[error("{suite}: {url} lists no `{path}` in its SHA256 field\n  hint: check that the component and architecture exist in this suite")]
    NotListed {
        suite: String,
        url: String,
        path: String,
    },
    #[error("{suite}: {url}: {message}")]
    Malformed {
        suite: String,
        url: String,
        message: String,
    },
    #[error("{suite}: {url} does not match the signed InRelease: expected sha256 {expected} and {expected_size} bytes, got sha256 {actual} and {actual_size} bytes\n  hint: the mirror may be tampered with or mid-update; try again or use another mirror")]
    DigestMismatch {
        suite: String,
        url: String,
        expected: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("{suite}: {url}: cannot decompress: {message}")]
    Decompress {
        suite: String,
        url: String,
        message: String,
    },
}

/// A suite's verified release metadata.
#[derive(Debug, Clone)]
pub struct Release {
    /// The suite as the spec names it, e.g. `bookworm-security`.
    pub suite: String,
    /// The URL the InRelease came from.
    pub url: String,
    /// The InRelease file exactly as fetched (signature included).
    pub raw: Vec<u8>,
    /// sha256 of `raw`.
    pub raw_sha256: Sha256,
    pub codename: String,
    pub acquire_by_hash: bool,
    /// path → (sha256, size), from the SHA256 field.
    pub files: BTreeMap<String, (Sha256, u64)>,
}

impl Release {
    /// The signed digest of `path` (below `dists/<suite>/`).
    pub fn digest(&self, path: &str) -> Result<&(Sha256, u64), ArchiveError> {
        self.files.get(path).ok_or_else(|| ArchiveError::NotListed {
            suite: self.suite.clone(),
            url: self.url.clone(),
            path: path.to_string(),
        })
    }
}

/// Fetch `<mirror>/dists/<suite>/InRelease`, verify it with `keyring`, parse it, and check
/// that it is the suite asked for and still valid at `now` (Unix seconds).
pub async fn fetch_release(
    client: &reqwest::Client,
    mirror: &str,
    suite: &str,
    keyring: &Path,
    now: i64,
) -> Result<Release, ArchiveError> {
    let url = format!("{mirror}/dists/{suite}/InRelease");
    let raw = super::http::get(client, &url)
        .await
        .map_err(|source| ArchiveError::Download {
            suite: suite.to_string(),
            url: url.clone(),
            source,
        })?;
    let text = verify_signature(&raw, keyring, suite, &url)?;
    let release = parse_release(&text, suite, &url, raw, now)?;
    Ok(release)
}

/// Check the clear-signed `raw` with `gpgv` and return only the signed text.
pub fn verify_signature(
    raw: &[u8],
    keyring: &Path,
    suite: &str,
    url: &str,
) -> Result<String, ArchiveError> {
    if !keyring.is_file() {
        return Err(ArchiveError::NoKeyring {
            suite: suite.to_string(),
            keyring: keyring.display().to_string(),
        });
    }
    let mut child = Command::new("gpgv")
        .arg("--keyring")
        .arg(keyring)
        .args(["--output", "-", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ArchiveError::NoGpgv {
            url: url.to_string(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = raw.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|source| ArchiveError::NoGpgv {
            url: url.to_string(),
            source,
        })?;
    // A write error only means gpgv stopped reading early; its exit status says why.
    let _ = writer.join();
    if !out.status.success() {
        let gpgv = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(ArchiveError::BadSignature {
            suite: suite.to_string(),
            url: url.to_string(),
            keyring: keyring.display().to_string(),
            gpgv,
        });
    }
    String::from_utf8(out.stdout).map_err(|_| ArchiveError::Malformed {
        suite: suite.to_string(),
        url: url.to_string(),
        message: "the signed text is not UTF-8".into(),
    })
}

/// Parse verified Release text.
pub fn parse_release(
    text: &str,
    suite: &str,
    url: &str,
    raw: Vec<u8>,
    now: i64,
) -> Result<Release, ArchiveError> {
    let malformed = |message: String| ArchiveError::Malformed {
        suite: suite.to_string(),
        url: url.to_string(),
        message,
    };
    let paras = deb822::paragraphs(text);
    let para = paras
        .first()
        .ok_or_else(|| malformed("the signed text is empty".into()))?;
    let codename = deb822::get(para, "Codename")
        .ok_or_else(|| malformed("no Codename field".into()))?
        .to_string();
    if codename != suite {
        return Err(ArchiveError::WrongSuite {
            suite: suite.to_string(),
            url: url.to_string(),
            found: codename,
        });
    }
    if let Some(valid_until) = deb822::get(para, "Valid-Until") {
        let until = parse_rfc2822(valid_until)
            .ok_or_else(|| malformed(format!("cannot parse Valid-Until `{valid_until}`")))?;
        if until < now {
            return Err(ArchiveError::Expired {
                suite: suite.to_string(),
                url: url.to_string(),
                valid_until: valid_until.to_string(),
                now: format_unix(now),
            });
        }
    }
    let mut files = BTreeMap::new();
    for line in deb822::get(para, "SHA256")
        .ok_or_else(|| malformed("no SHA256 field".into()))?
        .lines()
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let [hash, size, path] = words[..] else {
            return Err(malformed(format!("bad SHA256 line `{line}`")));
        };
        let size: u64 = size
            .parse()
            .map_err(|_| malformed(format!("bad size in SHA256 line `{line}`")))?;
        let hash: Sha256 = hash
            .parse()
            .map_err(|_| malformed(format!("bad hash in SHA256 line `{line}`")))?;
        files.insert(path.to_string(), (hash, size));
    }
    Ok(Release {
        suite: suite.to_string(),
        url: url.to_string(),
        raw_sha256: Sha256::of(&raw),
        raw,
        codename,
        acquire_by_hash: deb822::get(para, "Acquire-By-Hash") == Some("yes"),
        files,
    })
}

/// The keyring to use: the flag, then `PLINTH_KEYRING`, then Debian's archive keyring.
pub fn keyring_path(flag: Option<&Path>) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("PLINTH_KEYRING").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEBIAN_KEYRING))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Parse Debian's Release date form, `Sat, 22 Nov 2026 19:58:56 UTC`, into Unix seconds.
pub fn parse_rfc2822(s: &str) -> Option<i64> {
    let s = s.split_once(", ").map_or(s, |(_, rest)| rest);
    let w: Vec<&str> = s.split_whitespace().collect();
    if w.len() != 5 || !matches!(w[4], "UTC" | "GMT" | "+0000") {
        return None;
    }
    let day: i64 = w[0].parse().ok()?;
    let month = MONTHS.iter().position(|m| *m == w[1])? as i64 + 1;
    let year: i64 = w[2].parse().ok()?;
    let hms: Vec<i64> = w[3]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    Some(days_from_civil(year, month, day) * 86400 + h * 3600 + m * 60 + sec)
}

/// Format Unix seconds as `2026-11-24 12:00:00 UTC`.
pub fn format_unix(t: i64) -> String {
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// Howard Hinnant's civil-date algorithms (proleptic Gregorian calendar).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "Origin: Debian\nSuite: oldstable-security\nCodename: bookworm-security\nDate: Sun, 22 Nov 2026 19:58:56 UTC\nValid-Until: Sun, 29 Nov 2026 19:58:56 UTC\nAcquire-By-Hash: yes\nSHA256:\n 6a76270e9f19326bc8681136eba244cc44c18da5f16a5f0d427189e16f24bac1  2526003 main/binary-amd64/Packages\n 36712c7d22dfc0a49c79e3e7a22e7f545a50bbf09d6111fe0ce4149addd93cad   378656 main/binary-amd64/Packages.xz\n";

    #[test]
    fn dates_round_trip() {
        let t = parse_rfc2822("Sun, 29 Nov 2026 19:58:56 UTC").unwrap();
        assert_eq!(format_unix(t), "2026-11-29 19:58:56 UTC");
        assert_eq!(parse_rfc2822("Thu, 01 Jan 1970 00:00:00 UTC"), Some(0));
        assert_eq!(parse_rfc2822("29 Nov 2026 19:58:56 CET"), None);
    }

    #[test]
    fn parses_codename_validity_and_digests() {
        let now = parse_rfc2822("Tue, 24 Nov 2026 12:00:00 UTC").unwrap();
        let r = parse_release(RELEASE, "bookworm-security", "u", b"raw".to_vec(), now).unwrap();
        assert!(r.acquire_by_hash);
        assert_eq!(r.digest("main/binary-amd64/Packages.xz").unwrap().1, 378656);
        assert!(matches!(
            r.digest("main/binary-arm64/Packages.xz"),
            Err(ArchiveError::NotListed { .. })
        ));
    }

    #[test]
    fn rejects_expired_and_wrong_suite() {
        let later = parse_rfc2822("Mon, 30 Nov 2026 00:00:00 UTC").unwrap();
        let e = parse_release(RELEASE, "bookworm-security", "u", vec![], later).unwrap_err();
        assert!(matches!(e, ArchiveError::Expired { .. }), "{e}");
        let e = parse_release(RELEASE, "bookworm-updates", "u", vec![], 0).unwrap_err();
        assert!(
            e.to_string().contains("Codename `bookworm-security`"),
            "{e}"
        );
    }
}
