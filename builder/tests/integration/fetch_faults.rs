//! The fetcher against a misbehaving mirror: truncation, corruption, HTTP errors, stalls,
//! dropped connections, 404, ignored Range and oversized files. Every run must end with a
//! correct cache or a clear error naming the package, and never with a corrupt file under
//! `debs/`. Also: resuming, skipping cached files, `--offline`, and the CLI's exit codes.

use crate::support::Plinth;
use plinth::packages::cache::{sha256_bytes, sha256_file, Cache, Verification};
use plinth::packages::fetch::{
    fetch, DownloadError, FetchError, FetchOptions, FetchReport, Progress,
};
use plinth::packages::lockfile::{
    IndexDigest, Lock, LockInputs, LockedPackage, LockedProfile, LOCK_VERSION,
};
use plinth_testkit::{random_bytes, Fault, FaultKind, Faults, TestServer};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

/// One fake package: its lock entry and its bytes.
struct Pkg {
    lock: LockedPackage,
    data: Vec<u8>,
}

impl Pkg {
    /// Path on the test server.
    fn path(&self) -> String {
        format!("debian/{}", self.lock.filename)
    }
}

/// Eight packages of 64 KiB to 4 MiB (odd sizes included), deterministic per `seed`.
fn packages(seed: u64) -> Vec<Pkg> {
    const SIZES: [usize; 8] = [
        64 << 10,
        4 << 20,
        300 << 10,
        1 << 20,
        (2 << 20) + 17,
        (700 << 10) + 3,
        128 << 10,
        (3 << 19) + 1,
    ];
    SIZES
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let data = random_bytes(seed * 100 + i as u64, size);
            let name = format!("pkg{i}");
            Pkg {
                lock: LockedPackage {
                    name: name.clone(),
                    version: format!("1.{i}-1"),
                    architecture: "amd64".into(),
                    suite: if i % 3 == 0 {
                        "bookworm-security".into()
                    } else {
                        "bookworm".into()
                    },
                    filename: format!("pool/main/p/{name}/{name}_1.{i}-1_amd64.deb"),
                    size: size as u64,
                    sha256: plinth_release::Sha256::of(&data),
                },
                data,
            }
        })
        .collect()
}

fn serve(pkgs: &[Pkg], faults: Faults) -> TestServer {
    let files: HashMap<String, Vec<u8>> = pkgs.iter().map(|p| (p.path(), p.data.clone())).collect();
    TestServer::start(files, faults)
}

fn options() -> FetchOptions {
    FetchOptions {
        jobs: 4,
        attempts: 5,
        stall_timeout: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        retry_base_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(100),
        offline: false,
        progress: Progress::Hidden,
        proxy_from_env: false,
    }
}

fn locked(pkgs: &[Pkg]) -> Vec<LockedPackage> {
    pkgs.iter().map(|p| p.lock.clone()).collect()
}

fn run(
    server: &TestServer,
    pkgs: &[Pkg],
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<FetchReport, FetchError> {
    let base = format!("{}/debian", server.url());
    let result = fetch(&locked(pkgs), |_| base.clone(), cache, opts);
    assert_cache_sound(cache.root());
    result
}

/// Every `.deb` under `debs/` hashes to its name: never a corrupt file, whatever happened.
fn assert_cache_sound(root: &Path) {
    let debs = root.join("debs");
    for entry in std::fs::read_dir(&debs).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let sha = name
            .strip_suffix(".deb")
            .unwrap_or_else(|| panic!("unexpected file in the cache: {name}"));
        let (actual, _) = sha256_file(&path).unwrap();
        assert_eq!(actual, sha, "corrupt file in the cache: {}", path.display());
    }
}

/// Every package is cached and re-hashes correctly.
fn assert_complete(cache: &Cache, pkgs: &[Pkg]) {
    for p in pkgs {
        assert!(
            cache.contains(&p.lock.sha256, p.lock.size),
            "{} missing",
            p.lock.name
        );
        assert_eq!(cache.verify(&p.lock.sha256).unwrap(), Verification::Valid);
        assert!(
            !cache.partial_path(&p.lock.sha256).exists(),
            "{}: partial left behind",
            p.lock.name
        );
    }
}

