//! What GuestOS sees of its virtual machine: the NUMA nodes (the CPUs and memory of each) and
//! the block devices. The boot report prints these lines before its `PLINTH BOOT` marker
//! (`plinth_boot_report::report_with`), so that a host-side test which booted GuestOS with a
//! given guest NUMA layout and disks can read on the serial console what the guest got:
//!
//! ```text
//! PLINTH GUEST NUMA nodes=2
//! PLINTH GUEST NUMA node=0 cpus=0-1 memory_mib=1967
//! PLINTH GUEST NUMA node=1 cpus=2-3 memory_mib=2016
//! PLINTH GUEST DISK name=vda size_mib=4096 serial=- rotational=1
//! PLINTH GUEST DISK name=vdb size_mib=1024 serial=plinth-data rotational=1
//! ```
//!
//! Everything comes from sysfs:
//!
//! - one node line per `devices/system/node/node<id>` directory, by ascending id: `cpus=` is
//!   its `cpulist` as the kernel writes it, `memory_mib=` the `MemTotal` of its `meminfo`
//!   (`Node 0 MemTotal:  2014252 kB`) in MiB, rounded down;
//! - a kernel without NUMA support has no `devices/system/node`: the report then says
//!   `PLINTH GUEST NUMA nodes=0 (no NUMA information)` and prints no node line (a NUMA kernel
//!   always has at least `node0`, even on a single-node machine);
//! - one disk line per entry of `block` that is not a `loop`, `ram`, `dm-`, `zram` or `sr`
//!   device, by ascending name (byte order): `size_mib=` is its `size` (in 512-byte sectors)
//!   in MiB, rounded down; `serial=` its `serial` (virtio-blk's, set by the host), trimmed, or
//!   `-` if the file is missing or empty; `rotational=` its `queue/rotational`.
//!
//! Nothing here fails the boot or panics: a value that cannot be read or parsed is printed as
//! `?`, and a directory that cannot be listed yields no lines.

use std::path::Path;

/// The `PLINTH GUEST` lines for the machine whose sysfs is mounted at `sys` (`/sys` on the
/// running system; a fake tree in tests).
pub fn lines(sys: &Path) -> Vec<String> {
    let mut lines = numa_lines(sys);
    lines.extend(disk_lines(sys));
    lines
}

/// The NUMA count line, then one line per node.
fn numa_lines(sys: &Path) -> Vec<String> {
    let node_dir = sys.join("devices/system/node");
    let Ok(entries) = std::fs::read_dir(&node_dir) else {
        return vec!["PLINTH GUEST NUMA nodes=0 (no NUMA information)".into()];
    };
    let mut ids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
        .collect();
    ids.sort_unstable();
    let mut lines = vec![format!("PLINTH GUEST NUMA nodes={}", ids.len())];
    for id in ids {
        let node = node_dir.join(format!("node{id}"));
        let cpus = read_trimmed(&node.join("cpulist"))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "?".into());
        let memory = read_trimmed(&node.join("meminfo"))
            .and_then(|text| mem_total_kib(&text))
            .map_or_else(|| "?".into(), |kib| (kib / 1024).to_string());
        lines.push(format!(
            "PLINTH GUEST NUMA node={id} cpus={cpus} memory_mib={memory}"
        ));
    }
    lines
}

/// The `MemTotal` of a node's meminfo (`Node 0 MemTotal:  2014252 kB`), in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "MemTotal:")?;
        words.next()?.parse().ok()
    })
}

/// Block devices that are not disks of the machine.
const NOT_DISKS: [&str; 5] = ["loop", "ram", "dm-", "zram", "sr"];

/// The names in `<sys>/block` that `keep` keeps, sorted (none without that directory).
pub fn block_devices(sys: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sys.join("block")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| keep(name))
        .collect();
    names.sort();
    names
}

/// One line per disk.
fn disk_lines(sys: &Path) -> Vec<String> {
    let block = sys.join("block");
    let names = block_devices(sys, |name| !NOT_DISKS.iter().any(|p| name.starts_with(p)));
    names
        .into_iter()
        .map(|name| {
            let disk = block.join(&name);
            let size = read_trimmed(&disk.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .map_or_else(|| "?".into(), |sectors| (sectors / 2048).to_string());
            let serial = read_trimmed(&disk.join("serial"))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "-".into());
            let rotational = read_trimmed(&disk.join("queue/rotational"))
                .filter(|r| r == "0" || r == "1")
                .unwrap_or_else(|| "?".into());
            format!(
                "PLINTH GUEST DISK name={name} size_mib={size} serial={serial} rotational={rotational}"
            )
        })
        .collect()
}

