//! The AMD EPYC generations SEV-SNP attestation knows (Milan, Genoa, Turin): how
//! `--generation`, the firmware catalog, AMD's key distribution service and AMD's
//! certificates spell each (the productName extension `Milan-B0`; the common names
//! `ARK-Milan`, `SEV-Milan` of the ASK, `SEV-VLEK-Milan` of the ASVK), the layout of its
//! TCB, and its AMD root (ARK) and signing key (ASK) certificates as the `sev` crate builds
//! them in.

use serde::{Deserialize, Serialize};
use sev::certs::snp::{builtin, Certificate};

/// An EPYC generation with SEV-SNP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    Milan,
    Genoa,
    Turin,
}

impl Generation {
    pub const ALL: [Generation; 3] = [Generation::Milan, Generation::Genoa, Generation::Turin];

    /// The lower-case name (`milan`), as in `--generation` and the catalog.
    pub fn name(self) -> &'static str {
        match self {
            Generation::Milan => "milan",
            Generation::Genoa => "genoa",
            Generation::Turin => "turin",
        }
    }

    /// The product name in AMD KDS URLs and in certificate subjects (`Milan`).
    pub fn product(self) -> &'static str {
        match self {
            Generation::Milan => "Milan",
            Generation::Genoa => "Genoa",
            Generation::Turin => "Turin",
        }
    }

    /// Whether its TCB has an FMC (first mutable code) component: Turin and later.
    pub fn has_fmc(self) -> bool {
        self == Generation::Turin
    }

    /// The generation a VCEK's or VLEK's productName extension names (`Milan-B0`, `Genoa`).
    pub fn from_product_name(name: &str) -> Option<Generation> {
        let family = name.split('-').next().unwrap_or_default();
        Generation::ALL
            .into_iter()
            .find(|g| g.product().eq_ignore_ascii_case(family))
    }

    /// The generation a certificate's common name names, as AMD names the certificates of a
    /// generation's chains: `ARK-Milan` (the ARK, subject and issuer), `SEV-Milan` (the
    /// ASK), `SEV-VLEK-Milan` (the ASVK). `SEV-VCEK` and `SEV-VLEK` (the keys themselves)
    /// name none.
    pub fn from_cert_name(common_name: &str) -> Option<Generation> {
        common_name.split('-').find_map(|part| {
            Generation::ALL
                .into_iter()
                .find(|g| g.product().eq_ignore_ascii_case(part))
        })
    }

    /// AMD's root key certificate for this generation, built into the `sev` crate.
    pub fn builtin_ark(self) -> Certificate {
        let pem = match self {
            Generation::Milan => builtin::milan::ARK,
            Generation::Genoa => builtin::genoa::ARK,
            Generation::Turin => builtin::turin::ARK,
        };
        Certificate::from_pem(pem).expect("the sev crate's built-in ARKs parse (tested)")
    }

    /// AMD's signing key certificate (ASK, which signs VCEKs) for this generation.
    pub fn builtin_ask(self) -> Certificate {
        let pem = match self {
            Generation::Milan => builtin::milan::ASK,
            Generation::Genoa => builtin::genoa::ASK,
            Generation::Turin => builtin::turin::ASK,
        };
        Certificate::from_pem(pem).expect("the sev crate's built-in ASKs parse (tested)")
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Generation {
    type Err = String;

    fn from_str(s: &str) -> Result<Generation, String> {
        Generation::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("`{s}` is not an SEV-SNP generation: expected milan, genoa or turin")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev::certs::snp::Verifiable;

    #[test]
    fn builtin_roots_parse_and_sign_their_asks() {
        for g in Generation::ALL {
            let (ark, ask) = (g.builtin_ark(), g.builtin_ask());
            (&ark, &ark).verify().unwrap();
            (&ark, &ask).verify().unwrap();
        }
    }

    #[test]
    fn names() {
        assert_eq!("Genoa".parse::<Generation>().unwrap(), Generation::Genoa);
        assert!("rome"
            .parse::<Generation>()
            .unwrap_err()
            .contains("milan, genoa or turin"));
        assert_eq!(
            Generation::from_product_name("Milan-B0"),
            Some(Generation::Milan)
        );
        assert_eq!(
            Generation::from_product_name("Turin"),
            Some(Generation::Turin)
        );
        assert_eq!(Generation::from_product_name("Venice"), None);
        assert_eq!(
            Generation::from_cert_name("SEV-VLEK-Genoa"),
            Some(Generation::Genoa)
        );
        assert_eq!(Generation::from_cert_name("SEV-VLEK"), None);
        assert_eq!(Generation::from_cert_name("SEV-VCEK"), None);
        assert_eq!(Generation::from_cert_name(""), None);
    }

    /// AMD's own certificates name their generation as `from_cert_name` reads it.
    #[test]
    fn builtin_certificates_name_their_generation() {
        use crate::snp::certs::Cert;
        for g in Generation::ALL {
            let ark = Cert::new(g.builtin_ark(), "ark").unwrap();
            let ask = Cert::new(g.builtin_ask(), "ask").unwrap();
            assert_eq!(ark.subject_cn(), format!("ARK-{}", g.product()));
            assert_eq!(ask.subject_cn(), format!("SEV-{}", g.product()));
            for cn in [
                ark.subject_cn(),
                ark.issuer_cn(),
                ask.subject_cn(),
                ask.issuer_cn(),
            ] {
                assert_eq!(Generation::from_cert_name(&cn), Some(g), "{cn}");
            }
        }
    }
}