fn new_cache() -> (tempfile::TempDir, Cache) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("cache")).unwrap();
    (dir, cache)
}

/// All packages get the same fault.
fn fault_all(pkgs: &[Pkg], f: impl Fn(&Pkg) -> Fault) -> Faults {
    pkgs.iter()
        .fold(Faults::none(), |acc, p| acc.with(&p.path(), f(p)))
}

fn failures(err: &FetchError) -> &FetchReport {
    match err {
        FetchError::Failed { report, .. } => report,
        other => panic!("expected download failures, got: {other}"),
    }
}

#[test]
fn clean_fetch_then_everything_cached_without_network() {
    let pkgs = packages(1);
    let server = serve(&pkgs, Faults::none());
    let (_d, cache) = new_cache();
    let report = run(&server, &pkgs, &cache, &options()).unwrap();
    assert_eq!((report.fetched, report.cached), (8, 0));
    assert_eq!(report.bytes, pkgs.iter().map(|p| p.lock.size).sum::<u64>());
    assert_complete(&cache, &pkgs);

    server.clear_log();
    let report = run(&server, &pkgs, &cache, &options()).unwrap();
    assert_eq!((report.fetched, report.cached), (0, 8));
    assert_eq!(
        server.request_count(),
        0,
        "cached packages must not touch the network"
    );
}

#[test]
fn truncation_resumes_with_a_range_request() {
    let pkgs = packages(2);
    let faults = fault_all(&pkgs, |p| {
        Fault::first(
            1,
            FaultKind::Truncate {
                after: p.lock.size / 2,
            },
        )
    });
    let server = serve(&pkgs, faults);
    let (_d, cache) = new_cache();
    let report = run(&server, &pkgs, &cache, &options()).unwrap();
    assert_eq!(report.fetched, 8);
    assert_complete(&cache, &pkgs);
    for p in &pkgs {
        let ranges: Vec<Option<u64>> = server
            .requests()
            .into_iter()
            .filter(|r| r.path == p.path())
            .map(|r| r.range_start)
            .collect();
        assert_eq!(ranges, vec![None, Some(p.lock.size / 2)], "{}", p.lock.name);
    }
}

#[test]
fn corruption_on_first_attempt_is_retried() {
    let pkgs = packages(3);
    let faults = fault_all(&pkgs, |p| {
        Fault::first(
            1,
            FaultKind::Corrupt {
                offset: p.lock.size / 3,
            },
        )
    });
    let server = serve(&pkgs, faults);
    let (_d, cache) = new_cache();
    run(&server, &pkgs, &cache, &options()).unwrap();
    assert_complete(&cache, &pkgs);
    for p in &pkgs {
        // The bad copy was thrown away: the retry starts from zero.
        let ranges: Vec<Option<u64>> = server
            .requests()
            .into_iter()
            .filter(|r| r.path == p.path())
            .map(|r| r.range_start)
            .collect();
        assert_eq!(ranges, vec![None, None], "{}", p.lock.name);
    }
}

#[test]
fn persistent_corruption_names_package_url_and_both_hashes() {
    let pkgs = packages(4);
    let bad = &pkgs[3];
    let offset = 1000;
    let server = serve(
        &pkgs,
        Faults::none().with(&bad.path(), Fault::always(FaultKind::Corrupt { offset })),
    );
    let (_d, cache) = new_cache();
    let err = run(&server, &pkgs, &cache, &options()).unwrap_err();
    let report = failures(&err);
    assert_eq!(report.fetched, 7);
    assert_eq!(report.failed.len(), 1);
    let f = &report.failed[0];
    assert_eq!(f.name, bad.lock.name);
    assert_eq!(f.attempts, 5);
    let mut corrupted = bad.data.clone();
    corrupted[offset as usize] ^= 0xff;
    let actual = sha256_bytes(&corrupted);
    assert!(
        matches!(&f.error, DownloadError::Mismatch { expected, actual: a }
            if *expected == bad.lock.sha256 && *a == actual),
        "{:?}",
        f.error
    );
    let msg = err.to_string();
    let url = format!("{}/{}", server.url(), bad.path());
    let expected = bad.lock.sha256.to_string();
    for needle in [&bad.lock.name, &url, &expected, &actual] {
        assert!(msg.contains(needle.as_str()), "`{needle}` not in: {msg}");
    }
    assert_eq!(server.requests_for(&bad.path()), 5);
    assert!(!cache.contains(&bad.lock.sha256, bad.lock.size));
    assert!(!cache.partial_path(&bad.lock.sha256).exists());
    assert_complete(&cache, &pkgs[..3]);
    assert_complete(&cache, &pkgs[4..]);
}

