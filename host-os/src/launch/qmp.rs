//! A QMP client (QEMU's JSON machine protocol over a Unix socket): just what the supervisor
//! asks: the thread ids of the vCPUs and I/O threads (for pinning), the run state, a
//! clean power-down and quit. Events that arrive between replies are skipped.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A QMP failure, naming the socket and the command.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("{socket}: no QMP socket after {seconds} s: {source}\n  hint: QEMU did not start; see its output")]
    Connect {
        socket: String,
        seconds: u64,
        source: std::io::Error,
    },
    #[error("{socket}: {command}: {source}")]
    Io {
        socket: String,
        command: String,
        source: std::io::Error,
    },
    #[error("{socket}: {command}: QEMU said {reply}")]
    Refused {
        socket: String,
        command: String,
        reply: String,
    },
    #[error("{socket}: {command}: not QMP: {line}")]
    Protocol {
        socket: String,
        command: String,
        line: String,
    },
}

/// One QMP session, in command mode.
pub struct Qmp {
    socket: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// A vCPU and the host thread running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VcpuThread {
    pub cpu_index: u32,
    pub thread_id: i32,
}

/// An I/O thread (`-object iothread,id=...`) and its host thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoThread {
    pub id: String,
    pub thread_id: i32,
}

impl Qmp {
    /// Connect to `socket` (retrying while QEMU starts, up to `wait`), read the greeting and
    /// enter command mode.
    pub fn connect(socket: &Path, wait: Duration) -> Result<Qmp, QmpError> {
        let shown = socket.display().to_string();
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(e) if start.elapsed() >= wait => {
                    return Err(QmpError::Connect {
                        socket: shown,
                        seconds: wait.as_secs(),
                        source: e,
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let io = |command: &str| {
            let (socket, command) = (shown.clone(), command.to_string());
            move |source| QmpError::Io {
                socket,
                command,
                source,
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io("greeting"))?;
        let writer = stream.try_clone().map_err(io("greeting"))?;
        let mut qmp = Qmp {
            socket: shown.clone(),
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.line("greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Protocol {
                socket: shown,
                command: "greeting".into(),
                line: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Run `command` and return its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(a) = arguments {
            request["arguments"] = a;
        }
        let text = format!("{request}\n");
        self.writer
            .write_all(text.as_bytes())
            .map_err(|source| QmpError::Io {
                socket: self.socket.clone(),
                command: command.into(),
                source,
            })?;
        loop {
            let reply = self.line(command)?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(QmpError::Refused {
                    socket: self.socket.clone(),
                    command: command.into(),
                    reply: e.to_string(),
                });
            }
            // An event (`{"event": ...}`): not the reply.
        }
    }

    /// Every vCPU's host thread (`query-cpus-fast`), by cpu index.
    pub fn vcpu_threads(&mut self) -> Result<Vec<VcpuThread>, QmpError> {
        let r = self.execute("query-cpus-fast", None)?;
        let mut out = Vec::new();
        for cpu in r.as_array().into_iter().flatten() {
            match (cpu["cpu-index"].as_u64(), cpu["thread-id"].as_i64()) {
                (Some(i), Some(t)) => out.push(VcpuThread {
                    cpu_index: i as u32,
                    thread_id: t as i32,
                }),
                _ => return Err(self.protocol("query-cpus-fast", cpu)),
            }
        }
        out.sort_by_key(|v| v.cpu_index);
        Ok(out)
    }

    /// Every I/O thread's host thread (`query-iothreads`).
    pub fn iothreads(&mut self) -> Result<Vec<IoThread>, QmpError> {
        let r = self.execute("query-iothreads", None)?;
        let mut out = Vec::new();
        for t in r.as_array().into_iter().flatten() {
            match (t["id"].as_str(), t["thread-id"].as_i64()) {
                (Some(id), Some(tid)) => out.push(IoThread {
                    id: id.to_string(),
                    thread_id: tid as i32,
                }),
                _ => return Err(self.protocol("query-iothreads", t)),
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The run state (`running`, `paused`, `shutdown`, ...).
    pub fn status(&mut self) -> Result<String, QmpError> {
        let r = self.execute("query-status", None)?;
        r["status"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| self.protocol("query-status", &r))
    }

    /// Ask the guest to power off (ACPI), as a clean shutdown does.
    pub fn powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(|_| ())
    }

    /// End QEMU now.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        self.execute("quit", None).map(|_| ())
    }

    fn line(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QmpError::Io {
                socket: self.socket.clone(),
                command: command.into(),
                source,
            })?;
        if n == 0 {
            return Err(QmpError::Io {
                socket: self.socket.clone(),
                command: command.into(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        serde_json::from_str(&line).map_err(|_| QmpError::Protocol {
            socket: self.socket.clone(),
            command: command.into(),
            line: line.trim_end().to_string(),
        })
    }

    fn protocol(&self, command: &str, value: &Value) -> QmpError {
        QmpError::Protocol {
            socket: self.socket.clone(),
            command: command.into(),
            line: value.to_string(),
        }
    }
}
