//! Bytes from a downloaded release into its readers: the manifest parser and the archive
//! reader (`extract_bounded`, `for_each_member`), which `plinth diff`, `measure` and `run`
//! run on releases anyone may have crafted, often as root. The first byte picks the reader:
//! 0 the manifest (the rest as text), 1 the rest as a `.tar.zst` file, 2 the rest as a tar
//! stream (compressed here, so that the fuzzer works on tar headers rather than on zstd).
//! None may panic; unpacking writes only below its directory, at most [`LIMIT`] bytes per
//! member, every file mode 0644 in 0700 directories, and streaming gives each member's
//! declared size exactly.

#![no_main]

use libfuzzer_sys::fuzz_target;
use plinth_release::archive::{self, Bound, Bounds};
use plinth_release::manifest::Manifest;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The most any member may declare (real size and data).
const LIMIT: u64 = 1 << 20;
/// The members a release's archives hold; others are refused.
const NAMES: [&str; 4] = ["disk.img", "guest-os-a.efi", "root.img", "verity.img"];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = Manifest::parse(text, Path::new("manifest.json"));
            }
        }
        1 => archive(bytes),
        _ => archive(&zstd::encode_all(bytes, 1).expect("zstd compresses")),
    }
});

fn archive(zst: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("a.tar.zst");
    std::fs::write(&path, zst).expect("writing the archive");
    let dest = dir.path().join("out");
    let bound = Bound::new(LIMIT, "the fuzz bound");
    let bounds = NAMES
        .iter()
        .fold(Bounds::default(), |b, n| b.member(*n, bound.clone()));
    let mode = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| (m.is_file(), m.permissions().mode() & 0o7777, m.len()))
    };
    let result = archive::extract_bounded(&path, &dest, &bounds);
    if let Ok(names) = &result {
        for n in names {
            assert!(NAMES.contains(&n.as_str()), "{n}");
        }
    }
    // Whatever happened: only the archive and `out` in the directory, `out` private, and in
    // it only expected members, regular files of mode 0644 within the bound.
    let mut top: Vec<String> = std::fs::read_dir(dir.path())
        .expect("listing")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    top.sort();
    assert!(
        top == ["a.tar.zst", "out"] || top == ["a.tar.zst"],
        "{top:?}"
    );
    if top.len() == 2 {
        assert_eq!(mode(&dest).expect("out").1, 0o700);
        for e in std::fs::read_dir(&dest).expect("listing out") {
            let e = e.expect("an entry");
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(NAMES.contains(&name.as_str()), "{name}");
            let (file, m, len) = mode(&e.path()).expect("stat");
            assert!(file && m == 0o644 && len <= LIMIT, "{name}: {m:o} {len}");
        }
    }
    let _ = archive::for_each_member(&path, &bounds, |name, size, data| {
        assert!(NAMES.contains(&name) && size <= LIMIT, "{name} {size}");
        let n = std::io::copy(data, &mut std::io::sink())?;
        assert_eq!(n, size, "{name}");
        Ok(true)
    });
}
