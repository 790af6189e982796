//! plinth's persistent state: all of `/var` on ext4 in LUKS2 on the boot disk's `data`
//! partition, created on the first boot, opened in the initrd on every boot (before the real
//! system starts, so systemd finds its machine-id and journal there), and never reformatted.
//! The design, and why, is docs/state-design.md.
//!
//! Data flows one way: [`disk`] finds the partition, [`config`] reads the node's request to
//! wipe it (if any), [`header`] says what it holds (and
//! [`metadata`] whether its LUKS2 header is one plinth made), [`key`] says how it is sealed (or
//! [`derive`]d), [`volume`]
//! opens or creates it, [`report`] records the outcome for the boot report. Whatever fails, the boot goes on with a tmpfs `/var` and the failure named.

pub mod config;
pub mod console;
pub mod derive;
pub mod disk;
pub mod files;
pub mod header;
pub mod key;
pub mod metadata;
pub mod report;
pub mod volume;
