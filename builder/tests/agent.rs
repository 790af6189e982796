//! The agent stage: two release builds of `plinth-guest` in different target directories give
//! byte-identical binaries with no build-machine path in them.

use plinth::pipeline::agent;
use std::path::Path;

#[test]
fn agent_builds_are_identical_and_path_free() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::Builder::new()
        .prefix("elsewhere-")
        .tempdir()
        .unwrap();
    let package = agent::agent_for("guest-os").unwrap();
    let bin_a = agent::build(workspace, package, a.path()).unwrap();
    let bin_b = agent::build(workspace, package, b.path()).unwrap();
    let (x, y) = (
        std::fs::read(&bin_a).unwrap(),
        std::fs::read(&bin_b).unwrap(),
    );
    assert!(x == y, "two builds of {package} differ");
    for needle in [workspace.to_str().unwrap(), a.path().to_str().unwrap()] {
        assert!(
            !x.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the binary contains the build path {needle}"
        );
    }
    let out = std::process::Command::new(&bin_a)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("plinth-guest "),
        "{out:?}"
    );
}
