//! What `/proc` says about a process: CPU time (`/proc/<pid>/stat`),
//! resident memory (`/proc/<pid>/status`), open files (`/proc/<pid>/fd`),
//! and the CPU time of a whole PostgreSQL cluster.
//!
//! A cluster's CPU is the postmaster's own, plus what its ended children
//! used (`cutime`/`cstime`: the kernel adds a child's times to its parent
//! when the parent reaps it, and the postmaster reaps every backend), plus
//! what its live children used so far. Backends of a connection storm
//! start and end between two readings; this sum still counts them.

use std::time::Duration;

use anyhow::{anyhow, Context as _};

/// The clock ticks of `/proc/<pid>/stat` (`sysconf(_SC_CLK_TCK)`).
fn tick() -> Duration {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .unwrap_or(100);
    Duration::from_secs(1) / hz as u32
}

/// Fields 14–17 of `/proc/<pid>/stat` in ticks: utime, stime, cutime,
/// cstime; and field 4, the parent pid.
struct Stat {
    ppid: u32,
    own: u64,
    children: u64,
}

fn stat(pid: u32) -> anyhow::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(1) // the state letter, field 3
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .collect();
    // fields[0] is field 4 (ppid); field N is fields[N - 4].
    let get = |n: usize| fields.get(n - 4).copied().unwrap_or(0);
    Ok(Stat {
        ppid: get(4) as u32,
        own: get(14) + get(15),
        children: get(16) + get(17),
    })
}

/// User plus system CPU time of `pid` so far.
pub fn cpu(pid: u32) -> anyhow::Result<Duration> {
    Ok(tick() * stat(pid)?.own as u32)
}

/// CPU time of `postmaster` and all its children, ended or live (see the
/// module doc).
pub fn cluster_cpu(postmaster: u32) -> anyhow::Result<Duration> {
    let root = stat(postmaster)?;
    let mut ticks = root.own + root.children;
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and the read.
        if let Ok(s) = stat(pid) {
            if s.ppid == postmaster {
                ticks += s.own;
            }
        }
    }
    Ok(tick() * ticks as u32)
}

/// Resident memory of `pid` now, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    Ok(status_kib(pid, &["VmRSS:"])?[0])
}

/// `pid`'s resident memory now, in KiB, as (anonymous, file-backed):
/// `RssAnon` is the heap and stacks; `RssFile` is mostly the binary's own
/// pages, which grow as more of its code runs and which the kernel may
/// drop at will.
pub fn rss_parts_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let kib = status_kib(pid, &["RssAnon:", "RssFile:"])?;
    Ok((kib[0], kib[1]))
}

/// The values (KiB) of `fields` in `/proc/<pid>/status`, read at once.
fn status_kib(pid: u32, fields: &[&str]) -> anyhow::Result<Vec<u64>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    fields
        .iter()
        .map(|name| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| anyhow!("no {name} in /proc/{pid}/status"))
        })
        .collect()
}

/// Open file descriptors of `pid` now.
pub fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count())
}
