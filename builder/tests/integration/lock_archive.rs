//! `plinth lock` against a small archive of our own: real .debs built with dpkg-deb, indexes
//! by apt-ftparchive, InRelease clear-signed by a test key with gpg. Checks the closure apt
//! resolves, lock determinism, `--check`, and that every break in the signed chain (tampered
//! index, tampered InRelease, foreign key, replayed suite) is refused with nothing written.

use crate::support::Plinth;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One synthetic package: name, version, extra control fields.
struct Pkg {
    name: &'static str,
    version: &'static str,
    fields: &'static str,
}

const BOOKWORM: &[Pkg] = &[
    Pkg {
        name: "base-a",
        version: "1.0",
        fields: "Essential: yes\nPriority: required\nPre-Depends: base-lib\n",
    },
    Pkg {
        name: "base-lib",
        version: "1.0",
        fields: "Priority: required\n",
    },
    Pkg {
        name: "libfoo",
        version: "1.0",
        fields: "Priority: optional\n",
    },
    Pkg {
        name: "app",
        version: "2.0",
        fields: "Priority: optional\nDepends: libfoo (>= 1.0), alt-x | alt-y\n",
    },
    Pkg {
        name: "alt-x",
        version: "1.0",
        fields: "Priority: optional\n",
    },
    Pkg {
        name: "alt-y",
        version: "1.0",
        fields: "Priority: optional\n",
    },
    Pkg {
        name: "virt-provider",
        version: "3.0",
        fields: "Priority: optional\nProvides: virt\n",
    },
    Pkg {
        name: "needs-virt",
        version: "1.0",
        fields: "Priority: optional\nDepends: virt\n",
    },
    Pkg {
        name: "unrelated",
        version: "1.0",
        fields: "Priority: optional\nDepends: libfoo\n",
    },
];

const UPDATES: &[Pkg] = &[Pkg {
    name: "libfoo",
    version: "1.1",
    fields: "Priority: optional\n",
}];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A signed archive in `dir/repo`, its keyring at `dir/keyring.gpg`.
struct TestArchive {
    dir: tempfile::TempDir,
}

impl TestArchive {
    fn build() -> TestArchive {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let gnupg = dir.path().join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        make_key(&gnupg, "plinth test archive <archive@test.invalid>");
        let keyring = dir.path().join("keyring.gpg");
        let out = run(Command::new("gpg")
            .arg("--homedir")
            .arg(&gnupg)
            .args(["--batch", "--export"]));
        std::fs::write(&keyring, out.stdout).unwrap();
        for (suite, pkgs) in [("bookworm", BOOKWORM), ("bookworm-updates", UPDATES)] {
            let pool = format!("pool/{suite}");
            for p in pkgs {
                build_deb(&repo.join(&pool), p);
            }
            let index_dir = repo.join("dists").join(suite).join("main/binary-amd64");
            std::fs::create_dir_all(&index_dir).unwrap();
            let packages = run(Command::new("apt-ftparchive")
                .current_dir(&repo)
                .args(["packages", &pool]));
            std::fs::write(index_dir.join("Packages"), &packages.stdout).unwrap();
            run(Command::new("xz")
                .args(["-k", "-9"])
                .arg(index_dir.join("Packages")));
            let release = run(Command::new("apt-ftparchive")
                .current_dir(repo.join("dists").join(suite))
                .args([
                    "-o",
                    &format!("APT::FTPArchive::Release::Codename={suite}"),
                    "-o",
                    "APT::FTPArchive::Release::Suite=stable",
                    "-o",
                    "APT::FTPArchive::Release::Architectures=amd64",
                    "-o",
                    "APT::FTPArchive::Release::Components=main",
                    "release",
                    ".",
                ]));
            let release_path = repo.join("dists").join(suite).join("Release");
            std::fs::write(&release_path, &release.stdout).unwrap();
            sign(
                &gnupg,
                &release_path,
                &repo.join("dists").join(suite).join("InRelease"),
            );
        }
        TestArchive { dir }
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn keyring(&self) -> PathBuf {
        self.dir.path().join("keyring.gpg")
    }

    fn inrelease(&self, suite: &str) -> PathBuf {
        self.repo().join("dists").join(suite).join("InRelease")
    }
}

fn make_key(gnupg: &Path, uid: &str) {
    run(Command::new("gpg").arg("--homedir").arg(gnupg).args([
        "--batch",
        "--passphrase",
        "",
        "--quick-gen-key",
        uid,
        "ed25519",
        "sign",
        "never",
    ]));
}

fn sign(gnupg: &Path, input: &Path, output: &Path) {
    let _ = std::fs::remove_file(output);
    run(Command::new("gpg")
        .arg("--homedir")
        .arg(gnupg)
        .args([
            "--batch",
            "--yes",
            "--digest-algo",
            "SHA256",
            "--clearsign",
            "-o",
        ])
        .arg(output)
        .arg(input));
}

fn build_deb(pool: &Path, p: &Pkg) {
    let tree = tempfile::tempdir().unwrap();
    let debian = tree.path().join("DEBIAN");
    std::fs::create_dir_all(&debian).unwrap();
    let doc = tree.path().join("usr/share/doc").join(p.name);
    std::fs::create_dir_all(&doc).unwrap();
    std::fs::write(doc.join("README"), format!("{} {}\n", p.name, p.version)).unwrap();
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: {}\nVersion: {}\nArchitecture: amd64\nMaintainer: plinth tests <t@test.invalid>\n{}Description: test package {}\n",
            p.name, p.version, p.fields, p.name
        ),
    )
    .unwrap();
    std::fs::create_dir_all(pool).unwrap();
    let deb = pool.join(format!("{}_{}_amd64.deb", p.name, p.version));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(tree.path())
        .arg(&deb));
}

