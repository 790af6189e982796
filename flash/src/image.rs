//! The release being flashed, opened as the hostile input it is: its `manifest.json` read
//! with [`Manifest::read`] (bounded, no links), its `disk-img.tar.zst` opened untrusted and
//! checked against the manifest's `outputs` entry (size, then sha256) before anything is
//! written, its one member `disk.img` bounded by the manifest's partitions
//! ([`Manifest::archive_bounds`]) on its header, and its first MiB (the primary GPT) kept in
//! memory. The member's stored data may not pass the partitions' end plus the backup GPT (and
//! [`plinth_release::archive::MEMBER_SLACK`]); its real size may reach further, by at most
//! [`plinth_release::manifest::UNPARTITIONED_LIMIT`] of holes, since the manifest does not
//! record the disk's size and real disks end after their last partition (this SetupOS `test`
//! image by 700 MB): what is written there is zeros, and a disk must hold it all.
//! [`Image::stream`] hashes the archive again as it streams, so a file changed between the
//! check and the write is caught before the first MiB goes out.

use super::{io_err, FlashError, MIB};
use plinth_release::archive::{for_each_member_of, Bounds, DISK_ARCHIVE};
use plinth_release::manifest::{self, Manifest, OutputFile, PartitionImage};
use plinth_release::Role;
use sha2::Digest;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The disk image's member in [`DISK_ARCHIVE`].
pub const DISK_MEMBER: &str = "disk.img";

/// An opened, checked release.
pub struct Image {
    pub dir: PathBuf,
    /// Its `disk-img.tar.zst`.
    pub archive: PathBuf,
    pub manifest: Manifest,
    /// The manifest's entry for the archive.
    pub expected: OutputFile,
    file: File,
    bounds: Bounds,
    /// `disk.img`'s size: what is written.
    pub size: u64,
    /// Where the last partition and the backup GPT end (from the manifest).
    pub disk_end: u64,
    /// `disk.img`'s first MiB (or all of it if smaller).
    pub first_mib: Vec<u8>,
}

/// The archive's compressed bytes, hashed and counted as they are read; an error past the
/// manifest's size.
struct Hashing<'a> {
    inner: &'a File,
    hasher: sha2::Sha256,
    count: u64,
    limit: u64,
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self
            .limit
            .saturating_add(1)
            .saturating_sub(self.count)
            .min(buf.len() as u64);
        let n = self.inner.read(&mut buf[..room as usize])?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "longer than the {} bytes manifest.json declares",
                    self.limit
                ),
            ));
        }
        Ok(n)
    }
}

impl Image {
    /// Open `arg`: a release directory, or its `disk-img.tar.zst` (the manifest beside it),
    /// or its `manifest.json`. Checks the archive's size and sha256 against the manifest,
    /// then reads `disk.img`'s header (within the manifest's bounds) and first MiB.
    pub fn open(arg: &Path) -> Result<Image, FlashError> {
        Image::open_pinned(arg, None)
    }

