//! The AMD extensions of a VCEK or VLEK certificate (AMD's "Versioned Chip Endorsement Key
//! (VCEK) Certificate and KDS Interface Specification" 57230, "VCEK Certificate
//! Extensions"): the TCB the key was derived for (blSPL 1.3.6.1.4.1.3704.1.3.1, teeSPL .3.2,
//! snpSPL .3.3, ucodeSPL .3.8, and fmcSPL .3.9 on Turin, each a DER INTEGER), the chip a VCEK
//! belongs to (hwID 1.3.6.1.4.1.3704.1.4: the chip id's bytes, 64 on Milan and Genoa, 8 on
//! Turin; a VLEK has none) and the product name (1.3.6.1.4.1.3704.1.2, `Milan-B0`).

use sev::certs::snp::Certificate;
use x509_cert::der::asn1::{Ia5StringRef, ObjectIdentifier};
use x509_cert::der::{Decode, Tag, Tagged};

const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");

/// The TCB components of a VEK certificate: (name as in [`super::tcb::Tcb`], OID).
pub const TCB_OIDS: [(&str, &str); 5] = [
    ("fmc", "1.3.6.1.4.1.3704.1.3.9"),
    ("bootloader", "1.3.6.1.4.1.3704.1.3.1"),
    ("tee", "1.3.6.1.4.1.3704.1.3.2"),
    ("snp", "1.3.6.1.4.1.3704.1.3.3"),
    ("microcode", "1.3.6.1.4.1.3704.1.3.8"),
];

/// What a VCEK's or VLEK's extensions say; a component it lacks is `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VekExtensions {
    pub fmc: Option<u8>,
    pub bootloader: Option<u8>,
    pub tee: Option<u8>,
    pub snp: Option<u8>,
    pub microcode: Option<u8>,
    pub hwid: Option<Vec<u8>>,
    pub product_name: Option<String>,
}

impl VekExtensions {
    /// The TCB component named `name` (`fmc`, `bootloader`, `tee`, `snp`, `microcode`).
    pub fn tcb_component(&self, name: &str) -> Option<u8> {
        match name {
            "fmc" => self.fmc,
            "bootloader" => self.bootloader,
            "tee" => self.tee,
            "snp" => self.snp,
            "microcode" => self.microcode,
            _ => None,
        }
    }
}

/// Read the AMD extensions of `cert`; an extension present but not encoded as the
/// specification says is an error naming its OID.
pub fn read(cert: &Certificate) -> Result<VekExtensions, String> {
    let x509: x509_cert::Certificate = cert.clone().into();
    let mut out = VekExtensions::default();
    for ext in x509.tbs_certificate.extensions.iter().flatten() {
        let value = ext.extn_value.as_bytes();
        let oid = ext.extn_id;
        let spl =
            || spl(value).ok_or_else(|| format!("extension {oid}: not a DER INTEGER of 0 to 255"));
        match oid {
            BL_SPL => out.bootloader = Some(spl()?),
            TEE_SPL => out.tee = Some(spl()?),
            SNP_SPL => out.snp = Some(spl()?),
            UCODE_SPL => out.microcode = Some(spl()?),
            FMC_SPL => out.fmc = Some(spl()?),
            HW_ID => out.hwid = Some(hwid(value)),
            PRODUCT_NAME => {
                out.product_name = Ia5StringRef::from_der(value).ok().map(|s| s.to_string())
            }
            _ => {}
        }
    }
    Ok(out)
}

/// An SPL: a DER INTEGER. Its content is taken as unsigned (a leading zero byte is allowed),
/// so that a value of 128 or more reads right whether or not the encoder added the zero.
fn spl(value: &[u8]) -> Option<u8> {
    let any = x509_cert::der::asn1::AnyRef::from_der(value).ok()?;
    if any.tag() != Tag::Integer {
        return None;
    }
    match any.value() {
        [v] => Some(*v),
        [0, v] => Some(*v),
        _ => None,
    }
}

/// hwID: the raw chip id bytes (how AMD encodes it), or those bytes wrapped in a DER OCTET
/// STRING (tolerated).
fn hwid(value: &[u8]) -> Vec<u8> {
    match value {
        [0x04, len, rest @ ..]
            if usize::from(*len) == rest.len() && matches!(rest.len(), 8 | 64) =>
        {
            rest.to_vec()
        }
        raw => raw.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_milan_and_turin_vceks() {
        let milan =
            Certificate::from_der(include_bytes!("../../testdata/snp/vcek_milan.der")).unwrap();
        let e = read(&milan).unwrap();
        assert_eq!(
            (e.fmc, e.bootloader, e.tee, e.snp, e.microcode),
            (None, Some(3), Some(0), Some(8), Some(115))
        );
        assert_eq!(e.hwid.as_ref().unwrap().len(), 64);
        assert_eq!(hex::encode(&e.hwid.unwrap()[..4]), "d49554ec");
        assert_eq!(e.product_name.as_deref(), Some("Milan-B0"));

        let turin =
            Certificate::from_der(include_bytes!("../../testdata/snp/vcek_turin.der")).unwrap();
        let e = read(&turin).unwrap();
        assert_eq!(
            (e.fmc, e.bootloader, e.tee, e.snp, e.microcode),
            (Some(0), Some(0), Some(0), Some(0), Some(9))
        );
        assert_eq!(hex::encode(e.hwid.unwrap()), "1e550a8ee5cf9f4d");
        assert_eq!(e.product_name.as_deref(), Some("Turin"));
    }

    #[test]
    fn spl_encodings() {
        assert_eq!(spl(&[0x02, 0x01, 0x73]), Some(115));
        assert_eq!(spl(&[0x02, 0x02, 0x00, 0xd1]), Some(209));
        assert_eq!(spl(&[0x02, 0x01, 0xd1]), Some(209));
        assert_eq!(spl(&[0x04, 0x01, 0x01]), None);
        assert_eq!(spl(&[0x02, 0x02, 0x01, 0x00]), None);
        assert_eq!(
            hwid(&[0x04, 8, 1, 2, 3, 4, 5, 6, 7, 8]),
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
    }
}
