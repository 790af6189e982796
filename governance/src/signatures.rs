//! Signatures on staged roles: one voter's signature added with their key (through tough's
//! [`KeySource`]), voters' copies merged, and the count that decides whether a role may be
//! published. A signature is over the role's canonical JSON (TUF 4.2, tough's
//! [`Role::canonical_form`]); it counts only if its key is one of the role's keys in the root
//! that judges it and it verifies, each key once; [`require`] reports which signatures
//! counted and why the others did not, and then has tough's own `verify_role` agree.

use crate::error::GovernanceError;
use crate::keys;
use serde::Serialize;
use std::path::Path;
use tough::key_source::KeySource;
use tough::schema::{Role, Root, Signature, Signed};

/// The outcome of one signature's check against a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checked {
    pub key_id: String,
    /// `None`: it counts; else why not.
    pub not_counted: Option<String>,
}

/// The signatures of a role as `root` judges them.
#[derive(Debug, Clone, Serialize)]
pub struct Tally {
    pub threshold: u64,
    pub checked: Vec<Checked>,
}

impl Tally {
    /// The key ids whose signatures count.
    pub fn valid(&self) -> Vec<&str> {
        self.checked
            .iter()
            .filter(|c| c.not_counted.is_none())
            .map(|c| c.key_id.as_str())
            .collect()
    }

    pub fn met(&self) -> bool {
        self.valid().len() as u64 >= self.threshold
    }

    /// One line per signature.
    pub fn lines(&self) -> String {
        let mut out = String::new();
        for c in &self.checked {
            match &c.not_counted {
                None => out.push_str(&format!("\n  counted: {}", c.key_id)),
                Some(why) => out.push_str(&format!("\n  not counted: {}: {why}", c.key_id)),
            }
        }
        out
    }
}

/// The canonical bytes a signature of `role` covers.
pub fn canonical<T: Role>(role: &T) -> Vec<u8> {
    role.canonical_form()
        .expect("metadata serializes to canonical JSON")
}

/// Check each signature of `signed` against the keys `root` gives its role.
pub fn tally<T: Role>(root: &Root, signed: &Signed<T>) -> Tally {
    let data = canonical(&signed.signed);
    let role_keys = root.roles.get(&T::TYPE);
    let mut seen = std::collections::HashSet::new();
    let checked = signed
        .signatures
        .iter()
        .map(|s| {
            let key_id = hex::encode(s.keyid.clone().into_vec());
            let not_counted = if !seen.insert(key_id.clone()) {
                Some("a second signature of the same key".to_string())
            } else if !role_keys.is_some_and(|r| r.keyids.contains(&s.keyid)) {
                Some(format!("not a {} key of root v{}", T::TYPE, root.version))
            } else if !root
                .keys
                .get(&s.keyid)
                .is_some_and(|k| keys::verify(k, &data, &s.sig))
            {
                Some("the signature does not verify (signed other content, or corrupt)".to_string())
            } else {
                None
            };
            Checked {
                key_id,
                not_counted,
            }
        })
        .collect();
    Tally {
        threshold: role_keys.map_or(u64::MAX, |r| r.threshold.get()),
        checked,
    }
}

/// Fail unless `signed` carries a threshold of valid signatures of `root`'s keys for its
/// role (tough's `verify_role` must agree); `role` names it in the error ("targets v3").
pub fn require<T: Role + Serialize>(
    root: &Root,
    signed: &Signed<T>,
    role: &str,
) -> Result<Tally, GovernanceError> {
    let t = tally(root, signed);
    let verified = root.verify_role(signed);
    if t.met() && verified.is_ok() {
        return Ok(t);
    }
    let detail = match verified {
        Err(e) if t.met() => format!("{}\n  tough: {e}", t.lines()),
        _ => t.lines(),
    };
    Err(GovernanceError::Threshold {
        role: role.to_string(),
        by: format!("root v{}", root.version),
        threshold: t.threshold,
        valid: t.valid().len() as u64,
        detail,
        hint: format!(
            "more voters sign it (plinth governance sign --role {} --key FILE), in turn or on copies merged with plinth governance merge",
            if T::TYPE == tough::schema::RoleType::Root { "root" } else { "targets" }
        ),
    })
}

/// Add `source`'s signature of `signed` (replacing an earlier one of the same key); the key
/// id is returned. `allowed` decides whether the key may sign (else the error says why).
pub async fn add<T: Role>(
    signed: &mut Signed<T>,
    source: &dyn KeySource,
    key_path: &Path,
    allowed: impl Fn(
        &tough::schema::decoded::Decoded<tough::schema::decoded::Hex>,
    ) -> Result<(), String>,
) -> Result<String, GovernanceError> {
    let sign = source.as_sign().await.map_err(|e| GovernanceError::Key {
        path: key_path.to_path_buf(),
        message: e.to_string(),
        hint: "pass your governance key (an ed25519 PEM file)".into(),
    })?;
    let key = sign.tuf_key();
    let keyid = key.key_id().map_err(|e| GovernanceError::Key {
        path: key_path.to_path_buf(),
        message: e.to_string(),
        hint: String::new(),
    })?;
    let key_id = hex::encode(keyid.clone().into_vec());
    allowed(&keyid).map_err(|why| GovernanceError::Key {
        path: key_path.to_path_buf(),
        message: format!("key {key_id} {why}"),
        hint: "sign with your governance key; a key joins the record through rotate-root".into(),
    })?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let data = canonical(&signed.signed);
    let sig = sign
        .sign(&data, &rng)
        .await
        .map_err(|e| GovernanceError::Key {
            path: key_path.to_path_buf(),
            message: format!("signing failed: {e}"),
            hint: String::new(),
        })?;
    signed.signatures.retain(|s| s.keyid != keyid);
    signed.signatures.push(Signature {
        keyid,
        sig: sig.into(),
    });
    Ok(key_id)
}

/// What a merge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Merged {
    /// Key ids whose signatures were added.
    pub added: Vec<String>,
    /// Signatures left out, with why.
    pub dropped: Vec<Checked>,
}

/// Merge the signatures of `other` (a voter's copy, read from `path`) into `into`: both must
/// sign the same content; a signature is taken only if some key of `roots` (for its role)
/// verifies it and `into` has none of that key yet.
pub fn merge<T: Role>(
    into: &mut Signed<T>,
    other: Signed<T>,
    path: &Path,
    roots: &[&Root],
) -> Result<Merged, GovernanceError> {
    let data = canonical(&into.signed);
    if canonical(&other.signed) != data {
        return Err(GovernanceError::Staged {
            path: path.to_path_buf(),
            message: format!(
                "signs other {} content than the staged one (its version {}, staged {})",
                T::TYPE,
                other.signed.version(),
                into.signed.version()
            ),
            hint: "merge copies of the same staged file; after an elect or revoke, voters sign the new one".into(),
        });
    }
    let mut merged = Merged::default();
    for s in other.signatures {
        let key_id = hex::encode(s.keyid.clone().into_vec());
        if into.signatures.iter().any(|o| o.keyid == s.keyid) {
            continue;
        }
        let verifies = roots.iter().any(|r| {
            r.roles
                .get(&T::TYPE)
                .is_some_and(|k| k.keyids.contains(&s.keyid))
                && r.keys
                    .get(&s.keyid)
                    .is_some_and(|k| keys::verify(k, &data, &s.sig))
        });
        if verifies {
            merged.added.push(key_id);
            into.signatures.push(s);
        } else {
            merged.dropped.push(Checked {
                key_id,
                not_counted: Some(format!("not a valid signature of a {} key", T::TYPE)),
            });
        }
    }
    Ok(merged)
}