const SPEC: &str = "\
os: OSNAME
description: test image built from the synthetic archive
base:
  distribution: debian
  release: bookworm
  architecture: amd64
  variant: essential
  components: [main]
  suites: [bookworm, bookworm-updates]
packages: [PACKAGES]
disk:
  size: 1GiB
partitions:
  - {name: esp, size: 64MiB, filesystem: vfat, role: esp}
  - {name: root-a, size: 256MiB, filesystem: ext4, role: root, slot: A}
  - {name: root-b, size: 256MiB, filesystem: ext4, role: root, slot: B}
kernel:
  cmdline: [console=ttyS0]
profiles:
  prod: {}
  test:
    remove_packages: [REMOVE]
";

/// A plinth source tree whose three specs request `packages`; the `test` profile leaves out
/// `needs-virt` when requested.
fn workspace(packages: &str) -> tempfile::TempDir {
    let remove = if packages.contains("needs-virt") {
        "needs-virt"
    } else {
        ""
    };
    let ws = tempfile::tempdir().unwrap();
    for os in ["guest-os", "host-os", "setup-os"] {
        std::fs::create_dir_all(ws.path().join(os)).unwrap();
        let spec = SPEC
            .replace("OSNAME", os)
            .replace("PACKAGES", packages)
            .replace("REMOVE", remove);
        std::fs::write(ws.path().join(os).join("os.yaml"), spec).unwrap();
    }
    ws
}

