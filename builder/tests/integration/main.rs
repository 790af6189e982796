//! plinth's integration tests, one test binary (one link instead of one per file): each
//! module is one former `tests/<name>.rs`, `support` what they share. Select a module with
//! its path as filter, e.g. `cargo test -p plinth-builder --test integration -- network::`.

mod support;

mod artifacts;
mod attest;
mod compare;
mod disk;
mod esp;
mod fetch_faults;
mod filesystems;
mod flash;
mod governance;
mod hostile_archive;
mod hostile_fat;
mod hostile_image;
mod hostile_release;
mod lock_archive;
mod measure;
mod network;
mod power_loss;
mod readme;
mod reproducible;
mod run;
mod setup_install;
mod spec_errors;
mod uki;
