//! The checks of an SEV-SNP attestation report against a release's expectations. The `sev`
//! crate checks signatures only; this goes further: the ARK pinned to our built-in copy, the
//! VCEK's (or VLEK's) TCB and chip extensions against the report, the report's signature over
//! its original bytes, and the launch policy: measurement, policy bits, minimum TCB from the
//! firmware catalog, nonce, VMPL.
//!
//! Every check runs, whatever another found, and each is judged on its own inputs (the
//! report's signature is checked with the VCEK's key even if the VCEK's own signature failed),
//! so one defect fails one check and the result names it with the values seen.
//!
//! The generation (whose ARK is pinned, whose TCB layout and catalog minimum apply) comes,
//! in order, from the report's CPUID (version 3 and later), `--generation`, and the VCEK's
//! or VLEK's productName extension: all of these that tell must agree, or it is an error
//! naming two that differ. Only when none tells (a version 2 report with a VEK without
//! productName, as AWS EC2's VLEKs may be) do the names of the chain given tell it: the
//! ARK's and the ASK's (for a VLEK, the ASVK's) subject and issuer (`ARK-Milan`,
//! `SEV-Milan`, `SEV-VLEK-Milan`), which again must agree. Otherwise it is an error listing
//! what was looked at. A chain of another generation than the one told is a failed `ark` or
//! `ask` check, not an error: the ASK (ASVK) must name the node's generation, if it names
//! one, and be signed by that generation's pinned ARK.
//!
//! CHIP_ID is zero when the host masks it (MASK_CHIP_ID in its SNP configuration). A VLEK
//! belongs to a cloud provider, not to a chip, so a VLEK-signed report with a masked chip id
//! (AWS EC2's) loses nothing. A VCEK-signed one is bound to its chip by the VCEK's
//! signature alone: the VCEK is the key of one chip, named by its hwID, so its signature
//! proves the chip as well as a chip id would; `vek_hwid` is then skipped, saying so, and
//! KDS cannot be asked for the VCEK (it is found by the chip id): it must be given.

use super::certs::{Cert, CertSet, Role};
use super::expected::SnpExpected;
use super::extensions::{self, VekExtensions, TCB_OIDS};
use super::generation::Generation;
use super::kds;
use super::report::{Report, ReportError, SigningKey, SIGNATURE_COMPONENT_LEN, SIGNED_LEN};
use super::report_data::{report_data, NonceError};
use super::tcb::Tcb;
use crate::catalog::Catalog;
use serde::Serialize;
use sev::certs::snp::{Certificate, Verifiable};
use std::collections::BTreeMap;

/// One check of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// The ARK is the pinned one of the generation and signs itself.
    Ark,
    /// The ARK signs the ASK (or, for a VLEK, the ASVK).
    Ask,
    /// The ASK (ASVK) signs the VCEK (VLEK).
    Vek,
    /// The VCEK's (VLEK's) TCB extensions are the report's REPORTED_TCB.
    VekTcb,
    /// The VCEK's hwID is the report's CHIP_ID (skipped for a VLEK, which has none, and for
    /// a masked, all-zero CHIP_ID).
    VekHwid,
    /// The VCEK (VLEK) signs the report.
    ReportSignature,
    /// The measurement is one of the release's launch digests.
    Measurement,
    /// Debug off, migration agent off, SMT as expected, ABI at least the expected one.
    Policy,
    /// REPORTED_TCB is at least the catalog's minimum in every component.
    TcbMinimum,
    /// REPORT_DATA is the caller's nonce.
    ReportData,
    /// The report was requested at the expected VMPL.
    Vmpl,
}

impl Check {
    pub const ALL: [Check; 11] = [
        Check::Ark,
        Check::Ask,
        Check::Vek,
        Check::VekTcb,
        Check::VekHwid,
        Check::ReportSignature,
        Check::Measurement,
        Check::Policy,
        Check::TcbMinimum,
        Check::ReportData,
        Check::Vmpl,
    ];

    /// The name in output (`vek_tcb`).
    pub fn name(self) -> &'static str {
        match self {
            Check::Ark => "ark",
            Check::Ask => "ask",
            Check::Vek => "vek",
            Check::VekTcb => "vek_tcb",
            Check::VekHwid => "vek_hwid",
            Check::ReportSignature => "report_signature",
            Check::Measurement => "measurement",
            Check::Policy => "policy",
            Check::TcbMinimum => "tcb_minimum",
            Check::ReportData => "report_data",
            Check::Vmpl => "vmpl",
        }
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    /// Not applicable, or nothing to check against (said why).
    Skipped,
}

/// One check's outcome, with the values it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    pub check: Check,
    pub status: Status,
    pub detail: String,
}

/// The outcome of a verification: every check, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub generation: Generation,
    /// How the generation was told (`the report's CPUID`, ...).
    pub generation_from: String,
    /// `VCEK` or `VLEK`.
    pub signed_by: &'static str,
    /// No check failed.
    pub passed: bool,
    pub checks: Vec<CheckResult>,
}

impl Verification {
    /// The checks that failed.
    pub fn failed(&self) -> Vec<Check> {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Failed)
            .map(|c| c.check)
            .collect()
    }

    /// The result of `check`.
    pub fn result(&self, check: Check) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.check == check)
    }

    /// The outcome for people: a heading, one line per check, a count.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "SEV-SNP report of a {} node (generation: {}), signed by a {}:",
            self.generation.product(),
            self.generation_from,
            self.signed_by
        )];
        for c in &self.checks {
            let word = match c.status {
                Status::Passed => "ok  ",
                Status::Failed => "FAIL",
                Status::Skipped => "skip",
            };
            out.push(format!("  {word} {:<16} {}", c.check.name(), c.detail));
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out.push(format!(
            "{} checks: {} passed, {} failed, {} skipped",
            self.checks.len(),
            count(Status::Passed),
            count(Status::Failed),
            count(Status::Skipped)
        ));
        out
    }
}

/// What is trusted: the pinned ARK of each generation, the ASK used when none is given, and
/// the firmware catalog.
#[derive(Debug, Clone)]
pub struct Trust<'a> {
    pub arks: BTreeMap<Generation, Certificate>,
    pub asks: BTreeMap<Generation, Certificate>,
    pub catalog: &'a Catalog,
}

impl Trust<'static> {
    /// The sev crate's built-in ARKs and ASKs and the built-in catalog.
    pub fn builtin() -> Trust<'static> {
        Trust::with_catalog(Catalog::builtin())
    }
}

impl<'a> Trust<'a> {
    /// The built-in ARKs and ASKs with another catalog.
    pub fn with_catalog(catalog: &'a Catalog) -> Trust<'a> {
        Trust {
            arks: Generation::ALL.map(|g| (g, g.builtin_ark())).into(),
            asks: Generation::ALL.map(|g| (g, g.builtin_ask())).into(),
            catalog,
        }
    }
}

/// What is checked.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub report: &'a Report,
    pub certs: &'a CertSet,
    pub expected: &'a SnpExpected,
    /// The caller's nonce; without one, freshness is not checked.
    pub nonce: Option<&'a [u8]>,
    /// The generation, when the caller knows it (`--generation`; needed for version 2
    /// reports whose VEK and chain do not name it).
    pub generation: Option<Generation>,
}

