//! The certification catalog (`firmware/certification.yaml`, built in): the node
//! generations SetupOS installs on, what each requires of CPU, memory, SEV-SNP, TPM, NVMe
//! and NICs, and the TPM manufacturers' EK CAs (`firmware/tpm-ek-ca/`). `plinth check`
//! validates it; `plinth-setup certify` judges a machine against it.

use crate::ek::{Anchors, CaCert};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The catalog's text, as built in.
pub const BUILTIN_YAML: &str = include_str!("../certification.yaml");
/// The `format_version` this plinth reads.
pub const FORMAT_VERSION: u32 = 1;

/// The manufacturers' EK CA certificates the catalog may name (firmware/tpm-ek-ca/).
pub const EK_CA_FILES: &[(&str, &[u8])] = &[
    (
        "gs_tpm_rt.pem",
        include_bytes!("../tpm-ek-ca/gs_tpm_rt.pem"),
    ),
    (
        "ifx_ecc_034.pem",
        include_bytes!("../tpm-ek-ca/ifx_ecc_034.pem"),
    ),
    (
        "ifx_ecc_042.pem",
        include_bytes!("../tpm-ek-ca/ifx_ecc_042.pem"),
    ),
    (
        "ifx_rsa_034.pem",
        include_bytes!("../tpm-ek-ca/ifx_rsa_034.pem"),
    ),
    (
        "ifx_rsa_042.pem",
        include_bytes!("../tpm-ek-ca/ifx_rsa_042.pem"),
    ),
    (
        "inf_ecc_010i.pem",
        include_bytes!("../tpm-ek-ca/inf_ecc_010i.pem"),
    ),
    (
        "inf_ecc_010rt.pem",
        include_bytes!("../tpm-ek-ca/inf_ecc_010rt.pem"),
    ),
    (
        "inf_ecc_011.pem",
        include_bytes!("../tpm-ek-ca/inf_ecc_011.pem"),
    ),
    (
        "inf_rsa_010i.pem",
        include_bytes!("../tpm-ek-ca/inf_rsa_010i.pem"),
    ),
    (
        "inf_rsa_010rt.pem",
        include_bytes!("../tpm-ek-ca/inf_rsa_010rt.pem"),
    ),
    (
        "inf_rsa_011.pem",
        include_bytes!("../tpm-ek-ca/inf_rsa_011.pem"),
    ),
    (
        "inf_rsa_022.pem",
        include_bytes!("../tpm-ek-ca/inf_rsa_022.pem"),
    ),
    (
        "nuvo_0100.pem",
        include_bytes!("../tpm-ek-ca/nuvo_0100.pem"),
    ),
    (
        "nuvo_1110.pem",
        include_bytes!("../tpm-ek-ca/nuvo_1110.pem"),
    ),
    (
        "nuvo_1111.pem",
        include_bytes!("../tpm-ek-ca/nuvo_1111.pem"),
    ),
    (
        "nuvo_2110.pem",
        include_bytes!("../tpm-ek-ca/nuvo_2110.pem"),
    ),
    (
        "nuvo_2111.pem",
        include_bytes!("../tpm-ek-ca/nuvo_2111.pem"),
    ),
    (
        "stm_rsa_01i.pem",
        include_bytes!("../tpm-ek-ca/stm_rsa_01i.pem"),
    ),
    (
        "stm_rsa_02i.pem",
        include_bytes!("../tpm-ek-ca/stm_rsa_02i.pem"),
    ),
    (
        "stm_rsa_03i.pem",
        include_bytes!("../tpm-ek-ca/stm_rsa_03i.pem"),
    ),
    (
        "stm_rsa_04i.pem",
        include_bytes!("../tpm-ek-ca/stm_rsa_04i.pem"),
    ),
    (
        "stm_rsa_05i.pem",
        include_bytes!("../tpm-ek-ca/stm_rsa_05i.pem"),
    ),
    (
        "stm_rsa_06i.pem",
        include_bytes!("../tpm-ek-ca/stm_rsa_06i.pem"),
    ),
    (
        "stm_rsa_07i.pem",
        include_bytes!("../tpm-ek-ca/stm_rsa_07i.pem"),
    ),
    (
        "stm_rsa_rt.pem",
        include_bytes!("../tpm-ek-ca/stm_rsa_rt.pem"),
    ),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certification {
    pub format_version: u32,
    pub ek_authorities: Vec<EkAuthority>,
    pub generations: Vec<NodeGeneration>,
}

/// One TPM manufacturer's CAs: roots end a chain, intermediates may stand between.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EkAuthority {
    pub name: String,
    pub roots: Vec<String>,
    pub intermediates: Vec<String>,
}

