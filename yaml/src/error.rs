//! Errors of a YAML document people write (os.yaml, config.yaml): one [`SpecError`] per
//! problem, each naming the file, the 1-based line and column, the field path
//! (`partitions[2].size`), what was expected, what was found and a hint. [`SpecErrors`]
//! collects every problem of one or more documents.
//!
//! Rendered like a compiler diagnostic:
//!
//! ```text
//! guest-os/os.yaml:14:11: partitions[2].size: expected a size with a binary unit like `512MiB` or `4GiB`, found `2GB`
//!   hint: plinth aligns partitions to 1 MiB; write MiB or GiB
//! ```

use serde::Serialize;
use std::fmt;

/// One problem in one spec.
///
/// `line` and `column` are 1-based; 0 means "no position" (e.g. the file cannot be read).
/// `path` is the field path in the spec (`base.suites[1]`, `profiles.test.partition_sizes.root-a`),
/// empty for the whole file. `found` quotes literal values in backticks. `hint` may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub path: String,
    pub expected: String,
    pub found: String,
    pub hint: String,
}

impl SpecError {
    /// An error about the file as a whole, without a position (e.g. it cannot be read).
    pub fn io(path: &str, msg: String) -> SpecError {
        SpecError {
            file: path.to_string(),
            line: 0,
            column: 0,
            path: String::new(),
            expected: String::new(),
            found: msg,
            hint: String::new(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        f.write_str(": ")?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        if self.expected.is_empty() {
            f.write_str(&self.found)?;
        } else {
            write!(f, "expected {}, found {}", self.expected, self.found)?;
        }
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// All the problems found (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl SpecErrors {
    pub fn single(e: SpecError) -> SpecErrors {
        SpecErrors(vec![e])
    }

    pub fn iter(&self) -> std::slice::Iter<'_, SpecError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl<'a> IntoIterator for &'a SpecErrors {
    type Item = &'a SpecError;
    type IntoIter = std::slice::Iter<'a, SpecError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_a_diagnostic() {
        let e = SpecError {
            file: "guest-os/os.yaml".into(),
            line: 14,
            column: 11,
            path: "partitions[2].size".into(),
            expected: "a size with a binary unit like `512MiB` or `4GiB`".into(),
            found: "`2GB`".into(),
            hint: "plinth aligns partitions to 1 MiB; write MiB or GiB".into(),
        };
        assert_eq!(
            e.to_string(),
            "guest-os/os.yaml:14:11: partitions[2].size: expected a size with a binary unit \
             like `512MiB` or `4GiB`, found `2GB`\n  hint: plinth aligns partitions to 1 MiB; \
             write MiB or GiB"
        );
        let io = SpecError::io("guest-os/os.yaml", "cannot read the file: gone".into());
        assert_eq!(
            io.to_string(),
            "guest-os/os.yaml: cannot read the file: gone"
        );
        let all = SpecErrors(vec![e.clone(), io]);
        assert_eq!(all.to_string().lines().count(), 3);
        assert!(all.to_string().starts_with(&e.to_string()));
    }
}
