//! Test support for plinth: a small HTTP/1.1 file server on 127.0.0.1 with per-path fault
//! injection, and helpers for random package files.
//!
//! The server answers `GET` and `HEAD`, honours `Range: bytes=N-` (206, or 416 past the end),
//! keeps connections alive, and can misbehave per path: truncate, corrupt, stall, reset the
//! connection, answer an HTTP error, ignore Range, or pretend the file is missing. Each
//! [`Fault`] applies to every request of its path or only to the first K, so that retries
//! can succeed. It runs on its own thread and runtime, so synchronous tests can use it, and
//! stops when dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod procfs;
pub mod readme;
pub mod swtpm;

/// Largest piece of a body written at once.
const CHUNK: usize = 1 << 20;
/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// What the server serves.
#[derive(Debug, Clone)]
pub enum Files {
    /// URL path (without the leading `/`) → content.
    Map(HashMap<String, Arc<Vec<u8>>>),
    /// Files below a directory, by relative path.
    Dir(PathBuf),
}

impl From<HashMap<String, Vec<u8>>> for Files {
    fn from(m: HashMap<String, Vec<u8>>) -> Files {
        Files::Map(m.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }
}

impl From<PathBuf> for Files {
    fn from(p: PathBuf) -> Files {
        Files::Dir(p)
    }
}

/// One way of misbehaving. Offsets count bytes of the response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Send `after` body bytes, then close the connection cleanly (FIN).
    Truncate { after: u64 },
    /// Send `after` body bytes, then reset the connection (RST).
    Drop { after: u64 },
    /// Send `after` body bytes, pause for `pause`, then continue.
    Stall { after: u64, pause: Duration },
    /// Flip every bit of the byte at file offset `offset` (whatever range is requested).
    Corrupt { offset: u64 },
    /// Answer with this status and a short body instead of the file.
    Status(u16),
    /// Answer 404 as if the file did not exist.
    NotFound,
    /// Answer 200 with the whole file even when a Range was asked for.
    IgnoreRange,
    /// Append these extra bytes after the file (the server lies about nothing else).
    Oversize { extra: u64 },
}

/// A fault and which requests of its path it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// Apply only to the first K requests of the path (counted from when the faults were set).
    pub first: Option<u32>,
}

impl Fault {
    pub fn always(kind: FaultKind) -> Fault {
        Fault { kind, first: None }
    }

    pub fn first(k: u32, kind: FaultKind) -> Fault {
        Fault {
            kind,
            first: Some(k),
        }
    }
}

/// Faults by URL path (without the leading `/`).
#[derive(Debug, Clone, Default)]
pub struct Faults(pub HashMap<String, Vec<Fault>>);

impl Faults {
    pub fn none() -> Faults {
        Faults::default()
    }

    /// Add a fault for `path`.
    pub fn with(mut self, path: &str, fault: Fault) -> Faults {
        self.0
            .entry(path.trim_start_matches('/').to_string())
            .or_default()
            .push(fault);
        self
    }
}

/// A request the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path without the leading `/`, percent-decoded.
    pub path: String,
    /// The N of `Range: bytes=N-`, if the request had one.
    pub range_start: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    faults: HashMap<String, Vec<Fault>>,
    /// Requests per path since the faults were last set (decides `first: K`).
    fault_counts: HashMap<String, u32>,
    log: Vec<Request>,
}

/// A running server; stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Start serving `files` with `faults` on a free port of 127.0.0.1. Panics if it cannot
    /// (test support); see [`TestServer::try_start`].
    pub fn start(files: impl Into<Files>, faults: Faults) -> TestServer {
        Self::try_start(files.into(), faults, 0).expect("cannot start the test server")
    }

    /// Start on 127.0.0.1:`port` (0: any free port).
    pub fn try_start(files: Files, faults: Faults, port: u16) -> std::io::Result<TestServer> {
        let std_listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            faults: faults.0,
            ..State::default()
        }));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let files = Arc::new(files);
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("plinth-testserver".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    tokio::select! {
                        _ = accept_loop(listener, files, st) => {}
                        _ = stopped => {}
                    }
                });
                rt.shutdown_background();
            })?;
        Ok(TestServer {
            addr,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replace all faults and restart the "first K requests" counting.
    pub fn set_faults(&self, faults: Faults) {
        let mut s = self.state.lock().unwrap();
        s.faults = faults.0;
        s.fault_counts.clear();
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().log.clone()
    }

    /// Number of requests so far.
    pub fn request_count(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }

    /// Number of requests of one path so far.
    pub fn requests_for(&self, path: &str) -> usize {
        let path = path.trim_start_matches('/');
        let s = self.state.lock().unwrap();
        s.log.iter().filter(|r| r.path == path).count()
    }

    /// Forget the request log.
    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }

    /// Block until the process is asked to stop (Ctrl-C or SIGTERM).
    pub fn wait_for_signal(&self) -> std::io::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, files: Arc<Files>, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let files = files.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let _ = serve_connection(stream, files, state).await;
        });
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    range_start: Option<u64>,
    close: bool,
}

