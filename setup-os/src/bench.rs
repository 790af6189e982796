//! `plinth-setup install-bench`: the install's streaming writer against `dd` of the same
//! image, onto the same NVMe disk, in the same machine (`ci/bench-install` boots SetupOS
//! with a source disk and a blank NVMe drive for it).
//!
//! A virtio disk marked as a source ([`plinth_disk_bench::install`]) holds a carried
//! release's raw `disk.img`; its header names the release, the image's size and the serial
//! of the NVMe disk to write. For each run, in turn:
//! - **dd**: `dd` copies the raw image from the source disk onto the target (`bs=4M
//!   oflag=direct conv=fsync`), then the target is read back against the release's manifest
//!   (so the baseline wrote the very image the install writes; its read-back is not timed);
//! - **install**: what `plinth-setup install` does for that disk: the carried release
//!   opened as the install opens it (its manifest against the root's pin, the archive's
//!   sha256 against the manifest), streamed onto the target by [`plinth_flash::write`]
//!   (zstd, 4 MiB `O_DIRECT` writes, the first MiB last, syncs), and read back.
//!
//! The guest's page cache is dropped before each side. One line per run on the consoles:
//!
//! ```text
//! PLINTH INSTALL BENCH release=host-os target=nvme0n1 run=1/2 bytes=3221225472 dd_s=9.812 install_open_s=1.201 install_write_s=10.020 install_verify_s=10.702
//! ```
//!
//! then `PLINTH INSTALL BENCH finished ok=N failed=M`. The target is left without a
//! partition table. A target is written only when it is an NVMe disk with that serial,
//! holding no partition, used by nobody, and large enough; no marked disk: nothing is
//! written.

use crate::install::{disks, run};
use plinth_disk_bench::install::{self as mark, Header, IMAGE_OFFSET};
use plinth_disk_bench::mark::MarkedDisk;
use plinth_flash::device::{self, Roots};
use plinth_flash::image::Image;
use plinth_flash::write::WriteOptions;
use plinth_flash::Disk;
use plinth_host::topology::sysfs;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// Where the machine is and what it carries.
pub struct Bench<'a> {
    /// The directory that stands for `/` (its sys/ is read).
    pub root: &'a Path,
    /// Where the disks' device nodes are.
    pub dev: &'a Path,
    /// The carried releases (`host-os/`, `guest-os/`).
    pub releases: &'a Path,
    /// The root's pins of them; `None`: not pinned (a test's releases).
    pub pins: Option<&'a [run::Pin]>,
    pub cancel: &'a AtomicBool,
    pub say: &'a dyn Fn(&str),
}

/// One run's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub dd_s: f64,
    pub install_open_s: f64,
    pub install_write_s: f64,
    pub install_verify_s: f64,
}

/// The source disks of the machine (marked virtio disks).
pub fn sources(root: &Path, dev: &Path) -> Vec<MarkedDisk<Header>> {
    plinth_disk_bench::mark::marked_disks(&root.join("sys"), dev, mark::parse_header)
}

