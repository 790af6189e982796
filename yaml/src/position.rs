//! Where each field of a YAML document is: a field path → (line, column) index.
//!
//! serde forgets positions once a spec is deserialized, so validation errors look them up here.
//! [`PositionIndex::build`] walks the document with yaml-rust2's event parser and records, for
//! every mapping value and sequence item, where its node starts, and for every mapping entry,
//! where its key is. Paths use the same syntax as serde_yaml's error messages: `base.suites[1]`,
//! `profiles.test.partition_sizes.root-a`; the root is the empty path.
//!
//! All positions are 1-based (yaml-rust2 markers have 1-based lines but 0-based columns).
//! The index also reports keys that appear twice in one mapping, which serde cannot always see.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the source text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    /// The start of the document.
    pub const START: Pos = Pos { line: 1, column: 1 };

    fn from_marker(m: Marker) -> Pos {
        Pos {
            line: m.line().max(1),
            column: m.col() + 1,
        }
    }
}

/// A key that occurs twice in the same mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Path of the repeated entry, e.g. `base.release`.
    pub path: String,
    pub first: Pos,
    pub second: Pos,
}

/// A YAML syntax error found while indexing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    /// The field being parsed when the error struck: the entry whose value was being read,
    /// else the enclosing mapping or sequence (empty at the top level).
    pub path: String,
    pub message: String,
}

/// Field path → position of the value node and of the key.
#[derive(Debug, Clone, Default)]
pub struct PositionIndex {
    /// Position (and byte index, to pick the earlier of two candidates) of each value node.
    values: HashMap<String, (Pos, usize)>,
    keys: HashMap<String, Pos>,
    duplicates: Vec<DuplicateKey>,
}

impl PositionIndex {
    /// Index `text`, or report the first syntax error.
    pub fn build(text: &str) -> Result<PositionIndex, SyntaxError> {
        let (builder, result) = Builder::run(text);
        let e = match result {
            Ok(()) => return Ok(builder.index),
            Err(e) => e,
        };
        let pos = Pos::from_marker(*e.marker());
        Err(SyntaxError {
            pos,
            path: syntax_error_path(text, pos, builder.current_path()),
            message: e.info().to_string(),
        })
    }

    /// Where the value at `path` starts (for a block mapping: its first key).
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.values.get(path).map(|(p, _)| *p)
    }

    /// Where the key of the mapping entry at `path` is.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied()
    }

    /// The best position for an error about `path`: its value; if the path does not exist
    /// (a missing field), the nearest existing ancestor, preferring the ancestor's key line
    /// (`base:`) over its first child.
    pub fn locate(&self, path: &str) -> Pos {
        if let Some(p) = self.value(path) {
            return p;
        }
        let mut current = path;
        while let Some(parent) = parent_path(current) {
            if let Some(p) = self.key(parent).or_else(|| self.value(parent)) {
                return p;
            }
            current = parent;
        }
        Pos::START
    }

    /// The position of the key at `path` if it is a mapping entry, else [`Self::locate`].
    pub fn locate_key(&self, path: &str) -> Pos {
        self.key(path).unwrap_or_else(|| self.locate(path))
    }

    /// Keys repeated within one mapping, in document order.
    pub fn duplicates(&self) -> &[DuplicateKey] {
        &self.duplicates
    }

    /// The deepest indexed path whose value starts exactly at `pos`, if any.
    pub fn path_at(&self, pos: Pos) -> Option<&str> {
        self.values
            .iter()
            .filter(|(_, (p, _))| *p == pos)
            .map(|(path, _)| path.as_str())
            .max_by_key(|path| (path.len(), *path))
    }
}

/// Which field a syntax error at `pos` is in. The scanner looks ahead, so when it fails the
/// parser state (`at_failure`) may still be at the enclosing mapping. Re-parsing only the
/// lines before the error's line finds the entry being read: the last node of a clean
/// prefix, or where the prefix itself breaks. That is used if it lies within `at_failure`.
fn syntax_error_path(text: &str, pos: Pos, at_failure: String) -> String {
    let prefix_len: usize = text
        .split_inclusive('\n')
        .take(pos.line.saturating_sub(1))
        .map(str::len)
        .sum();
    let (builder, result) = Builder::run(&text[..prefix_len]);
    let candidate = match result {
        Ok(()) => builder.last_path,
        Err(_) => builder.current_path(),
    };
    let within = at_failure.is_empty()
        || candidate == at_failure
        || candidate.starts_with(&format!("{at_failure}."))
        || candidate.starts_with(&format!("{at_failure}["));
    if within {
        candidate
    } else {
        at_failure
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → `` (root) → None.
pub fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']') {
        if let Some(i) = path.rfind('[') {
            return Some(&path[..i]);
        }
    }
    Some(path.rfind('.').map_or("", |i| &path[..i]))
}

