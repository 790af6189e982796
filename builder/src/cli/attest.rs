//! `plinth attest verify`: check a node's SEV-SNP attestation report against a release's
//! `measurements.json` (see [`plinth_firmware::snp::verify`]): AMD's chain up to the pinned
//! root, the VCEK's TCB and chip, the report's signature, measurement, policy, minimum TCB,
//! nonce and VMPL. The certificates come from files, an extended report's certificate table,
//! or, with `--fetch`, from AMD's key distribution service (cached). Reports signed by a
//! VLEK with the chip id masked (AWS EC2's) are checked like any other; their generation
//! comes from `--generation`, the VLEK's productName or the chain's names.

use super::{BadInput, CacheArg, CheckFailed, Global, Output};
use crate::packages::cache::Cache;
use anyhow::Context;
use plinth_firmware::catalog::Catalog;
use plinth_firmware::measurements::Measurements;
use plinth_firmware::snp::certs::{self, CertSet, Role};
use plinth_firmware::snp::generation::Generation;
use plinth_firmware::snp::report::Report;
use plinth_firmware::snp::report_data::parse_nonce_hex;
use plinth_firmware::snp::tcb::Tcb;
use plinth_firmware::snp::verify::{self, Inputs, Trust};
use plinth_firmware::snp::{cert_table, kds};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Environment variable overriding AMD's KDS (below `--kds-url`).
pub const KDS_URL_ENV: &str = "PLINTH_KDS_URL";

const VERIFY_HELP: &str = "\
Checks, each named in the output: ark (the pinned AMD root of the generation),
ask (ARK signs ASK, or ASVK for a VLEK), vek (ASK signs VCEK or VLEK), vek_tcb
and vek_hwid (the VCEK's TCB and chip are the report's), report_signature,
measurement (one of measurements.json's launch digests), policy (debug and
migration agent off, SMT as expected, ABI minimum), tcb_minimum (the firmware
catalog's floor), report_data (the nonce, zero-padded to 64 bytes), vmpl.

The generation (whose AMD root is pinned) is the report's CPUID (version 3 and
later), --generation and the VCEK's or VLEK's productName, which must agree (else
an error); if none tells, the names of the chain given (ARK-Milan, SEV-Milan,
SEV-VLEK-Milan). A chain of another generation fails ark or ask. A VLEK-signed report with CHIP_ID zero (AWS EC2: the host masks the
chip id) skips vek_hwid; so does a VCEK-signed one, which its VCEK's signature
binds to the chip, but its VCEK must then be given (KDS finds VCEKs by chip id).

Exit codes: 0 every check passed (report_data is skipped without --nonce), 1 a
check failed (every check is printed), 2 bad input (an unreadable report or
certificate, a missing VCEK or one KDS could not deliver, a bad nonce).

Examples:
  plinth-guest attest --nonce $NONCE --out a     (on the node)
  plinth attest verify a/report.bin --certs a/certs \\
      --expect out/guest-os/1.0.0/measurements.json --nonce $NONCE
  plinth attest verify report.bin --vcek vcek.der --expect m.json --json
  plinth attest verify report.bin --fetch --expect m.json --generation milan
  plinth attest verify report.bin --cert-table certs.bin --fetch --generation milan \\
      --expect m.json      (AWS EC2: the table has the VLEK; the ASVK is fetched)";

/// Check SEV-SNP attestation reports.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub verb: AttestVerb,
}

#[derive(Debug, clap::Subcommand)]
pub enum AttestVerb {
    Verify(VerifyArgs),
}

/// Verify a node's SEV-SNP attestation report against measurements.json.
#[derive(Debug, clap::Args)]
#[command(after_help = VERIFY_HELP)]
pub struct VerifyArgs {
    /// The report: 1184 bytes (plinth-guest attest's report.bin) or their hex.
    #[arg(value_name = "REPORT")]
    pub report: PathBuf,
    /// The release's measurements.json (its `snp` part is what is expected).
    #[arg(long, value_name = "FILE")]
    pub expect: PathBuf,
    /// Certificates: ark, ask, asvk, vcek, vlek (.pem or .der), cert_chain.pem.
    #[arg(long, value_name = "DIR")]
    pub certs: Option<PathBuf>,
    /// An extended report's certificate table (GUID table) as the host gave it.
    #[arg(long, value_name = "FILE")]
    pub cert_table: Option<PathBuf>,
    /// The VCEK (PEM or DER); before any in --certs.
    #[arg(long, value_name = "FILE")]
    pub vcek: Option<PathBuf>,
    /// The nonce the report must carry (hex, 1 to 64 bytes).
    #[arg(long, value_name = "HEX")]
    pub nonce: Option<String>,
    /// The processor generation, for version 2 reports whose VCEK or VLEK and chain do not
    /// name it (AWS EC2's VLEK may not).
    #[arg(long, value_name = "GEN", value_parser = parse_generation)]
    pub generation: Option<Generation>,
    /// Fetch a missing VCEK (or a VLEK's ASVK) from AMD's KDS, cached.
    #[arg(long)]
    pub fetch: bool,
    /// KDS base URL [env: PLINTH_KDS_URL; default: https://kdsintf.amd.com].
    #[arg(long, value_name = "URL")]
    pub kds_url: Option<String>,
    /// A firmware catalog to check against instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    pub catalog: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArg,
}

