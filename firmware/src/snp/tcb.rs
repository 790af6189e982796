//! A TCB version: the security version numbers (SPLs) of the firmware components an SEV-SNP
//! report names (FMC on Turin, PSP bootloader, PSP OS "TEE", SNP firmware, microcode).
//! Compared component by component, never as one number: a TCB is at least another only if
//! every component is.

use serde::{Deserialize, Serialize};
use sev::firmware::host::TcbVersion;

/// The components of one TCB version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tcb {
    /// First mutable code (Turin and later; absent before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

impl Tcb {
    /// (name, value) of each component, FMC first where there is one; the names are those of
    /// `catalog.yaml` and JSON output.
    pub fn components(&self) -> Vec<(&'static str, u8)> {
        let mut out = Vec::with_capacity(5);
        if let Some(fmc) = self.fmc {
            out.push(("fmc", fmc));
        }
        out.extend([
            ("bootloader", self.bootloader),
            ("tee", self.tee),
            ("snp", self.snp),
            ("microcode", self.microcode),
        ]);
        out
    }

    /// Each component of `self` below the one of `minimum`, in words (empty: none is).
    pub fn below(&self, minimum: &Tcb) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(min) = minimum.fmc {
            match self.fmc {
                Some(v) if v < min => out.push(format!("fmc {v} < {min}")),
                Some(_) => {}
                None => out.push(format!("fmc absent (minimum {min})")),
            }
        }
        for ((name, v), (_, min)) in self
            .components()
            .into_iter()
            .filter(|(n, _)| *n != "fmc")
            .zip(
                minimum
                    .components()
                    .into_iter()
                    .filter(|(n, _)| *n != "fmc"),
            )
        {
            if v < min {
                out.push(format!("{name} {v} < {min}"));
            }
        }
        out
    }
}

impl From<TcbVersion> for Tcb {
    fn from(t: TcbVersion) -> Tcb {
        Tcb {
            fmc: t.fmc,
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
        }
    }
}

impl std::fmt::Display for Tcb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<String> = self
            .components()
            .into_iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        f.write_str(&words.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compared_per_component() {
        let min = Tcb {
            fmc: None,
            bootloader: 4,
            tee: 0,
            snp: 21,
            microcode: 211,
        };
        // Higher microcode does not make up for a lower SNP version.
        let seen = Tcb {
            snp: 20,
            microcode: 255,
            ..min
        };
        assert_eq!(seen.below(&min), ["snp 20 < 21"]);
        assert!(min.below(&min).is_empty());
        let turin_min = Tcb {
            fmc: Some(1),
            ..min
        };
        assert_eq!(min.below(&turin_min), ["fmc absent (minimum 1)"]);
        assert_eq!(
            turin_min.to_string(),
            "fmc 1, bootloader 4, tee 0, snp 21, microcode 211"
        );
    }
}
