//! Debian packages: the signed archive indexes, resolving a spec's package closure, the
//! `packages.lock` file, and the verified, content-addressed download cache.
//!
//! Flow: [`mirror`] says where each suite lives → [`release`] fetches and verifies `InRelease`
//! → [`index`] fetches `Packages` checked against it and parses it → [`resolve`] asks apt for
//! the closure mmdebstrap would install → [`lockfile`] writes it → [`fetch`] downloads each
//! locked `.deb` into the [`cache`].
//!
//! Imports between these modules follow the data, and a module imports only from modules
//! earlier in this order (so there is no cycle): the helpers [`deb822`] and [`http`] →
//! [`mirror`] → [`release`] → [`index`] (with [`index::IndexDigest`], what a lock records of
//! an index) → [`archive`] → [`resolve`] (with [`resolve::LockedPackage`], what it records of
//! a `.deb`) → [`sources`] (with [`sources::LockedSource`]) → [`lockfile`] (the file that
//! gathers those records, re-exporting them) → [`cache`] → [`fetch`]. Each record type lives
//! where it is produced. The cache comes before the fetcher because the fetcher writes
//! through it; it imports no other module
//! here. Every digest is a `plinth_release::Sha256`, and hashing is that crate's.

pub mod archive;
pub mod cache;
pub mod deb822;
pub mod fetch;
pub mod http;
pub mod index;
pub mod lockfile;
pub mod mirror;
pub mod release;
pub mod resolve;
pub mod sources;