fn parse_generation(s: &str) -> Result<Generation, String> {
    s.parse()
}

pub fn run(g: &Global, out: &Output, args: Args) -> anyhow::Result<()> {
    match args.verb {
        AttestVerb::Verify(a) => verify_report(g, out, a),
    }
}

fn verify_report(_g: &Global, out: &Output, args: VerifyArgs) -> anyhow::Result<()> {
    let report = Report::read(&args.report).map_err(|e| BadInput(e.to_string()))?;
    let expected = read_expected(&args.expect)?;
    let catalog = match &args.catalog {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| BadInput(format!("{}: cannot read: {e}", path.display())))?;
            Catalog::parse(&text, &path.display().to_string()).map_err(BadInput)?
        }
        None => Catalog::builtin().clone(),
    };
    let nonce = args
        .nonce
        .as_deref()
        .map(parse_nonce_hex)
        .transpose()
        .map_err(|e| BadInput(format!("--nonce: {e}")))?;
    if nonce.is_none() {
        eprintln!(
            "warning: no --nonce: the report's freshness is not checked (an old report of the same VM would pass)"
        );
    }
    let mut certs = load_certs(&args)?;
    if args.fetch {
        fetch_missing(out, &args, &report, &catalog, &mut certs)?;
    }
    let inputs = Inputs {
        report: &report,
        certs: &certs,
        expected: &expected,
        nonce: nonce.as_deref(),
        generation: args.generation,
    };
    let verification = match verify::verify(&inputs, &Trust::with_catalog(&catalog)) {
        Ok(v) => v,
        Err(e) if e.is_bad_input() => return Err(BadInput(e.to_string()).into()),
        Err(e) => return Err(CheckFailed(e.to_string()).into()),
    };
    if out.json {
        out.json_result(&verification)?;
    } else {
        let mut stdout = std::io::stdout().lock();
        for line in verification.lines() {
            writeln!(stdout, "{line}")?;
        }
    }
    if verification.passed {
        return Ok(());
    }
    let failed: Vec<&str> = verification.failed().iter().map(|c| c.name()).collect();
    Err(CheckFailed(format!(
        "{}: {} of {} checks failed: {}",
        args.report.display(),
        failed.len(),
        verification.checks.len(),
        failed.join(", ")
    ))
    .into())
}

/// The `snp` part of a measurements file.
fn read_expected(path: &Path) -> anyhow::Result<plinth_firmware::snp::SnpExpected> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        BadInput(format!(
            "{shown}: cannot read: {e}\n  hint: --expect takes the measurements.json of a GuestOS release (plinth measure guest-os)"
        ))
    })?;
    let m = Measurements::parse(&text, &shown).map_err(BadInput)?;
    m.snp.ok_or_else(|| {
        BadInput(format!(
            "{shown}: has no `snp` part: these are the measurements of {} {}, not of an SEV-SNP guest\n  hint: pass the measurements.json of a GuestOS release",
            m.os, m.version
        ))
        .into()
    })
}

/// The certificates given: `--vcek` first, then `--certs`, then `--cert-table`.
fn load_certs(args: &VerifyArgs) -> anyhow::Result<CertSet> {
    let bad = |e: certs::CertError| BadInput(e.to_string());
    let mut set = CertSet::default();
    if let Some(path) = &args.vcek {
        set.set(Role::Vcek, certs::read_cert(path).map_err(bad)?);
    }
    if let Some(dir) = &args.certs {
        set.fill_from(CertSet::load_dir(dir).map_err(bad)?);
    }
    if let Some(path) = &args.cert_table {
        let shown = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| BadInput(format!("{shown}: cannot read: {e}")))?;
        let entries = cert_table::parse(&bytes).map_err(|e| {
            BadInput(format!(
                "{shown}: not an extended report's certificate table: {e}"
            ))
        })?;
        set.fill_from(CertSet::from_table(&entries, &shown).map_err(bad)?);
    }
    Ok(set)
}