fn plinth(ws: &Path, archive: &TestArchive, cache: &Path, args: &[&str]) -> Output {
    let mirror = format!("file://{}", archive.repo().display());
    Plinth::new()
        .root(ws)
        .args(args)
        .args([
            "--mirror",
            &mirror,
            "--security-mirror",
            &mirror,
            "--keyring",
        ])
        .args([archive.keyring()])
        .cache(cache)
        .env_remove("PLINTH_MIRROR")
        .output()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn read_lock(ws: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(ws.join("guest-os/packages.lock")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn lock_resolves_the_closure_apt_and_mmdebstrap_would_install() {
    let archive = TestArchive::build();
    let ws = workspace("app, needs-virt");
    let cache = tempfile::tempdir().unwrap();
    let out = plinth(ws.path(), &archive, cache.path(), &["lock", "guest-os"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lock = read_lock(ws.path());
    let prod: Vec<&str> = lock["profiles"]["prod"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    // Essential base (with its pre-dependency), the request, the newer libfoo from updates,
    // the first alternative, and the provider of the virtual package.
    assert_eq!(
        prod,
        [
            "alt-x=1.0",
            "app=2.0",
            "base-a=1.0",
            "base-lib=1.0",
            "libfoo=1.1",
            "needs-virt=1.0",
            "virt-provider=3.0"
        ]
    );
    let test: Vec<&str> = lock["profiles"]["test"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        test,
        [
            "alt-x=1.0",
            "app=2.0",
            "base-a=1.0",
            "base-lib=1.0",
            "libfoo=1.1"
        ]
    );
    // Every entry carries the signed index's sha256 and size, and its suite.
    for pkg in lock["packages"].as_array().unwrap() {
        let file = archive.repo().join(pkg["filename"].as_str().unwrap());
        let bytes = std::fs::read(&file).unwrap();
        assert_eq!(pkg["size"].as_u64().unwrap(), bytes.len() as u64);
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        assert_eq!(pkg["sha256"].as_str().unwrap(), sha);
        let expected_suite = if pkg["name"] == "libfoo" {
            "bookworm-updates"
        } else {
            "bookworm"
        };
        assert_eq!(pkg["suite"], expected_suite, "{pkg}");
    }
    // The indexes it was resolved from, with the InRelease digests.
    let indexes = lock["indexes"].as_array().unwrap();
    assert_eq!(indexes.len(), 2);
    let inrelease = std::fs::read(archive.inrelease("bookworm")).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&inrelease));
    assert_eq!(indexes[0]["inrelease_sha256"], sha.as_str());
}

#[test]
fn lock_is_deterministic_and_check_detects_spec_changes() {
    let archive = TestArchive::build();
    let ws = workspace("app");
    let cache = tempfile::tempdir().unwrap();
    let first = plinth(ws.path(), &archive, cache.path(), &["lock", "all"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let bytes1 = std::fs::read(ws.path().join("guest-os/packages.lock")).unwrap();
    // A second run in a fresh cache (indexes fetched again) gives the same bytes.
    let cache2 = tempfile::tempdir().unwrap();
    let second = plinth(ws.path(), &archive, cache2.path(), &["lock", "all"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stderr(&second).contains("unchanged"), "{}", stderr(&second));
    let bytes2 = std::fs::read(ws.path().join("guest-os/packages.lock")).unwrap();
    assert_eq!(bytes1, bytes2);
    // Identical specs, identical locks: the OS name is the only difference.
    let host = std::fs::read_to_string(ws.path().join("host-os/packages.lock")).unwrap();
    assert_eq!(
        host.replace("host-os", "guest-os").as_bytes(),
        bytes1.as_slice()
    );

    let check = plinth(
        ws.path(),
        &archive,
        cache.path(),
        &["lock", "all", "--check"],
    );
    assert!(check.status.success(), "{}", stderr(&check));
    // Add a package to one spec: --check fails with exit 1 and names it.
    let spec_path = ws.path().join("guest-os/os.yaml");
    let spec = std::fs::read_to_string(&spec_path).unwrap();
    std::fs::write(
        &spec_path,
        spec.replace("packages: [app]", "packages: [app, unrelated]"),
    )
    .unwrap();
    let check = plinth(
        ws.path(),
        &archive,
        cache.path(),
        &["lock", "guest-os", "--check"],
    );
    assert_eq!(check.status.code(), Some(1), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("package `unrelated` is in os.yaml but not in the lock"),
        "{}",
        stderr(&check)
    );
    // --check never writes.
    assert_eq!(
        std::fs::read(ws.path().join("guest-os/packages.lock")).unwrap(),
        bytes1
    );
    // A lock edited by hand is bad input (exit 2).
    std::fs::write(ws.path().join("host-os/packages.lock"), "{ not json").unwrap();
    let check = plinth(
        ws.path(),
        &archive,
        cache.path(),
        &["lock", "host-os", "--check"],
    );
    assert_eq!(check.status.code(), Some(2), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("host-os/packages.lock: line 1"),
        "{}",
        stderr(&check)
    );
}

/// Run a lock that must fail; return its stderr and check nothing was written.
fn failing_lock(archive: &TestArchive, packages: &str) -> String {
    let ws = workspace(packages);
    let cache = tempfile::tempdir().unwrap();
    let out = plinth(ws.path(), archive, cache.path(), &["lock", "guest-os"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        !ws.path().join("guest-os/packages.lock").exists(),
        "a lock was written"
    );
    stderr(&out)
}

#[test]
fn tampered_index_is_rejected() {
    let archive = TestArchive::build();
    let index = archive
        .repo()
        .join("dists/bookworm/main/binary-amd64/Packages.xz");
    let mut bytes = std::fs::read(&index).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&index, bytes).unwrap();
    let err = failing_lock(&archive, "app");
    assert!(err.contains("does not match the signed InRelease"), "{err}");
    assert!(err.contains("main/binary-amd64/Packages.xz"), "{err}");
    assert!(
        err.contains("expected sha256") && err.contains("got sha256"),
        "{err}"
    );
}

#[test]
fn tampered_release_digest_is_rejected() {
    let archive = TestArchive::build();
    // Swap one digest in the signed text: the signature no longer verifies.
    let path = archive.inrelease("bookworm-updates");
    let text = std::fs::read_to_string(&path).unwrap();
    let sha_section = text.find("SHA256:").unwrap();
    let digit = sha_section + text[sha_section..].find("\n ").unwrap() + 2;
    let mut bytes = text.into_bytes();
    bytes[digit] = if bytes[digit] == b'0' { b'1' } else { b'0' };
    std::fs::write(&path, bytes).unwrap();
    let err = failing_lock(&archive, "app");
    assert!(err.contains("bookworm-updates: the signature of"), "{err}");
    assert!(err.contains("does not verify with the keyring"), "{err}");
}

#[test]
fn foreign_key_and_replayed_suite_are_rejected() {
    let archive = TestArchive::build();
    // Re-sign one suite with a key that is not in the keyring.
    let other = tempfile::tempdir().unwrap();
    make_key(other.path(), "someone else <x@test.invalid>");
    let release = archive.repo().join("dists/bookworm/Release");
    sign(other.path(), &release, &archive.inrelease("bookworm"));
    let err = failing_lock(&archive, "app");
    assert!(err.contains("does not verify with the keyring"), "{err}");

    // Serve bookworm's (validly signed) InRelease as bookworm-updates.
    let archive = TestArchive::build();
    std::fs::copy(
        archive.inrelease("bookworm"),
        archive.inrelease("bookworm-updates"),
    )
    .unwrap();
    let err = failing_lock(&archive, "app");
    assert!(
        err.contains("says Codename `bookworm`, expected `bookworm-updates`"),
        "{err}"
    );
}

#[test]
fn unknown_package_is_named() {
    let archive = TestArchive::build();
    let err = failing_lock(&archive, "app, no-such-package");
    // The error points at the request in os.yaml: line 10, `packages: [app, no-such-package]`.
    assert!(
        err.contains(
            "guest-os/os.yaml:10:17: packages[1]: no package `no-such-package` in bookworm, bookworm-updates"
        ),
        "{err}"
    );
}
