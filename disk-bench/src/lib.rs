//! `disk-bench`, the verb of `plinth-guest` and `plinth-host`: direct-I/O throughput of the
//! virtio disks marked as scratch benchmark disks, printed on the consoles, for
//! `ci/bench-launch` (GuestOS with HostOS's chosen virtio-blk settings against QEMU's
//! defaults) and `ci/bench-state` (HostOS: the sealed state's dm-crypt against the raw disk).
//!
//! A disk is a benchmark disk only when its first sector starts with [`scratch::MAGIC`];
//! whatever follows on the sector, up to the first NUL, is `key=value` lines:
//!
//! ```text
//! PLINTH DISK BENCH SCRATCH v1
//! bytes=267386880
//! random_reads=4096
//! dm_crypt=1
//! ```
//!
//! `bytes` (a multiple of 1 MiB; default: the rest of the disk) is written past the first
//! MiB, which is never written, so the header stays; `random_reads` is the number of 4 KiB
//! random reads (default 4096, 0 for none); `dm_crypt=1` benchmarks the disk a second time
//! through dm-crypt with the open state volume's cipher, key size and sector size, and reads
//! the state volume against its own raw partition ([`crypt`]). Every other disk is only
//! read: its first sector, by an ordinary read, and nothing else. Only virtio disks (`vd*`)
//! are looked at, and not one that is read-only, has partitions or holders (device-mapper,
//! LVM); the benchmark opens the device with `O_EXCL`, which the kernel refuses while
//! anything else holds it. A production disk never starts with the magic (a boot disk starts
//! with a GPT's protective MBR; an encrypted volume with its LUKS header), so on those the
//! verb is inert.
//!
//! What is measured ([`direct`]), all with `O_DIRECT` from a 4 KiB-aligned buffer, one
//! request at a time: a sequential write of `bytes` in 1 MiB blocks, then `fdatasync` (in the
//! write's time, so that a cache that holds the writes pays for them); a sequential read of
//! the same blocks (each block's first 8 bytes, its offset, checked); `random_reads` reads of
//! 4 KiB at pseudo-random aligned offsets of the same range. The line:
//!
//! ```text
//! PLINTH DISK BENCH disk=vdb bytes=267386880 write_mib_s=97.3 read_mib_s=120.8 randread_4k_iops=812 write_s=2.621 read_s=2.111 randread_s=5.044
//! ```
//!
//! or `PLINTH DISK BENCH disk=vdb FAILED: <why>`; the last line is `PLINTH DISK BENCH
//! finished ok=N failed=M`. The unit `plinth-disk-bench.service` runs the verb at boot; it
//! waits for the end of startup first (`systemctl is-system-running --wait`), so that the
//! benchmark neither delays the boot report nor competes with the rest of the boot, and its
//! failure never fails the boot.
//!
//! The crate also reads the mark of the disks SetupOS's `install-bench` copies a release's
//! image from ([`install`]); both marks share one form ([`mark`]).

pub mod crypt;
pub mod direct;
pub mod install;
pub mod mark;
pub mod scratch;
mod verb;

pub use verb::{wait_for_startup, DiskBenchArgs};
