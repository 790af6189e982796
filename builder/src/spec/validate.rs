//! PLACEHOLDER (helper A replaces this file)
use super::{OsSpec, SpecError, SpecErrors};
pub fn parse_and_validate(text: &str, path: &str, _os: &str) -> Result<OsSpec, SpecErrors> {
    serde_yaml::from_str(text).map_err(|e| SpecErrors::single(SpecError(format!("{path}: {e}"))))
}
