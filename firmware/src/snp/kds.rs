//! AMD's Key Distribution Service (KDS interface specification 57230, "VCEK Certificate"
//! and "Certificate Chain" requests): where a chip's VCEK for one TCB is, and where a
//! generation's certificate chains are (ASK and ARK for VCEKs, ASVK and ARK for VLEKs). The
//! VCEK comes as DER, a chain as PEM (signing key first, then the root). Fetching is the
//! caller's (`plinth attest verify --fetch`); a VLEK cannot be fetched (AMD issues it to the
//! cloud provider).

use super::generation::Generation;
use super::tcb::Tcb;

/// AMD's service.
pub const DEFAULT_BASE: &str = "https://kdsintf.amd.com";

/// The hardware id KDS knows a chip by: the report's CHIP_ID, of which Turin uses the first 8
/// bytes (the rest is zero).
pub fn hwid(generation: Generation, chip_id: &[u8; 64]) -> &[u8] {
    if generation == Generation::Turin {
        &chip_id[..8]
    } else {
        chip_id
    }
}

/// `<base>/vcek/v1/<Product>/<hwid hex>?[fmcSPL=..&]blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`
/// (SPLs in decimal, two digits at least, as AMD's examples write them).
pub fn vcek_url(base: &str, generation: Generation, chip_id: &[u8; 64], tcb: &Tcb) -> String {
    let mut query = Vec::new();
    if generation.has_fmc() {
        query.push(format!("fmcSPL={:02}", tcb.fmc.unwrap_or(0)));
    }
    query.extend([
        format!("blSPL={:02}", tcb.bootloader),
        format!("teeSPL={:02}", tcb.tee),
        format!("snpSPL={:02}", tcb.snp),
        format!("ucodeSPL={:02}", tcb.microcode),
    ]);
    format!(
        "{}/vcek/v1/{}/{}?{}",
        base.trim_end_matches('/'),
        generation.product(),
        hex::encode(hwid(generation, chip_id)),
        query.join("&")
    )
}

/// The ASK and ARK of a generation: `<base>/vcek/v1/<Product>/cert_chain`.
pub fn cert_chain_url(base: &str, generation: Generation) -> String {
    format!(
        "{}/vcek/v1/{}/cert_chain",
        base.trim_end_matches('/'),
        generation.product()
    )
}

/// The ASVK and ARK of a generation: `<base>/vlek/v1/<Product>/cert_chain`.
pub fn vlek_cert_chain_url(base: &str, generation: Generation) -> String {
    format!(
        "{}/vlek/v1/{}/cert_chain",
        base.trim_end_matches('/'),
        generation.product()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let mut chip = [0u8; 64];
        chip[0] = 0xd4;
        chip[8] = 0x95;
        let tcb = Tcb {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        let url = vcek_url(DEFAULT_BASE, Generation::Milan, &chip, &tcb);
        assert_eq!(
            url,
            format!(
                "https://kdsintf.amd.com/vcek/v1/Milan/{}?blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115",
                hex::encode(chip)
            )
        );
        let turin = Tcb {
            fmc: Some(1),
            ..tcb
        };
        assert_eq!(
            vcek_url("http://127.0.0.1:9/", Generation::Turin, &chip, &turin),
            "http://127.0.0.1:9/vcek/v1/Turin/d400000000000000?fmcSPL=01&blSPL=03&teeSPL=00&snpSPL=08&ucodeSPL=115"
        );
        assert_eq!(
            cert_chain_url(DEFAULT_BASE, Generation::Genoa),
            "https://kdsintf.amd.com/vcek/v1/Genoa/cert_chain"
        );
        assert_eq!(
            vlek_cert_chain_url(DEFAULT_BASE, Generation::Milan),
            "https://kdsintf.amd.com/vlek/v1/Milan/cert_chain"
        );
    }
}
