//! Shared by the integration tests: a governance record made with plinth-governance's own
//! verbs (init, sign, elect, publish, as `plinth governance` runs them) from
//! [`plinth_governance::fixtures`] releases whose update image is a real plinth archive
//! ([`tar_zst`]); file-backed slots; and a small HTTP server on 127.0.0.1 that serves a
//! directory with `Range` support and can drop a connection mid-body.

#![allow(dead_code)]

use plinth_governance::elect::{self, ElectOptions};
use plinth_governance::init::{self, GovernanceKeys, InitOptions};
use plinth_governance::keys::PemKeySource;
use plinth_governance::publish::{self, PublishOptions};
use plinth_governance::{fixtures, sign, StagedRole};
use plinth_release::{Os, Slot};
use plinth_upgrade::apply::ApplyOptions;
use plinth_upgrade::fetch::{Pace, Staging};
use plinth_upgrade::repo::RepoOptions;
use plinth_upgrade::slots::{Layout, Part, SlotStore, State};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub fn days(n: i64) -> jiff::Timestamp {
    now()
        .checked_add(jiff::SignedDuration::from_hours(24 * n))
        .unwrap()
}

/// The 512-byte ustar header of a regular member `name` of `size` bytes, mode 0644.
pub fn tar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}\0", v, width = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A GNU tar of regular members `(name, bytes)`, mode 0644, zstd-compressed: the shape of
/// a plinth update archive.
pub fn tar_zst(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = Vec::new();
    for (name, data) in members {
        tar.extend_from_slice(&tar_header(name, data.len() as u64));
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.extend_from_slice(&[0u8; 1024]);
    zstd::encode_all(&tar[..], 3).unwrap()
}

/// Deterministic bytes of `len` for `seed`: slot contents that differ between versions.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2654435761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The update image of host-os `version`: `root.img` and a UKI per slot.
pub fn update_image(version: u8, root_len: usize) -> Vec<u8> {
    let root = pattern(version, root_len);
    let uki_a = pattern(version.wrapping_add(100), 3000);
    let uki_b = pattern(version.wrapping_add(200), 3000);
    tar_zst(&[
        ("root.img", &root),
        ("host-os-a.efi", &uki_a),
        ("host-os-b.efi", &uki_b),
    ])
}

/// A governance record: 3 voters, threshold 2, root signed by voters 1 and 2.
pub struct Record {
    pub dir: PathBuf,
    pub work: PathBuf,
    pub repo: PathBuf,
}

impl Record {
    pub async fn new(dir: &Path) -> Record {
        let work = dir.join("work");
        init::init(&InitOptions {
            workdir: work.clone(),
            keys: GovernanceKeys::Generate(3),
            threshold: 2,
            key_dir: None,
            root_expires: days(365),
        })
        .unwrap();
        let r = Record {
            dir: dir.to_path_buf(),
            repo: dir.join("repo"),
            work,
        };
        r.sign(StagedRole::Root, 1).await;
        r.sign(StagedRole::Root, 2).await;
        r
    }

    pub async fn sign(&self, role: StagedRole, voter: usize) {
        let key = self.work.join(format!("keys/voter-{voter}.pem"));
        sign::sign(&self.work, role, &PemKeySource::new(&key), &key)
            .await
            .unwrap();
    }

    /// Elect host-os `version` with `payload`, waves opening at `opens` (canary 0-15, then
    /// the rest a day later).
    pub fn elect(&self, version: &str, payload: &[u8], opens: &str) {
        self.elect_with_waves(version, payload, &fixtures::waves_yaml(opens));
    }

    /// Elect host-os `version` with `payload` and the waves file `waves_yaml`.
    pub fn elect_with_waves(&self, version: &str, payload: &[u8], waves_yaml: &str) {
        let rel = fixtures::write_release(
            &self.dir.join(format!("rel-{version}")),
            Os::HostOs,
            version,
            payload,
        );
        let waves = self.dir.join("waves.yaml");
        std::fs::write(&waves, waves_yaml).unwrap();
        elect::elect(&ElectOptions {
            workdir: self.work.clone(),
            release: rel,
            waves,
            artifacts: Vec::new(),
            targets_expires: days(90),
            now: now(),
            allow_uncovered: false,
        })
        .unwrap();
    }

    pub async fn publish_with(&self, timestamp_expires: jiff::Timestamp) {
        self.publish_health(timestamp_expires, None).await;
    }

    /// Publish with the node reports in `health` (the gates' input).
    pub async fn publish_health(
        &self,
        timestamp_expires: jiff::Timestamp,
        health: Option<&Path>,
    ) -> publish::PublishReport {
        publish::publish(PublishOptions {
            workdir: self.work.clone(),
            repo: self.repo.clone(),
            publisher: Box::new(PemKeySource::new(self.work.join("keys/publisher.pem"))),
            publisher_name: self.work.join("keys/publisher.pem"),
            snapshot_expires: days(7),
            timestamp_expires,
            now: now(),
            health: health.map(Path::to_path_buf),
        })
        .await
        .unwrap()
    }

    /// Elect (signed by voters 1 and 3) and publish.
    pub async fn elect_and_publish(&self, version: &str, payload: &[u8], opens: &str) {
        self.elect(version, payload, opens);
        self.sign(StagedRole::Targets, 1).await;
        self.sign(StagedRole::Targets, 3).await;
        self.publish_with(days(1)).await;
    }

    /// Revoke host-os `version` (signed by voters 1 and 3) and publish.
    pub async fn revoke_and_publish(&self, version: &str) {
        plinth_governance::revoke::revoke(
            &self.work,
            Os::HostOs,
            &version.parse().unwrap(),
            days(90),
        )
        .unwrap();
        self.sign(StagedRole::Targets, 1).await;
        self.sign(StagedRole::Targets, 3).await;
        self.publish_with(days(1)).await;
    }

    pub fn trusted_root(&self) -> PathBuf {
        self.repo.join("1.root.json")
    }

    /// The published payload file of host-os `version`.
    pub fn payload_path(&self, version: &str) -> PathBuf {
        let dir = self.repo.join("targets");
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".host-os") {
                let f = p.join(version).join("update-img.tar.zst");
                if f.exists() {
                    return f;
                }
            }
        }
        panic!("no payload of {version} under {}", dir.display());
    }
}

