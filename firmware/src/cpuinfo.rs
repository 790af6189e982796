//! What `/proc/cpuinfo` says of the machine's CPUs, as certification needs it: the first
//! processor's vendor, family, model and name (CPUID, as the kernel decodes it), the sockets
//! (distinct `physical id`s) and the processors listed. The text is outside input (a
//! captured tree's): unknown lines are skipped, a number that is not one is an error.

use serde::Serialize;

/// The CPU identity of a machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CpuIdentity {
    pub vendor: String,
    pub family: u32,
    pub model: u32,
    pub model_name: String,
    pub sockets: u32,
    pub threads: u32,
    /// Some processor's vendor, family or model is not the first one's (CPUs of different
    /// kinds in the sockets).
    pub mixed: bool,
}

/// Parse `/proc/cpuinfo`'s text.
pub fn parse_cpuinfo(text: &str) -> Result<CpuIdentity, String> {
    let mut cpu = CpuIdentity::default();
    let mut sockets = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let number = || {
            value
                .parse::<u32>()
                .map_err(|_| format!("`{key}: {value}` is not a number"))
        };
        match key {
            "processor" => cpu.threads = cpu.threads.saturating_add(1),
            "vendor_id" if cpu.vendor.is_empty() => cpu.vendor = value.to_string(),
            "vendor_id" => cpu.mixed |= cpu.vendor != value,
            "cpu family" if cpu.threads == 1 => cpu.family = number()?,
            "cpu family" => cpu.mixed |= cpu.family != number()?,
            "model" if cpu.threads == 1 => cpu.model = number()?,
            "model" => cpu.mixed |= cpu.model != number()?,
            "model name" if cpu.model_name.is_empty() => cpu.model_name = value.to_string(),
            "physical id" => {
                sockets.insert(number()?);
            }
            _ => {}
        }
    }
    if cpu.threads == 0 || cpu.vendor.is_empty() {
        return Err("no processor with a vendor_id is listed".into());
    }
    cpu.sockets = sockets.len().max(1) as u32;
    Ok(cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_socket_machine_and_bad_numbers() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\
                    model name\t: AMD EPYC 9124\nphysical id\t: 0\n\n\
                    processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n\
                    physical id\t: 1\n";
        let cpu = parse_cpuinfo(text).unwrap();
        assert_eq!(
            (cpu.family, cpu.model, cpu.sockets, cpu.threads),
            (25, 17, 2, 2)
        );
        assert_eq!(cpu.model_name, "AMD EPYC 9124");
        assert!(cpu.mixed, "the second socket's CPU is another family");
        let same = text.replace(
            "cpu family\t: 26\nmodel\t\t: 2\n",
            "cpu family\t: 25\nmodel\t\t: 17\n",
        );
        assert!(!parse_cpuinfo(&same).unwrap().mixed);
        assert!(parse_cpuinfo("processor : 0\nvendor_id : X\ncpu family : many\n").is_err());
        assert!(parse_cpuinfo("").is_err());
    }
}
