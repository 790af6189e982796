//! UKIs built from Debian's systemd-stub 252 (package systemd-boot-efi) and synthetic
//! contents, checked with independent tools: binutils (`objdump`, `objcopy`) must parse them
//! and give back every section's bytes, and `systemd-measure` (252) must predict the same
//! PCR 11 as `predict_pcr11`. No network; a few seconds.

use plinth::pipeline::uki::{
    add_sections, build_uki, pcr11_after_phases, pe_checksum, predict_pcr11, read_sections,
    write_uki, NewSection, PeSection, UkiSections, DEFAULT_STUB, IMAGE_SCN_CNT_INITIALIZED_DATA,
    IMAGE_SCN_MEM_READ,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const SYSTEMD_MEASURE: &str = "/usr/lib/systemd/systemd-measure";

fn stub() -> Vec<u8> {
    std::fs::read(DEFAULT_STUB).unwrap_or_else(|e| {
        panic!("reading {DEFAULT_STUB}: {e}\n  hint: ci/setup installs systemd-boot-efi")
    })
}

/// `len` reproducible pseudo-random bytes: sha256 in counter mode.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut i = 0u64;
    while out.len() < len {
        let mut h = Sha256::new();
        h.update(seed.as_bytes());
        h.update(i.to_le_bytes());
        out.extend_from_slice(&h.finalize());
        i += 1;
    }
    out.truncate(len);
    out
}

struct Inputs {
    osrel: Vec<u8>,
    cmdline: String,
    uname: String,
    linux: Vec<u8>,
    initrd: Vec<u8>,
}

impl Inputs {
    fn new() -> Self {
        Inputs {
            osrel: b"PRETTY_NAME=\"plinth test\"\nID=debian\nVERSION_ID=12\n".to_vec(),
            cmdline: "console=ttyS0 root=PARTUUID=00000000-0000-0000-0000-000000000000 ro".into(),
            uname: "6.1.0-99-amd64".into(),
            // Odd sizes, so that padding to FileAlignment is exercised.
            linux: noise("linux", 3 * 1024 * 1024 + 17),
            initrd: noise("initrd", 2 * 1024 * 1024 + 333),
        }
    }

    fn sections(&self) -> UkiSections<'_> {
        UkiSections {
            osrel: &self.osrel,
            cmdline: &self.cmdline,
            uname: &self.uname,
            linux: &self.linux,
            initrd: &self.initrd,
            pcrpkey: &[],
            pcrsig: &[],
        }
    }

    /// The new sections and their contents, in the order build_uki writes them.
    fn expected(&self) -> Vec<(&'static str, &[u8])> {
        vec![
            (".osrel", &self.osrel[..]),
            (".cmdline", self.cmdline.as_bytes()),
            (".uname", self.uname.as_bytes()),
            (".initrd", &self.initrd[..]),
            (".linux", &self.linux[..]),
        ]
    }
}

/// Runs a command, fails the test with the command line and its stderr if it fails or says
/// anything on stderr; returns stdout.
fn run(cmd: &mut Command) -> String {
    run_allowing_stderr(cmd, false)
}

fn run_allowing_stderr(cmd: &mut Command, stderr_ok: bool) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stderr_ok || out.stderr.is_empty(),
        "{cmd:?} warned:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// One row of `objdump -h`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ObjdumpSection {
    name: String,
    size: u64,
    vma: u64,
    file_off: u64,
}

fn objdump_h(path: &Path) -> Vec<ObjdumpSection> {
    let text = run(Command::new("objdump").arg("-h").arg(path));
    let mut rows = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "  0 .text  0000bff0  0000000000004000  0000000000004000  00000400  2**4"
        if f.len() == 7 && f[0].parse::<u32>().is_ok() && f[6].starts_with("2**") {
            let hex = |s: &str| u64::from_str_radix(s, 16).expect("hex");
            rows.push(ObjdumpSection {
                name: f[1].to_owned(),
                size: hex(f[2]),
                vma: hex(f[3]),
                file_off: hex(f[5]),
            });
        }
    }
    rows
}

