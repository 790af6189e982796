//! Benchmark: `plinth-upgrade apply` against `curl | zstd -d | dd` of the same payload from
//! the same 127.0.0.1 server into the same file-backed slot part, in one run, at two image
//! sizes (env `SIZES`, MiB, default `256,1024`; `RUNS` per side, best counts, default 2).
//!
//! The payload is a plinth update archive (GNU tar, zstd level 3) whose `root.img` mixes
//! zeros, random and text-like 64 KiB blocks (about 2:1, like a root file system image),
//! elected and published by plinth-governance's own verbs. Caches are dropped before each
//! side when run as root. Each side is timed by `/usr/bin/time`, which also gives its peak
//! RSS (the baseline's: its largest process).
//!
//! Figures: `ratio` = baseline seconds / apply's seconds without its read-back (the issue's
//! scope: download, verify, decompress, write; apply's read-back of every part, which the
//! baseline does not do, is reported apart), `wall_ratio` = baseline / apply's whole run;
//! apply's peak RSS in MiB (target: at most 64, whatever the size). A table, then one JSON
//! line per size.
//!
//! Run: `ci/bench-upgrade` (or `cargo bench -p plinth-upgrade --bench apply`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

const OPEN: &str = "2026-01-01T00:00:00Z";
const UKI: usize = 64 << 10;

/// 64 KiB blocks: zeros, random, and text-like, by a hash of the block's index.
fn root_block(i: u64, out: &mut [u8]) {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    match next() % 4 {
        0 => out.fill(0),
        1 => out.chunks_mut(8).for_each(|c| {
            let v = next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }),
        _ => {
            let mut pos = 0;
            let mut line = 0u64;
            while pos < out.len() {
                let l = format!(
                    "/usr/lib/x86_64-linux-gnu/lib{}.so.{} {:08x} block {i} line {line}\n",
                    ["ssl", "crypto", "systemd", "tss2-esys", "zstd"][(next() % 5) as usize],
                    next() % 4,
                    next() as u32
                );
                let n = l.len().min(out.len() - pos);
                out[pos..pos + n].copy_from_slice(&l.as_bytes()[..n]);
                pos += n;
                line += 1;
            }
        }
    }
}

/// The update archive with a `root.img` of `mib` MiB, streamed through zstd.
fn payload(mib: u64) -> Vec<u8> {
    let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
    enc.multithread(2).unwrap();
    let root = mib << 20;
    enc.write_all(&tar_header("root.img", root)).unwrap();
    let mut block = vec![0u8; 64 << 10];
    for i in 0..root / block.len() as u64 {
        root_block(i, &mut block);
        enc.write_all(&block).unwrap();
    }
    for (name, seed) in [("host-os-a.efi", 101u8), ("host-os-b.efi", 201)] {
        enc.write_all(&tar_header(name, UKI as u64)).unwrap();
        enc.write_all(&pattern(seed, UKI)).unwrap();
    }
    enc.write_all(&[0u8; 1024]).unwrap();
    enc.finish().unwrap()
}

