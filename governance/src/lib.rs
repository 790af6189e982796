//! The governance record: which releases of which OS the fleet may run, for which nodes from
//! when, and which it must leave. It is a TUF repository written with tough: the root role
//! holds the governance keys (ed25519, k of n), the targets role lists each elected artifact
//! (`<os>/<version>/<file>`) with its custom metadata ([`custom`]: sha256, length,
//! measurements, rollout waves) and each OS's policy (`<os>/policy.json`: `max_version`),
//! and an online publisher key signs snapshot and timestamp, which give freshness. Nodes
//! load it with tough's client and take only what it elects.
//!
//! The operations are one module each, in the order of a record's life: [`init`] (keys and
//! root v1), [`elect`] and [`revoke`] (stage targets), [`sign`] (voters' signatures and
//! their merge), [`rotate`] (stage the next root), [`publish`] (check thresholds, write the
//! repository) and [`status`] (load it as a node would). Their state between steps is a
//! small work directory ([`workdir`]). Every file read is outside input ([`files`]).

pub mod custom;
pub mod elect;
pub mod error;
pub mod expiry;
pub mod files;
pub mod fixtures;
pub mod health;
pub mod init;
pub mod keys;
pub mod names;
pub mod order;
pub mod publish;
pub mod revoke;
pub mod rotate;
pub mod sign;
pub mod signatures;
pub mod staging;
pub mod status;
pub mod waves;
pub mod workdir;

pub use error::GovernanceError;
pub use expiry::{Expiry, RoleKind};
pub use names::TargetPath;
pub use workdir::{StagedRole, Workdir};
