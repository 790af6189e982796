//! Spec errors. PLACEHOLDER (helper A replaces this file)
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);
impl SpecError {
    pub fn io(path: &str, msg: String) -> SpecError {
        SpecError(format!("{path}: {msg}"))
    }
}
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct SpecErrors(pub Vec<SpecError>);
impl SpecErrors {
    pub fn single(e: SpecError) -> SpecErrors {
        SpecErrors(vec![e])
    }
}