fn drop_caches() {
    if nix::unistd::Uid::effective().is_root() {
        let _ = Command::new("sync").status();
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

/// Run `args` under `/usr/bin/time`: (seconds, peak RSS in KiB, stdout).
fn timed(args: &[&str]) -> (f64, u64, String) {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "PLINTH-TIME %e %M"])
        .args(args)
        .output()
        .expect("/usr/bin/time (Debian's package `time`)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{args:?} failed: {stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line = stderr
        .lines()
        .rfind(|l| l.starts_with("PLINTH-TIME "))
        .expect("time's line");
    let mut f = line.split_whitespace().skip(1);
    let secs: f64 = f.next().unwrap().parse().unwrap();
    let kib: u64 = f.next().unwrap().parse().unwrap();
    (secs, kib, String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Figures {
    mib: u64,
    compressed_mib: f64,
    baseline_s: f64,
    baseline_rss_mib: f64,
    apply_s: f64,
    apply_read_back_s: f64,
    apply_rss_mib: f64,
    timings: serde_json::Value,
}

async fn bench_size(base: &Path, mib: u64, runs: usize) -> Figures {
    let dir = base.join(format!("{mib}MiB"));
    std::fs::create_dir_all(&dir).unwrap();
    let payload = payload(mib);
    let record = Record::new(&dir.join("gov")).await;
    record.elect_and_publish("1.1.0", &payload, OPEN).await;
    let payload_url = {
        let p = record.payload_path("1.1.0");
        let rel = p
            .strip_prefix(&record.repo)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        rel
    };
    let compressed_mib = payload.len() as f64 / f64::from(1 << 20);
    drop(payload);
    let server = Server::start(&record.repo);

    // The node: root parts of the image's size and a MiB more, UKI parts; its config.
    let node = dir.join("node");
    std::fs::create_dir_all(&node).unwrap();
    let part = |name: &str, size: u64| -> PathBuf {
        let p = node.join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    };
    let root_size = (mib + 1) << 20;
    let (ra, rb) = (part("root-a.img", root_size), part("root-b.img", root_size));
    let (ea, eb) = (
        part("esp-a.efi", 2 * UKI as u64),
        part("esp-b.efi", 2 * UKI as u64),
    );
    let config = node.join("upgrade.yaml");
    std::fs::write(
        &config,
        format!(
            "format_version: 1\nos: host-os\nmirrors: ['{}']\ntrusted_root: {}\n\
             state_dir: {}\nkeep_free_mib: 0\nseed: 7\nslots:\n  \
             a: [{{member: root.img, path: {}}}, {{member: host-os-a.efi, path: {}}}]\n  \
             b: [{{member: root.img, path: {}}}, {{member: host-os-b.efi, path: {}}}]\n",
            server.url,
            record.trusted_root().display(),
            node.join("state").display(),
            ra.display(),
            ea.display(),
            rb.display(),
            eb.display()
        ),
    )
    .unwrap();
    let cmdline = node.join("cmdline");
    std::fs::write(&cmdline, "plinth.slot=A\n").unwrap();
    let agent = env!("CARGO_BIN_EXE_plinth-upgrade");
    let config_s = config.to_str().unwrap();
    let o = Command::new(agent)
        .args([
            "init",
            "--active",
            "A",
            "--version",
            "1.0.0",
            "--config",
            config_s,
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let state = node.join("state/slots.json");
    let initial = std::fs::read(&state).unwrap();

    let url = format!("{}{payload_url}", server.url);
    let pipeline = format!(
        "curl -sS --fail '{url}' | zstd -d -q | dd of='{}' bs=1M conv=fsync,notrunc status=none",
        rb.display()
    );
    let mut best: Option<Figures> = None;
    for _ in 0..runs {
        drop_caches();
        let (baseline_s, baseline_kib, _) = timed(&["sh", "-c", &pipeline]);
        std::fs::write(&state, &initial).unwrap();
        let _ = std::fs::remove_dir_all(node.join("state/staging"));
        drop_caches();
        let (apply_s, apply_kib, out) = timed(&[
            agent,
            "apply",
            "--json",
            "--config",
            config_s,
            "--cmdline",
            cmdline.to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["outcome"], "flipped", "{out}");
        let read_back = v["timings"]["read_back_s"].as_f64().unwrap();
        let f = Figures {
            mib,
            compressed_mib,
            baseline_s,
            baseline_rss_mib: baseline_kib as f64 / 1024.0,
            apply_s,
            apply_read_back_s: read_back,
            apply_rss_mib: apply_kib as f64 / 1024.0,
            timings: v["timings"].clone(),
        };
        // Each side's best time; the peak RSS is the largest of the runs.
        best = Some(match best {
            None => f,
            Some(b) => {
                let (baseline_s, baseline_rss_mib, apply_rss_mib) = (
                    b.baseline_s.min(f.baseline_s),
                    b.baseline_rss_mib.max(f.baseline_rss_mib),
                    b.apply_rss_mib.max(f.apply_rss_mib),
                );
                let faster = if f.apply_s < b.apply_s { f } else { b };
                Figures {
                    baseline_s,
                    baseline_rss_mib,
                    apply_rss_mib,
                    ..faster
                }
            }
        });
    }
    std::fs::remove_dir_all(&dir).unwrap();
    best.unwrap()
}

fn main() {
    let sizes: Vec<u64> = std::env::var("SIZES")
        .unwrap_or_else(|_| "256,1024".into())
        .split(',')
        .map(|s| s.trim().parse().expect("SIZES: MiB, comma-separated"))
        .collect();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .map(|s| s.parse().expect("RUNS: a number"))
        .unwrap_or(2);
    let base_dir = std::env::var("BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let base = tempfile::Builder::new()
        .prefix("plinth-bench-upgrade-")
        .tempdir_in(&base_dir)
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut all = Vec::new();
    for &mib in &sizes {
        eprintln!("upgrade bench: {mib} MiB image, {runs} runs a side ...");
        all.push(rt.block_on(bench_size(base.path(), mib, runs)));
    }
    println!(
        "{:>9} {:>9} | {:>10} {:>8} | {:>9} {:>10} {:>8} | {:>6} {:>10}",
        "image", "payload", "baseline", "rss", "apply", "read-back", "rss", "ratio", "wall_ratio"
    );
    for f in &all {
        let without = f.apply_s - f.apply_read_back_s;
        println!(
            "{:>5} MiB {:>5.0} MiB | {:>8.2} s {:>4.0} MiB | {:>7.2} s {:>8.2} s {:>4.0} MiB | {:>6.2} {:>10.2}",
            f.mib,
            f.compressed_mib,
            f.baseline_s,
            f.baseline_rss_mib,
            f.apply_s,
            f.apply_read_back_s,
            f.apply_rss_mib,
            f.baseline_s / without,
            f.baseline_s / f.apply_s
        );
    }
    for f in &all {
        let without = f.apply_s - f.apply_read_back_s;
        println!(
            "{}",
            serde_json::json!({
                "bench": "upgrade-apply",
                "image_mib": f.mib,
                "payload_mib": f.compressed_mib,
                "baseline_s": f.baseline_s,
                "baseline_peak_rss_mib": f.baseline_rss_mib,
                "apply_s": f.apply_s,
                "apply_read_back_s": f.apply_read_back_s,
                "apply_peak_rss_mib": f.apply_rss_mib,
                "apply_timings": f.timings,
                "ratio": f.baseline_s / without,
                "wall_ratio": f.baseline_s / f.apply_s,
                "rss_target_mib": 64,
            })
        );
    }
}