/// Inputs that do not allow a verification (bad input, but for [`VerifyError::UncertifiedCpu`]).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no {what} to check the report with\n  hint: {hint}")]
    NoVek {
        what: &'static str,
        hint: &'static str,
    },
    #[error("the report is signed by a VLEK, and no ASVK is given (the sev crate has none built in)\n  hint: put asvk.pem (AMD KDS: /vlek/v1/<Product>/cert_chain) in the --certs directory, or use --fetch")]
    NoAsvk,
    #[error("the report's CPU (family {family:#04x}, model {model:#04x}) is not a generation of the firmware catalog ({certified})")]
    UncertifiedCpu {
        family: u8,
        model: u8,
        certified: String,
    },
    #[error("{first_from} says {first}, but {second_from} says {second}\n  hint: the certificates must be those of the node's processor generation; check --generation")]
    GenerationConflict {
        first: Generation,
        first_from: String,
        second: Generation,
        second_from: String,
    },
    #[error("the processor generation cannot be told: {looked_at}\n  hint: pass --generation milan|genoa|turin, or the generation's chain (AMD KDS: /vlek/v1/<Product>/cert_chain for a VLEK, /vcek/v1/<Product>/cert_chain for a VCEK) in --certs")]
    UnknownGeneration {
        /// What was looked at, each saying why it did not tell.
        looked_at: String,
    },
    #[error("the report's CHIP_ID is zero (masked by the host's MASK_CHIP_ID), so AMD's KDS cannot be asked for its VCEK (KDS finds a VCEK by chip id)\n  hint: pass the VCEK with --vcek, --certs or --cert-table (the host's certificate table carries it)")]
    VcekNotFetchable,
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Nonce(#[from] NonceError),
}

impl VerifyError {
    /// Whether the inputs were at fault (exit 2), rather than the node (exit 1).
    pub fn is_bad_input(&self) -> bool {
        !matches!(self, VerifyError::UncertifiedCpu { .. })
    }
}

/// Which key signs the report, as the report says.
pub fn vek_role(report: &Report, certs: &CertSet) -> Role {
    match report.signing_key() {
        SigningKey::Vlek => Role::Vlek,
        SigningKey::Vcek => Role::Vcek,
        // Unsigned or reserved: the signature check fails; use whichever key there is.
        _ if certs.vcek.is_none() && certs.vlek.is_some() => Role::Vlek,
        _ => Role::Vcek,
    }
}

/// The certificate that signs the VEK of `role`, as given: the ASK for a VCEK; for a VLEK
/// the ASVK, or the ASK's entry of an extended report's table (where hosts put the ASVK).
pub fn signer_given(certs: &CertSet, role: Role) -> Option<(&Cert, &'static str)> {
    match role {
        Role::Vlek => certs
            .asvk
            .as_ref()
            .or(certs.ask.as_ref())
            .map(|c| (c, "ASVK")),
        _ => certs.ask.as_ref().map(|c| (c, "ASK")),
    }
}

/// The generation of the node and what told it (see the module's documentation): the
/// report's CPUID, `given`, the VEK's productName, all agreeing; else the names of the ARK
/// and the ASK (ASVK) given, all agreeing.
pub fn resolve_generation(
    report: &Report,
    certs: &CertSet,
    role: Role,
    given: Option<Generation>,
    catalog: &Catalog,
) -> Result<(Generation, String), VerifyError> {
    let mut looked_at = Vec::new();
    let mut told = Vec::new();
    match report.cpuid() {
        Some((family, model)) => {
            let g = catalog
                .generation_of(family, model)
                .ok_or(VerifyError::UncertifiedCpu {
                    family,
                    model,
                    certified: catalog.names(),
                })?;
            told.push((g, "the report's CPUID".to_string()));
        }
        None => looked_at.push(format!(
            "the report (version {}) has no CPUID",
            report.parsed.version
        )),
    }
    match given {
        Some(g) => told.push((g, "--generation".to_string())),
        None => looked_at.push("no --generation".to_string()),
    }
    let what = role.what();
    match certs.get(role) {
        None => looked_at.push(format!("no {what}")),
        Some(vek) => match extensions::read(&vek.cert).map(|e| e.product_name) {
            Ok(Some(name)) => match Generation::from_product_name(&name) {
                Some(g) => told.push((g, format!("the {what}'s productName `{name}`"))),
                None => looked_at.push(format!(
                    "the {what}'s ({}) productName `{name}` is no generation this plinth knows",
                    vek.origin
                )),
            },
            Ok(None) => looked_at.push(format!("the {what} ({}) has no productName", vek.origin)),
            Err(e) => looked_at.push(format!("the {what} ({}): {e}", vek.origin)),
        },
    }
    if let Some(found) = agreed(told)? {
        return Ok(found);
    }
    let mut named = Vec::new();
    let signer = signer_given(certs, role);
    let signer_what = if role == Role::Vlek { "ASVK" } else { "ASK" };
    for (what, cert) in [
        ("ARK", certs.ark.as_ref()),
        (signer_what, signer.map(|(c, _)| c)),
    ] {
        let Some(cert) = cert else {
            looked_at.push(format!("no {what} given"));
            continue;
        };
        let names = [("subject", cert.subject_cn()), ("issuer", cert.issuer_cn())];
        let before = named.len();
        for (field, cn) in &names {
            if let Some(g) = Generation::from_cert_name(cn) {
                named.push((g, format!("the {what}'s {field} `{cn}`")));
            }
        }
        if named.len() == before {
            looked_at.push(format!(
                "the {what} ({}) names none (subject `{}`, issuer `{}`)",
                cert.origin, names[0].1, names[1].1
            ));
        }
    }
    agreed(named)?.ok_or_else(|| VerifyError::UnknownGeneration {
        looked_at: looked_at.join("; "),
    })
}

/// The first generation told, if every other agrees with it.
fn agreed(told: Vec<(Generation, String)>) -> Result<Option<(Generation, String)>, VerifyError> {
    let Some((first, first_from)) = told.first().cloned() else {
        return Ok(None);
    };
    match told.into_iter().find(|(g, _)| *g != first) {
        Some((second, second_from)) => Err(VerifyError::GenerationConflict {
            first,
            first_from,
            second,
            second_from,
        }),
        None => Ok(Some((first, first_from))),
    }
}

