//! systemd's service notifications (sd_notify(3)), for `plinth-guest.service` (`Type=notify`):
//! `READY=1` once QEMU runs pinned (so a launch that cannot be set up fails the service's
//! start job, and the boot report names it), `STATUS=` with each supervisor line for
//! `systemctl status`, `STOPPING=1` on a stop request. Without `$NOTIFY_SOCKET` (not started
//! by systemd) nothing is sent; a lost message is not an error, as with sd_notify.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where notifications go, if anywhere.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The socket systemd names in `$NOTIFY_SOCKET` (a path, or `@name` for an abstract
    /// socket), or none.
    pub fn from_env() -> Notifier {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(name) => Notifier::to(&name),
            Err(_) => Notifier { target: None },
        }
    }

    /// Notifications to socket `name` (as in `$NOTIFY_SOCKET`).
    pub fn to(name: &str) -> Notifier {
        let addr = match name.strip_prefix('@') {
            Some(abstract_name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(abstract_name.as_bytes())
            }
            None => SocketAddr::from_pathname(name),
        };
        let target = addr
            .ok()
            .and_then(|addr| UnixDatagram::unbound().ok().map(|s| (s, addr)));
        Notifier { target }
    }

    /// Send one notification (`READY=1`, `STATUS=…`); best effort.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target {
            let _ = socket.send_to_addr(message.as_bytes(), addr);
        }
    }

    /// `STATUS=` with `line` (newlines would end the field: made spaces).
    pub fn status(&self, line: &str) {
        self.send(&format!("STATUS={}", line.replace('\n', " ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let systemd = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to(path.to_str().unwrap());
        n.send("READY=1");
        n.status("QEMU 42 started\nstart 1");
        assert_eq!(received(&systemd), "READY=1");
        assert_eq!(received(&systemd), "STATUS=QEMU 42 started start 1");
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("plinth-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let systemd = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::to(&format!("@{name}")).send("STOPPING=1");
        assert_eq!(received(&systemd), "STOPPING=1");
    }

    #[test]
    fn no_socket_no_notification() {
        // Sending without a socket, or to one nobody reads, is not an error.
        Notifier { target: None }.send("READY=1");
        Notifier::to("/nonexistent/notify").send("READY=1");
    }
}
