//! Memory and CPU of the broker under test (and of the tool itself), from /proc; and the
//! busy time of one core from /proc/stat, whoever spent it.

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
    /// Time on a CPU, microseconds, summed over every thread: the scheduler's exact
    /// account (`/proc/PID/task/*/schedstat`), where utime and stime are sampled at each
    /// tick (4 ms here) and may miss or double short bursts.
    pub oncpu_us: u64,
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
        total.oncpu_us += s.oncpu_us;
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
        oncpu_us: oncpu_ns(pid) / 1000,
    })
}

/// Nanoseconds on a CPU of every thread of `pid` (0 without schedstat).
fn oncpu_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| parse_schedstat(&s))
        .sum()
}

/// The first field of `schedstat`: time spent on a CPU, ns.
fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_whitespace().next()?.parse().ok()
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

/// One core's time from /proc/stat, microseconds since boot, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreSample {
    /// user + nice (userland of every process on the core).
    pub user_us: u64,
    /// system: syscalls and kernel threads, outside interrupts.
    pub system_us: u64,
    /// softirq: network receive and transmit completion, timers, RCU.
    pub softirq_us: u64,
    /// irq: hardware interrupts and IPIs.
    pub irq_us: u64,
    /// idle + iowait.
    pub idle_us: u64,
    /// From /proc/net/softnet_stat: times the core was woken to take packets another core
    /// queued for it (RPS IPIs), and packets dropped because its backlog
    /// (`net.core.netdev_max_backlog`) was full. Counts, not microseconds.
    pub rps_ipis: u64,
    pub backlog_drops: u64,
}

impl CoreSample {
    /// Time the core did work, whoever for: user + nice + system + irq + softirq (steal,
    /// time the hypervisor ran something else, is neither work nor idle here).
    pub fn busy_us(&self) -> u64 {
        self.user_us + self.system_us + self.softirq_us + self.irq_us
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &CoreSample) -> CoreSample {
        CoreSample {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            system_us: self.system_us.saturating_sub(earlier.system_us),
            softirq_us: self.softirq_us.saturating_sub(earlier.softirq_us),
            irq_us: self.irq_us.saturating_sub(earlier.irq_us),
            idle_us: self.idle_us.saturating_sub(earlier.idle_us),
            rps_ipis: self.rps_ipis.saturating_sub(earlier.rps_ipis),
            backlog_drops: self.backlog_drops.saturating_sub(earlier.backlog_drops),
        }
    }
}

/// Core `core`'s times (and packet counts) now.
pub fn sample_core(core: usize) -> io::Result<CoreSample> {
    let mut sample = sample_cpu_line(&format!("cpu{core}"))?;
    if let Ok(softnet) = std::fs::read_to_string("/proc/net/softnet_stat") {
        if let Some((ipis, drops)) = parse_softnet(&softnet, core) {
            sample.rps_ipis = ipis;
            sample.backlog_drops = drops;
        }
    }
    Ok(sample)
}

/// (received_rps, dropped) of `core` in /proc/net/softnet_stat: one line of hex fields per
/// online CPU, the second `dropped`, the tenth `received_rps`, the thirteenth (when
/// present) the CPU's number.
fn parse_softnet(softnet: &str, core: usize) -> Option<(u64, u64)> {
    let rows: Vec<Vec<u64>> = softnet
        .lines()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| u64::from_str_radix(f, 16).ok())
                .collect()
        })
        .collect();
    let row = rows
        .iter()
        .find(|r| r.get(12) == Some(&(core as u64)))
        .or_else(|| rows.get(core).filter(|r| r.len() < 13))?;
    Some((*row.get(9)?, *row.get(1)?))
}

/// The whole machine's times now (every core summed).
pub fn sample_machine() -> io::Result<CoreSample> {
    sample_cpu_line("cpu")
}

fn sample_cpu_line(name: &str) -> io::Result<CoreSample> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_cpu_line(&stat, name, ticks_per_second()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("/proc/stat has no line for {name}"),
        )
    })
}