/// Run every check.
pub fn verify(inputs: &Inputs<'_>, trust: &Trust<'_>) -> Result<Verification, VerifyError> {
    let Inputs {
        report,
        certs,
        expected,
        nonce,
        generation,
    } = *inputs;
    let role = vek_role(report, certs);
    let vek = certs.get(role).ok_or(VerifyError::NoVek {
        what: role.what(),
        hint: match role {
            Role::Vlek => "a VLEK comes from the host (the extended report's certificate table, certs/vlek.der of plinth-guest attest): pass --certs DIR",
            _ if report.chip_id_masked() => "pass --vcek FILE or --certs DIR (plinth-guest attest writes certs/vcek.der); the report's CHIP_ID is masked, so it cannot be fetched from AMD",
            _ => "pass --vcek FILE or --certs DIR (plinth-guest attest writes certs/vcek.der), or --fetch it from AMD",
        },
    })?;
    let (generation, generation_from) =
        resolve_generation(report, certs, role, generation, trust.catalog)?;
    // A version 2 report's TCB fields, read in its generation's layout.
    let report = &report.for_generation(generation)?;
    let want_data = nonce.map(report_data).transpose()?;
    let builtin_ask;
    let signer: &Cert = match role {
        Role::Vlek => signer_given(certs, role)
            .map(|(c, _)| c)
            .ok_or(VerifyError::NoAsvk)?,
        _ => match &certs.ask {
            Some(ask) => ask,
            None => {
                let ask = trust
                    .asks
                    .get(&generation)
                    .cloned()
                    .unwrap_or_else(|| generation.builtin_ask());
                builtin_ask = Cert::new(ask, format!("the built-in {} ASK", generation.product()))
                    .map_err(|_| VerifyError::NoVek {
                        what: "ASK",
                        hint: "pass the ASK in --certs DIR",
                    })?;
                &builtin_ask
            }
        },
    };
    let signer_what = if role == Role::Vlek { "ASVK" } else { "ASK" };
    let ext = extensions::read(&vek.cert);
    let ctx = Context {
        report,
        vek,
        vek_what: role.what(),
        signer,
        signer_what,
        ext: &ext,
        generation,
        generation_from: &generation_from,
    };
    let pinned = trust.arks.get(&generation);
    let checks = vec![
        ctx.ark(certs.ark.as_ref(), pinned),
        ctx.ask(pinned),
        ctx.vek(),
        ctx.vek_tcb(),
        ctx.vek_hwid(),
        ctx.report_signature(),
        measurement(report, expected),
        policy(report, expected),
        tcb_minimum(report, generation, trust.catalog),
        nonce_check(report, nonce, want_data),
        vmpl(report, expected),
    ];
    Ok(Verification {
        generation,
        generation_from,
        signed_by: role.what(),
        passed: checks.iter().all(|c| c.status != Status::Failed),
        checks,
    })
}

fn result(check: Check, ok: bool, detail: String) -> CheckResult {
    CheckResult {
        check,
        status: if ok { Status::Passed } else { Status::Failed },
        detail,
    }
}

/// The first 16 hex digits of `bytes`, with an ellipsis if there are more.
fn short_hex(bytes: &[u8]) -> String {
    abbreviate(&hex::encode(bytes))
}

/// The first 16 characters of a hex string, with an ellipsis if there are more.
fn abbreviate(hex: &str) -> String {
    match hex.get(..16) {
        Some(head) if hex.len() > 16 => format!("{head}…"),
        _ => hex.to_string(),
    }
}

/// What the certificate checks share.
struct Context<'a> {
    report: &'a Report,
    vek: &'a Cert,
    vek_what: &'static str,
    signer: &'a Cert,
    signer_what: &'static str,
    ext: &'a Result<VekExtensions, String>,
    generation: Generation,
    generation_from: &'a str,
}

impl Context<'_> {
    fn ark(&self, given: Option<&Cert>, pinned: Option<&Certificate>) -> CheckResult {
        let product = self.generation.product();
        let Some(pinned) = pinned else {
            return result(Check::Ark, false, format!("no {product} ARK is pinned"));
        };
        let pinned = match Cert::new(pinned.clone(), format!("the pinned {product} ARK")) {
            Ok(c) => c,
            Err(e) => return result(Check::Ark, false, e.to_string()),
        };
        if let Some(given) = given {
            if given.der != pinned.der {
                return result(
                    Check::Ark,
                    false,
                    format!(
                        "{} (sha256 {}, subject CN `{}`) is not the pinned {product} ARK (sha256 {}): only that root is trusted",
                        given.origin,
                        abbreviate(&given.sha256()),
                        given.subject_cn(),
                        abbreviate(&pinned.sha256()),
                    ),
                );
            }
        }
        let fp = abbreviate(&pinned.sha256());
        match (&pinned.cert, &pinned.cert).verify() {
            Ok(()) => result(
                Check::Ark,
                true,
                format!(
                    "the pinned {product} ARK (sha256 {fp}{}), self-signed",
                    given
                        .map(|g| format!(", as in {}", g.origin))
                        .unwrap_or_default()
                ),
            ),
            Err(e) => result(
                Check::Ark,
                false,
                format!(
                    "the pinned {product} ARK (sha256 {fp}) does not verify its own signature: {e}"
                ),
            ),
        }
    }

    fn ask(&self, pinned: Option<&Certificate>) -> CheckResult {
        let product = self.generation.product();
        let (what, origin) = (self.signer_what, &self.signer.origin);
        let Some(ark) = pinned else {
            return result(Check::Ask, false, format!("no {product} ARK is pinned"));
        };
        let names = [
            ("subject", self.signer.subject_cn()),
            ("issuer", self.signer.issuer_cn()),
        ];
        for (field, cn) in names {
            match Generation::from_cert_name(&cn) {
                Some(g) if g != self.generation => {
                    return result(
                        Check::Ask,
                        false,
                        format!(
                            "the {what} ({origin}) is of another generation: its {field} `{cn}` names {}, the node is {product} ({}); a {product} node's {what} is AMD's {product} one",
                            g.product(),
                            self.generation_from
                        ),
                    )
                }
                _ => {}
            }
        }
        match (ark, &self.signer.cert).verify() {
            Ok(()) => result(
                Check::Ask,
                true,
                format!("the {what} ({origin}) is signed by the {product} ARK"),
            ),
            Err(e) => result(
                Check::Ask,
                false,
                format!("the {what} ({origin}, subject CN `{}`) is not signed by the pinned {product} ARK: {e}", self.signer.subject_cn()),
            ),
        }
    }

    fn vek(&self) -> CheckResult {
        let (vek, signer) = (self.vek_what, self.signer_what);
        match (&self.signer.cert, &self.vek.cert).verify() {
            Ok(()) => result(
                Check::Vek,
                true,
                format!("the {vek} ({}) is signed by the {signer}", self.vek.origin),
            ),
            Err(e) => result(
                Check::Vek,
                false,
                format!(
                    "the {vek} ({}) is not signed by the {signer} ({}): {e}",
                    self.vek.origin, self.signer.origin
                ),
            ),
        }
    }

    fn vek_tcb(&self) -> CheckResult {
        let ext = match self.ext {
            Ok(e) => e,
            Err(e) => return result(Check::VekTcb, false, format!("{}: {e}", self.vek.origin)),
        };
        let reported = Tcb::from(self.report.parsed.reported_tcb);
        let mut differences = Vec::new();
        for (name, value) in reported.components() {
            match ext.tcb_component(name) {
                Some(v) if v == value => {}
                Some(v) => differences.push(format!("{name} {v} (report: {value})")),
                None => {
                    let oid = TCB_OIDS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, o)| *o)
                        .unwrap_or("?");
                    differences.push(format!("no {name} SPL extension ({oid})"))
                }
            }
        }
        let vek = self.vek_what;
        if differences.is_empty() {
            result(
                Check::VekTcb,
                true,
                format!("the {vek} was issued for the report's REPORTED_TCB ({reported})"),
            )
        } else {
            result(
                Check::VekTcb,
                false,
                format!(
                    "the {vek} ({}) was issued for another TCB than the report's REPORTED_TCB ({reported}): {}",
                    self.vek.origin,
                    differences.join(", ")
                ),
            )
        }
    }

    fn vek_hwid(&self) -> CheckResult {
        if self.vek_what == "VLEK" {
            return CheckResult {
                check: Check::VekHwid,
                status: Status::Skipped,
                detail: "a VLEK belongs to a cloud provider, not to one chip: it has no hwID"
                    .into(),
            };
        }
        let ext = match self.ext {
            Ok(e) => e,
            Err(e) => return result(Check::VekHwid, false, format!("{}: {e}", self.vek.origin)),
        };
        if self.report.chip_id_masked() {
            let hwid = ext
                .hwid
                .as_deref()
                .map(|h| format!("hwID {}", short_hex(h)))
                .unwrap_or_else(|| "no hwID".into());
            return CheckResult {
                check: Check::VekHwid,
                status: Status::Skipped,
                detail: format!(
                    "CHIP_ID is zero: the host masks it (MASK_CHIP_ID), so the report names no chip; it is bound to the VCEK's chip ({hwid}) by the VCEK's signature alone"
                ),
            };
        }
        let chip = kds::hwid(self.generation, &self.report.parsed.chip_id);
        match &ext.hwid {
            None => result(
                Check::VekHwid,
                false,
                format!("the VCEK ({}) has no hwID extension (1.3.6.1.4.1.3704.1.4)", self.vek.origin),
            ),
            Some(h) if h.as_slice() == chip => result(
                Check::VekHwid,
                true,
                format!("the VCEK's hwID is the report's CHIP_ID ({})", short_hex(chip)),
            ),
            Some(h) => result(
                Check::VekHwid,
                false,
                format!(
                    "the VCEK ({}) has hwID {}, the report's CHIP_ID is {}: the VCEK of another chip",
                    self.vek.origin,
                    short_hex(h),
                    short_hex(chip)
                ),
            ),
        }
    }

    fn report_signature(&self) -> CheckResult {
        let fail = |why: String| result(Check::ReportSignature, false, why);
        let algo = self.report.parsed.sig_algo;
        if algo != 1 {
            return fail(format!(
                "SIGNATURE_ALGO is {algo}, expected 1 (ECDSA P-384 with SHA-384)"
            ));
        }
        match self.report.signing_key() {
            SigningKey::None => {
                return fail(
                    "the report is not signed (SIGNING_KEY 7: the host masked the chip key)".into(),
                )
            }
            SigningKey::Reserved(n) => {
                return fail(format!(
                    "SIGNING_KEY is {n}, a reserved value (0: VCEK, 1: VLEK)"
                ))
            }
            SigningKey::Vcek | SigningKey::Vlek => {}
        }
        let (r, s) = self.report.signature_components();
        const P384_LEN: usize = 48;
        if r[P384_LEN..].iter().chain(&s[P384_LEN..]).any(|&b| b != 0) {
            return fail(format!(
                "the signature's R or S has non-zero bytes past the {P384_LEN} of P-384 (each component is {SIGNATURE_COMPONENT_LEN} bytes)"
            ));
        }
        // Little-endian in the report, big-endian for p384.
        let mut rs: Vec<u8> = r[..P384_LEN].iter().rev().copied().collect();
        rs.extend(s[..P384_LEN].iter().rev());
        let Ok(signature) = p384::ecdsa::Signature::from_slice(&rs) else {
            return fail("the signature's R or S is not a valid P-384 scalar (zero, or not below the group order)".into());
        };
        let vek = self.vek_what;
        let Ok(key) = p384::ecdsa::VerifyingKey::from_sec1_bytes(self.vek.cert.public_key_sec1())
        else {
            return fail(format!(
                "the {vek}'s ({}) public key is not a P-384 point",
                self.vek.origin
            ));
        };
        use p384::ecdsa::signature::Verifier;
        match key.verify(self.report.signed_bytes(), &signature) {
            Ok(()) => result(
                Check::ReportSignature,
                true,
                format!("signed by the {vek}'s key (bytes 0 to {:#x})", SIGNED_LEN - 1),
            ),
            Err(_) => fail(format!(
                "the signature (R {}) over bytes 0 to {:#x} does not verify with the key of the {vek} ({})",
                short_hex(&rs[..P384_LEN]),
                SIGNED_LEN - 1,
                self.vek.origin
            )),
        }
    }
}

