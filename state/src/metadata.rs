//! The LUKS2 metadata of a state volume, checked before any key is given to it: whoever can
//! write the disk (a host under SEV-SNP, anyone with the machine's disk in hand) can rewrite
//! the JSON and its unkeyed checksum, and cryptsetup opens with what it says. A volume plinth
//! made has exactly one key slot, one digest and one data segment, all AES-XTS with a 512-bit
//! key, 4 KiB sectors, the data where [`crate::header::DATA_START`] says, no requirement
//! flags (reencryption), and only the tokens its key source writes. Anything else (a
//! `cipher_null` segment that would store the state in clear, a second key slot the writer
//! knows the key of) is refused, and the volume left as it is.

use serde_json::Value;

/// The cipher of every key slot and of the data.
const CIPHER: &str = "aes-xts-plain64";
/// Its key, in bytes.
const KEY_BYTES: u64 = 64;
/// The data's sector size.
const SECTOR: u64 = 4096;
/// The most metadata read (LUKS2's JSON area is at most 4 MiB).
pub const MAX_BYTES: usize = 4 << 20;

/// The problem with `json` (`cryptsetup luksDump --dump-json-metadata`), or nothing: the
/// volume is one plinth made, with tokens of the types in `tokens` only.
pub fn check(json: &str, tokens: &[&str]) -> Result<(), String> {
    if json.len() > MAX_BYTES {
        return Err(format!(
            "the metadata is {} bytes, more than LUKS2 allows",
            json.len()
        ));
    }
    let meta: Value = serde_json::from_str(json).map_err(|e| format!("the metadata: {e}"))?;
    let one = |section: &str| -> Result<&Value, String> {
        let map = meta[section]
            .as_object()
            .ok_or_else(|| format!("no `{section}` object"))?;
        match map.values().collect::<Vec<_>>()[..] {
            [only] => Ok(only),
            _ => Err(format!(
                "{} {section}, where plinth makes exactly one",
                map.len()
            )),
        }
    };
    let number = |v: &Value| v.as_u64().or_else(|| v.as_str()?.parse().ok());
    let expect = |what: &str, found: &Value, wanted: &str| -> Result<(), String> {
        match found.as_str() {
            Some(s) if s == wanted => Ok(()),
            _ => Err(format!("{what} is {found}, not {wanted}")),
        }
    };
    let expect_n = |what: &str, found: &Value, wanted: u64| -> Result<(), String> {
        match number(found) {
            Some(n) if n == wanted => Ok(()),
            _ => Err(format!("{what} is {found}, not {wanted}")),
        }
    };
    let slot = one("keyslots")?;
    expect("the key slot's type", &slot["type"], "luks2")?;
    expect_n("the key slot's key size", &slot["key_size"], KEY_BYTES)?;
    expect("the key slot's cipher", &slot["area"]["encryption"], CIPHER)?;
    expect_n(
        "the key slot area's key size",
        &slot["area"]["key_size"],
        KEY_BYTES,
    )?;
    let segment = one("segments")?;
    expect("the data segment's type", &segment["type"], "crypt")?;
    expect("the data's cipher", &segment["encryption"], CIPHER)?;
    expect_n("the data's sector size", &segment["sector_size"], SECTOR)?;
    expect_n(
        "the data's offset",
        &segment["offset"],
        crate::header::DATA_START,
    )?;
    expect("the data's size", &segment["size"], "dynamic")?;
    one("digests")?;
    if let Some(req) = meta["config"].get("requirements") {
        if !req.as_object().is_none_or(|r| r.is_empty()) {
            return Err(format!("it carries requirements {req} (a reencryption?)"));
        }
    }
    if let Some(found) = meta["tokens"].as_object() {
        for token in found.values() {
            let kind = token["type"].as_str().unwrap_or("?");
            if !tokens.contains(&kind) {
                return Err(format!(
                    "a token of type `{kind}`, which this key source never writes"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cryptsetup 2.6.1's metadata of a volume as plinth-state formats it, with a
    /// `plinth-snp` token.
    const MADE: &str = r#"{"keyslots":{"0":{"type":"luks2","key_size":64,"af":{"type":"luks1","stripes":4000,"hash":"sha256"},"area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64","key_size":64},"kdf":{"type":"pbkdf2","hash":"sha256","iterations":1000,"salt":"NtwX"}}},"tokens":{"0":{"type":"plinth-snp","keyslots":[],"tcb":"0000000000000001"}},"segments":{"0":{"type":"crypt","offset":"16777216","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":4096}},"digests":{"0":{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":1000,"salt":"nq","digest":"QB"}},"config":{"json_size":"12288","keyslots_size":"16744448"}}"#;

    #[test]
    fn a_volume_plinth_made_passes() {
        assert_eq!(check(MADE, &["plinth-snp"]), Ok(()));
    }

    #[test]
    fn every_rewrite_an_attacker_would_make_is_refused() {
        let cases = [
            (
                r#""encryption":"aes-xts-plain64","sector_size""#,
                r#""encryption":"cipher_null-ecb","sector_size""#,
                "the data's cipher",
            ),
            (
                r#""area":{"type":"raw","offset":"32768","size":"258048","encryption":"aes-xts-plain64""#,
                r#""area":{"type":"raw","offset":"32768","size":"258048","encryption":"cipher_null-ecb""#,
                "key slot's cipher",
            ),
            (
                r#""sector_size":4096"#,
                r#""sector_size":512"#,
                "sector size",
            ),
            (
                r#""offset":"16777216""#,
                r#""offset":"4096""#,
                "the data's offset",
            ),
            (r#""size":"dynamic""#, r#""size":"4096""#, "the data's size"),
            (
                r#""keyslots":{"0":{"#,
                r#""keyslots":{"5":{"type":"luks2"},"0":{"#,
                "2 keyslots",
            ),
            (
                r#""config":{"#,
                r#""config":{"requirements":{"mandatory":["online-reencrypt"]},"#,
                "requirements",
            ),
            (
                r#""type":"plinth-snp""#,
                r#""type":"plinth-evil""#,
                "`plinth-evil`",
            ),
            (
                r#""key_size":64,"af""#,
                r#""key_size":32,"af""#,
                "key slot's key size",
            ),
        ];
        for (from, to, why) in cases {
            assert!(MADE.contains(from), "{from}");
            let bad = MADE.replacen(from, to, 1);
            let e = check(&bad, &["plinth-snp"]).unwrap_err();
            assert!(e.contains(why), "{to}: {e}");
        }
        // A token its own source never writes.
        assert!(check(MADE, &["systemd-tpm2"])
            .unwrap_err()
            .contains("plinth-snp"));
        assert!(check("[]", &[]).unwrap_err().contains("no `keyslots`"));
        assert!(check("{", &[]).unwrap_err().contains("the metadata"));
    }
}
