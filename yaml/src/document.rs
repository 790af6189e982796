//! Reading a hand-written YAML document: the position index with its syntax and
//! duplicate-key errors, and a serde error taken apart into the field path, its position
//! and the message, which each document's own checks then turn into a [`SpecError`].

use crate::error::{SpecError, SpecErrors};
use crate::position::{Pos, PositionIndex, SyntaxError};

/// Index `text` (the file `file`): its first syntax error, or every key given twice in one
/// mapping, is the error.
pub fn index(text: &str, file: &str) -> Result<PositionIndex, SpecErrors> {
    let index =
        PositionIndex::build(text).map_err(|e| SpecErrors::single(syntax_error(file, e)))?;
    let duplicates = duplicate_key_errors(file, &index);
    if duplicates.is_empty() {
        Ok(index)
    } else {
        Err(SpecErrors(duplicates))
    }
}

/// A YAML syntax error as a document error.
pub fn syntax_error(file: &str, e: SyntaxError) -> SpecError {
    SpecError {
        file: file.to_string(),
        line: e.pos.line,
        column: e.pos.column,
        path: e.path,
        expected: "valid YAML".into(),
        found: format!("a syntax error: {}", e.message),
        hint: "check the indentation and the brackets/quotes around this position".into(),
    }
}

/// One error per key that occurs twice in one mapping.
pub fn duplicate_key_errors(file: &str, index: &PositionIndex) -> Vec<SpecError> {
    index
        .duplicates()
        .iter()
        .map(|d| {
            let key = d.path.rsplit('.').next().unwrap_or(&d.path);
            SpecError {
                file: file.to_string(),
                line: d.second.line,
                column: d.second.column,
                path: d.path.clone(),
                expected: "each key once per mapping".into(),
                found: format!("`{key}` again (first on line {})", d.first.line),
                hint: "YAML would keep only one of them; merge the two entries".into(),
            }
        })
        .collect()
}

/// Parse `text` (the file `file`) as a `T`: indexed ([`index`]: syntax, keys given twice),
/// not empty (`expected` says what the document holds), and serde's error, if any, as one
/// [`SpecError`] at its field with `hint`. The index is returned for the document's own
/// checks, which name positions with it.
pub fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    file: &str,
    expected: &str,
    hint: &str,
) -> Result<(T, PositionIndex), SpecErrors> {
    let index = index(text, file)?;
    let error = |line, column, path, expected: &str, found| {
        SpecErrors::single(SpecError {
            file: file.into(),
            line,
            column,
            path,
            expected: expected.into(),
            found,
            hint: hint.into(),
        })
    };
    if index.value("").is_none() {
        return Err(error(
            1,
            1,
            String::new(),
            expected,
            "an empty document".into(),
        ));
    }
    let value: T = serde_yaml::from_str(text).map_err(|e| {
        let p = serde_problem(&index, &e);
        error(p.pos.line, p.pos.column, p.path, "", p.message)
    })?;
    Ok((value, index))
}

/// A serde_yaml error taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerdeProblem {
    /// The field path (`base.suites[1]`; empty for the whole document).
    pub path: String,
    /// Where serde_yaml says the problem is, if it says.
    pub location: Option<Pos>,
    /// The best position: `location`, else the field's in the index.
    pub pos: Pos,
    /// The message without its path prefix and position suffix.
    pub message: String,
}

/// Take a serde_yaml error apart: the path comes from the message's `path: ` prefix
/// (serde_yaml's path syntax is the index's), the position from the error or the index.
pub fn serde_problem(index: &PositionIndex, err: &serde_yaml::Error) -> SerdeProblem {
    let location = err.location().map(|l| Pos {
        line: l.line(),
        column: l.column(),
    });
    let full = strip_position_suffix(&err.to_string());
    let (path, message) = match full.split_once(": ") {
        Some((p, rest)) if !p.is_empty() && !p.contains(char::is_whitespace) => (
            if p == "." {
                String::new()
            } else {
                p.to_string()
            },
            rest.to_string(),
        ),
        _ => {
            let guessed = location
                .filter(|l| *l != Pos::START)
                .and_then(|l| index.path_at(l))
                .unwrap_or("")
                .to_string();
            (guessed, full.clone())
        }
    };
    let pos = location.unwrap_or_else(|| index.locate(&path));
    SerdeProblem {
        path,
        location,
        pos,
        message,
    }
}

/// `msg` without serde_yaml's ` at line L column C` suffix.
fn strip_position_suffix(msg: &str) -> String {
    if let Some(i) = msg.rfind(" at line ") {
        let tail = &msg[i + " at line ".len()..];
        let ok = tail
            .split_once(" column ")
            .is_some_and(|(l, c)| l.parse::<usize>().is_ok() && c.parse::<usize>().is_ok());
        if ok {
            return msg[..i].to_string();
        }
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        sizes: Vec<u32>,
    }

    #[test]
    fn a_serde_error_names_the_field_and_its_line() {
        let text = "name: a\nsizes: [1, two]\n";
        let index = index(text, "d.yaml").unwrap();
        let err = serde_yaml::from_str::<Doc>(text).unwrap_err();
        let p = serde_problem(&index, &err);
        assert_eq!(p.path, "sizes[1]");
        assert_eq!(p.pos.line, 2);
        assert!(!p.message.contains(" at line "), "{}", p.message);
    }

    #[test]
    fn strips_serde_positions() {
        assert_eq!(strip_position_suffix("x: bad at line 3 column 5"), "x: bad");
        assert_eq!(strip_position_suffix("at line is fine"), "at line is fine");
    }

    #[test]
    fn duplicates_and_syntax_errors_are_positioned() {
        let e = index("name: a\nname: b\n", "d.yaml").unwrap_err();
        assert_eq!(e.0[0].line, 2);
        assert!(e
            .to_string()
            .starts_with("d.yaml:2:1: name: expected each key once"));
        let e = index("name: [a\n", "d.yaml").unwrap_err();
        assert!(e.to_string().contains("valid YAML"), "{e}");
    }
}