/// Read one request head; `None` on a clean end of the connection.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Head>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Ok(Some(parse_head(&head)));
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("request head too large"));
        }
        let mut tmp = [0u8; 4096];
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn parse_head(head: &str) -> Head {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("/");
    let version = parts.next().unwrap_or("HTTP/1.1");
    let raw_path = target.split('?').next().unwrap_or("");
    let path = percent_decode(raw_path.trim_start_matches('/'));
    let mut range_start = None;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("range") {
            range_start = v
                .strip_prefix("bytes=")
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|n| n.parse().ok());
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    Head {
        method,
        path,
        range_start,
        close,
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of one file, readable from any offset.
enum Body {
    Mem(Arc<Vec<u8>>),
    File(tokio::fs::File, u64),
}

impl Body {
    async fn open(files: &Files, path: &str) -> Option<Body> {
        match files {
            Files::Map(m) => m.get(path).cloned().map(Body::Mem),
            Files::Dir(dir) => {
                if path.split('/').any(|c| c == ".." || c.is_empty()) {
                    return None;
                }
                let full: PathBuf = dir.join(Path::new(path));
                let f = tokio::fs::File::open(&full).await.ok()?;
                let meta = f.metadata().await.ok()?;
                meta.is_file().then_some(Body::File(f, meta.len()))
            }
        }
    }

    fn len(&self) -> u64 {
        match self {
            Body::Mem(d) => d.len() as u64,
            Body::File(_, len) => *len,
        }
    }

    /// Read up to `want` bytes at `offset` into `buf` (replacing its content).
    async fn read_at(
        &mut self,
        offset: u64,
        want: usize,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        buf.clear();
        match self {
            Body::Mem(d) => {
                let start = offset as usize;
                let end = (start + want).min(d.len());
                buf.extend_from_slice(&d[start..end]);
            }
            Body::File(f, _) => {
                f.seek(std::io::SeekFrom::Start(offset)).await?;
                buf.resize(want, 0);
                let mut got = 0;
                while got < want {
                    let n = f.read(&mut buf[got..]).await?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                buf.truncate(got);
            }
        }
        Ok(())
    }
}

/// How one response misbehaves, resolved from the path's faults.
#[derive(Default)]
struct Plan {
    truncate: Option<u64>,
    drop: Option<u64>,
    stall: Option<(u64, Duration)>,
    corrupt: Vec<u64>,
    status: Option<u16>,
    not_found: bool,
    ignore_range: bool,
    extra: u64,
}

fn plan_for(state: &Mutex<State>, head: &Head) -> Plan {
    let mut s = state.lock().unwrap();
    s.log.push(Request {
        method: head.method.clone(),
        path: head.path.clone(),
        range_start: head.range_start,
    });
    let n = {
        let c = s.fault_counts.entry(head.path.clone()).or_insert(0);
        *c += 1;
        *c - 1
    };
    let mut plan = Plan::default();
    for f in s.faults.get(&head.path).into_iter().flatten() {
        if f.first.is_some_and(|k| n >= k) {
            continue;
        }
        match &f.kind {
            FaultKind::Truncate { after } => plan.truncate = Some(*after),
            FaultKind::Drop { after } => plan.drop = Some(*after),
            FaultKind::Stall { after, pause } => plan.stall = Some((*after, *pause)),
            FaultKind::Corrupt { offset } => plan.corrupt.push(*offset),
            FaultKind::Status(code) => plan.status = Some(*code),
            FaultKind::NotFound => plan.not_found = true,
            FaultKind::IgnoreRange => plan.ignore_range = true,
            FaultKind::Oversize { extra } => plan.extra = *extra,
        }
    }
    plan
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn send_simple(stream: &mut TcpStream, code: u16, extra: &str) -> std::io::Result<()> {
    let body = format!("{code} {}\n", reason(code));
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n",
        reason(code),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await
}

/// Serve requests on one connection until it closes or a fault ends it.
async fn serve_connection(
    mut stream: TcpStream,
    files: Arc<Files>,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let mut inbuf = Vec::new();
    let mut chunk = Vec::with_capacity(CHUNK);
    while let Some(head) = read_head(&mut stream, &mut inbuf).await? {
        let plan = plan_for(&state, &head);
        if head.method != "GET" && head.method != "HEAD" {
            send_simple(&mut stream, 405, "").await?;
            continue;
        }
        if let Some(code) = plan.status {
            send_simple(&mut stream, code, "").await?;
            if head.close {
                return Ok(());
            }
            continue;
        }
        let body = if plan.not_found {
            None
        } else {
            Body::open(&files, &head.path).await
        };
        let Some(mut body) = body else {
            send_simple(&mut stream, 404, "").await?;
            if head.close {
                return Ok(());
            }
            continue;
        };
        let file_len = body.len();
        let range = if plan.ignore_range {
            None
        } else {
            head.range_start
        };
        let start = match range {
            Some(s) if s >= file_len => {
                let cr = format!("Content-Range: bytes */{file_len}\r\n");
                send_simple(&mut stream, 416, &cr).await?;
                continue;
            }
            Some(s) => s,
            None => 0,
        };
        let body_len = file_len - start + plan.extra;
        let mut head_out = if range.is_some() {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{}\r\n",
                file_len + plan.extra - 1,
                file_len + plan.extra
            )
        } else {
            "HTTP/1.1 200 OK\r\n".to_string()
        };
        head_out.push_str(&format!(
            "Content-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nContent-Length: {body_len}\r\n\r\n"
        ));
        stream.write_all(head_out.as_bytes()).await?;
        if head.method == "HEAD" {
            continue;
        }
        // Body: `sent` counts body bytes; stop points are body offsets.
        let mut sent = 0u64;
        let mut stalled = false;
        while sent < body_len {
            if plan.truncate == Some(sent) {
                stream.flush().await?;
                let _ = stream.shutdown().await;
                return Ok(());
            }
            if plan.drop == Some(sent) {
                stream.flush().await?;
                let _ = stream.set_zero_linger();
                return Ok(());
            }
            if let Some((at, pause)) = plan.stall {
                if at == sent && !stalled {
                    stalled = true;
                    stream.flush().await?;
                    tokio::time::sleep(pause).await;
                }
            }
            let mut limit = (body_len - sent).min(CHUNK as u64);
            for stop in [plan.truncate, plan.drop, plan.stall.map(|s| s.0)]
                .into_iter()
                .flatten()
            {
                if stop > sent {
                    limit = limit.min(stop - sent);
                }
            }
            let offset = start + sent;
            if offset < file_len {
                let n = limit.min(file_len - offset) as usize;
                body.read_at(offset, n, &mut chunk).await?;
                if chunk.len() != n {
                    return Err(std::io::Error::other("file shrank while serving"));
                }
                for &c in &plan.corrupt {
                    if c >= offset && c < offset + n as u64 {
                        chunk[(c - offset) as usize] ^= 0xff;
                    }
                }
                stream.write_all(&chunk).await?;
                sent += n as u64;
            } else {
                let n = limit as usize;
                chunk.clear();
                chunk.resize(n, 0x5a);
                stream.write_all(&chunk).await?;
                sent += n as u64;
            }
        }
        // Stop points at the very end (e.g. truncate after the whole file) still close.
        if plan.truncate.is_some_and(|t| t >= body_len) || plan.drop.is_some_and(|d| d >= body_len)
        {
            let _ = stream.shutdown().await;
            return Ok(());
        }
        if head.close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
    Ok(())
}

/// Deterministic pseudo-random bytes (splitmix64): test data without a rand dependency.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: SocketAddr, path: &str, range: Option<u64>) -> (String, Vec<u8>) {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let range = range
            .map(|r| format!("Range: bytes={r}-\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: x\r\n{range}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&all[..end]).into_owned();
        (head, all[end + 4..].to_vec())
    }

    #[test]
    fn serves_ranges_and_faults() {
        let data = random_bytes(1, 100_000);
        let files: HashMap<String, Vec<u8>> = [("a/f.deb".to_string(), data.clone())].into();
        let server = TestServer::start(
            files,
            Faults::none()
                .with("a/f.deb", Fault::first(1, FaultKind::Status(500)))
                .with(
                    "a/f.deb",
                    Fault::first(2, FaultKind::Truncate { after: 10 }),
                )
                .with("a/f.deb", Fault::first(3, FaultKind::Corrupt { offset: 5 })),
        );
        let (head, _) = get(server.addr(), "a/f.deb", None);
        assert!(head.starts_with("HTTP/1.1 500"), "{head}");
        let (_, body) = get(server.addr(), "a/f.deb", None);
        assert_eq!(body.len(), 10);
        assert_ne!(body[5], data[5]);
        let (head, body) = get(server.addr(), "a/f.deb", Some(99_000));
        assert!(head.starts_with("HTTP/1.1 206"), "{head}");
        assert!(
            head.contains("Content-Range: bytes 99000-99999/100000"),
            "{head}"
        );
        assert_eq!(body, data[99_000..]);
        let (head, _) = get(server.addr(), "missing", None);
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert_eq!(server.requests_for("a/f.deb"), 3);
        assert_eq!(server.requests()[2].range_start, Some(99_000));
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("a%3Ab%2"), "a:b%2");
        assert_eq!(percent_decode("x%41"), "xA");
    }
}
