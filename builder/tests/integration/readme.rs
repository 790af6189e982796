//! Every `plinth` verb the README's command table names exists (`plinth ... --help` lists it).

#[test]
fn the_readme_names_only_verbs_that_exist() {
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let checked = plinth_testkit::readme::check(&readme, env!("CARGO_BIN_EXE_plinth").as_ref());
    eprintln!("{checked} README rows of plinth checked");
}
