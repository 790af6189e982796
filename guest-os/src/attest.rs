//! `plinth-guest attest`: request an extended SEV-SNP attestation report from the AMD secure
//! processor (`/dev/sev-guest`, through the `sev` crate) with REPORT_DATA made from the
//! caller's nonce ([`plinth_firmware::snp::report_data`]), and write it with the certificates
//! the host supplied: `<out>/report.bin` and `<out>/certs/{ark,ask,vcek,vlek}.der`, ready for
//! `plinth attest verify <out>/report.bin --certs <out>/certs`.

use plinth_firmware::snp::report_data::{parse_nonce_hex, report_data};
use sev::firmware::host::CertType;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The guest device of the SEV-SNP firmware interface.
pub const DEVICE: &str = "/dev/sev-guest";
/// The certificate files written under `certs/`.
const CERT_NAMES: [&str; 4] = ["ark", "ask", "vcek", "vlek"];

/// Request an attestation report bound to a nonce.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  plinth-guest attest --nonce $(openssl rand -hex 32) --out /run/attest"
)]
pub struct AttestArgs {
    /// The verifier's nonce, hex (1 to 64 bytes), zero-padded into REPORT_DATA.
    #[arg(long, value_name = "HEX")]
    pub nonce: String,
    /// Where to write report.bin and certs/.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// The VMPL to request the report at (0 without an SVSM, as measurements.json expects).
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=3))]
    pub vmpl: u32,
}

impl AttestArgs {
    pub fn run(self) -> ExitCode {
        match attest(&self) {
            Ok(written) => {
                for path in written {
                    println!("{}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::FAILURE
            }
        }
    }
}

/// Request the report and write it; returns the files written.
fn attest(args: &AttestArgs) -> Result<Vec<PathBuf>, String> {
    let nonce = parse_nonce_hex(&args.nonce).map_err(|e| format!("--nonce: {e}"))?;
    let data = report_data(&nonce).map_err(|e| format!("--nonce: {e}"))?;
    if !Path::new(DEVICE).exists() {
        return Err(format!(
            "this machine is not an SEV-SNP guest (no {DEVICE}): attestation reports come only from a VM launched with SEV-SNP\n  hint: on an SEV-SNP guest, load the driver with `modprobe sev-guest`"
        ));
    }
    let mut firmware = sev::firmware::guest::Firmware::open()
        .map_err(|e| format!("{DEVICE}: cannot open: {e}\n  hint: run as root"))?;
    let (report, table) = firmware
        .get_ext_report(None, Some(data), Some(args.vmpl))
        .map_err(|e| format!("{DEVICE}: the extended report request failed: {e}"))?;
    let mut written = Vec::new();
    let write = |path: PathBuf, bytes: &[u8], written: &mut Vec<PathBuf>| {
        std::fs::write(&path, bytes)
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?;
        written.push(path);
        Ok::<(), String>(())
    };
    let certs_dir = args.out.join("certs");
    std::fs::create_dir_all(&certs_dir)
        .map_err(|e| format!("{}: cannot create: {e}", certs_dir.display()))?;
    // A certificate of an earlier report must not pass for this one's.
    for name in CERT_NAMES {
        let stale = certs_dir.join(format!("{name}.der"));
        match std::fs::remove_file(&stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{}: cannot remove: {e}", stale.display()));
            }
            _ => {}
        }
    }
    write(args.out.join("report.bin"), &report, &mut written)?;
    for entry in table.unwrap_or_default() {
        let name = match entry.cert_type {
            CertType::ARK => "ark",
            CertType::ASK => "ask",
            CertType::VCEK => "vcek",
            CertType::VLEK => "vlek",
            _ => continue,
        };
        write(
            certs_dir.join(format!("{name}.der")),
            entry.data(),
            &mut written,
        )?;
    }
    Ok(written)
}