    /// [`Image::open`], the manifest's bytes first checked against `pin` when given (its
    /// sha256, as a verity-protected root records it): the bytes hashed are the bytes
    /// parsed, read once, so a device that answers two reads differently cannot slip another
    /// release in.
    pub fn open_pinned(
        arg: &Path,
        pin: Option<plinth_release::Sha256>,
    ) -> Result<Image, FlashError> {
        let bad = |path: &Path, message: String| FlashError::Release {
            path: path.to_path_buf(),
            message,
        };
        let name = arg.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir = if arg.is_dir() {
            arg.to_path_buf()
        } else if name == DISK_ARCHIVE || name == manifest::FILE_NAME {
            match arg.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            }
        } else if !arg.exists() {
            return Err(bad(arg, "no such release directory or file".into()));
        } else {
            return Err(bad(
                arg,
                format!("neither a release directory nor its {DISK_ARCHIVE} or manifest.json"),
            ));
        };
        let manifest_path = dir.join(manifest::FILE_NAME);
        let manifest = match pin {
            None => Manifest::read(&manifest_path)?,
            Some(pin) => {
                let bytes =
                    plinth_release::untrusted::read_untrusted(&manifest_path, manifest::MAX_SIZE)
                        .map_err(|e| bad(&manifest_path, format!("cannot read it: {e}")))?;
                let found = plinth_release::Sha256::of(&bytes);
                if found != pin {
                    return Err(bad(
                        &manifest_path,
                        format!("sha256 {found}, but the release pinned here is {pin}"),
                    ));
                }
                let text = String::from_utf8(bytes)
                    .map_err(|_| bad(&manifest_path, "not UTF-8 text".into()))?;
                Manifest::parse(&text, &manifest_path)?
            }
        };
        let archive = dir.join(DISK_ARCHIVE);
        let expected = manifest
            .outputs
            .iter()
            .find(|o| o.name == DISK_ARCHIVE)
            .cloned()
            .ok_or_else(|| {
                bad(
                    &dir.join(manifest::FILE_NAME),
                    format!("outputs lists no {DISK_ARCHIVE}: the release has no disk image"),
                )
            })?;
        if manifest.partitions.is_empty() {
            return Err(bad(
                &dir.join(manifest::FILE_NAME),
                "partitions is empty: nothing to flash or verify".into(),
            ));
        }
        let file = plinth_release::untrusted::open_untrusted(&archive)
            .map_err(|e| bad(&archive, format!("cannot open it: {e}")))?;
        let size = file.metadata().map_err(io_err(&archive, "stat"))?.len();
        if size != expected.size {
            return Err(bad(
                &archive,
                format!(
                    "holds {size} bytes, manifest.json's outputs entry says {} (sha256 {})",
                    expected.size, expected.sha256
                ),
            ));
        }
        let (sha256, read) =
            plinth_release::Sha256::of_reader((&file).take(expected.size.saturating_add(1)))
                .map_err(io_err(&archive, "read"))?;
        if sha256 != expected.sha256 || read != expected.size {
            return Err(bad(
                &archive,
                format!(
                    "sha256 {sha256} ({read} bytes), manifest.json's outputs entry says {} ({} bytes)",
                    expected.sha256, expected.size
                ),
            ));
        }
        let bounds = manifest.archive_bounds(DISK_ARCHIVE);
        let disk_end = manifest.disk_end();
        let mut image = Image {
            dir,
            archive,
            manifest,
            expected,
            file,
            bounds,
            size: 0,
            disk_end,
            first_mib: Vec::new(),
        };
        image.peek()?;
        Ok(image)
    }

    /// `disk.img`'s header (checked against the bounds) and first MiB, without reading
    /// further.
    fn peek(&mut self) -> Result<(), FlashError> {
        (&self.file)
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.archive, "seek"))?;
        let mut found = None;
        for_each_member_of(
            &self.file,
            &self.archive,
            &self.bounds,
            |name, size, data| {
                let mut first = vec![0u8; size.min(MIB) as usize];
                data.read_exact(&mut first)?;
                found = Some((name.to_string(), size, first));
                Ok(false)
            },
        )?;
        let bad = |message: String| FlashError::Release {
            path: self.archive.clone(),
            message,
        };
        let Some((name, size, first)) = found else {
            return Err(bad(format!("holds no member; expected `{DISK_MEMBER}`")));
        };
        if name != DISK_MEMBER {
            return Err(bad(format!(
                "its first member is `{name}`; expected `{DISK_MEMBER}`"
            )));
        }
        if size < self.disk_end {
            return Err(bad(format!(
                "`{DISK_MEMBER}` is {size} bytes, but manifest.json's partitions and the backup GPT end at byte {}",
                self.disk_end
            )));
        }
        if size % 512 != 0 {
            return Err(bad(format!(
                "`{DISK_MEMBER}` is {size} bytes, not a whole number of 512-byte sectors"
            )));
        }
        self.size = size;
        self.first_mib = first;
        Ok(())
    }

    /// The partition of role `config`, if the disk has one.
    pub fn config_partition(&self) -> Option<&PartitionImage> {
        self.manifest
            .partitions
            .iter()
            .find(|p| p.role == Role::Config)
    }

    /// Stream `disk.img` to `visit` (exactly [`Image::size`] bytes, holes as zeros), reading
    /// the whole archive: its sha256 and size must still be the manifest's when it ends, and
    /// nothing but `disk.img` may be in it. `visit`'s own error is returned as it is.
    pub fn stream(
        &self,
        mut visit: impl FnMut(&mut dyn Read) -> Result<(), FlashError>,
    ) -> Result<(), FlashError> {
        (&self.file)
            .seek(SeekFrom::Start(0))
            .map_err(io_err(&self.archive, "seek"))?;
        let mut hashing = Hashing {
            inner: &self.file,
            hasher: sha2::Sha256::new(),
            count: 0,
            limit: self.expected.size,
        };
        let mut failed: Option<FlashError> = None;
        let mut seen = false;
        let walked = for_each_member_of(
            &mut hashing,
            &self.archive,
            &self.bounds,
            |name, size, data| {
                if name != DISK_MEMBER || size != self.size || seen {
                    failed = Some(FlashError::Release {
                        path: self.archive.clone(),
                        message: format!(
                            "member `{name}` of {size} bytes changed while it was read (it was `{DISK_MEMBER}` of {} bytes)",
                            self.size
                        ),
                    });
                    return Err(io::Error::other("changed"));
                }
                seen = true;
                visit(data).map_err(|e| {
                    failed = Some(e);
                    io::Error::other("stopped")
                })?;
                Ok(true)
            },
        );
        if let Some(e) = failed {
            return Err(e);
        }
        walked?;
        let sha256 = plinth_release::Sha256(hashing.hasher.finalize().into());
        if sha256 != self.expected.sha256 || hashing.count != self.expected.size {
            return Err(FlashError::Release {
                path: self.archive.clone(),
                message: format!(
                    "changed while it was written: sha256 {sha256} ({} bytes), manifest.json says {} ({} bytes)",
                    hashing.count, self.expected.sha256, self.expected.size
                ),
            });
        }
        if !seen {
            return Err(FlashError::Release {
                path: self.archive.clone(),
                message: format!("holds no `{DISK_MEMBER}`"),
            });
        }
        Ok(())
    }
}