/// The PE optional header fields as `objdump -p` prints them (hex values).
fn objdump_p(path: &Path) -> BTreeMap<String, u64> {
    let text = run(Command::new("objdump").arg("-p").arg(path));
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 2 {
            let value = f[1].trim_start_matches("0x");
            if let Ok(v) = u64::from_str_radix(value, 16) {
                fields.entry(f[0].to_owned()).or_insert(v);
            }
        }
    }
    fields
}

fn objcopy_section(path: &Path, name: &str, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("section{name}"));
    run(Command::new("objcopy")
        .args(["-O", "binary", "--only-section", name])
        .arg(path)
        .arg(&out));
    std::fs::read(&out).expect("objcopy output")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

fn find<'a>(sections: &'a [PeSection], name: &str) -> &'a PeSection {
    sections
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no section {name}"))
}

#[test]
fn objdump_lists_the_new_sections_and_the_stub_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = Inputs::new();
    let stub = stub();
    let uki = build_uki(&stub, &inputs.sections()).unwrap();
    let stub_path = write(dir.path(), "stub.efi", &stub);
    let uki_path = write(dir.path(), "uki.efi", &uki);

    let before = objdump_h(&stub_path);
    let after = objdump_h(&uki_path);
    assert!(
        before.len() >= 5,
        "objdump found too few stub sections: {before:?}"
    );
    assert_eq!(after.len(), before.len() + 5, "{after:#?}");
    assert_eq!(&after[..before.len()], &before[..], "stub sections moved");

    let image_base = objdump_p(&uki_path)["ImageBase"];
    let ours = read_sections(&uki).unwrap();
    for (row, (name, data)) in after[before.len()..].iter().zip(inputs.expected()) {
        let sec = find(&ours, name);
        assert_eq!(row.name, name);
        assert_eq!(row.size, data.len() as u64, "{name}: size");
        assert_eq!(
            row.vma,
            image_base + u64::from(sec.virtual_address),
            "{name}: VMA"
        );
        assert_eq!(
            row.file_off,
            u64::from(sec.raw_offset),
            "{name}: file offset"
        );
    }
}

#[test]
fn objcopy_gives_back_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = Inputs::new();
    let stub = stub();
    let uki = build_uki(&stub, &inputs.sections()).unwrap();
    let stub_path = write(dir.path(), "stub.efi", &stub);
    let uki_path = write(dir.path(), "uki.efi", &uki);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();

    for (name, data) in inputs.expected() {
        let got = objcopy_section(&uki_path, name, &out);
        assert!(
            got == data,
            "{name}: objcopy gave {} bytes, expected the {} input bytes",
            got.len(),
            data.len()
        );
    }
    for sec in read_sections(&stub).unwrap() {
        let from_uki = objcopy_section(&uki_path, &sec.name, &out);
        let from_stub = objcopy_section(&stub_path, &sec.name, &out);
        assert!(from_uki == from_stub, "{}: bytes changed", sec.name);
        assert!(
            from_uki == *sec.data(&stub).unwrap(),
            "{}: read_sections disagrees with objcopy",
            sec.name
        );
    }
}

#[test]
fn builds_are_byte_identical() {
    let inputs = Inputs::new();
    let stub = stub();
    let a = build_uki(&stub, &inputs.sections()).unwrap();
    let b = build_uki(&stub, &inputs.sections()).unwrap();
    assert!(a == b, "two builds differ");

    // write_uki, from two directories, gives the same bytes.
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("linux.efi");
        write_uki(Path::new(DEFAULT_STUB), &inputs.sections(), &out).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == a,
            "write_uki differs from build_uki"
        );
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files left behind");
    }
}