/// `parent` + `.key` (or just `key` at the root).
pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// `parent` + `[index]`.
pub fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

enum Frame {
    Seq {
        path: String,
        next: usize,
    },
    Map {
        path: String,
        /// The key of the entry whose value comes next; None while a key is expected.
        key: Option<String>,
        first_key: bool,
        seen: HashMap<String, Pos>,
    },
}

#[derive(Default)]
struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
    /// Nesting depth inside a non-scalar mapping key (such keys are not indexed).
    complex_key_depth: usize,
    /// The path of the last node seen (a value, or a key).
    last_path: String,
}

impl Builder {
    fn run(text: &str) -> (Builder, Result<(), yaml_rust2::ScanError>) {
        let mut builder = Builder::default();
        let result = Parser::new_from_str(text).load(&mut builder, false);
        (builder, result)
    }

    /// Where the parser is: the pending entry's path, else the innermost collection's.
    fn current_path(&self) -> String {
        match self.stack.last() {
            None => String::new(),
            Some(Frame::Seq { path, .. }) => path.clone(),
            Some(Frame::Map {
                path, key: Some(k), ..
            }) => join_key(path, k),
            Some(Frame::Map { path, .. }) => path.clone(),
        }
    }

    fn record_value(&mut self, path: &str, mark: Marker) {
        self.last_path = path.to_string();
        self.index
            .values
            .insert(path.to_string(), (Pos::from_marker(mark), mark.index()));
    }

    /// A block mapping's start marker sits after its first key; the key is the better anchor.
    fn improve_map_start(&mut self, path: &str, key_mark: Marker) {
        if let Some(entry) = self.index.values.get_mut(path) {
            if key_mark.index() < entry.1 {
                *entry = (Pos::from_marker(key_mark), key_mark.index());
            }
        }
    }

