//! Debian packages: the signed archive indexes, resolving a spec's package closure, the
//! `packages.lock` file, and the verified, content-addressed download cache.
//!
//! Flow: [`mirror`] says where each suite lives → [`release`] fetches and verifies `InRelease`
//! → [`index`] fetches `Packages` checked against it and parses it → [`resolve`] asks apt for
//! the closure mmdebstrap would install → [`lockfile`] writes it → [`fetch`] downloads each
//! locked `.deb` into the [`cache`].

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
