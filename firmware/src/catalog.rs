//! The firmware catalog (`firmware/catalog.yaml`, built in): the AMD EPYC generations GuestOS
//! is certified on, the CPUID family and models of each, and the lowest TCB each may report.

use crate::snp::generation::Generation;
use crate::snp::tcb::Tcb;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The catalog's text, as built in.
pub const BUILTIN_YAML: &str = include_str!("../catalog.yaml");
/// The `format_version` this plinth reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub format_version: u32,
    pub generations: Vec<CatalogGeneration>,
}

/// One certified generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogGeneration {
    pub name: Generation,
    /// CPUID family (extended family plus base family).
    pub cpu_family: u8,
    /// CPUID model ranges, each `[first, last]` inclusive.
    pub cpu_models: Vec<[u8; 2]>,
    /// The lowest REPORTED_TCB accepted, per component.
    pub minimum_tcb: Tcb,
}

impl Catalog {
    /// The built-in catalog (checked by this module's tests).
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: OnceLock<Catalog> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            Catalog::parse(BUILTIN_YAML, "firmware/catalog.yaml")
                .expect("the built-in catalog is valid (tested)")
        })
    }

    /// Parse and check a catalog; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog, String> {
        let c: Catalog = serde_yaml::from_str(text)
            .map_err(|e| format!("{origin}: not a firmware catalog: {e}"))?;
        if c.format_version != FORMAT_VERSION {
            return Err(format!(
                "{origin}: format_version {}, this plinth reads {FORMAT_VERSION}",
                c.format_version
            ));
        }
        for (i, g) in c.generations.iter().enumerate() {
            let name = g.name;
            if c.generations[..i].iter().any(|o| o.name == name) {
                return Err(format!("{origin}: generation {name} is listed twice"));
            }
            if g.cpu_models.is_empty() {
                return Err(format!("{origin}: {name}: cpu_models is empty"));
            }
            for &[first, last] in &g.cpu_models {
                if first > last {
                    return Err(format!(
                        "{origin}: {name}: model range [{first:#04x}, {last:#04x}] runs backwards"
                    ));
                }
                for o in &c.generations[..i] {
                    let overlaps = o.cpu_family == g.cpu_family
                        && o.cpu_models.iter().any(|&[a, b]| a <= last && first <= b);
                    if overlaps {
                        return Err(format!(
                            "{origin}: {name}: family {:#04x} models {first:#04x}-{last:#04x} overlap {}'s",
                            g.cpu_family, o.name
                        ));
                    }
                }
            }
            if name.has_fmc() != g.minimum_tcb.fmc.is_some() {
                return Err(format!(
                    "{origin}: {name}: minimum_tcb {} an fmc component, which {name}'s TCB {}",
                    if g.minimum_tcb.fmc.is_some() {
                        "has"
                    } else {
                        "lacks"
                    },
                    if name.has_fmc() {
                        "has"
                    } else {
                        "does not have"
                    }
                ));
            }
        }
        Ok(c)
    }

    /// The entry of `generation`, if it is certified.
    pub fn get(&self, generation: Generation) -> Option<&CatalogGeneration> {
        self.generations.iter().find(|g| g.name == generation)
    }

    /// The certified generation of a CPU, by CPUID family and model.
    pub fn generation_of(&self, family: u8, model: u8) -> Option<Generation> {
        self.generations
            .iter()
            .find(|g| {
                g.cpu_family == family
                    && g.cpu_models.iter().any(|&[a, b]| (a..=b).contains(&model))
            })
            .map(|g| g.name)
    }

    /// The names of the certified generations, for messages.
    pub fn names(&self) -> String {
        let names: Vec<&str> = self.generations.iter().map(|g| g.name.name()).collect();
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_is_valid_and_complete() {
        let c = Catalog::parse(BUILTIN_YAML, "catalog.yaml").unwrap();
        for g in Generation::ALL {
            assert!(c.get(g).is_some(), "{g} is missing");
        }
        assert_eq!(c.generation_of(0x19, 0x01), Some(Generation::Milan));
        assert_eq!(c.generation_of(0x19, 0x11), Some(Generation::Genoa));
        assert_eq!(c.generation_of(0x19, 0xa0), Some(Generation::Genoa));
        assert_eq!(c.generation_of(0x1a, 0x02), Some(Generation::Turin));
        assert_eq!(c.generation_of(0x1a, 0x50), None, "Venice is not certified");
        assert_eq!(c.generation_of(0x17, 0x31), None, "Rome has no SEV-SNP");
        // The CPUs the sev crate knows for each generation are the catalog's.
        for family in [0x19u8, 0x1a] {
            for model in 0..=u8::MAX {
                let ours = c.generation_of(family, model).map(|g| g.product());
                let theirs = match sev::Generation::identify_cpu(family, model) {
                    Ok(sev::Generation::Milan) => Some("Milan"),
                    Ok(sev::Generation::Genoa) => Some("Genoa"),
                    Ok(sev::Generation::Turin) => Some("Turin"),
                    _ => None,
                };
                assert_eq!(ours, theirs, "{family:#x} {model:#x}");
            }
        }
        assert!(c.get(Generation::Turin).unwrap().minimum_tcb.fmc.is_some());
        assert_eq!(Catalog::builtin(), &c);
    }

    #[test]
    fn refusals() {
        let bad = BUILTIN_YAML.replace("[[0x10, 0x1f]", "[[0x0f, 0x1f]");
        assert!(Catalog::parse(&bad, "c.yaml")
            .unwrap_err()
            .contains("overlap milan's"));
        let bad = BUILTIN_YAML.replace("{ fmc: 0, ", "{ ");
        assert!(Catalog::parse(&bad, "c.yaml")
            .unwrap_err()
            .contains("turin: minimum_tcb lacks"));
        let bad = BUILTIN_YAML.replace("format_version: 1", "format_version: 2");
        assert!(Catalog::parse(&bad, "c.yaml")
            .unwrap_err()
            .contains("format_version 2"));
        let bad = BUILTIN_YAML.replace("microcode: 211", "microcode: 211, extra: 1");
        assert!(Catalog::parse(&bad, "c.yaml")
            .unwrap_err()
            .starts_with("c.yaml: not a firmware catalog"));
    }
}