/// One certified node generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGeneration {
    pub name: String,
    pub description: String,
    /// Only a SetupOS built with the `test` profile certifies it.
    #[serde(default)]
    pub test_only: bool,
    pub cpu: CpuRule,
    pub memory: MemoryRule,
    /// `None` only for a test generation (no SEV under TCG).
    pub sev_snp: Option<SevSnpRule>,
    pub tpm: TpmRule,
    pub nvme: NvmeRule,
    pub nic: NicRule,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuRule {
    /// `AuthenticAMD`.
    pub vendor: String,
    pub family: u8,
    /// Model ranges, each `[first, last]` inclusive.
    pub models: Vec<[u8; 2]>,
    pub sockets: u32,
    pub min_threads: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRule {
    pub min_gib: u64,
    /// How far a NUMA node's memory may be from the nodes' mean, in percent, before it warns.
    pub max_node_deviation_percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SevSnpRule {
    /// The lowest SNP firmware (API) version, `major.minor`.
    pub min_firmware: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmRule {
    /// The EK authorities (by name) one of which must have issued the EK certificate.
    pub ek_cas: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmeRule {
    pub min_count: u32,
    /// The least size of each drive, in decimal GB (10^9 bytes).
    pub min_size_gb: u64,
    /// Known-good models (a model outside the list warns); empty: any.
    pub models: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicRule {
    pub min_speed_mbps: u32,
}

impl SevSnpRule {
    /// `min_firmware` as (major, minor).
    pub fn min_version(&self) -> Option<(u8, u8)> {
        parse_version(&self.min_firmware)
    }
}

/// `1.55` as (1, 55).
pub fn parse_version(text: &str) -> Option<(u8, u8)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

impl Certification {
    /// The built-in catalog (checked by this module's tests).
    pub fn builtin() -> &'static Certification {
        static BUILTIN: OnceLock<Certification> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            Certification::parse(BUILTIN_YAML, "firmware/certification.yaml")
                .expect("the built-in certification catalog is valid (tested)")
        })
    }

    /// Parse and check a catalog; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Certification, String> {
        let c: Certification = serde_yaml::from_str(text)
            .map_err(|e| format!("{origin}: not a certification catalog: {e}"))?;
        if c.format_version != FORMAT_VERSION {
            return Err(format!(
                "{origin}: format_version {}, this plinth reads {FORMAT_VERSION}",
                c.format_version
            ));
        }
        for (i, a) in c.ek_authorities.iter().enumerate() {
            if c.ek_authorities[..i].iter().any(|o| o.name == a.name) {
                return Err(format!("{origin}: ek authority {} is listed twice", a.name));
            }
            if a.roots.is_empty() {
                return Err(format!("{origin}: ek authority {}: no roots", a.name));
            }
            for file in a.roots.iter().chain(&a.intermediates) {
                let bytes = ek_ca_file(file).ok_or_else(|| {
                    format!(
                        "{origin}: ek authority {}: no firmware/tpm-ek-ca/{file}",
                        a.name
                    )
                })?;
                CaCert::parse(bytes, file).map_err(|e| format!("{origin}: {e}"))?;
            }
        }
        for (i, g) in c.generations.iter().enumerate() {
            let name = &g.name;
            let bad = |what: String| Err(format!("{origin}: generation {name}: {what}"));
            if c.generations[..i].iter().any(|o| &o.name == name) {
                return bad("listed twice".into());
            }
            let plain = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            };
            if !plain(name) {
                return bad("a name is lowercase letters, digits and `-`".into());
            }
            if g.cpu.models.is_empty() || g.cpu.models.iter().any(|[a, b]| a > b) {
                return bad("cpu.models needs ranges [first, last] with first <= last".into());
            }
            if g.cpu.sockets == 0 || g.cpu.min_threads == 0 {
                return bad("cpu.sockets and cpu.min_threads are at least 1".into());
            }
            if g.memory.min_gib == 0 {
                return bad("memory.min_gib is at least 1".into());
            }
            match &g.sev_snp {
                None if !g.test_only => {
                    return bad("sev_snp may be null only in a test_only generation".into())
                }
                Some(rule) if rule.min_version().is_none() => {
                    return bad(format!(
                        "sev_snp.min_firmware `{}` is not `major.minor`",
                        rule.min_firmware
                    ))
                }
                _ => {}
            }
            if g.tpm.ek_cas.is_empty() && !g.test_only {
                return bad("tpm.ek_cas names no authority".into());
            }
            for ca in &g.tpm.ek_cas {
                if !c.ek_authorities.iter().any(|a| &a.name == ca) {
                    return bad(format!("tpm.ek_cas names `{ca}`, which is no ek authority"));
                }
            }
            if g.nvme.min_count == 0 || g.nvme.min_size_gb == 0 {
                return bad("nvme.min_count and nvme.min_size_gb are at least 1".into());
            }
        }
        Ok(c)
    }

    /// The generation named `name`.
    pub fn get(&self, name: &str) -> Option<&NodeGeneration> {
        self.generations.iter().find(|g| g.name == name)
    }

    /// The names of the generations, test ones only when `with_test`.
    pub fn names(&self, with_test: bool) -> Vec<&str> {
        self.generations
            .iter()
            .filter(|g| with_test || !g.test_only)
            .map(|g| g.name.as_str())
            .collect()
    }

    /// The CAs a generation's EK certificate may chain to.
    pub fn anchors(&self, generation: &NodeGeneration) -> Anchors {
        let mut anchors = Anchors::default();
        let load = |file: &String| {
            let bytes = ek_ca_file(file).expect("checked by parse");
            CaCert::parse(bytes, file).expect("checked by parse")
        };
        for a in self
            .ek_authorities
            .iter()
            .filter(|a| generation.tpm.ek_cas.contains(&a.name))
        {
            anchors.roots.extend(a.roots.iter().map(load));
            anchors
                .intermediates
                .extend(a.intermediates.iter().map(load));
        }
        anchors
    }
}