/// Copy a directory tree.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A node: file-backed slots (A active with `1.0.0`), a state file, a datastore and a
/// staging directory under `dir`.
pub struct NodeDir {
    pub dir: PathBuf,
    pub layout: Layout,
    pub state: PathBuf,
}

pub const PART_SIZE: usize = 256 << 10;

impl NodeDir {
    /// The node under `dir` as [`NodeDir::new`] made it, without touching anything.
    pub fn at(dir: &Path) -> NodeDir {
        let part = |name: &str, member: &str| Part {
            member: member.into(),
            path: dir.join(name),
        };
        NodeDir {
            dir: dir.to_path_buf(),
            layout: Layout {
                a: vec![
                    part("root-a.img", "root.img"),
                    part("esp-a.efi", "host-os-a.efi"),
                ],
                b: vec![
                    part("root-b.img", "root.img"),
                    part("esp-b.efi", "host-os-b.efi"),
                ],
            },
            state: dir.join("slots.json"),
        }
    }

    pub fn new(dir: &Path) -> NodeDir {
        NodeDir::sized(dir, PART_SIZE)
    }

    /// A node whose parts have `size` bytes each.
    pub fn sized(dir: &Path, size: usize) -> NodeDir {
        std::fs::create_dir_all(dir).unwrap();
        let part = |name: &str, member: &str, fill: u8| {
            let path = dir.join(name);
            std::fs::write(&path, vec![fill; size]).unwrap();
            Part {
                member: member.into(),
                path,
            }
        };
        let layout = Layout {
            a: vec![
                part("root-a.img", "root.img", 0xa1),
                part("esp-a.efi", "host-os-a.efi", 0xa2),
            ],
            b: vec![
                part("root-b.img", "root.img", 0xb1),
                part("esp-b.efi", "host-os-b.efi", 0xb2),
            ],
        };
        let n = NodeDir {
            dir: dir.to_path_buf(),
            layout,
            state: dir.join("slots.json"),
        };
        n.store();
        n
    }

    pub fn store(&self) -> SlotStore {
        SlotStore::open_or_init(self.layout.clone(), &self.state, || {
            State::new(Slot::A, "1.0.0".parse().unwrap(), now())
        })
        .unwrap()
    }

    pub fn options(&self, record: &Record, mirrors: &[String]) -> ApplyOptions {
        self.options_with(&record.trusted_root(), mirrors)
    }

    pub fn options_with(&self, trusted_root: &Path, mirrors: &[String]) -> ApplyOptions {
        ApplyOptions {
            repo: RepoOptions {
                mirrors: mirrors.iter().map(|m| m.parse().unwrap()).collect(),
                trusted_root: trusted_root.to_path_buf(),
                datastore: self.dir.join("datastore"),
            },
            os: Os::HostOs,
            seed: 7,
            now: now(),
            staging: Staging {
                dir: self.dir.join("staging"),
                keep_free: 0,
                pace: Pace::DEFAULT,
            },
            tries: 3,
            version: None,
        }
    }

    /// Every slot part's bytes and the state file's.
    pub fn snapshot(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self
            .layout
            .a
            .iter()
            .chain(&self.layout.b)
            .map(|p| std::fs::read(&p.path).unwrap())
            .collect();
        out.push(std::fs::read(&self.state).unwrap());
        out
    }