/// The `cpuN` line of /proc/stat: `cpuN user nice system idle iowait irq softirq steal ...`,
/// in USER_HZ ticks.
#[cfg(test)]
fn parse_core(stat: &str, core: usize, ticks_per_second: u64) -> Option<CoreSample> {
    parse_cpu_line(stat, &format!("cpu{core}"), ticks_per_second)
}

/// The line of /proc/stat named `name` (`cpu`: all cores; `cpuN`: one).
fn parse_cpu_line(stat: &str, name: &str, ticks_per_second: u64) -> Option<CoreSample> {
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))?;
    let t: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if t.len() < 7 {
        return None;
    }
    let us = |ticks: u64| ticks * 1_000_000 / ticks_per_second.max(1);
    Some(CoreSample {
        user_us: us(t[0] + t[1]),
        system_us: us(t[2]),
        idle_us: us(t[3] + t[4]),
        irq_us: us(t[5]),
        softirq_us: us(t[6]),
        ..CoreSample::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_core_of_proc_stat() {
        let stat = "cpu  55733 13991 11665 115504 302 0 62 78 0 0\n\
                    cpu0 27852 6615 5524 58578 40 3 11 37 0 0\n\
                    cpu1 27880 7375 6140 56925 261 0 50 41 0 0\n\
                    cpu10 1 1 1 1 1 1 1 1 0 0\nintr 1 2 3\n";
        let c0 = parse_core(stat, 0, 100).unwrap();
        assert_eq!(c0.user_us, (27852 + 6615) * 10_000);
        assert_eq!(c0.system_us, 5524 * 10_000);
        assert_eq!(c0.idle_us, (58578 + 40) * 10_000);
        assert_eq!(c0.irq_us, 3 * 10_000);
        assert_eq!(c0.softirq_us, 11 * 10_000);
        assert_eq!(c0.busy_us(), (27852 + 6615 + 5524 + 3 + 11) * 10_000);
        // `cpu1` is not a prefix match for `cpu10`, nor the total line for `cpu`.
        assert_eq!(parse_core(stat, 1, 100).unwrap().softirq_us, 50 * 10_000);
        assert_eq!(parse_core(stat, 10, 100).unwrap().busy_us(), 5 * 10_000);
        assert_eq!(parse_core(stat, 2, 100), None);
        let all = parse_cpu_line(stat, "cpu", 100).unwrap();
        assert_eq!(all.user_us, (55733 + 13991) * 10_000);
        assert_eq!(parse_core("cpu0 1 2 x 4 5 6 7\n", 0, 100), None);
        let later = CoreSample {
            softirq_us: c0.softirq_us + 5,
            ..c0
        };
        assert_eq!(later.since(&c0).busy_us(), 5);
    }

    #[test]
    fn parses_softnet_stat() {
        let softnet = "00024778 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00001810 00000000 00000000 00000000 00000000 00000000\n\
                       00024c31 00000003 00000001 00000000 00000000 00000000 00000000 00000000 00000000 000013de 00000000 00000000 00000001 00000000 00000000\n";
        assert_eq!(parse_softnet(softnet, 0), Some((0x1810, 0)));
        assert_eq!(parse_softnet(softnet, 1), Some((0x13de, 3)));
        assert_eq!(parse_softnet(softnet, 2), None);
        // Older kernels: no CPU column, one line per CPU in order.
        assert_eq!(parse_softnet("1 2 3 4 5 6 7 8 9 a\n", 0), Some((10, 2)));
    }

    #[test]
    fn samples_a_core_of_this_machine() {
        assert!(sample_core(0).unwrap().busy_us() + sample_core(0).unwrap().idle_us > 0);
        assert!(sample_core(100_000).is_err());
    }

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t   1234 kB\n"), Some(1234));
        let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 6 4 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some((250, 75)));
        assert_eq!(parse_schedstat("123456789 5000 42\n"), Some(123456789));
        assert_eq!(parse_schedstat(""), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(&[std::process::id()]).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.oncpu_us > 0);
        assert!(sample(&[u32::MAX]).is_err());
    }
}
