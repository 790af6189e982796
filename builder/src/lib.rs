//! plinth: builds the reproducible OS images of Internet Computer nodes (SetupOS, HostOS,
//! GuestOS) and verifies them.
//!
//! Data flows one way: [`spec`] (os.yaml) → [`packages`] (lock, fetch, cache) → image stages.
//! [`compare`] reads releases back for `verify` and `diff`; `plinth flash` writes a release's
//! disk to a stick or disk and reads it back with [`plinth_flash`] (shared with SetupOS's
//! installer). [`cli`] holds one module per verb; `main.rs` only dispatches.

pub mod cli;
pub mod compare;
pub use plinth_release::names;
pub mod packages;
pub mod pipeline;
pub mod spec;
pub mod vm;
pub mod workspace;
