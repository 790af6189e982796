//! The outcome of opening the state, written to `/run/plinth/state.json` (which survives the
//! switch to the real root) for the boot report: `ok`, and if not, the reason named
//! (`state: ...` in `PLINTH BOOT FAILED`).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where the outcome is written.
pub const REPORT_PATH: &str = "/run/plinth/state.json";
/// The most bytes read back.
const REPORT_MAX: u64 = 64 * 1024;

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Whether the state volume is mounted on /var.
    pub ok: bool,
    /// The partition (`/dev/vda7`), when it was found.
    pub device: Option<String>,
    /// The key source's name.
    pub key_source: Option<String>,
    /// Whether this boot created the volume.
    pub created: bool,
    /// The boots the state has seen, this one included.
    #[serde(default)]
    pub boots: u64,
    /// The machine id kept in the state.
    #[serde(default)]
    pub machine_id: Option<String>,
    /// Why the state is not available (the error's first line).
    pub reason: Option<String>,
    /// Each step and its milliseconds.
    pub steps: Vec<(String, u128)>,
    /// The volume's UUID, when the partition holds one (what a wipe request names).
    #[serde(default)]
    pub volume: Option<String>,
}

impl Report {
    /// Write the report atomically (a temporary file beside it, renamed).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(".state.json.new");
        let mut text = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        text.push(b'\n');
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    /// Read a report back; `None` when there is none.
    pub fn read(path: &Path) -> std::io::Result<Option<Report>> {
        use std::io::Read;
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = Vec::new();
        file.take(REPORT_MAX).read_to_end(&mut text)?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// One line for the console: `PLINTH STATE ok /dev/vda7 created (tpm2) luks=850ms ...`,
    /// or `PLINTH STATE failed: <reason>`.
    pub fn summary(&self) -> String {
        if !self.ok {
            return format!(
                "PLINTH STATE failed: {}",
                self.reason.as_deref().unwrap_or("no reason recorded")
            );
        }
        let mut line = format!(
            "PLINTH STATE ok {} {} ({}) boots={} machine-id={}",
            self.device.as_deref().unwrap_or("?"),
            if self.created { "created" } else { "opened" },
            self.key_source.as_deref().unwrap_or("?"),
            self.boots,
            self.machine_id.as_deref().unwrap_or("?")
        );
        if let Some(uuid) = &self.volume {
            line.push_str(&format!(" volume={uuid}"));
        }
        for (step, ms) in &self.steps {
            line.push_str(&format!(" {step}={ms}ms"));
        }
        line
    }

    /// The boot report's problem, if any: `state: <reason>`, and when the partition holds a
    /// volume, its UUID and how to start over.
    pub fn problem(&self) -> Option<String> {
        (!self.ok).then(|| {
            let mut line = format!(
                "state: {}",
                self.reason
                    .as_deref()
                    .unwrap_or("not available (no reason recorded)")
            );
            if let Some(uuid) = &self.volume {
                line.push_str(&format!(
                    " (volume {uuid}; to start over with an empty state, write this UUID to {} on the config partition)",
                    crate::config::WIPE_FILE
                ));
            }
            line
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_and_names_its_problem() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("run/plinth/state.json");
        assert_eq!(Report::read(&path).unwrap(), None);
        let r = Report {
            ok: false,
            device: Some("/dev/vda7".into()),
            key_source: Some("tpm2".into()),
            created: false,
            boots: 0,
            machine_id: None,
            reason: Some("/dev/vda7 could not be unlocked".into()),
            steps: vec![("unlock".into(), 12)],
            volume: None,
        };
        r.write(&path).unwrap();
        assert_eq!(Report::read(&path).unwrap(), Some(r.clone()));
        assert_eq!(
            r.problem().unwrap(),
            "state: /dev/vda7 could not be unlocked"
        );
        assert_eq!(
            r.summary(),
            "PLINTH STATE failed: /dev/vda7 could not be unlocked"
        );
        let ok = Report {
            ok: true,
            created: true,
            boots: 1,
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            reason: None,
            ..r.clone()
        };
        assert_eq!(ok.problem(), None);
        assert_eq!(
            ok.summary(),
            "PLINTH STATE ok /dev/vda7 created (tpm2) boots=1 machine-id=0123456789abcdef0123456789abcdef unlock=12ms"
        );
        let with_volume = Report {
            volume: Some("3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8".into()),
            ..r.clone()
        };
        assert_eq!(
            with_volume.problem().unwrap(),
            "state: /dev/vda7 could not be unlocked (volume 3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8; to start over with an empty state, write this UUID to wipe-state on the config partition)"
        );
        assert!(Report {
            ok: true,
            ..with_volume
        }
        .summary()
        .contains(" volume=3f0c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8 "));
        std::fs::write(&path, b"{\"ok\":").unwrap();
        assert!(Report::read(&path).is_err());
    }
}