fn measurement(report: &Report, expected: &SnpExpected) -> CheckResult {
    let seen = plinth_release::Measurement(report.parsed.measurement);
    let matches = expected.matching(&seen);
    if matches.is_empty() {
        return result(
            Check::Measurement,
            false,
            format!(
                "{seen} is none of the {} expected launch digests",
                expected.launch_digests.len()
            ),
        );
    }
    let configs: Vec<String> = matches
        .iter()
        .map(|d| {
            format!(
                "slot {}, {} vCPUs, {}",
                plinth_release::slot::or_none(d.slot),
                d.vcpus,
                d.vcpu_type
            )
        })
        .collect();
    result(
        Check::Measurement,
        true,
        format!("{seen}: the launch digest of {}", configs.join("; ")),
    )
}

fn policy(report: &Report, expected: &SnpExpected) -> CheckResult {
    let p = report.parsed.policy;
    let want = expected.policy;
    let bits = u64::from(p);
    let mut problems = Vec::new();
    if p.debug_allowed() {
        problems.push(
            "DEBUG (bit 19) is set: the host may read and change the guest's memory".to_string(),
        );
    }
    if p.migrate_ma_allowed() {
        problems
            .push("MIGRATE_MA (bit 18) is set: a migration agent may be associated".to_string());
    }
    if p.smt_allowed() != want.smt {
        problems.push(format!(
            "SMT (bit 16) is {}, measurements.json says {}",
            u8::from(p.smt_allowed()),
            u8::from(want.smt)
        ));
    }
    if bits & (1 << 17) == 0 {
        problems.push("reserved bit 17 is clear (the ABI says it must be one)".to_string());
    }
    // Bits 20 and up (SINGLE_SOCKET, CXL_ALLOW, MEM_AES_256_XTS, RAPL_DIS, CIPHERTEXT_HIDING,
    // PAGE_SWAP_DISABLE, reserved): as HostOS launches the guest, i.e. as expected.
    let high = bits >> 20;
    let want_high = want.bits() >> 20;
    if high != want_high {
        problems.push(format!(
            "bits 20-63 are {:#x}, the launch policy has {:#x}",
            high << 20,
            want_high << 20
        ));
    }
    let abi = (p.abi_major(), p.abi_minor());
    let min = (u64::from(want.abi_major), u64::from(want.abi_minor));
    if abi < min {
        problems.push(format!(
            "the ABI minimum is {}.{}, below the expected {}.{}",
            abi.0, abi.1, min.0, min.1
        ));
    }
    if problems.is_empty() {
        result(
            Check::Policy,
            true,
            format!(
                "{bits:#x}: debug off, migration agent off, SMT {}, ABI minimum {}.{} (at least {}.{})",
                if want.smt { "allowed" } else { "not allowed" },
                abi.0,
                abi.1,
                min.0,
                min.1
            ),
        )
    } else {
        result(
            Check::Policy,
            false,
            format!("{bits:#x}: {}", problems.join("; ")),
        )
    }
}

