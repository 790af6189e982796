//! YAML documents that people write by hand (a spec's `os.yaml`, a node provider's
//! `config.yaml`): where each field is ([`position`]) and errors that name the file, line,
//! column and field like a compiler diagnostic ([`error`]). Shared by the builder and the
//! node agents, so both report a bad document the same way.

pub mod document;
pub mod error;
pub mod position;

pub use error::{SpecError, SpecErrors};
pub use position::{Pos, PositionIndex};