#[test]
fn layout_follows_pe_rules() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = Inputs::new();
    let stub = stub();
    let uki = build_uki(&stub, &inputs.sections()).unwrap();
    let uki_path = write(dir.path(), "uki.efi", &uki);
    let p = objdump_p(&uki_path);
    let (sa, fa) = (p["SectionAlignment"], p["FileAlignment"]);
    let (size_of_image, size_of_headers) = (p["SizeOfImage"], p["SizeOfHeaders"]);

    let sections = read_sections(&uki).unwrap();
    let stub_sections = read_sections(&stub).unwrap();
    let n_stub = stub_sections.len();
    assert_eq!(&sections[..n_stub], &stub_sections[..]);

    // No overlap in the file (headers included) or in memory.
    let mut file: Vec<_> = sections.iter().map(|s| s.file_range()).collect();
    file.push(0..size_of_headers);
    let mut memory: Vec<_> = sections.iter().map(|s| s.memory_range()).collect();
    memory.push(0..size_of_headers);
    for ranges in [&mut file, &mut memory] {
        ranges.sort_by_key(|r| r.start);
        for w in ranges.windows(2) {
            assert!(w[0].end <= w[1].start, "overlap: {:?} and {:?}", w[0], w[1]);
        }
    }
    // New sections: aligned, exact VirtualSize, in ukify's order after the stub's.
    let last_stub_end = stub_sections
        .iter()
        .map(|s| s.memory_range().end)
        .max()
        .unwrap();
    for (sec, (name, data)) in sections[n_stub..].iter().zip(inputs.expected()) {
        assert_eq!(sec.name, name);
        assert_eq!(sec.virtual_size as usize, data.len());
        assert_eq!(u64::from(sec.virtual_address) % sa, 0, "{name}");
        assert_eq!(u64::from(sec.raw_offset) % fa, 0, "{name}");
        assert_eq!(u64::from(sec.raw_size) % fa, 0, "{name}");
        assert!(u64::from(sec.raw_size) < data.len() as u64 + fa);
        assert!(u64::from(sec.virtual_address) >= last_stub_end);
    }
    // SizeOfImage covers everything and is aligned; the file ends with the last section.
    let end = sections.iter().map(|s| s.memory_range().end).max().unwrap();
    assert!(size_of_image >= end && size_of_image < end + sa && size_of_image % sa == 0);
    assert_eq!(sections.last().unwrap().file_range().end, uki.len() as u64);
    assert_eq!(objdump_h(&uki_path).len(), sections.len());
    // Code and data sizes grew by the new sections' raw sizes (.linux is code, as in ukify);
    // the symbol table is gone, as ukify drops it.
    let stub_p = objdump_p(&write(dir.path(), "stub.efi", &stub));
    let raw = |names: &[&str]| -> u64 {
        names
            .iter()
            .map(|n| u64::from(find(&sections, n).raw_size))
            .sum()
    };
    assert_eq!(p["SizeOfCode"], stub_p["SizeOfCode"] + raw(&[".linux"]));
    assert_eq!(
        p["SizeOfInitializedData"],
        stub_p["SizeOfInitializedData"] + raw(&[".osrel", ".cmdline", ".uname", ".initrd"])
    );
    assert_eq!(p["Characteristics"], stub_p["Characteristics"] | 0x0008);
    let time_date = |path: &Path| {
        let text = run(Command::new("objdump").arg("-p").arg(path));
        let line = text.lines().find(|l| l.starts_with("Time/Date"));
        line.expect("a Time/Date line").to_owned()
    };
    assert_eq!(
        time_date(&uki_path),
        time_date(&dir.path().join("stub.efi"))
    );
    // The checksum is the standard one: our algorithm reproduces the stub's (written by
    // objcopy) and the UKI carries its own.
    assert_eq!(p["CheckSum"], u64::from(pe_checksum(&uki).unwrap()));
    assert_eq!(stub_p["CheckSum"], u64::from(pe_checksum(&stub).unwrap()));
}

/// Parses `11:sha256=<hex>` lines.
fn pcr_lines(text: &str) -> Vec<[u8; 32]> {
    text.lines()
        .filter_map(|l| l.strip_prefix("11:sha256="))
        .map(|h| hex::decode(h.trim()).unwrap().try_into().unwrap())
        .collect()
}