fn tcb_minimum(report: &Report, generation: Generation, catalog: &Catalog) -> CheckResult {
    let reported = Tcb::from(report.parsed.reported_tcb);
    let Some(entry) = catalog.get(generation) else {
        return result(
            Check::TcbMinimum,
            false,
            format!(
                "{generation} is not a generation of the firmware catalog ({})",
                catalog.names()
            ),
        );
    };
    let min = entry.minimum_tcb;
    let low = reported.below(&min);
    if low.is_empty() {
        result(
            Check::TcbMinimum,
            true,
            format!("REPORTED_TCB ({reported}) is at least the catalog's {generation} minimum ({min}) in every component"),
        )
    } else {
        result(
            Check::TcbMinimum,
            false,
            format!(
                "REPORTED_TCB ({reported}) is below the catalog's {generation} minimum ({min}): {}",
                low.join(", ")
            ),
        )
    }
}

fn nonce_check(report: &Report, nonce: Option<&[u8]>, want: Option<[u8; 64]>) -> CheckResult {
    let seen = report.parsed.report_data;
    match (nonce, want) {
        (Some(nonce), Some(want)) if want == seen => result(
            Check::ReportData,
            true,
            format!("REPORT_DATA is the nonce {}, zero-padded", hex::encode(nonce)),
        ),
        (Some(nonce), Some(_)) => result(
            Check::ReportData,
            false,
            format!(
                "REPORT_DATA is {}, not the nonce {} zero-padded: a report for another request, or a replay",
                hex::encode(seen),
                hex::encode(nonce)
            ),
        ),
        _ => CheckResult {
            check: Check::ReportData,
            status: Status::Skipped,
            detail: format!(
                "no nonce given, so freshness is not checked (REPORT_DATA is {})",
                short_hex(&seen)
            ),
        },
    }
}