    /// The active slot's (A's) parts.
    pub fn active_bytes(&self) -> Vec<Vec<u8>> {
        self.layout
            .a
            .iter()
            .map(|p| std::fs::read(&p.path).unwrap())
            .collect()
    }
}

/// When the fixtures' first wave opens.
pub const OPEN: &str = "2026-01-01T00:00:00Z";

/// A record under `dir/gov` electing 1.1.0 (a 200 000-byte root image) for every node from
/// [`OPEN`], and a node under `dir/node` as [`NodeDir::new`] makes it (1.0.0 on slot A).
pub async fn elected_1_1_0(dir: &Path) -> (Record, NodeDir) {
    let record = Record::new(&dir.join("gov")).await;
    record
        .elect_and_publish("1.1.0", &update_image(2, 200_000), OPEN)
        .await;
    (record, NodeDir::new(&dir.join("node")))
}

/// The node configuration (`upgrade.yaml`) of the node in `node` as [`NodeDir`] lays it out,
/// against `record` at `mirror`, with a fixed `seed`.
pub fn write_config(node: &Path, record: &Record, mirror: &str, seed: u16) -> PathBuf {
    let parts = |slot: &str| {
        format!(
            "[{{member: root.img, path: {d}/root-{slot}.img}}, {{member: host-os-{slot}.efi, path: {d}/esp-{slot}.efi}}]",
            d = node.display()
        )
    };
    let config = node.join("upgrade.yaml");
    std::fs::write(
        &config,
        format!(
            "format_version: 1\nos: host-os\nmirrors: ['{mirror}']\ntrusted_root: {}\n\
             state_dir: {}\nkeep_free_mib: 0\nseed: {seed}\n\
             poll: {{interval_seconds: 1, jitter_seconds: 0}}\nslots:\n  a: {}\n  b: {}\n",
            record.trusted_root().display(),
            node.display(),
            parts("a"),
            parts("b"),
        ),
    )
    .unwrap();
    config
}

pub fn file_url(dir: &Path) -> String {
    url::Url::from_directory_path(dir).unwrap().to_string()
}

/// A tiny HTTP/1.1 server for a directory on 127.0.0.1: GET with optional `Range:
/// bytes=N-`, one request per connection. It can cut the body of payload responses after a
/// number of bytes (once per setting), and records each request line with its range.
pub struct Server {
    pub url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Cut the next payload body (a `targets/` file) after this many bytes; 0: never.
    pub cut_after: Arc<AtomicU64>,
    /// Send payload bodies 1 KiB at a time, this many ms apart (a mirror that trickles
    /// inside any read timeout); 0: at once.
    pub trickle_ms: Arc<AtomicU64>,
}

impl Server {
    pub fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cut_after = Arc::new(AtomicU64::new(0));
        let trickle_ms = Arc::new(AtomicU64::new(0));
        let (root, reqs) = (root.to_path_buf(), requests.clone());
        let (cut, trickle) = (cut_after.clone(), trickle_ms.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (root, reqs) = (root.clone(), reqs.clone());
                let (cut, trickle) = (cut.clone(), trickle.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &reqs, &cut, &trickle);
                });
            }
        });
        Server {
            url,
            requests,
            cut_after,
            trickle_ms,
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    mut stream: TcpStream,
    root: &Path,
    requests: &Mutex<Vec<String>>,
    cut: &AtomicU64,
    trickle: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut start = 0u64;
    let mut ranged = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            start = v.trim().trim_end_matches('-').parse().unwrap_or(0);
            ranged = true;
        }
    }
    requests.lock().unwrap().push(format!(
        "{path} {}",
        if ranged {
            format!("from {start}")
        } else {
            "whole".into()
        }
    ));
    let rel = path.trim_start_matches('/');
    if rel.split('/').any(|c| c == "..") {
        return stream.write_all(
            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    }
    let Ok(bytes) = std::fs::read(root.join(rel)) else {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        );
    };
    let len = bytes.len() as u64;
    if ranged && start >= len {
        return stream.write_all(format!("HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{len}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes());
    }
    let body = &bytes[start as usize..];
    let head = if ranged {
        format!(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{len}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            len - 1,
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
    };
    stream.write_all(head.as_bytes())?;
    let limit = if rel.starts_with("targets/") {
        cut.swap(0, Ordering::SeqCst)
    } else {
        0
    };
    let pause = trickle.load(Ordering::SeqCst);
    if pause > 0 && rel.starts_with("targets/") {
        for piece in body.chunks(1024) {
            stream.write_all(piece)?;
            stream.flush()?;
            std::thread::sleep(std::time::Duration::from_millis(pause));
        }
        return Ok(());
    }
    if limit > 0 && (limit as usize) < body.len() {
        stream.write_all(&body[..limit as usize])?;
        stream.flush()?;
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    stream.write_all(body)?;
    stream.flush()
}