/// A built-in EK CA file by name.
pub fn ek_ca_file(name: &str) -> Option<&'static [u8]> {
    EK_CA_FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_valid() {
        let c = Certification::parse(BUILTIN_YAML, "certification.yaml").unwrap();
        assert_eq!(c.names(false), ["gen2-milan", "gen2-genoa"]);
        assert_eq!(c.names(true).last(), Some(&"qemu-test"));
        let genoa = c.get("gen2-genoa").unwrap();
        assert_eq!(genoa.sev_snp.as_ref().unwrap().min_version(), Some((1, 55)));
        let anchors = c.anchors(genoa);
        assert_eq!(anchors.roots.len(), 8);
        // Every file in firmware/tpm-ek-ca is used, and every authority's files parse.
        for (file, _) in EK_CA_FILES {
            assert!(
                c.ek_authorities
                    .iter()
                    .any(|a| a.roots.contains(&file.to_string())
                        || a.intermediates.contains(&file.to_string())),
                "{file} is not listed"
            );
        }
        // The CPU generations agree with the firmware catalog's (attestation's) ones.
        let firmware = crate::catalog::Catalog::builtin();
        for g in c.generations.iter().filter(|g| !g.test_only) {
            for &[first, last] in &g.cpu.models {
                for model in [first, last] {
                    assert!(
                        firmware.generation_of(g.cpu.family, model).is_some(),
                        "{}: {model:#x} is no SEV-SNP generation",
                        g.name
                    );
                }
            }
        }
    }

    #[test]
    fn refusals() {
        let cases = [
            (
                "sev_snp: {min_firmware: \"1.55\"}\n    tpm",
                "sev_snp: null\n    tpm",
                "only in a test_only",
            ),
            (
                "min_firmware: \"1.55\"",
                "min_firmware: \"new\"",
                "not `major.minor`",
            ),
            (
                "ek_cas: [infineon, nuvoton, stmicro]",
                "ek_cas: [acme]",
                "`acme`, which is no ek authority",
            ),
            (
                "roots: [gs_tpm_rt.pem]",
                "roots: [missing.pem]",
                "no firmware/tpm-ek-ca/missing.pem",
            ),
            ("format_version: 1", "format_version: 2", "format_version 2"),
            ("name: gen2-genoa", "name: gen2-milan", "listed twice"),
            (
                "min_gib: 512,",
                "min_gib: 512, extra: 1,",
                "not a certification catalog",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(BUILTIN_YAML.contains(from), "{from}");
            let err =
                Certification::parse(&BUILTIN_YAML.replacen(from, to, 1), "c.yaml").unwrap_err();
            assert!(err.contains(expected), "{to}: {err}");
        }
    }
}
