//! What SetupOS asks of the TPM: its EK certificate (from the NV indices the TCG EK profile
//! reserves) and an extend of PCR 15 with the certification report's sha256, so a later
//! quote covers what SetupOS found. systemd 252 measures nothing into PCR 15.

use std::str::FromStr;
use tss_esapi::handles::{NvIndexTpmHandle, PcrHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::NvAuth;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{Digest, DigestValues};
use tss_esapi::tcti_ldr::TctiNameConf;

/// The EK certificate NV indices, RSA 2048 first, then ECC P-256 and P-384.
const EK_NV_INDICES: [u32; 3] = [0x01c0_0002, 0x01c0_000a, 0x01c0_0016];
/// The PCR the certification report is measured into.
pub const REPORT_PCR: u32 = 15;

fn context(tcti: &str) -> Result<tss_esapi::Context, String> {
    let conf = TctiNameConf::from_str(tcti).map_err(|e| format!("TCTI `{tcti}`: {e}"))?;
    tss_esapi::Context::new(conf).map_err(|e| format!("cannot open the TPM ({tcti}): {e}"))
}

/// The first EK certificate the TPM holds (DER, possibly padded).
pub fn ek_certificate(tcti: &str) -> Result<Vec<u8>, String> {
    let mut ctx = context(tcti)?;
    let mut errors = Vec::new();
    for index in EK_NV_INDICES {
        let handle = NvIndexTpmHandle::new(index).map_err(|e| e.to_string())?;
        // Owner authorization (the empty password on a provisioned machine's EK indices).
        let read = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            tss_esapi::abstraction::nv::read_full(ctx, NvAuth::Owner, handle)
        });
        match read {
            Ok(der) if !der.is_empty() => return Ok(der),
            Ok(_) => errors.push(format!("{index:#x}: empty")),
            Err(e) => errors.push(format!("{index:#x}: {e}")),
        }
    }
    Err(format!("no EK certificate in NV ({})", errors.join("; ")))
}

/// Extend [`REPORT_PCR`]'s SHA-256 bank with `digest`.
pub fn extend_report(tcti: &str, digest: [u8; 32]) -> Result<(), String> {
    let mut ctx = context(tcti)?;
    let mut values = DigestValues::new();
    values.set(
        HashingAlgorithm::Sha256,
        Digest::try_from(digest.to_vec()).map_err(|e| e.to_string())?,
    );
    let pcr = PcrHandle::try_from(REPORT_PCR).map_err(|e| e.to_string())?;
    ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
        ctx.pcr_extend(pcr, values)
    })
    .map_err(|e| format!("extending PCR {REPORT_PCR}: {e}"))
}