impl Bench<'_> {
    /// Benchmark every source disk; `(ok, failed)`.
    pub fn run(&self, sources: Vec<MarkedDisk<Header>>) -> (u32, u32) {
        let (mut ok, mut failed) = (0, 0);
        for source in sources {
            match self.source(&source) {
                Ok(()) => ok += 1,
                Err(why) => {
                    failed += 1;
                    (self.say)(&format!(
                        "PLINTH INSTALL BENCH source={} FAILED: {why}",
                        source.name
                    ));
                }
            }
        }
        (ok, failed)
    }

    fn source(&self, source: &MarkedDisk<Header>) -> Result<(), String> {
        let header = source.header.clone()?;
        if source.capacity < IMAGE_OFFSET.saturating_add(header.bytes) {
            return Err(format!(
                "{} holds {} bytes: too small for an image of {} bytes at {IMAGE_OFFSET}",
                source.path.display(),
                source.capacity,
                header.bytes
            ));
        }
        // The image as the install opens it: its size must be the source's.
        let image = self.open(header.release)?;
        if image.size != header.bytes {
            return Err(format!(
                "the carried {} image has {} bytes, the source's header says {}",
                header.release, image.size, header.bytes
            ));
        }
        let target = self.target(&header.target, image.size)?;
        let name = target
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for run in 1..=header.runs {
            let f = self.once(source, &target, &header)?;
            (self.say)(&format!(
                "PLINTH INSTALL BENCH release={} target={name} run={run}/{} bytes={} dd_s={:.3} install_open_s={:.3} install_write_s={:.3} install_verify_s={:.3}",
                header.release, header.runs, header.bytes, f.dd_s, f.install_open_s,
                f.install_write_s, f.install_verify_s
            ));
        }
        let disk = Disk::open_write(&target).map_err(|e| e.to_string())?;
        plinth_flash::write::reset_first_mib(&disk)
            .map_err(|e| format!("{}: clearing the first MiB: {e}", target.path.display()))
    }

    /// The carried release `os`, opened (and checked) as the install opens it.
    fn open(&self, os: &str) -> Result<Image, String> {
        let pin = match self.pins {
            None => None,
            Some(pins) => Some(
                pins.iter()
                    .find(|p| p.os == os)
                    .ok_or_else(|| format!("this SetupOS pins no {os} release"))?
                    .manifest_sha256,
            ),
        };
        Image::open_pinned(&self.releases.join(os), pin).map_err(|e| e.to_string())
    }

    /// The NVMe disk with `serial`: exactly one, a whole disk holding no partition, used by
    /// nobody and large enough.
    fn target(&self, serial: &str, needed: u64) -> Result<device::Target, String> {
        let topology = sysfs::read(self.root).map_err(|e| e.to_string())?;
        let found: Vec<_> = disks::candidates(self.root, &topology)
            .into_iter()
            .filter(|c| c.serial.as_deref() == Some(serial))
            .collect();
        let disk = match found.as_slice() {
            [one] => one,
            [] => return Err(format!("no NVMe disk has the serial {serial}")),
            _ => {
                return Err(format!(
                    "{} NVMe namespaces have the serial {serial}: name one disk",
                    found.len()
                ))
            }
        };
        if !disk.partitions.is_empty() {
            return Err(format!(
                "{} (serial {serial}) holds partitions ({}): the benchmark writes only a blank disk",
                disk.namespace,
                disk.partitions.join(", ")
            ));
        }
        let roots = Roots {
            sys: self.root.join("sys"),
            proc: self.root.join("proc"),
        };
        device::inspect(&self.dev.join(&disk.namespace), &roots)
            .and_then(|t| device::check_unused(&t, &roots).map(|()| t))
            .and_then(|t| device::check_size(&t, needed).map(|()| t))
            .map_err(|e| e.to_string())
    }

    /// One run of each side.
    fn once(
        &self,
        source: &MarkedDisk<Header>,
        target: &device::Target,
        header: &Header,
    ) -> Result<Figures, String> {
        drop_caches();
        let started = Instant::now();
        let out = Command::new("dd")
            .arg(format!("if={}", source.path.display()))
            .arg(format!("of={}", target.path.display()))
            .args(["bs=4M", "iflag=skip_bytes,count_bytes"])
            .arg(format!("skip={IMAGE_OFFSET}"))
            .arg(format!("count={}", header.bytes))
            .args(["oflag=direct", "conv=fsync", "status=none"])
            .output()
            .map_err(|e| format!("dd: {e}"))?;
        let dd_s = started.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "dd: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let image = self.open(header.release)?;
        let verified = self.verify(target, &image)?;
        if !verified {
            return Err(format!(
                "what dd wrote from {} is not the carried {} image: the source disk holds another",
                source.path.display(),
                header.release
            ));
        }

        drop_caches();
        let started = Instant::now();
        let image = self.open(header.release)?;
        let install_open_s = started.elapsed().as_secs_f64();
        let mut disk = Disk::open_write(target).map_err(|e| e.to_string())?;
        let written = plinth_flash::write::write(
            &image,
            &mut disk,
            &WriteOptions {
                cancel: self.cancel,
                progress: &|_| {},
                defer_first_mib: false,
            },
        )
        .map_err(|e| e.to_string())?;
        drop(disk);
        let started = Instant::now();
        if !self.verify(target, &image)? {
            return Err("the install's write does not read back as the release".into());
        }
        Ok(Figures {
            dd_s,
            install_open_s,
            install_write_s: written.seconds,
            install_verify_s: started.elapsed().as_secs_f64(),
        })
    }

    /// Whether `target` reads back as `image`.
    fn verify(&self, target: &device::Target, image: &Image) -> Result<bool, String> {
        let reader = Disk::open_read(target).map_err(|e| e.to_string())?;
        let verified = plinth_flash::verify::verify(&reader, image, self.cancel, &mut |_| {})
            .map_err(|e| e.to_string())?;
        Ok(verified.ok())
    }
}

/// Written data to the disks, then the page cache dropped: neither side reads the other's
/// bytes from memory.
fn drop_caches() {
    nix::unistd::sync();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}