/// A sysfs file's text without surrounding whitespace; `None` if it cannot be read.
fn read_trimmed(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(String::from_utf8_lossy(&bytes).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn disk(root: &Path, name: &str, sectors: &str, serial: Option<&str>, rotational: &str) {
        write(root, &format!("block/{name}/size"), sectors);
        if let Some(serial) = serial {
            write(root, &format!("block/{name}/serial"), serial);
        }
        write(root, &format!("block/{name}/queue/rotational"), rotational);
    }

    #[test]
    fn two_nodes_and_two_disks() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let node = "devices/system/node";
        // The files beside the node directories are no nodes.
        write(sys, &format!("{node}/online"), "0-1\n");
        write(sys, &format!("{node}/possible"), "0-1\n");
        write(sys, &format!("{node}/node0/cpulist"), "0\n");
        write(
            sys,
            &format!("{node}/node0/meminfo"),
            "Node 0 MemTotal:        2014252 kB\nNode 0 MemFree:         1800000 kB\n",
        );
        write(sys, &format!("{node}/node1/cpulist"), "1\n");
        write(
            sys,
            &format!("{node}/node1/meminfo"),
            "Node 1 MemTotal:        2064384 kB\nNode 1 MemFree:         2000000 kB\n",
        );
        // Created out of order: the lines are sorted by name.
        disk(sys, "vdb", "2097152\n", Some("plinth-data\n"), "0\n");
        disk(sys, "vda", "8388608\n", Some(""), "1\n");
        disk(sys, "loop0", "0\n", None, "1\n");
        disk(sys, "dm-0", "4096\n", None, "0\n");
        assert_eq!(
            lines(sys),
            [
                "PLINTH GUEST NUMA nodes=2",
                "PLINTH GUEST NUMA node=0 cpus=0 memory_mib=1967",
                "PLINTH GUEST NUMA node=1 cpus=1 memory_mib=2016",
                "PLINTH GUEST DISK name=vda size_mib=4096 serial=- rotational=1",
                "PLINTH GUEST DISK name=vdb size_mib=1024 serial=plinth-data rotational=0",
            ]
        );
    }

    #[test]
    fn no_numa_and_no_block_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            lines(dir.path()),
            ["PLINTH GUEST NUMA nodes=0 (no NUMA information)"]
        );
        assert_eq!(
            lines(&dir.path().join("missing")),
            ["PLINTH GUEST NUMA nodes=0 (no NUMA information)"]
        );
    }

    #[test]
    fn unreadable_values_are_question_marks() {
        let dir = tempfile::tempdir().unwrap();
        let sys = dir.path();
        let node = "devices/system/node";
        // node10 after node2: ids sort as numbers.
        write(sys, &format!("{node}/node10/cpulist"), "4-7\n");
        write(
            sys,
            &format!("{node}/node10/meminfo"),
            "Node 10 MemFree: 1 kB\n",
        );
        fs::create_dir_all(sys.join(format!("{node}/node2"))).unwrap();
        write(
            sys,
            &format!("{node}/node2/meminfo"),
            "Node 2 MemTotal: 1048576 kB\n",
        );
        // sda: no size, serial file missing, a rotational the kernel would not write.
        write(sys, "block/sda/queue/rotational", "x\n");
        disk(sys, "ram0", "8192\n", None, "0\n");
        disk(sys, "zram0", "8192\n", None, "0\n");
        disk(sys, "sr0", "8192\n", None, "1\n");
        // A directory with nothing in it at all.
        fs::create_dir_all(sys.join("block/vdc")).unwrap();
        assert_eq!(
            lines(sys),
            [
                "PLINTH GUEST NUMA nodes=2",
                "PLINTH GUEST NUMA node=2 cpus=? memory_mib=1024",
                "PLINTH GUEST NUMA node=10 cpus=4-7 memory_mib=?",
                "PLINTH GUEST DISK name=sda size_mib=? serial=- rotational=?",
                "PLINTH GUEST DISK name=vdc size_mib=? serial=- rotational=?",
            ]
        );
    }

    #[test]
    fn mem_total_is_found_on_any_line() {
        assert_eq!(
            mem_total_kib("Node 0 MemFree: 5 kB\nNode 0 MemTotal: 42 kB\n"),
            Some(42)
        );
        assert_eq!(mem_total_kib("MemTotal: 7 kB\n"), Some(7));
        assert_eq!(mem_total_kib("Node 0 MemTotal: lots\n"), None);
        assert_eq!(mem_total_kib(""), None);
    }
}
