//! The certification report: `setup-report.json` (the machine's identity and every verdict,
//! pretty JSON with a trailing newline, whose sha256 names it) and the console's text, one
//! line per check, then what to do about each blocking one; and the summary a phone reads
//! from its QR code.

use crate::certify::{Status, Verdict};
use crate::inventory::Inventory;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What `setup-report.json` holds.
#[derive(Debug, Serialize)]
pub struct SetupReport<'a> {
    pub format_version: u32,
    pub certified: bool,
    pub cpu: &'a crate::inventory::CpuIdentity,
    /// NVMe drives by serial and model, as installed.
    pub nvme: Vec<(Option<String>, Option<String>)>,
    /// sha256 of the TPM's EK certificate as read: a quote of PCR 15 ties this report to
    /// the TPM that certificate names.
    pub ek_certificate_sha256: Option<String>,
    pub verdict: &'a Verdict,
}

impl<'a> SetupReport<'a> {
    pub fn new(inventory: &'a Inventory, verdict: &'a Verdict) -> SetupReport<'a> {
        SetupReport {
            format_version: 1,
            certified: verdict.certified(),
            cpu: &inventory.cpu,
            nvme: inventory
                .topology
                .nvme
                .iter()
                .map(|c| (c.serial.clone(), c.model.clone()))
                .collect(),
            ek_certificate_sha256: inventory
                .tpm
                .ek_certificate
                .as_ref()
                .ok()
                .map(|der| hex_of(&Sha256::digest(der))),
            verdict,
        }
    }

    /// The file's bytes and their sha256 (hex).
    pub fn to_bytes(&self) -> (Vec<u8>, String) {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a report serializes");
        bytes.push(b'\n');
        let sha = hex_of(&Sha256::digest(&bytes));
        (bytes, sha)
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The console's text.
pub fn render(verdict: &Verdict) -> String {
    let mut out = String::new();
    let generation = verdict.generation.as_deref().unwrap_or("none");
    out.push_str(&format!("certification against generation {generation}\n"));
    for c in &verdict.checks {
        let status = match (c.status, c.acknowledged) {
            (Status::Pass, _) => "pass",
            (Status::Warn, true) => "warn (acknowledged)",
            (Status::Warn, false) => "WARN",
            (Status::Fail, _) => "FAIL",
        };
        out.push_str(&format!("{status:<5} {:<20} {}\n", c.id, c.found));
    }
    let blocking: Vec<_> = verdict.blocking().collect();
    if blocking.is_empty() {
        out.push_str("CERTIFIED\n");
    } else {
        out.push_str(&format!(
            "NOT CERTIFIED: {} check(s) stop the install\n",
            blocking.len()
        ));
        for c in blocking {
            out.push_str(&format!(
                "  {}: expected {}, found {}\n    do: {}\n",
                c.id, c.expected, c.found, c.action
            ));
        }
    }
    out
}

/// The one line a phone reads from the QR code: `plinth-setup gen2-genoa CERTIFIED
/// sha256=…`, or `NOT-CERTIFIED` with the blocking check ids.
pub fn summary(verdict: &Verdict, report_sha256: &str) -> String {
    let generation = verdict.generation.as_deref().unwrap_or("none");
    let blocking: Vec<&str> = verdict.blocking().map(|c| c.id).collect();
    if blocking.is_empty() {
        format!("plinth-setup {generation} CERTIFIED sha256={report_sha256}")
    } else {
        format!(
            "plinth-setup {generation} NOT-CERTIFIED blocking={} sha256={report_sha256}",
            blocking.join(",")
        )
    }
}

/// `text` as a QR code drawn with Unicode half blocks (two modules per character row), with
/// its quiet zone, for a terminal or the console.
pub fn qr(text: &str) -> String {
    match qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M) {
        Ok(code) => {
            let mut out = code
                .render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build();
            out.push('\n');
            out
        }
        Err(e) => format!("(no QR code: {e})\n"),
    }
}
