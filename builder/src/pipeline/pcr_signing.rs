//! The signed PCR policy of an OS that keeps sealed state (docs/state-design.md §2): each
//! slot's UKI carries the release key's public half (`.pcrpkey`, measured into PCR 11) and
//! its signature of the PCR 11 and 12 values that UKI leaves in the initrd (`.pcrsig`, not
//! measured), so that a volume enrolled by one release opens with any later one the same key
//! signed, and with nothing else.
//!
//! A build signs with the release engineer's key ([`Signing::Key`]). A rebuild (`plinth
//! verify`) has no private key: it takes the public key and signatures the manifest
//! records ([`Signing::Recorded`]), checks each against the PCR values it predicts itself,
//! and embeds them, so that the rebuilt UKI is the release's byte for byte. A signature that
//! fails the check is embedded all the same (the comparison then names only what else
//! differs) and kept in [`Recorded::mismatches`]: the verify fails on it. Without a key
//! ([`Signing::Unsigned`]) the UKI carries neither section and the state is sealed to the
//! PCR values of this one build.

use plinth_firmware::pcr_policy::{self, PcrValues, PolicyError, PublicKey, ReleaseKey};
use plinth_release::Slot;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The PCRs a signed policy covers: the UKI (PCR 11, with the boot phase `enter-initrd`)
/// and the command line the boot loader passed (PCR 12).
pub const SIGNED_PCRS: [u32; 2] = [11, 12];

/// The boot phase the signature is for: the initrd, where the state is opened. Once the
/// initrd is left, PCR 11 has moved on and the running system cannot unseal.
pub const SIGNED_PHASE: &str = "enter-initrd";

/// How a build signs its UKIs' PCR policy.
pub enum Signing {
    /// No `.pcrpkey` or `.pcrsig`.
    Unsigned,
    /// Sign with this key.
    Key(ReleaseKey),
    /// A rebuild: embed what the release recorded, once checked.
    Recorded(Recorded),
}

/// A release's public key and per-slot signatures, as its manifest records them.
pub struct Recorded {
    pub public: PublicKey,
    pub signatures: BTreeMap<Option<Slot>, String>,
    /// Each recorded signature that does not sign the rebuild's PCR values, and why.
    pub mismatches: Mutex<Vec<String>>,
}

impl Recorded {
    pub fn new(public: PublicKey, signatures: BTreeMap<Option<Slot>, String>) -> Recorded {
        Recorded {
            public,
            signatures,
            mismatches: Mutex::new(Vec::new()),
        }
    }

    /// The mismatches found so far.
    pub fn mismatches(&self) -> Vec<String> {
        self.mismatches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Why a UKI could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("the release records no PCR signature for slot {slot}\n  hint: the manifest's measurements.slots[].pcr_signature is missing")]
    NotRecorded { slot: String },
}

impl Signing {
    /// The `.pcrpkey` section: the public key's PEM, `None` when unsigned.
    pub fn public_pem(&self) -> Result<Option<String>, SigningError> {
        Ok(match self {
            Signing::Unsigned => None,
            Signing::Key(k) => Some(k.public_pem()?),
            Signing::Recorded(r) => Some(r.public.pem()?),
        })
    }

    /// The `.pcrsig` section for `slot` whose UKI leaves `pcrs` in the initrd.
    pub fn signature(
        &self,
        slot: Option<Slot>,
        pcrs: &PcrValues,
    ) -> Result<Option<String>, SigningError> {
        match self {
            Signing::Unsigned => Ok(None),
            Signing::Key(k) => Ok(Some(pcr_policy::signature_json(&[k.sign(pcrs)?]))),
            Signing::Recorded(r) => {
                let shown = slot.map_or("-".to_string(), |s| s.to_string());
                let json = r
                    .signatures
                    .get(&slot)
                    .ok_or_else(|| SigningError::NotRecorded {
                        slot: shown.clone(),
                    })?;
                if let Err(e) = r.public.check_signature(
                    json,
                    pcrs,
                    &format!("the release's PCR signature of slot {shown}"),
                ) {
                    r.mismatches
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(e.to_string());
                }
                Ok(Some(json.clone()))
            }
        }
    }

    /// The words of the image stage's cache key: what changes the UKIs' bytes.
    pub fn describe(&self) -> Result<String, SigningError> {
        Ok(match self {
            Signing::Unsigned => "unsigned".into(),
            Signing::Key(k) => format!("key {}", hex::encode(k.fingerprint()?)),
            Signing::Recorded(r) => format!(
                "recorded {} {:?}",
                hex::encode(r.public.fingerprint()?),
                r.signatures
            ),
        })
    }
}
