//! The certificates a verification uses, and where they come from: a directory of files
//! named after their role (`ark`, `ask`, `asvk`, `vcek`, `vlek`, each `.pem` or `.der`, plus
//! AMD KDS's `cert_chain.pem` bundle), a single file (`--vcek`), or the certificate table of
//! an extended report. Nothing here is trusted yet: [`super::verify`] checks every one.

use super::cert_table::{CertKind, TableEntry};
use sev::certs::snp::Certificate;
use sha2::{Digest, Sha256};
use std::path::Path;

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// AMD root key (self-signed; must be the built-in one).
    Ark,
    /// AMD signing key: signs VCEKs.
    Ask,
    /// AMD signing key for VLEKs.
    Asvk,
    /// Versioned chip endorsement key: per chip and TCB.
    Vcek,
    /// Versioned loaded endorsement key: per cloud provider and TCB.
    Vlek,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Ark, Role::Ask, Role::Asvk, Role::Vcek, Role::Vlek];

    /// The file stem in a certificate directory (`vcek` for `vcek.pem`/`vcek.der`).
    pub fn stem(self) -> &'static str {
        match self {
            Role::Ark => "ark",
            Role::Ask => "ask",
            Role::Asvk => "asvk",
            Role::Vcek => "vcek",
            Role::Vlek => "vlek",
        }
    }

    /// The name in messages (`VCEK`).
    pub fn what(self) -> &'static str {
        match self {
            Role::Ark => "ARK",
            Role::Ask => "ASK",
            Role::Asvk => "ASVK",
            Role::Vcek => "VCEK",
            Role::Vlek => "VLEK",
        }
    }
}

/// A certificate and where it came from.
#[derive(Debug, Clone)]
pub struct Cert {
    pub cert: Certificate,
    /// Its DER encoding.
    pub der: Vec<u8>,
    /// The file (or table entry, or "built-in ...") it came from, for messages.
    pub origin: String,
}

impl Cert {
    /// A certificate that needs no origin file (a built-in one).
    pub fn new(cert: Certificate, origin: impl Into<String>) -> Result<Cert, CertError> {
        let origin = origin.into();
        let der = cert.to_der().map_err(|e| CertError::Parse {
            origin: origin.clone(),
            message: e.to_string(),
        })?;
        Ok(Cert { cert, der, origin })
    }

    /// sha256 of the DER encoding, hex.
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    /// The subject's common name (`SEV-VCEK`), or "" when it has none.
    pub fn subject_cn(&self) -> String {
        let x509: x509_cert::Certificate = self.cert.clone().into();
        common_name(&x509.tbs_certificate.subject)
    }

    /// The issuer's common name (`SEV-Milan` for a Milan VCEK), or "" when it has none.
    pub fn issuer_cn(&self) -> String {
        let x509: x509_cert::Certificate = self.cert.clone().into();
        common_name(&x509.tbs_certificate.issuer)
    }
}

/// The common name of `name` (UTF8String or PrintableString), or "".
fn common_name(name: &x509_cert::name::Name) -> String {
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid == COMMON_NAME {
                return atv
                    .value
                    .decode_as::<x509_cert::der::asn1::Utf8StringRef<'_>>()
                    .map(|s| s.to_string())
                    .or_else(|_| {
                        atv.value
                            .decode_as::<x509_cert::der::asn1::PrintableStringRef<'_>>()
                            .map(|s| s.to_string())
                    })
                    .unwrap_or_default();
            }
        }
    }
    String::new()
}

const COMMON_NAME: x509_cert::der::oid::ObjectIdentifier =
    x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");

/// The certificates at hand, at most one per role.
#[derive(Debug, Clone, Default)]
pub struct CertSet {
    pub ark: Option<Cert>,
    pub ask: Option<Cert>,
    pub asvk: Option<Cert>,
    pub vcek: Option<Cert>,
    pub vlek: Option<Cert>,
}

/// Certificates that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: cannot read: {source}\n  hint: {hint}")]
    Io {
        path: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error(
        "{origin}: not an X.509 certificate in PEM (-----BEGIN CERTIFICATE-----) or DER: {message}"
    )]
    Parse { origin: String, message: String },
    #[error("{dir}: holds both {first} and {second} for the {what}: keep one")]
    Ambiguous {
        dir: String,
        what: &'static str,
        first: String,
        second: String,
    },
    #[error("{dir}: no certificate: expected files named ark, ask, asvk, vcek or vlek (.pem or .der), or cert_chain.pem")]
    Empty { dir: String },
    #[error("{origin}: has {found} certificates, expected 2 (the ASK or ASVK, then the ARK, as AMD's KDS serves cert_chain)")]
    Bundle { origin: String, found: usize },
    #[error("{origin}: more than one {what}")]
    Duplicate { origin: String, what: &'static str },
}

