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

/// The first EK certificate the TPM holds (DER, possibly padded), with the key the TPM itself
/// derives from that certificate's EK template: the certificate describes this TPM only if
/// the two are the same key (a certificate copied from another TPM is not).
pub fn ek_certificate(tcti: &str) -> Result<(Vec<u8>, EkKey), String> {
    let mut ctx = context(tcti)?;
    let mut errors = Vec::new();
    for index in EK_NV_INDICES {
        let handle = NvIndexTpmHandle::new(index).map_err(|e| e.to_string())?;
        // Owner authorization (the empty password on a provisioned machine's EK indices).
        let read = ctx.execute_with_session(Some(AuthSession::Password), |ctx| {
            tss_esapi::abstraction::nv::read_full(ctx, NvAuth::Owner, handle)
        });
        match read {
            Ok(der) if !der.is_empty() => {
                let key = ek_key(&mut ctx, index)?;
                return Ok((der, key));
            }
            Ok(_) => errors.push(format!("{index:#x}: empty")),
            Err(e) => errors.push(format!("{index:#x}: {e}")),
        }
    }
    Err(format!("no EK certificate in NV ({})", errors.join("; ")))
}

/// The public key of the TPM's endorsement key, as the TPM derives it from the EK template
/// its certificate's NV index goes with (TCG EK profile: RSA 2048 and ECC P-256 in the low
/// range, ECC P-384 in the high range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EkKey {
    /// The RSA modulus, big-endian.
    Rsa(Vec<u8>),
    /// The ECC point's coordinates, big-endian.
    Ecc { x: Vec<u8>, y: Vec<u8> },
}

fn ek_key(ctx: &mut tss_esapi::Context, index: u32) -> Result<EkKey, String> {
    use tss_esapi::abstraction::{ek, AsymmetricAlgorithmSelection};
    use tss_esapi::interface_types::algorithm::AsymmetricAlgorithm;
    use tss_esapi::interface_types::ecc::EccCurve;
    use tss_esapi::structures::Public;
    // The EK is a primary key of the endorsement hierarchy: its template decides it, so the
    // same TPM always derives the same key (tss-esapi's EK helpers authorize it themselves).
    let handle = match index {
        0x01c0_0002 => ek::create_ek_object(ctx, AsymmetricAlgorithm::Rsa, None),
        0x01c0_000a => ek::create_ek_object(ctx, AsymmetricAlgorithm::Ecc, None),
        _ => ek::create_ek_object_2(
            ctx,
            AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
            None,
        ),
    }
    .map_err(|e| format!("creating the EK from its template: {e}"))?;
    let public = ctx.read_public(handle).map(|(p, _, _)| p);
    let _ = ctx.flush_context(handle.into());
    match public.map_err(|e| format!("reading the EK's public part: {e}"))? {
        Public::Rsa { unique, .. } => Ok(EkKey::Rsa(unique.value().to_vec())),
        Public::Ecc { unique, .. } => Ok(EkKey::Ecc {
            x: unique.x().value().to_vec(),
            y: unique.y().value().to_vec(),
        }),
        _ => Err("the EK is neither RSA nor ECC".into()),
    }
}

/// Whether the certificate `der` (possibly padded) certifies `key`.
pub fn certifies(der: &[u8], key: &EkKey) -> Result<bool, String> {
    let spki = plinth_firmware::ek::subject_public_key(der)?;
    Ok(match key {
        EkKey::Rsa(modulus) => {
            let trimmed = |b: &[u8]| {
                b.iter()
                    .skip_while(|&&x| x == 0)
                    .copied()
                    .collect::<Vec<u8>>()
            };
            plinth_firmware::ek::rsa_modulus(&spki).is_ok_and(|m| trimmed(&m) == trimmed(modulus))
        }
        EkKey::Ecc { x, y } => {
            // An uncompressed point: 04 || x || y.
            let mut point = vec![4u8];
            point.extend_from_slice(x);
            point.extend_from_slice(y);
            spki == point
        }
    })
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