#[test]
fn server_errors_are_retried_until_they_stop() {
    let pkgs = packages(5);
    let faults = fault_all(&pkgs, |_| Fault::first(2, FaultKind::Status(500)))
        .with(&pkgs[0].path(), Fault::first(3, FaultKind::Status(429)));
    let server = serve(&pkgs, faults);
    let (_d, cache) = new_cache();
    run(&server, &pkgs, &cache, &options()).unwrap();
    assert_complete(&cache, &pkgs);
    assert_eq!(server.requests_for(&pkgs[1].path()), 3);
    assert_eq!(server.requests_for(&pkgs[0].path()), 4);
}

#[test]
fn persistent_server_error_fails_after_all_attempts() {
    let pkgs = packages(6);
    let server = serve(
        &pkgs,
        Faults::none().with(&pkgs[2].path(), Fault::always(FaultKind::Status(503))),
    );
    let (_d, cache) = new_cache();
    let err = run(&server, &pkgs, &cache, &options()).unwrap_err();
    let report = failures(&err);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].attempts, 5);
    assert!(matches!(
        report.failed[0].error,
        DownloadError::ServerError { status: 503 }
    ));
    assert!(err.to_string().contains(&pkgs[2].lock.name));
    assert_eq!(server.requests_for(&pkgs[2].path()), 5);
}

#[test]
fn stall_mid_file_times_out_and_resumes() {
    let pkgs = packages(7);
    let big = &pkgs[1];
    let server = serve(
        &pkgs,
        Faults::none().with(
            &big.path(),
            Fault::first(
                1,
                FaultKind::Stall {
                    after: 1 << 20,
                    pause: Duration::from_secs(4),
                },
            ),
        ),
    );
    let (_d, cache) = new_cache();
    let start = Instant::now();
    run(&server, &pkgs, &cache, &options()).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "the stall was waited out"
    );
    assert_complete(&cache, &pkgs);
    let ranges: Vec<Option<u64>> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == big.path())
        .map(|r| r.range_start)
        .collect();
    assert_eq!(ranges.len(), 2);
    assert!(ranges[1].is_some_and(|r| r > 0), "{ranges:?}");
}

#[test]
fn persistent_stall_fails_with_a_clear_error() {
    let pkgs = packages(8);
    let small = &pkgs[0];
    let server = serve(
        &pkgs[..1],
        Faults::none().with(
            &small.path(),
            Fault::always(FaultKind::Stall {
                after: 0,
                pause: Duration::from_secs(5),
            }),
        ),
    );
    let (_d, cache) = new_cache();
    let opts = FetchOptions {
        attempts: 2,
        ..options()
    };
    let err = run(&server, &pkgs[..1], &cache, &opts).unwrap_err();
    let report = failures(&err);
    assert!(matches!(
        report.failed[0].error,
        DownloadError::Stalled { .. }
    ));
    assert!(err.to_string().contains("pkg0"), "{err}");
}

#[test]
fn dropped_connections_are_resumed() {
    let pkgs = packages(9);
    let faults = fault_all(&pkgs, |p| {
        Fault::first(
            2,
            FaultKind::Drop {
                after: p.lock.size / 3,
            },
        )
    });
    let server = serve(&pkgs, faults);
    let (_d, cache) = new_cache();
    run(&server, &pkgs, &cache, &options()).unwrap();
    assert_complete(&cache, &pkgs);
    for p in &pkgs {
        assert_eq!(server.requests_for(&p.path()), 3, "{}", p.lock.name);
    }
}