/// With `--fetch`: the VCEK for the report's chip and TCB, or a VLEK's ASVK, from KDS or the
/// cache. AMD's ARK and ASK are built in and never fetched; a VLEK cannot be.
fn fetch_missing(
    out: &Output,
    args: &VerifyArgs,
    report: &Report,
    catalog: &Catalog,
    certs: &mut CertSet,
) -> anyhow::Result<()> {
    let role = verify::vek_role(report, certs);
    let need_vcek = role == Role::Vcek && certs.vcek.is_none();
    let need_asvk = role == Role::Vlek && certs.asvk.is_none() && certs.ask.is_none();
    if !need_vcek && !need_asvk {
        return Ok(());
    }
    if need_vcek && report.chip_id_masked() {
        let e = verify::VerifyError::VcekNotFetchable;
        return Err(BadInput(format!("{}: {e}", args.report.display())).into());
    }
    let (generation, _) = verify::resolve_generation(report, certs, role, args.generation, catalog)
        .map_err(|e| BadInput(format!("{}: {e}", args.report.display())))?;
    let base = args
        .kds_url
        .clone()
        .or_else(|| std::env::var(KDS_URL_ENV).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| kds::DEFAULT_BASE.to_string());
    let kds = Kds::new(&base, Cache::resolve_root(args.cache.cache.as_deref())?);
    if need_vcek {
        let tcb = Tcb::from(report.parsed.reported_tcb);
        let url = kds::vcek_url(&base, generation, &report.parsed.chip_id, &tcb);
        let (bytes, path) = kds.get(out, &url, "der")?;
        let origin = format!("{} (from {url})", path.display());
        certs.set(
            Role::Vcek,
            certs::parse_cert(&bytes, &origin).map_err(|e| {
                BadInput(format!("{e}\n  hint: delete the cached file and try again"))
            })?,
        );
    }
    if need_asvk {
        let url = kds::vlek_cert_chain_url(&base, generation);
        let (bytes, path) = kds.get(out, &url, "pem")?;
        let chain = certs::chain_set(&bytes, &path.display().to_string())
            .map_err(|e| BadInput(format!("{e}\n  hint: delete the cached file and try again")))?;
        certs.fill_from(chain);
    }
    Ok(())
}

/// AMD's KDS behind a cache: `<cache>/kds/<the URL's path and query>`.
struct Kds {
    base: String,
    root: PathBuf,
}

impl Kds {
    fn new(base: &str, cache_root: PathBuf) -> Kds {
        Kds {
            base: base.trim_end_matches('/').to_string(),
            root: cache_root.join("kds"),
        }
    }

    /// Where `url` is cached: its path below the base, the query as a file name.
    fn path(&self, url: &str, ext: &str) -> PathBuf {
        let rest = url.strip_prefix(&self.base).unwrap_or(url);
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let mut p = self.root.clone();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != "..") {
            p.push(clean(part));
        }
        if query.is_empty() {
            p.set_extension(ext);
        } else {
            p.push(format!("{}.{ext}", clean(query)));
        }
        p
    }

    /// The body of `url`, from the cache if there, else downloaded and cached.
    fn get(&self, out: &Output, url: &str, ext: &str) -> anyhow::Result<(Vec<u8>, PathBuf)> {
        let path = self.path(url, ext);
        if let Ok(bytes) = std::fs::read(&path) {
            out.detail(format!("{url}: cached in {}", path.display()));
            return Ok((bytes, path));
        }
        out.info(format!("fetching {url}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let client = crate::packages::http::client();
        let bytes = runtime
            .block_on(crate::packages::http::get(&client, url))
            // Without the VCEK nothing can be checked: like a missing VCEK, bad input (2).
            .map_err(|e| {
                BadInput(format!(
                    "{e}\n  hint: without network, pass the certificates with --vcek or --certs (set {KDS_URL_ENV} or --kds-url for another KDS)"
                ))
            })?;
        let dir = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("writing into {}", dir.display()))?;
        std::fs::write(tmp.path(), &bytes)
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        tmp.persist(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        out.detail(format!("cached as {}", path.display()));
        Ok((bytes, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_paths_follow_the_url() {
        let kds = Kds::new("http://127.0.0.1:1/", PathBuf::from("/c"));
        assert_eq!(
            kds.path(
                "http://127.0.0.1:1/vcek/v1/Milan/abcd?blSPL=03&teeSPL=00",
                "der"
            ),
            PathBuf::from("/c/kds/vcek/v1/Milan/abcd/blSPL_03_teeSPL_00.der")
        );
        assert_eq!(
            kds.path("http://127.0.0.1:1/vlek/v1/Genoa/cert_chain", "pem"),
            PathBuf::from("/c/kds/vlek/v1/Genoa/cert_chain.pem")
        );
    }

    #[test]
    fn fetched_chain_is_cached_and_reused() {
        let chain = include_bytes!("../../../firmware/testdata/snp/cert_chain_milan").to_vec();
        let files = std::collections::HashMap::from([(
            "vlek/v1/Milan/cert_chain".to_string(),
            chain.clone(),
        )]);
        let server = plinth_testkit::TestServer::start(files, plinth_testkit::Faults::none());
        let cache = tempfile::tempdir().unwrap();
        let kds = Kds::new(&server.url(), cache.path().to_path_buf());
        let out = Output {
            verbose: 0,
            quiet: true,
            json: false,
        };
        let url = kds::vlek_cert_chain_url(&server.url(), Generation::Milan);
        let (bytes, path) = kds.get(&out, &url, "pem").unwrap();
        assert_eq!(bytes, chain);
        assert!(path.starts_with(cache.path()));
        let (again, _) = kds.get(&out, &url, "pem").unwrap();
        assert_eq!(again, chain);
        assert_eq!(server.requests_for("vlek/v1/Milan/cert_chain"), 1);
    }
}
