//! Memory and CPU of the broker under test (and of the tool itself), from /proc.

use std::io;

/// Resident memory and CPU time of one or more processes at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// `VmRSS`, KiB, summed over the processes.
    pub rss_kib: u64,
    /// user + system CPU time, microseconds, summed over the processes.
    pub cpu_us: u64,
    /// The system (kernel) part of `cpu_us`: syscalls and the network stack work they do.
    pub sys_us: u64,
}

/// Clock ticks per second of `/proc/PID/stat` times (USER_HZ): 100 on every Linux
/// architecture the tool runs on; `getconf CLK_TCK` confirms it at start.
fn ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t: &u64| t > 0)
            .unwrap_or(100)
    })
}

/// Sample every pid in `pids`; an error names the pid that could not be read.
pub fn sample(pids: &[u32]) -> io::Result<Sample> {
    let mut total = Sample::default();
    for &pid in pids {
        let s = sample_one(&pid.to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/{pid}: {e}")))?;
        total.rss_kib += s.rss_kib;
        total.cpu_us += s.cpu_us;
        total.sys_us += s.sys_us;
    }
    Ok(total)
}

/// This process (`self`).
pub fn sample_self() -> io::Result<Sample> {
    sample_one("self")
}

fn sample_one(pid: &str) -> io::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rss_kib = parse_vm_rss(&status).unwrap_or(0);
    let (utime, stime) = parse_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
    let us = |ticks: u64| ticks * 1_000_000 / ticks_per_second();
    Ok(Sample {
        rss_kib,
        cpu_us: us(utime + stime),
        sys_us: us(stime),
    })
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// (utime, stime): fields 14 and 15 of `stat`, counted after the `(comm)` field, which
/// may itself hold spaces and parentheses.
fn parse_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   1234 kB\n"), Some(1234));
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some((250, 75)));
    }

    #[test]
    fn samples_this_process() {
        let s = sample(&[std::process::id()]).unwrap();
        assert!(s.rss_kib > 0);
        assert!(sample(&[u32::MAX]).is_err());
    }
}