impl CertSet {
    pub fn get(&self, role: Role) -> Option<&Cert> {
        match role {
            Role::Ark => self.ark.as_ref(),
            Role::Ask => self.ask.as_ref(),
            Role::Asvk => self.asvk.as_ref(),
            Role::Vcek => self.vcek.as_ref(),
            Role::Vlek => self.vlek.as_ref(),
        }
    }

    fn slot(&mut self, role: Role) -> &mut Option<Cert> {
        match role {
            Role::Ark => &mut self.ark,
            Role::Ask => &mut self.ask,
            Role::Asvk => &mut self.asvk,
            Role::Vcek => &mut self.vcek,
            Role::Vlek => &mut self.vlek,
        }
    }

    /// Put `cert` in `role`, replacing what was there.
    pub fn set(&mut self, role: Role, cert: Cert) {
        *self.slot(role) = Some(cert);
    }

    /// Take every certificate of `other` whose role is still empty here.
    pub fn fill_from(&mut self, other: CertSet) {
        for role in Role::ALL {
            if self.get(role).is_none() {
                *self.slot(role) = other.get(role).cloned();
            }
        }
    }

    /// The certificates of a directory: `<role>.pem` or `<role>.der` for each role, and a KDS
    /// `cert_chain.pem` (or `cert_chain`) for the ASK or ASVK and the ARK not given alone.
    pub fn load_dir(dir: &Path) -> Result<CertSet, CertError> {
        let shown = dir.display().to_string();
        let hint = "--certs takes a directory such as the certs/ that plinth-guest attest writes";
        if !dir.is_dir() {
            return Err(CertError::Io {
                path: shown,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
                hint,
            });
        }
        let mut set = CertSet::default();
        for role in Role::ALL {
            let found: Vec<_> = ["pem", "der"]
                .iter()
                .map(|ext| dir.join(format!("{}.{ext}", role.stem())))
                .filter(|p| p.is_file())
                .collect();
            if let [first, second] = found.as_slice() {
                return Err(CertError::Ambiguous {
                    dir: shown,
                    what: role.what(),
                    first: first.display().to_string(),
                    second: second.display().to_string(),
                });
            }
            if let Some(path) = found.first() {
                set.set(role, read_cert(path)?);
            }
        }
        for name in ["cert_chain.pem", "cert_chain"] {
            let path = dir.join(name);
            if path.is_file() {
                set.fill_from(chain_set(&read_file(&path)?, &path.display().to_string())?);
                break;
            }
        }
        if Role::ALL.iter().all(|&r| set.get(r).is_none()) {
            return Err(CertError::Empty { dir: shown });
        }
        Ok(set)
    }

    /// The certificates of an extended report's certificate table. The ASK entry goes to
    /// `ask`; for a VLEK-signed report [`super::verify`] takes it as the ASVK when no `asvk`
    /// is given (hosts that sign with a VLEK put the ASVK there).
    pub fn from_table(entries: &[TableEntry], origin: &str) -> Result<CertSet, CertError> {
        let mut set = CertSet::default();
        for (i, e) in entries.iter().enumerate() {
            let role = match e.kind {
                CertKind::Ark => Role::Ark,
                CertKind::Ask => Role::Ask,
                CertKind::Vcek => Role::Vcek,
                CertKind::Vlek => Role::Vlek,
                CertKind::Crl | CertKind::Other(_) => continue,
            };
            if set.get(role).is_some() {
                return Err(CertError::Duplicate {
                    origin: origin.to_string(),
                    what: role.what(),
                });
            }
            let entry = format!("{origin} entry {} ({})", i + 1, role.what());
            set.set(role, parse_cert(&e.data, &entry)?);
        }
        Ok(set)
    }
}

/// A certificate from a file, PEM or DER.
pub fn read_cert(path: &Path) -> Result<Cert, CertError> {
    parse_cert(&read_file(path)?, &path.display().to_string())
}

fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Io {
        path: path.display().to_string(),
        source,
        hint: "check the path; certificates are PEM or DER files",
    })
}

/// A certificate from bytes: PEM if they start (after whitespace) with `-----BEGIN`, else DER.
pub fn parse_cert(bytes: &[u8], origin: &str) -> Result<Cert, CertError> {
    let bad = |message: String| CertError::Parse {
        origin: origin.to_string(),
        message,
    };
    let cert = if is_pem(bytes) {
        Certificate::from_pem(bytes).map_err(|e| bad(e.to_string()))?
    } else {
        Certificate::from_der(bytes).map_err(|e| bad(e.to_string()))?
    };
    let der = cert.to_der().map_err(|e| bad(e.to_string()))?;
    Ok(Cert {
        cert,
        der,
        origin: origin.to_string(),
    })
}

