//! What tests read of a running process in /proc: a field of its `status`, as the launch
//! tests check QEMU's user, seccomp mode and each thread's CPU affinity; and the wait for a
//! child to become the program it execs.

/// Field `name` (with its colon, `Cpus_allowed_list:`) of `/proc/<pid>/status`, its words
/// joined by one space (`Uid:` gives `65534 65534 65534 65534`); empty when it has none.
/// Panics when the process is gone: a test that asks expects it to run.
pub fn status_field(pid: i64, name: &str) -> String {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

/// Wait until `child` (or what it exec'd) has a `comm` starting with `prefix`, e.g. until
/// `plinth-host guest exec-qemu` has become `qemu-system-x86_64`; its pid. Panics when the
/// child ends first or `timeout` passes.
pub fn wait_for_exec(
    child: &mut std::process::Child,
    prefix: &str,
    timeout: std::time::Duration,
) -> i64 {
    let pid = i64::from(child.id());
    let start = std::time::Instant::now();
    loop {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.starts_with(prefix) {
            return pid;
        }
        if let Ok(Some(code)) = child.try_wait() {
            panic!("pid {pid} ended ({code}) before it ran {prefix}");
        }
        assert!(start.elapsed() < timeout, "no {prefix} in {timeout:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_of_this_process() {
        let me = i64::from(std::process::id());
        assert_eq!(super::status_field(me, "Pid:"), me.to_string());
        assert!(!super::status_field(me, "Cpus_allowed_list:").is_empty());
        assert_eq!(super::status_field(me, "NoSuchField:"), "");
    }
}
