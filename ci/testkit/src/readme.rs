//! The README's command table against the programs themselves: every `<program> <verb>...`
//! row must name verbs the program's `--help` lists, so the README cannot promise a verb that
//! does not exist (nor keep one that was renamed).

use std::path::Path;
use std::process::Command;

/// The verb paths the README's table gives for `program`: for the row
/// `` | `plinth-host guest plan` | ... | `` that is `["guest", "plan"]`. Arguments (upper
/// case, options, brackets) end a path.
pub fn verbs(readme: &str, program: &str) -> Vec<Vec<String>> {
    readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter_map(|cell| {
            let mut words = cell.split_whitespace();
            (words.next()? == program).then(|| {
                words
                    .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                    .take_while(|w| !w.starts_with('-'))
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
        })
        .filter(|path| !path.is_empty())
        .collect()
}

/// The subcommands `program <path> --help` lists (the first word of each line of its
/// `Commands:` part).
pub fn subcommands(program: &Path, path: &[String]) -> Vec<String> {
    let out = Command::new(program)
        .args(path)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("        "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Panic unless every verb path the README (at `readme`) gives for `program` exists, each
/// word in the `--help` of the words before it; returns how many paths were checked (a
/// program the README does not list at all fails too).
pub fn check(readme: &Path, program: &Path) -> usize {
    let text = std::fs::read_to_string(readme).unwrap();
    let name = program.file_name().unwrap().to_string_lossy();
    let paths = verbs(&text, &name);
    assert!(
        !paths.is_empty(),
        "{}: no `{name} <verb>` row in its command table",
        readme.display()
    );
    for path in &paths {
        for i in 0..path.len() {
            let listed = subcommands(program, &path[..i]);
            assert!(
                listed.contains(&path[i]),
                "{}: `{name} {}` is in the README, but `{name} {} --help` lists only {listed:?}",
                readme.display(),
                path[..=i].join(" "),
                path[..i].join(" ")
            );
        }
    }
    paths.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_become_verb_paths() {
        let readme = "| command | what |\n| --- | --- |\n| `plinth check [OS\\|all]` | x |\n| `plinth attest verify REPORT --expect FILE` | y |\n| `plinth-host guest plan` | z |\n";
        assert_eq!(
            super::verbs(readme, "plinth"),
            [
                vec!["check".to_string()],
                vec!["attest".into(), "verify".into()]
            ]
        );
        assert_eq!(
            super::verbs(readme, "plinth-host"),
            [vec!["guest".to_string(), "plan".into()]]
        );
    }
}