fn vmpl(report: &Report, expected: &SnpExpected) -> CheckResult {
    let (seen, want) = (report.parsed.vmpl, expected.vmpl);
    result(
        Check::Vmpl,
        seen == want,
        if seen == want {
            format!("requested at VMPL {seen}")
        } else {
            format!("requested at VMPL {seen}, measurements.json says {want}")
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snp::certs::{parse_cert, Cert};
    use crate::snp::testing::{self, World};

    /// What a case verifies: the world's parts, some of them changed.
    struct Scenario {
        certs: CertSet,
        report: Vec<u8>,
        expected: SnpExpected,
        nonce: Vec<u8>,
    }

    impl Scenario {
        fn of(w: &World) -> Scenario {
            Scenario {
                certs: w.certs(),
                report: w.report.clone(),
                expected: w.expected.clone(),
                nonce: w.nonce.clone(),
            }
        }

        fn verify(&self, w: &World) -> Verification {
            let report = Report::from_bytes(&self.report, "report.bin").unwrap();
            let inputs = Inputs {
                report: &report,
                certs: &self.certs,
                expected: &self.expected,
                nonce: Some(&self.nonce),
                generation: None,
            };
            verify(&inputs, &w.trust(Catalog::builtin())).unwrap()
        }
    }

    /// Re-sign after changing the report.
    fn resigned(w: &World, change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut w2 = World {
            report: w.report.clone(),
            ark: w.ark.clone(),
            ask: w.ask.clone(),
            vcek: w.vcek.clone(),
            expected: w.expected.clone(),
            nonce: w.nonce.clone(),
        };
        change(&mut w2.report);
        w2.resign();
        w2.report
    }

    fn milan_min() -> Tcb {
        Catalog::builtin()
            .get(Generation::Milan)
            .unwrap()
            .minimum_tcb
    }

    /// One case per check: a change that breaks that check and no other, and a word the
    /// failure must show.
    fn cases(w: &World) -> Vec<(&'static str, Check, Scenario, &'static str)> {
        let base = || Scenario::of(w);
        let mut out = Vec::new();

        let mut s = base();
        s.certs.ark = Some(Cert::new(Generation::Milan.builtin_ark(), "certs/ark.pem").unwrap());
        out.push((
            "a different ARK (AMD's own, not the pinned one)",
            Check::Ark,
            s,
            "ARK-Milan",
        ));

        let mut s = base();
        s.certs.ask = Some(testing::break_signature(&w.ask));
        out.push((
            "an ASK the ARK did not sign",
            Check::Ask,
            s,
            "not signed by the pinned Milan ARK",
        ));

        let mut s = base();
        s.certs.vcek = Some(testing::break_signature(&w.vcek));
        out.push((
            "a VCEK the ASK did not sign",
            Check::Vek,
            s,
            "not signed by the ASK",
        ));

        let mut s = base();
        let mut tcb = milan_min();
        tcb.microcode += 1;
        s.certs.vcek = Some(w.vcek_for(&tcb, &w.chip_id()));
        out.push((
            "a VCEK of another TCB",
            Check::VekTcb,
            s,
            "microcode 212 (report: 211)",
        ));

        let mut s = base();
        let mut chip = w.chip_id();
        chip[0] ^= 0xff;
        s.certs.vcek = Some(w.vcek_for(&milan_min(), &chip));
        out.push((
            "a VCEK of another chip",
            Check::VekHwid,
            s,
            "the VCEK of another chip",
        ));

        let mut s = base();
        s.report[crate::snp::report::SIGNATURE_OFFSET + 5] ^= 0x01;
        out.push((
            "a flipped signature byte",
            Check::ReportSignature,
            s,
            "does not verify",
        ));

        let mut s = base();
        s.report = resigned(w, |r| r[testing::MEASUREMENT] ^= 0xff);
        out.push((
            "a measurement not in the set",
            Check::Measurement,
            s,
            "none of the 2 expected",
        ));

        let mut s = base();
        s.report = resigned(w, |r| r[testing::POLICY + 2] |= 1 << 3);
        out.push(("the debug policy bit", Check::Policy, s, "DEBUG (bit 19)"));

        let mut s = base();
        s.report = resigned(w, |r| r[testing::POLICY + 2] |= 1 << 2);
        out.push((
            "the migration agent policy bit",
            Check::Policy,
            s,
            "MIGRATE_MA (bit 18)",
        ));

        let mut s = base();
        s.expected.policy.smt = false;
        out.push((
            "SMT allowed where it must not be",
            Check::Policy,
            s,
            "SMT (bit 16) is 1",
        ));

        let mut s = base();
        s.expected.policy.abi_major = 1;
        s.expected.policy.abi_minor = 55;
        out.push((
            "an ABI minimum below the expected",
            Check::Policy,
            s,
            "below the expected 1.55",
        ));

        let mut s = base();
        let mut low = milan_min();
        low.snp -= 1;
        s.report = resigned(w, |r| testing::set_tcb(r, &low));
        s.certs.vcek = Some(w.vcek_for(&low, &w.chip_id()));
        out.push((
            "a TCB below the catalog minimum",
            Check::TcbMinimum,
            s,
            "snp 20 < 21",
        ));

        let mut s = base();
        s.nonce = b"another nonce".to_vec();
        out.push((
            "a report for another nonce",
            Check::ReportData,
            s,
            "not the nonce",
        ));

        let mut s = base();
        s.report = resigned(w, |r| r[testing::VMPL] = 1);
        out.push((
            "a report requested at VMPL 1",
            Check::Vmpl,
            s,
            "VMPL 1, measurements.json says 0",
        ));
        out
    }

    #[test]
    fn the_synthetic_world_passes_every_check() {
        let w = World::new();
        let v = Scenario::of(&w).verify(&w);
        assert!(v.passed, "{}", v.lines().join("\n"));
        assert_eq!(v.checks.len(), Check::ALL.len());
        assert!(
            v.checks.iter().all(|c| c.status == Status::Passed),
            "{:#?}",
            v.checks
        );
        assert_eq!(v.generation, Generation::Milan);
        assert!(v
            .result(Check::Measurement)
            .unwrap()
            .detail
            .contains("slot A, 4 vCPUs, EPYC-v4"));
    }

    #[test]
    fn each_break_fails_its_check_and_only_it() {
        let w = World::new();
        let cases = cases(&w);
        for check in Check::ALL {
            assert!(
                cases.iter().any(|c| c.1 == check),
                "no case breaks {}",
                check.name()
            );
        }
        for (what, check, scenario, mention) in cases {
            let v = scenario.verify(&w);
            assert_eq!(v.failed(), [check], "{what}:\n{}", v.lines().join("\n"));
            let detail = &v.result(check).unwrap().detail;
            assert!(
                detail.contains(mention),
                "{what}: `{mention}` not in: {detail}"
            );
            assert!(!v.passed);
            let line = v.lines().into_iter().find(|l| l.contains("FAIL")).unwrap();
            assert!(line.contains(check.name()), "{line}");
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let w = World::new();
        let report = w.parsed();
        let catalog = Catalog::builtin();
        let trust = w.trust(catalog);
        let run = |certs: &CertSet, nonce: Option<&[u8]>, generation| {
            verify(
                &Inputs {
                    report: &report,
                    certs,
                    expected: &w.expected,
                    nonce,
                    generation,
                },
                &trust,
            )
        };
        let no_vcek = CertSet {
            vcek: None,
            ..w.certs()
        };
        let err = run(&no_vcek, None, None).unwrap_err();
        assert!(
            err.to_string().contains("no VCEK") && err.is_bad_input(),
            "{err}"
        );
        let err = run(&w.certs(), Some(&[]), None).unwrap_err();
        assert!(err.to_string().contains("nonce is empty"), "{err}");
        let err = run(&w.certs(), None, Some(Generation::Genoa)).unwrap_err();
        assert!(
            err.to_string().contains(
                "--generation says genoa, but the VCEK's productName `Milan-B0` says milan"
            ),
            "{err}"
        );
        // Without a nonce freshness is skipped, not failed.
        let v = run(&w.certs(), None, Some(Generation::Milan)).unwrap();
        assert!(v.passed);
        assert_eq!(v.result(Check::ReportData).unwrap().status, Status::Skipped);
        // No ASK given: the built-in one is used (AMD's, which did not sign the test VCEK).
        let no_ask = CertSet {
            ask: None,
            ..w.certs()
        };
        let mut t = Trust::with_catalog(catalog);
        t.arks.insert(Generation::Milan, w.ark.cert.clone());
        let v = verify(
            &Inputs {
                report: &report,
                certs: &no_ask,
                expected: &w.expected,
                nonce: None,
                generation: None,
            },
            &t,
        )
        .unwrap();
        assert_eq!(v.failed(), [Check::Ask, Check::Vek]);
        assert!(v
            .result(Check::Ask)
            .unwrap()
            .detail
            .contains("the built-in Milan ASK"));
    }

    #[test]
    fn a_vlek_signed_report() {
        let w = World::new();
        let chain = w.vlek_chain(Generation::Milan, true);
        let report = Report::from_bytes(&w.vlek_report(false), "report.bin").unwrap();
        assert_eq!(report.signing_key(), SigningKey::Vlek);
        let catalog = Catalog::builtin();
        let trust = w.trust(catalog);
        let run = |certs: CertSet| {
            verify(
                &Inputs {
                    report: &report,
                    certs: &certs,
                    expected: &w.expected,
                    nonce: Some(&w.nonce),
                    generation: None,
                },
                &trust,
            )
        };
        let certs = CertSet {
            ark: Some(chain.ark.clone()),
            ..chain.certs()
        };
        let v = run(certs.clone()).unwrap();
        assert!(v.passed, "{}", v.lines().join("\n"));
        assert_eq!(v.signed_by, "VLEK");
        assert_eq!(v.generation_from, "the VLEK's productName `Milan`");
        assert_eq!(v.result(Check::VekHwid).unwrap().status, Status::Skipped);
        assert!(v
            .result(Check::Ask)
            .unwrap()
            .detail
            .contains("the ASVK (test Milan ASVK)"));
        // An extended report's table carries the ASVK in the ASK's entry.
        let v = run(CertSet {
            asvk: None,
            ask: Some(chain.asvk.clone()),
            ..certs.clone()
        })
        .unwrap();
        assert!(v.passed, "{}", v.lines().join("\n"));
        // A VLEK the ASVK did not sign.
        let v = run(CertSet {
            vlek: Some(testing::break_signature(&chain.vlek)),
            ..certs.clone()
        })
        .unwrap();
        assert_eq!(v.failed(), [Check::Vek]);
        let err = run(CertSet {
            asvk: None,
            ..certs.clone()
        })
        .unwrap_err();
        assert!(matches!(err, VerifyError::NoAsvk), "{err}");
        let err = run(CertSet {
            vlek: None,
            vcek: Some(w.vcek.clone()),
            ..certs
        })
        .unwrap_err();
        assert!(err.to_string().contains("no VLEK"), "{err}");
    }

    /// A catalog with the Milan floor (the synthetic reports' TCB) for Milan and Genoa.
    fn floor_catalog() -> Catalog {
        let floor = "minimum_tcb: { bootloader: 4, tee: 0, snp: 21, microcode: 211 }";
        Catalog::parse(
            &format!("format_version: 1\ngenerations:\n  - name: milan\n    cpu_family: 0x19\n    cpu_models: [[0x00, 0x0f]]\n    {floor}\n  - name: genoa\n    cpu_family: 0x19\n    cpu_models: [[0x10, 0x1f]]\n    {floor}\n"),
            "floor.yaml",
        )
        .unwrap()
    }

    /// An AWS EC2 report: version 2, CHIP_ID zero, signed by a VLEK.
    fn aws_report(w: &World) -> Report {
        let report = Report::from_bytes(&w.vlek_report(true), "report.bin").unwrap();
        assert_eq!(report.parsed.version, 2);
        assert_eq!(report.signing_key(), SigningKey::Vlek);
        assert!(report.chip_id_masked());
        report
    }

    /// `report` verified with `certs` and `generation` (as `--generation`), every
    /// generation's test ARK pinned.
    fn verify_with(
        w: &World,
        report: &Report,
        certs: &CertSet,
        generation: Option<Generation>,
    ) -> Result<Verification, VerifyError> {
        let catalog = floor_catalog();
        verify(
            &Inputs {
                report,
                certs,
                expected: &w.expected,
                nonce: Some(&w.nonce),
                generation,
            },
            &w.trust_all(&catalog),
        )
    }

    fn assert_passes_every_check(v: &Verification) {
        assert!(v.passed, "{}", v.lines().join("\n"));
        for c in &v.checks {
            let want = if c.check == Check::VekHwid {
                Status::Skipped
            } else {
                Status::Passed
            };
            assert_eq!(c.status, want, "{}", v.lines().join("\n"));
        }
    }

    /// AWS EC2's reports (issue 18, 9): the generation from the chain's names, and every
    /// check, each passed but vek_hwid (a VLEK has no chip).
    #[test]
    fn aws_vlek_report_with_masked_chip_id_passes_with_its_chain() {
        let w = World::new();
        let report = aws_report(&w);
        for g in [Generation::Milan, Generation::Genoa] {
            let p = g.product();
            let chain = w.vlek_chain(g, false);
            let with_ark = CertSet {
                ark: Some(chain.ark.clone()),
                ..chain.certs()
            };
            let v = verify_with(&w, &report, &with_ark, None).unwrap();
            assert_passes_every_check(&v);
            assert_eq!((v.generation, v.signed_by), (g, "VLEK"));
            assert_eq!(v.generation_from, format!("the ARK's subject `ARK-{p}`"));
            assert!(
                v.result(Check::Ask).unwrap().detail.contains(&format!(
                    "the ASVK (test {p} ASVK) is signed by the {p} ARK"
                )),
                "{}",
                v.lines().join("\n")
            );
            // The pinned ARK is used when none is given: the ASVK's name tells.
            let v = verify_with(&w, &report, &chain.certs(), None).unwrap();
            assert_passes_every_check(&v);
            assert_eq!(
                v.generation_from,
                format!("the ASVK's subject `SEV-VLEK-{p}`")
            );
            // As an extended report's table carries it: the ASVK in the ASK's entry.
            let table = CertSet {
                ask: Some(chain.asvk.clone()),
                vlek: Some(chain.vlek.clone()),
                ..CertSet::default()
            };
            assert_passes_every_check(&verify_with(&w, &report, &table, None).unwrap());
            // --generation, and a VLEK naming its product, agree with the chain.
            let named = w.vlek_chain(g, true);
            let v = verify_with(&w, &report, &named.certs(), Some(g)).unwrap();
            assert_passes_every_check(&v);
            assert_eq!(v.generation_from, "--generation");
            let v = verify_with(&w, &report, &named.certs(), None).unwrap();
            assert_eq!(v.generation_from, format!("the VLEK's productName `{p}`"));
        }
    }

    /// When neither the report, the flag, the VLEK nor the chain names the generation, it
    /// is an error listing what was looked at; `--generation` then tells it.
    #[test]
    fn aws_vlek_report_generation_from_the_flag_when_nothing_names_it() {
        let w = World::new();
        let report = aws_report(&w);
        let chain = w.vlek_chain(Generation::Milan, false);
        let unnamed = CertSet {
            asvk: Some(testing::renamed_asvk(
                &chain.asvk,
                "SEV-VLEK",
                "AMD",
                "certs/asvk.pem",
            )),
            ..chain.certs()
        };
        let err = verify_with(&w, &report, &unnamed, None).unwrap_err();
        assert!(matches!(err, VerifyError::UnknownGeneration { .. }) && err.is_bad_input());
        let msg = err.to_string();
        for part in [
            "the processor generation cannot be told: the report (version 2) has no CPUID",
            "no --generation",
            "the VLEK (test Milan VLEK) has no productName",
            "no ARK given",
            "the ASVK (certs/asvk.pem) names none (subject `SEV-VLEK`, issuer `AMD`)",
            "hint: pass --generation milan|genoa|turin",
        ] {
            assert!(msg.contains(part), "`{part}` not in: {msg}");
        }
        let v = verify_with(&w, &report, &unnamed, Some(Generation::Milan)).unwrap();
        assert_passes_every_check(&v);
        assert_eq!(v.generation_from, "--generation");
        // Without the ASVK and ARK, as AWS's certificate table is (the VLEK only), the
        // generation tells where to fetch them; with no flag it cannot be told.
        let vlek_only = CertSet {
            vlek: Some(chain.vlek.clone()),
            ..CertSet::default()
        };
        let err = resolve_generation(&report, &vlek_only, Role::Vlek, None, &floor_catalog())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no ARK given; no ASVK given"), "{err}");
        let (g, from) = resolve_generation(
            &report,
            &vlek_only,
            Role::Vlek,
            Some(Generation::Milan),
            &floor_catalog(),
        )
        .unwrap();
        assert_eq!((g, from.as_str()), (Generation::Milan, "--generation"));
    }

    /// A chain of another generation than the node's fails the check it breaks; sources
    /// of the generation that disagree are an error naming both.
    #[test]
    fn aws_vlek_report_chain_of_another_generation() {
        let w = World::new();
        let report = aws_report(&w);
        let genoa = w.vlek_chain(Generation::Genoa, false);
        // --generation milan, the chain Genoa's: its ASVK fails `ask` (it is signed by the
        // same test ARK key, so only its name tells).
        let v = verify_with(&w, &report, &genoa.certs(), Some(Generation::Milan)).unwrap();
        assert_eq!(v.failed(), [Check::Ask], "{}", v.lines().join("\n"));
        let detail = &v.result(Check::Ask).unwrap().detail;
        assert!(
            detail.contains(
                "its subject `SEV-VLEK-Genoa` names Genoa, the node is Milan (--generation)"
            ),
            "{detail}"
        );
        // With Genoa's ARK too, that is not the pinned Milan one either.
        let with_ark = CertSet {
            ark: Some(genoa.ark.clone()),
            ..genoa.certs()
        };
        let v = verify_with(&w, &report, &with_ark, Some(Generation::Milan)).unwrap();
        assert_eq!(v.failed(), [Check::Ark, Check::Ask]);
        // A Milan chain the pinned Milan ARK did not sign.
        let milan = w.vlek_chain(Generation::Milan, false);
        let forged = CertSet {
            asvk: Some(testing::break_signature(&milan.asvk)),
            ..milan.certs()
        };
        let v = verify_with(&w, &report, &forged, None).unwrap();
        assert_eq!(v.failed(), [Check::Ask]);
        assert!(v
            .result(Check::Ask)
            .unwrap()
            .detail
            .contains("is not signed by the pinned Milan ARK"));
        // Against AMD's real roots, the test chain is not AMD's: `ask` fails.
        let catalog = floor_catalog();
        let v = verify(
            &Inputs {
                report: &report,
                certs: &milan.certs(),
                expected: &w.expected,
                nonce: Some(&w.nonce),
                generation: None,
            },
            &Trust::with_catalog(&catalog),
        )
        .unwrap();
        assert_eq!(v.failed(), [Check::Ask]);

        // The ARK says Milan, the ASVK Genoa, nothing else tells: which root to pin?
        let mixed = CertSet {
            ark: Some(milan.ark.clone()),
            ..genoa.certs()
        };
        let err = verify_with(&w, &report, &mixed, None).unwrap_err();
        assert!(
            matches!(err, VerifyError::GenerationConflict { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(
                "the ARK's subject `ARK-Milan` says milan, but the ASVK's subject `SEV-VLEK-Genoa` says genoa"
            ),
            "{err}"
        );
        // The flag against the VLEK's productName.
        let named = w.vlek_chain(Generation::Milan, true);
        let err = verify_with(&w, &report, &named.certs(), Some(Generation::Genoa))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--generation says genoa, but the VLEK's productName `Milan` says milan"),
            "{err}"
        );
    }

    /// A VCEK-signed report with CHIP_ID masked: bound to its chip by the VCEK's signature;
    /// vek_hwid is skipped, saying why, and the VCEK cannot be fetched.
    #[test]
    fn vcek_report_with_masked_chip_id() {
        let w = World::new();
        let bytes = resigned(&w, |r| r[0x1a0..0x1e0].fill(0));
        let report = Report::from_bytes(&bytes, "report.bin").unwrap();
        assert!(report.chip_id_masked());
        let v = verify_with(&w, &report, &w.certs(), None).unwrap();
        assert_passes_every_check(&v);
        assert_eq!(v.signed_by, "VCEK");
        let detail = &v.result(Check::VekHwid).unwrap().detail;
        assert!(
            detail.contains("CHIP_ID is zero: the host masks it (MASK_CHIP_ID)")
                && detail.contains("by the VCEK's signature alone"),
            "{detail}"
        );
        // Another chip's VCEK (another key) still fails: the signature binds.
        let mut s = Scenario::of(&w);
        s.report = bytes;
        s.certs.vcek = Some(parse_cert(testing::MILAN_VCEK, "vcek_milan.der").unwrap());
        let v = s.verify(&w);
        assert!(
            v.failed().contains(&Check::ReportSignature),
            "{:?}",
            v.failed()
        );
        let no_vcek = CertSet {
            vcek: None,
            ..w.certs()
        };
        let err = verify_with(&w, &report, &no_vcek, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("CHIP_ID is masked, so it cannot be fetched"),
            "{err}"
        );
    }

    /// The real Milan report of the sev crate, checked against what it carries.
    fn real_milan() -> (Report, SnpExpected, [u8; 64]) {
        let report = Report::from_bytes(testing::MILAN_REPORT_HEX, "report_milan.hex").unwrap();
        let mut expected = testing::expected_for(&report.parsed.measurement);
        expected.policy.smt = report.parsed.policy.smt_allowed();
        expected.vmpl = report.parsed.vmpl;
        let nonce = report.parsed.report_data;
        (report, expected, nonce)
    }

    /// The firmware of 2023, when the real report was made (SNP firmware 1.52).
    const CATALOG_2023: &str = "format_version: 1\ngenerations:\n  - name: milan\n    cpu_family: 0x19\n    cpu_models: [[0x00, 0x0f]]\n    minimum_tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 }\n";

    #[test]
    fn real_milan_report_verifies_fully() {
        let (report, expected, nonce) = real_milan();
        let certs = CertSet {
            vcek: Some(parse_cert(testing::MILAN_VCEK, "vcek_milan.der").unwrap()),
            ..CertSet::default()
        };
        let inputs = Inputs {
            report: &report,
            certs: &certs,
            expected: &expected,
            nonce: Some(&nonce),
            generation: None,
        };
        let catalog = Catalog::parse(CATALOG_2023, "catalog-2023.yaml").unwrap();
        let v = verify(&inputs, &Trust::with_catalog(&catalog)).unwrap();
        assert!(v.passed, "{}", v.lines().join("\n"));
        assert!(v.checks.iter().all(|c| c.status == Status::Passed));
        assert_eq!(v.generation_from, "the VCEK's productName `Milan-B0`");
        assert!(v
            .result(Check::Ask)
            .unwrap()
            .detail
            .contains("built-in Milan ASK"));

        // Against today's built-in catalog, its 2023 firmware is too old, and only that fails.
        let v = verify(&inputs, &Trust::builtin()).unwrap();
        assert_eq!(v.failed(), [Check::TcbMinimum]);
        let detail = &v.result(Check::TcbMinimum).unwrap().detail;
        assert!(
            detail.contains("bootloader 3 < 4, snp 8 < 21, microcode 115 < 211"),
            "{detail}"
        );

        // The KDS chain of the test data is the built-in one.
        let chain = crate::snp::certs::chain_set(
            include_bytes!("../../testdata/snp/cert_chain_milan"),
            "cert_chain_milan",
        )
        .unwrap();
        let mut with_chain = certs.clone();
        with_chain.fill_from(chain);
        let v = verify(
            &Inputs {
                certs: &with_chain,
                ..inputs
            },
            &Trust::with_catalog(&catalog),
        )
        .unwrap();
        assert!(v.passed, "{}", v.lines().join("\n"));
    }

    #[test]
    fn real_milan_report_rejections() {
        let (report, expected, nonce) = real_milan();
        let catalog = Catalog::parse(CATALOG_2023, "catalog-2023.yaml").unwrap();
        let trust = Trust::with_catalog(&catalog);
        let vcek = parse_cert(testing::MILAN_VCEK, "vcek_milan.der").unwrap();
        let run = |certs: CertSet| {
            verify(
                &Inputs {
                    report: &report,
                    certs: &certs,
                    expected: &expected,
                    nonce: Some(&nonce),
                    generation: None,
                },
                &trust,
            )
            .unwrap()
        };
        // Genoa's real root given for a Milan chip.
        let genoa_ark = Cert::new(Generation::Genoa.builtin_ark(), "ark.pem").unwrap();
        let v = run(CertSet {
            ark: Some(genoa_ark),
            vcek: Some(vcek.clone()),
            ..CertSet::default()
        });
        assert_eq!(v.failed(), [Check::Ark]);
        // Genoa's real ASK: it signed neither itself under Milan's ARK nor this VCEK.
        let genoa_ask = Cert::new(Generation::Genoa.builtin_ask(), "ask.pem").unwrap();
        let v = run(CertSet {
            ask: Some(genoa_ask),
            vcek: Some(vcek.clone()),
            ..CertSet::default()
        });
        assert_eq!(v.failed(), [Check::Ask, Check::Vek]);
        // A real VCEK of another Milan chip with the same TCB (Azure's).
        let other = parse_cert(
            include_bytes!("../../testdata/snp/vcek_milan_azure.pem"),
            "vcek_milan_azure.pem",
        )
        .unwrap();
        let v = run(CertSet {
            vcek: Some(other),
            ..CertSet::default()
        });
        assert_eq!(v.failed(), [Check::VekHwid, Check::ReportSignature]);
        assert!(v
            .result(Check::VekHwid)
            .unwrap()
            .detail
            .contains("hwID da8a5695b5aeafdb…"));
    }

    #[test]
    fn output_is_lines_and_json() {
        let w = World::new();
        let mut s = Scenario::of(&w);
        s.nonce = b"stale".to_vec();
        let v = s.verify(&w);
        let lines = v.lines();
        assert!(
            lines[0].starts_with("SEV-SNP report of a Milan node"),
            "{}",
            lines[0]
        );
        assert_eq!(lines.len(), Check::ALL.len() + 2);
        assert_eq!(
            lines.last().unwrap(),
            "11 checks: 10 passed, 1 failed, 0 skipped"
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["passed"], false);
        assert_eq!(json["generation"], "milan");
        assert_eq!(json["checks"][9]["check"], "report_data");
        assert_eq!(json["checks"][9]["status"], "failed");
    }
}