#[test]
fn not_found_fails_fast_and_the_rest_completes() {
    let pkgs = packages(10);
    let gone = &pkgs[4];
    let server = serve(
        &pkgs,
        Faults::none().with(&gone.path(), Fault::always(FaultKind::NotFound)),
    );
    let (_d, cache) = new_cache();
    let err = run(&server, &pkgs, &cache, &options()).unwrap_err();
    let report = failures(&err);
    assert_eq!(report.fetched, 7);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].attempts, 1);
    assert!(matches!(
        report.failed[0].error,
        DownloadError::NotFound { status: 404 }
    ));
    assert_eq!(
        server.requests_for(&gone.path()),
        1,
        "404 must not be retried"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&gone.lock.name) && msg.contains(&gone.path()),
        "{msg}"
    );
    assert_complete(&cache, &pkgs[..4]);
    assert_complete(&cache, &pkgs[5..]);
}

#[test]
fn server_ignoring_range_restarts_from_zero() {
    let pkgs = packages(11);
    let faults = fault_all(&pkgs, |p| {
        Fault::first(
            1,
            FaultKind::Truncate {
                after: p.lock.size / 2,
            },
        )
    });
    let faults = pkgs.iter().fold(faults, |acc, p| {
        acc.with(&p.path(), Fault::always(FaultKind::IgnoreRange))
    });
    let server = serve(&pkgs, faults);
    let (_d, cache) = new_cache();
    run(&server, &pkgs, &cache, &options()).unwrap();
    assert_complete(&cache, &pkgs);
    // The retry asked for the rest, got the whole file, and still ended correct.
    for p in &pkgs {
        let ranges: Vec<Option<u64>> = server
            .requests()
            .into_iter()
            .filter(|r| r.path == p.path())
            .map(|r| r.range_start)
            .collect();
        assert_eq!(ranges, vec![None, Some(p.lock.size / 2)], "{}", p.lock.name);
    }
}

#[test]
fn oversized_file_is_refused() {
    let pkgs = packages(12);
    let server = serve(
        &pkgs[..3],
        Faults::none().with(
            &pkgs[2].path(),
            Fault::always(FaultKind::Oversize { extra: 10 }),
        ),
    );
    let (_d, cache) = new_cache();
    let err = run(&server, &pkgs[..3], &cache, &options()).unwrap_err();
    let report = failures(&err);
    assert_eq!(report.failed.len(), 1);
    assert!(matches!(
        report.failed[0].error,
        DownloadError::TooLarge { .. }
    ));
    let partial = cache.partial_path(&pkgs[2].lock.sha256);
    assert!(!partial.exists() || std::fs::metadata(&partial).unwrap().len() == 0);
    assert_complete(&cache, &pkgs[..2]);
}

#[test]
fn persistent_truncation_keeps_the_partial_for_later() {
    let pkgs = packages(13);
    let p = &pkgs[1];
    let server = serve(
        &pkgs[..2],
        Faults::none().with(
            &p.path(),
            Fault::always(FaultKind::Truncate { after: 4096 }),
        ),
    );
    let (_d, cache) = new_cache();
    let opts = FetchOptions {
        attempts: 3,
        ..options()
    };
    let err = run(&server, &pkgs[..2], &cache, &opts).unwrap_err();
    let f = &failures(&err).failed[0];
    assert!(matches!(f.error, DownloadError::Truncated { .. }), "{f}");
    assert_eq!(
        std::fs::metadata(cache.partial_path(&p.lock.sha256))
            .unwrap()
            .len(),
        3 * 4096,
        "each attempt resumed where the last stopped"
    );
    // The mirror recovers: the next run resumes from the partial file.
    server.set_faults(Faults::none());
    server.clear_log();
    run(&server, &pkgs[..2], &cache, &options()).unwrap();
    assert_complete(&cache, &pkgs[..2]);
    assert_eq!(server.requests()[0].range_start, Some(3 * 4096));
}

#[test]
fn bad_leftover_partial_is_detected_and_replaced() {
    let pkgs = packages(14);
    let server = serve(&pkgs[..2], Faults::none());
    let (_d, cache) = new_cache();
    // A complete-length partial with wrong bytes, and a longer-than-locked one.
    std::fs::write(
        cache.partial_path(&pkgs[0].lock.sha256),
        vec![0u8; pkgs[0].lock.size as usize],
    )
    .unwrap();
    std::fs::write(
        cache.partial_path(&pkgs[1].lock.sha256),
        vec![1u8; pkgs[1].lock.size as usize + 5],
    )
    .unwrap();
    run(&server, &pkgs[..2], &cache, &options()).unwrap();
    assert_complete(&cache, &pkgs[..2]);
}