#[test]
fn predicted_pcr11_equals_systemd_measure() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = Inputs::new();
    let uki = build_uki(&stub(), &inputs.sections()).unwrap();
    let predicted = predict_pcr11(&uki).unwrap();

    // Hand systemd-measure what the UKI holds, read back from the UKI itself.
    let sections = read_sections(&uki).unwrap();
    let mut args = vec!["calculate".to_owned(), "--bank=sha256".to_owned()];
    for (name, input) in inputs.expected() {
        let data = find(&sections, name).data(&uki).unwrap();
        assert!(*data == *input, "{name}: read back differs from the input");
        if name == ".uname" {
            continue; // systemd 252 neither measures .uname nor has --uname
        }
        let file = write(dir.path(), name.trim_start_matches('.'), &data);
        args.push(format!(
            "--{}={}",
            name.trim_start_matches('.'),
            file.display()
        ));
    }

    // --phase= (an empty phase path): the value right after systemd-stub.
    // It prints a "# PCR[11] Phase <…>" comment per phase path on stderr.
    let measure = |args: &[String], extra: &[&str]| {
        run_allowing_stderr(Command::new(SYSTEMD_MEASURE).args(args).args(extra), true)
    };
    let stub_only = measure(&args, &["--phase="]);
    assert_eq!(pcr_lines(&stub_only), [predicted], "{stub_only}");

    // The default phase paths: enter-initrd, then …:leave-initrd, …:sysinit, …:ready.
    let phased = pcr_lines(&measure(&args, &[]));
    let words = ["enter-initrd", "leave-initrd", "sysinit", "ready"];
    let want: Vec<[u8; 32]> = (1..=4)
        .map(|n| pcr11_after_phases(predicted, &words[..n]))
        .collect();
    assert_eq!(phased, want);

    // Without an initrd the stub measures one section less; still in agreement.
    let mut no_initrd = inputs.sections();
    no_initrd.initrd = b"";
    let uki = build_uki(&stub(), &no_initrd).unwrap();
    let args: Vec<String> = args
        .into_iter()
        .filter(|a| !a.starts_with("--initrd="))
        .collect();
    let out = measure(&args, &["--phase="]);
    assert_eq!(pcr_lines(&out), [predict_pcr11(&uki).unwrap()], "{out}");
}

#[test]
fn headers_grow_when_the_stub_has_no_room_left() {
    // Fill the stub's free header slots but four, so that the five UKI sections do not fit.
    let stub = stub();
    let free = {
        let dir = tempfile::tempdir().unwrap();
        let p = objdump_p(&write(dir.path(), "stub.efi", &stub));
        let table_end = 0x80 + 24 + 240 + 40 * read_sections(&stub).unwrap().len() as u64;
        assert_eq!(p["SizeOfHeaders"] % p["FileAlignment"], 0);
        ((p["SizeOfHeaders"] - table_end) / 40) as usize
    };
    assert!(free > 4, "Debian's stub has room for {free} headers");
    let names: Vec<String> = (0..free - 4).map(|i| format!(".fill{i}")).collect();
    let fillers: Vec<NewSection> = names
        .iter()
        .map(|name| NewSection {
            name,
            data: b"filler",
            characteristics: IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ,
        })
        .collect();
    let full = add_sections(&stub, &fillers).unwrap();

    let inputs = Inputs::new();
    let uki = build_uki(&full, &inputs.sections()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let uki_path = write(dir.path(), "uki.efi", &uki);
    let full_path = write(dir.path(), "full.efi", &full);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();

    let p = objdump_p(&uki_path);
    assert_eq!(
        p["SizeOfHeaders"],
        objdump_p(&full_path)["SizeOfHeaders"] + p["FileAlignment"]
    );
    let rows = objdump_h(&uki_path);
    assert_eq!(rows.len(), read_sections(&full).unwrap().len() + 5);
    for sec in read_sections(&full).unwrap() {
        assert!(
            objcopy_section(&uki_path, &sec.name, &out)
                == objcopy_section(&full_path, &sec.name, &out),
            "{}: bytes changed",
            sec.name
        );
    }
    for (name, data) in inputs.expected() {
        assert!(objcopy_section(&uki_path, name, &out) == data, "{name}");
    }
}
