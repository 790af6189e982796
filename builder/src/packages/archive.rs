//! The verified archive of one base: every suite's signed `InRelease` and the `Packages`
//! index of every component, fetched concurrently and checked along the signed chain.

use super::index::IndexDigest;
use super::index::{fetch_index, PackageIndex};
use super::mirror::Mirrors;
use super::release::{fetch_release, ArchiveError, Release};
use crate::spec::Base;
use std::path::Path;

/// Every suite's verified release and indexes for one base, in the spec's suite order.
#[derive(Debug, Clone)]
pub struct Archive {
    pub releases: Vec<Release>,
    pub indexes: Vec<PackageIndex>,
}

/// Where and how to load an archive.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub mirrors: &'a Mirrors,
    pub keyring: &'a Path,
    /// Content-addressed cache of index files.
    pub index_cache: &'a Path,
    /// The time `Valid-Until` is checked against (Unix seconds).
    pub now: i64,
}

impl Archive {
    /// Fetch and verify every suite and component of `base`.
    pub async fn load(base: &Base, source: Source<'_>) -> Result<Archive, ArchiveError> {
        let client = super::http::client();
        let releases = futures_util::future::try_join_all(base.suites.iter().map(|suite| {
            fetch_release(
                &client,
                source.mirrors.for_suite(suite),
                suite,
                source.keyring,
                source.now,
            )
        }))
        .await?;
        let mut jobs = Vec::new();
        for release in &releases {
            for component in &base.components {
                jobs.push(fetch_index(
                    &client,
                    source.mirrors.for_suite(&release.suite),
                    release,
                    component,
                    &base.architecture,
                    source.index_cache,
                ));
            }
        }
        let indexes = futures_util::future::try_join_all(jobs).await?;
        Ok(Archive { releases, indexes })
    }

    /// The digests a lock records, sorted.
    pub fn digests(&self) -> Vec<IndexDigest> {
        let mut out: Vec<IndexDigest> = self
            .indexes
            .iter()
            .map(|index| {
                let release = self
                    .releases
                    .iter()
                    .find(|r| r.suite == index.suite)
                    .expect("every index comes from a loaded release");
                IndexDigest {
                    suite: index.suite.clone(),
                    inrelease_sha256: release.raw_sha256,
                    path: index.path.clone(),
                    sha256: index.sha256,
                    size: index.size,
                }
            })
            .collect();
        out.sort();
        out
    }
}