#[test]
fn mixed_transient_faults_all_recover() {
    let pkgs = packages(15);
    let kinds = |p: &Pkg| -> Vec<Fault> {
        let s = p.lock.size;
        vec![
            Fault::first(1, FaultKind::Status(502)),
            Fault::first(2, FaultKind::Truncate { after: s / 4 }),
            Fault::first(3, FaultKind::Corrupt { offset: s - 1 }),
            Fault::first(4, FaultKind::Drop { after: s / 2 }),
        ]
    };
    let faults = pkgs.iter().fold(Faults::none(), |acc, p| {
        kinds(p)
            .into_iter()
            .fold(acc, |acc, f| acc.with(&p.path(), f))
    });
    let server = serve(&pkgs, faults);
    let (_d, cache) = new_cache();
    run(&server, &pkgs, &cache, &options()).unwrap();
    assert_complete(&cache, &pkgs);
}

#[test]
fn offline_lists_missing_packages_without_network() {
    let pkgs = packages(16);
    let (dir, cache) = new_cache();
    for p in &pkgs[..5] {
        let src = dir.path().join("src");
        std::fs::write(&src, &p.data).unwrap();
        cache
            .insert_file(&src, &p.lock.sha256, p.lock.size)
            .unwrap();
    }
    let opts = FetchOptions {
        offline: true,
        ..options()
    };
    // Nothing listens here: offline must not try.
    let err = fetch(
        &locked(&pkgs),
        |_| "http://127.0.0.1:9".into(),
        &cache,
        &opts,
    )
    .unwrap_err();
    let FetchError::Missing { report, .. } = &err else {
        panic!("expected missing packages, got: {err}");
    };
    assert_eq!(report.cached, 5);
    let missing: Vec<&str> = report.missing.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(missing, ["pkg5", "pkg6", "pkg7"]);
    let msg = err.to_string();
    assert!(msg.contains(&pkgs[6].lock.sha256.to_string()) && msg.contains(&pkgs[6].lock.version));

    let report = fetch(&locked(&pkgs[..5]), |_| String::new(), &cache, &opts).unwrap();
    assert_eq!(report.cached, 5);
    assert_cache_sound(cache.root());
}

#[test]
fn duplicate_packages_are_fetched_once() {
    let pkgs = packages(17);
    let server = serve(&pkgs[..2], Faults::none());
    let (_d, cache) = new_cache();
    let mut list = locked(&pkgs[..2]);
    list.extend(locked(&pkgs[..2]));
    let base = format!("{}/debian", server.url());
    let report = fetch(&list, |_| base.clone(), &cache, &options()).unwrap();
    assert_eq!(report.fetched, 2);
    assert_eq!(server.request_count(), 2);
}

// ---- CLI -----------------------------------------------------------------------------------

/// A workspace with the three OS directories (offline runs never parse os.yaml) and a
/// guest-os lock of the given packages; `test` profile = the first two packages.
fn workspace(pkgs: &[Pkg]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    // The project's own specs: fetch validates them (and warns that this lock is not theirs).
    for (os, spec) in [
        ("guest-os", include_str!("../../../guest-os/os.yaml")),
        ("host-os", include_str!("../../../host-os/os.yaml")),
        ("setup-os", include_str!("../../../setup-os/os.yaml")),
    ] {
        std::fs::create_dir(dir.path().join(os)).unwrap();
        std::fs::write(dir.path().join(os).join("os.yaml"), spec).unwrap();
    }
    let inputs = LockInputs {
        release: "bookworm".into(),
        architecture: "amd64".into(),
        variant: "minbase".into(),
        components: vec!["main".into()],
        suites: vec!["bookworm".into()],
        requests: vec![],
    };
    let profile = |ps: &[Pkg]| LockedProfile {
        inputs_sha256: "0".repeat(64).parse().unwrap(),
        inputs: inputs.clone(),
        packages: ps.iter().map(|p| p.lock.key()).collect(),
    };
    let mut packages = locked(pkgs);
    packages.sort();
    let lock = Lock {
        lock_version: LOCK_VERSION,
        os: "guest-os".into(),
        release: "bookworm".into(),
        architecture: "amd64".into(),
        indexes: vec![IndexDigest {
            suite: "bookworm".into(),
            inrelease_sha256: "0".repeat(64).parse().unwrap(),
            path: "main/binary-amd64/Packages.xz".into(),
            sha256: "0".repeat(64).parse().unwrap(),
            size: 1,
        }],
        profiles: BTreeMap::from([
            ("prod".to_string(), profile(pkgs)),
            ("test".to_string(), profile(&pkgs[..2])),
        ]),
        packages,
        sources: Vec::new(),
    };
    std::fs::write(dir.path().join("guest-os/packages.lock"), lock.to_bytes()).unwrap();
    dir
}

