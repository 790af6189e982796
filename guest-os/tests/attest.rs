//! `plinth-guest attest` on a machine that is not an SEV-SNP guest (this one, and CI's): it
//! must say so and fail, and refuse a bad nonce before touching any device.

use std::process::Command;

fn attest(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_plinth-guest"))
        .arg("attest")
        .args(args)
        .output()
        .expect("plinth-guest runs")
}

#[test]
fn without_sev_guest_device_it_says_so() {
    if std::path::Path::new("/dev/sev-guest").exists() {
        eprintln!("skipped: this machine is an SEV-SNP guest");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let out = attest(&[
        "--nonce",
        "00ff",
        "--out",
        &out_dir.path().display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("this machine is not an SEV-SNP guest (no /dev/sev-guest)"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(out_dir.path()).unwrap().next().is_none(),
        "nothing written"
    );
}

#[test]
fn bad_nonce_is_refused() {
    let out = attest(&["--nonce", "xyz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nonce: the nonce `xyz` is not hex"));
    let long = "00".repeat(65);
    let out = attest(&["--nonce", &long]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("65 bytes: expected at most 64"));
}
