//! deb822 control-file syntax (Release, Packages, apt `.sources`, dpkg status): paragraphs of
//! `Field: value` lines, continuation lines starting with a space or tab.

/// Split `text` into paragraphs of (field, value) pairs, in order. Continuation lines are
/// joined to the value with `\n`; the leading space of a continuation line is dropped.
pub fn paragraphs(text: &str) -> Vec<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some((_, value)) = current.last_mut() {
                value.push('\n');
                value.push_str(&line[1..]);
            }
            continue;
        }
        if let Some((key, value)) = line.split_once(':') {
            current.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The value of `field` in a paragraph (case-insensitive field names, as Debian specifies).
pub fn get<'a>(para: &'a [(String, String)], field: &str) -> Option<&'a str> {
    para.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(field))
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_paragraphs_and_joins_continuations() {
        let text = "Package: a\nDescription: short\n long line\n .\n\n\nPackage: b\nVersion: 1\n";
        let p = paragraphs(text);
        assert_eq!(p.len(), 2);
        assert_eq!(get(&p[0], "description"), Some("short\nlong line\n."));
        assert_eq!(get(&p[1], "Version"), Some("1"));
        assert_eq!(get(&p[1], "Missing"), None);
    }
}