/// Every certificate of a PEM bundle, in order. (Split here, block by block: x509-cert
/// 0.2's `load_pem_chain` panics on empty input, which the fuzz target found.)
pub fn parse_pem_bundle(bytes: &[u8], origin: &str) -> Result<Vec<Cert>, CertError> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut certs = Vec::new();
    let mut rest = bytes;
    while let Some(start) = find(rest, BEGIN) {
        let block = &rest[start..];
        let Some(end) = find(block, END) else {
            return Err(CertError::Parse {
                origin: format!("{origin} certificate {}", certs.len() + 1),
                message: "no -----END CERTIFICATE----- line".into(),
            });
        };
        let pem = &block[..end + END.len()];
        certs.push(parse_cert(
            pem,
            &format!("{origin} certificate {}", certs.len() + 1),
        )?);
        rest = &block[end + END.len()..];
    }
    Ok(certs)
}

/// A KDS `cert_chain` bundle (ASK or ASVK, then ARK) as a set: the first certificate is the
/// ASVK if its subject names a VLEK signer (`SEV-VLEK-Milan`), else the ASK.
pub fn chain_set(bytes: &[u8], origin: &str) -> Result<CertSet, CertError> {
    let certs = parse_pem_bundle(bytes, origin)?;
    let [signer, ark]: [Cert; 2] = certs.try_into().map_err(|v: Vec<Cert>| CertError::Bundle {
        origin: origin.to_string(),
        found: v.len(),
    })?;
    let mut set = CertSet::default();
    let role = if signer.subject_cn().contains("VLEK") {
        Role::Asvk
    } else {
        Role::Ask
    };
    set.set(role, signer);
    set.set(Role::Ark, ark);
    Ok(set)
}

fn is_pem(bytes: &[u8]) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    bytes[start..].starts_with(b"-----BEGIN")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snp::cert_table;

    const VCEK_DER: &[u8] = include_bytes!("../../testdata/snp/vcek_milan.der");
    const CHAIN: &[u8] = include_bytes!("../../testdata/snp/cert_chain_milan");

    #[test]
    fn directory_files_and_kds_chain() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vcek.der"), VCEK_DER).unwrap();
        std::fs::write(dir.path().join("cert_chain.pem"), CHAIN).unwrap();
        let set = CertSet::load_dir(dir.path()).unwrap();
        assert_eq!(set.vcek.as_ref().unwrap().subject_cn(), "SEV-VCEK");
        assert_eq!(set.ask.as_ref().unwrap().subject_cn(), "SEV-Milan");
        assert_eq!(set.ark.as_ref().unwrap().subject_cn(), "ARK-Milan");
        assert_eq!(set.ask.as_ref().unwrap().issuer_cn(), "ARK-Milan");
        assert_eq!(set.vcek.as_ref().unwrap().issuer_cn(), "SEV-Milan");
        assert!(set.asvk.is_none() && set.vlek.is_none());

        std::fs::write(dir.path().join("vcek.pem"), b"x").unwrap();
        let err = CertSet::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("keep one"), "{err}");
        std::fs::remove_file(dir.path().join("vcek.der")).unwrap();
        let err = CertSet::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("vcek.pem: not an X.509 certificate"), "{err}");

        let empty = tempfile::tempdir().unwrap();
        let err = CertSet::load_dir(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let err = CertSet::load_dir(&empty.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn certificate_table() {
        let entries = vec![
            TableEntry {
                kind: CertKind::Vcek,
                data: VCEK_DER.to_vec(),
            },
            TableEntry {
                kind: CertKind::Crl,
                data: b"ignored".to_vec(),
            },
        ];
        let table = cert_table::encode(&entries);
        let set = CertSet::from_table(&cert_table::parse(&table).unwrap(), "certs.bin").unwrap();
        assert_eq!(set.vcek.unwrap().der, VCEK_DER);
        let twice = [entries[0].clone(), entries[0].clone()];
        assert!(CertSet::from_table(&twice, "t")
            .unwrap_err()
            .to_string()
            .contains("more than one VCEK"));
        let bad = [TableEntry {
            kind: CertKind::Ark,
            data: vec![0x30, 0x03, 1, 2, 3],
        }];
        let err = CertSet::from_table(&bad, "t").unwrap_err().to_string();
        assert!(err.starts_with("t entry 1 (ARK): not an X.509"), "{err}");
    }

    #[test]
    fn bundle_must_hold_two() {
        assert!(matches!(
            chain_set(b"", "c"),
            Err(CertError::Bundle { found: 0, .. })
        ));
        let err = chain_set(&CHAIN[..CHAIN.len() / 2], "c.pem").unwrap_err();
        assert!(
            err.to_string().starts_with("c.pem certificate 1: "),
            "{err}"
        );
        let one = parse_pem_bundle(CHAIN, "c").unwrap().remove(0);
        let pem = Certificate::from_der(&one.der).unwrap().to_pem().unwrap();
        assert!(matches!(
            chain_set(&pem, "c"),
            Err(CertError::Bundle { found: 1, .. })
        ));
    }
}