fn plinth(ws: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    Plinth::new().root(ws).args(args).cache(cache).output()
}

#[test]
fn cli_offline_exit_codes_and_json() {
    let pkgs: Vec<Pkg> = packages(18).into_iter().take(4).collect();
    let ws = workspace(&pkgs);
    let cache_dir = ws.path().join("cache");
    let cache = Cache::open(&cache_dir).unwrap();
    for p in &pkgs[..2] {
        let src = ws.path().join("src");
        std::fs::write(&src, &p.data).unwrap();
        cache
            .insert_file(&src, &p.lock.sha256, p.lock.size)
            .unwrap();
    }

    let out = plinth(ws.path(), &cache_dir, &["fetch", "guest-os", "--offline"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("pkg2") && stderr.contains("pkg3"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&pkgs[3].lock.sha256.to_string()),
        "{stderr}"
    );
    // This lock was not resolved from these specs: fetch says so (and still fetches).
    assert!(
        stderr.contains("guest-os/packages.lock does not match guest-os/os.yaml"),
        "{stderr}"
    );

    let out = plinth(
        ws.path(),
        &cache_dir,
        &["--json", "fetch", "guest-os", "--offline"],
    );
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["cached"], 2);
    assert_eq!(json["missing"].as_array().unwrap().len(), 2);
    assert_eq!(json["missing"][0]["name"], "pkg2");

    let out = plinth(
        ws.path(),
        &cache_dir,
        &["fetch", "guest-os", "--offline", "--profile", "test"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = plinth(
        ws.path(),
        &cache_dir,
        &["fetch", "guest-os", "--offline", "--profile", "nope"],
    );
    assert_eq!(out.status.code(), Some(2), "unknown profile is bad input");

    let out = plinth(ws.path(), &cache_dir, &["fetch", "host-os", "--offline"]);
    assert_eq!(out.status.code(), Some(2), "a missing lock is bad input");
}

#[test]
fn file_mirror_is_copied_through_the_hash() {
    let pkgs = packages(19);
    let mirror = tempfile::tempdir().unwrap();
    for p in &pkgs[..3] {
        let path = mirror.path().join(&p.lock.filename);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut data = p.data.clone();
        if p.lock.name == "pkg2" {
            data[7] ^= 1; // a corrupt mirror copy
        }
        std::fs::write(path, data).unwrap();
    }
    let (_d, cache) = new_cache();
    let base = format!("file://{}", mirror.path().display());
    let err = fetch(&locked(&pkgs[..4]), |_| base.clone(), &cache, &options()).unwrap_err();
    assert_cache_sound(cache.root());
    let report = failures(&err);
    assert_eq!(report.fetched, 2);
    let failed: Vec<(&str, bool)> = report
        .failed
        .iter()
        .map(|f| (f.name.as_str(), f.error.is_retryable()))
        .collect();
    // pkg2: the mirror's copy is corrupt (retried, then named); pkg3: absent (fails at once).
    assert_eq!(failed, [("pkg2", true), ("pkg3", false)]);
    assert!(matches!(
        report.failed[0].error,
        DownloadError::Mismatch { .. }
    ));
    assert_eq!(report.failed[1].attempts, 1);
    assert_complete(&cache, &pkgs[..2]);
}