    /// A node starts (scalar, alias, sequence or mapping). Returns its path if it is a value
    /// (None if it was a mapping key).
    fn node(&mut self, event: &Event, mark: Marker) -> Option<String> {
        let pos = Pos::from_marker(mark);
        match self.stack.last_mut() {
            None => {
                self.record_value("", mark);
                Some(String::new())
            }
            Some(Frame::Seq { path, next }) => {
                let child = join_index(path, *next);
                *next += 1;
                self.record_value(&child, mark);
                Some(child)
            }
            Some(Frame::Map {
                path,
                key: key @ Some(_),
                ..
            }) => {
                let child = join_key(path, key.as_deref().unwrap_or("?"));
                *key = None;
                self.record_value(&child, mark);
                Some(child)
            }
            Some(Frame::Map {
                path,
                key,
                first_key,
                seen,
            }) => {
                let name = match event {
                    Event::Scalar(s, ..) => s.clone(),
                    _ => "?".to_string(),
                };
                let child = join_key(path, &name);
                let parent = path.clone();
                self.last_path.clone_from(&child);
                let was_first = std::mem::replace(first_key, false);
                if let Some(first) = seen.get(&name) {
                    self.index.duplicates.push(DuplicateKey {
                        path: child.clone(),
                        first: *first,
                        second: pos,
                    });
                } else {
                    seen.insert(name.clone(), pos);
                    self.index.keys.insert(child, pos);
                }
                *key = Some(name);
                if was_first {
                    self.improve_map_start(&parent, mark);
                }
                if matches!(event, Event::SequenceStart(..) | Event::MappingStart(..)) {
                    self.complex_key_depth = 1;
                }
                None
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.complex_key_depth > 0 {
            match ev {
                Event::SequenceStart(..) | Event::MappingStart(..) => self.complex_key_depth += 1,
                Event::SequenceEnd | Event::MappingEnd => self.complex_key_depth -= 1,
                _ => {}
            }
            return;
        }
        match ev {
            Event::Scalar(..) | Event::Alias(..) => {
                self.node(&ev, mark);
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.node(&ev, mark) {
                    self.stack.push(Frame::Seq { path, next: 0 });
                }
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node(&ev, mark) {
                    self.stack.push(Frame::Map {
                        path,
                        key: None,
                        first_key: true,
                        seen: HashMap::new(),
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                self.stack.pop();
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

/// Every path in the index (for tests and debugging), sorted.
#[cfg(test)]
fn all_paths(index: &PositionIndex) -> Vec<String> {
    let mut v: Vec<String> = index.values.keys().cloned().collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
os: guest-os
base:
  release: bookworm
  suites: [bookworm, bookworm-updates]
partitions:
  - name: esp
    size: 512MiB
  -   name: \"root-a\"
      size: 4GiB
profiles:
  test:
    partition_sizes:
      root-a: 8GiB
  empty: {}
";

    /// The text at `pos` starts with `token`.
    fn at(pos: Pos, token: &str) {
        let line = DOC.lines().nth(pos.line - 1).expect("line exists");
        let rest: String = line.chars().skip(pos.column - 1).collect();
        assert!(
            rest.starts_with(token),
            "{pos:?}: `{rest}` does not start with `{token}`"
        );
    }

    #[test]
    fn values_point_at_their_token() {
        let ix = PositionIndex::build(DOC).unwrap();
        at(ix.value("os").unwrap(), "guest-os");
        at(ix.value("base.release").unwrap(), "bookworm");
        at(ix.value("base.suites").unwrap(), "[bookworm");
        at(ix.value("base.suites[1]").unwrap(), "bookworm-updates");
        at(ix.value("partitions").unwrap(), "- name: esp");
        at(ix.value("partitions[0]").unwrap(), "name: esp");
        at(ix.value("partitions[0].size").unwrap(), "512MiB");
        at(ix.value("partitions[1]").unwrap(), "name: \"root-a\"");
        at(ix.value("partitions[1].name").unwrap(), "\"root-a\"");
        at(ix.value("partitions[1].size").unwrap(), "4GiB");
        at(
            ix.value("profiles.test.partition_sizes.root-a").unwrap(),
            "8GiB",
        );
        at(ix.value("profiles.empty").unwrap(), "{}");
        assert_eq!(
            ix.value("base.suites[1]").unwrap(),
            Pos {
                line: 4,
                column: 22
            }
        );
    }

    #[test]
    fn keys_point_at_the_key() {
        let ix = PositionIndex::build(DOC).unwrap();
        at(ix.key("base").unwrap(), "base:");
        at(ix.key("partitions[1].size").unwrap(), "size: 4GiB");
        at(
            ix.key("profiles.test.partition_sizes.root-a").unwrap(),
            "root-a: 8GiB",
        );
        assert_eq!(ix.key("os").unwrap(), Pos::START);
    }

    #[test]
    fn missing_paths_fall_back_to_the_parent() {
        let ix = PositionIndex::build(DOC).unwrap();
        at(ix.locate("base.variant"), "base:");
        at(ix.locate("partitions[1].role"), "name: \"root-a\"");
        at(ix.locate("profiles.prod"), "profiles:");
        at(ix.locate("profiles.prod.partition_sizes.x"), "profiles:");
        assert_eq!(ix.locate("nothing.at.all"), Pos::START);
        at(ix.locate_key("partitions[0].size"), "size: 512MiB");
    }

    #[test]
    fn path_at_finds_the_deepest_value() {
        let ix = PositionIndex::build(DOC).unwrap();
        let pos = ix.value("partitions[0]").unwrap();
        assert_eq!(ix.path_at(pos), Some("partitions[0]"));
        let pos = ix.value("partitions[1].size").unwrap();
        assert_eq!(ix.path_at(pos), Some("partitions[1].size"));
        assert!(all_paths(&ix).contains(&"profiles.test.partition_sizes".to_string()));
    }

    #[test]
    fn reports_duplicate_keys() {
        let ix = PositionIndex::build("a: 1\nb:\n  c: 1\n  c: 2\n").unwrap();
        assert_eq!(
            ix.duplicates(),
            &[DuplicateKey {
                path: "b.c".into(),
                first: Pos { line: 3, column: 3 },
                second: Pos { line: 4, column: 3 },
            }]
        );
    }

    #[test]
    fn syntax_errors_have_one_based_positions() {
        let err = PositionIndex::build("os: x\nb:\n  c: x\n    bad: indent\n").unwrap_err();
        assert_eq!(err.pos, Pos { line: 4, column: 8 }, "{err:?}");
        assert_eq!(err.path, "b.c");
        let err = PositionIndex::build("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(err.path, "a", "{err:?}");
        assert_eq!(err.pos.line, 2, "{err:?}");
    }

    #[test]
    fn paths_compose_and_decompose() {
        assert_eq!(join_key("", "os"), "os");
        assert_eq!(join_index("partitions", 2), "partitions[2]");
        assert_eq!(parent_path("partitions[2].size"), Some("partitions[2]"));
        assert_eq!(parent_path("partitions[2]"), Some("partitions"));
        assert_eq!(parent_path("partitions"), Some(""));
        assert_eq!(parent_path(""), None);
    }
}
