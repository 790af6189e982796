//! Whole-file downloads of small archive files (InRelease, Packages indexes) over HTTP(S) or
//! from a `file://` mirror, with retries. Package downloads stream through [`super::fetch`].

use std::time::Duration;

/// How many times a small file is tried before giving up.
const ATTEMPTS: u32 = 4;

/// A download that failed for good.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: {message} (after {attempts} attempts)")]
    Transport {
        url: String,
        message: String,
        attempts: u32,
    },
    #[error("reading {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

impl HttpError {
    /// True when the server answered that the file does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, HttpError::Status { status: 404, .. })
            || matches!(self, HttpError::File { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A client for index downloads.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("plinth/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is valid")
}

/// GET `url` into memory. 5xx, 429 and transport errors are retried with backoff; other HTTP
/// errors fail at once.
pub async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, HttpError> {
    if let Some(path) = url.strip_prefix("file://") {
        return tokio::fs::read(path)
            .await
            .map_err(|source| HttpError::File {
                path: path.to_string(),
                source,
            });
    }
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
        match client.get(url).send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if status == 200 {
                    match resp.bytes().await {
                        Ok(b) => return Ok(b.to_vec()),
                        Err(e) => last = error_chain(&e),
                    }
                } else if status >= 500 || status == 429 {
                    last = format!("HTTP {status}");
                } else {
                    return Err(HttpError::Status {
                        url: url.to_string(),
                        status,
                    });
                }
            }
            Err(e) => last = error_chain(&e),
        }
    }
    Err(HttpError::Transport {
        url: url.to_string(),
        message: last,
        attempts: ATTEMPTS,
    })
}

/// An error and its sources on one line (each cause once).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}
