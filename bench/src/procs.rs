//! Process accounting from /proc (CPU time, resident memory) and CPU pinning.

use std::process::Command;

use anyhow::Context as _;

/// The CPU the system under test runs on.
pub const SUT_CPU: usize = 0;
/// The CPU of the load generators, sinks and this harness.
pub const LOAD_CPU: usize = 1;

/// Fields of /proc/<pid>/stat after the command name (field 3 onwards).
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `pid` and every process descending from it.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Ok(p) = e.file_name().to_string_lossy().parse::<i32>()
                && let Some(f) = stat_fields(p)
                && let Some(pp) = f.get(1).and_then(|s| s.parse::<i32>().ok())
            {
                parent_of.push((p, pp));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// CPU time of `pids` (all their threads), in microseconds: the scheduler's nanoseconds
/// on a CPU per thread (`/proc/PID/task/*/schedstat`), where the tick counts of
/// `/proc/PID/stat` move by 10 ms at a time (a quick run's 400 sessions are about 19
/// ticks). Threads that ended between two readings take their time with them; the proxies
/// measured keep their threads for the run. Without schedstat (a kernel without
/// `CONFIG_SCHED_INFO`) the ticks are used.
pub fn cpu_us(pids: &[i32]) -> f64 {
    match pids.iter().map(|p| schedstat_ns(*p)).sum::<Option<u64>>() {
        Some(ns) => ns as f64 / 1e3,
        None => ticks_us(pids),
    }
}

/// The run time of every live thread of `pid`, in nanoseconds (0 for a process gone).
fn schedstat_ns(pid: i32) -> Option<u64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(0);
    };
    let mut total = 0u64;
    let mut any = false;
    for t in tasks.flatten() {
        // A thread may end between the listing and the read: it counts nothing.
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
        total += ns;
        any = true;
    }
    if !any && std::path::Path::new(&format!("/proc/{pid}")).exists() {
        // The process exists but no thread had a schedstat file: none on this kernel.
        return None;
    }
    Some(total)
}

/// utime + stime of `pids` (each process's own, all its threads), in microseconds.
fn ticks_us(pids: &[i32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            n(11) + n(12)
        })
        .sum();
    ticks as f64 * 1e6 / clock_ticks()
}

/// Resident set size of `pids` summed, in KiB.
pub fn rss_kib(pids: &[i32]) -> f64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .sum()
}

/// Pins every thread of `pid` to `cpu` (threads it creates later inherit the mask).
pub fn pin_pid(pid: i32, cpu: usize) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output()
        .context("taskset")?;
    anyhow::ensure!(
        out.status.success(),
        "taskset {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Pins the calling thread (and the threads and processes it starts later) to `cpu`.
pub fn pin_current(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu.min(nix::sched::CpuSet::count() - 1))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

/// Runs `f` (which starts a process) with the calling thread pinned to `cpu`, then gives the
/// thread its mask back: the process starts on that CPU alone, as `taskset -c CPU` would
/// start it, and sizes itself (threads, runtimes) for the one CPU it is given.
pub fn started_on<T>(cpu: usize, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let me = nix::unistd::Pid::from_raw(0);
    let before = nix::sched::sched_getaffinity(me)?;
    pin_current(cpu)?;
    let out = f();
    nix::sched::sched_setaffinity(me, &before)?;
    Ok(out)
}

/// Raises this process's open-file limit to `n` (up to the hard limit, raised too as root).
pub fn raise_nofile(n: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= n {
        return Ok(());
    }
    let hard = hard.max(n);
    setrlimit(Resource::RLIMIT_NOFILE, n, hard)
        .or_else(|_| setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard))?;
    Ok(())
}

/// Pids of the kernel's threaded-NAPI pollers of `dev` (threads named `napi/DEV-ID`).
fn napi_threads(dev: &str) -> Vec<i32> {
    let prefix = format!("napi/{dev}-");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim_end().starts_with(&prefix))
        })
        .collect()
}

/// Moves the receive processing of `dev` in namespace `ns` onto `cpu`: switches its NAPI to
/// threaded mode and pins the new poller threads. On a veth, receive processing otherwise
/// runs in the sender's softirq, on the sender's CPU, so a flood would measure the sender's
/// CPU rather than the drop path on the system-under-test CPU. The device needs a NAPI
/// context first (a veth has one while a native XDP program is attached). Returns the
/// poller pids.
pub fn pin_napi(ns: &str, dev: &str, cpu: usize) -> anyhow::Result<Vec<i32>> {
    let before = napi_threads(dev);
    // sysfs shows a namespace's devices only when mounted inside it: `ip netns exec` does
    // exactly that, in a private mount namespace that ends with the command.
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c"])
        .arg(format!("echo 1 > /sys/class/net/{dev}/threaded"))
        .output()
        .context("ip netns exec")?;
    anyhow::ensure!(
        out.status.success(),
        "threaded NAPI on {ns}/{dev}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let new: Vec<i32> = napi_threads(dev)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    anyhow::ensure!(
        !new.is_empty(),
        "{ns}/{dev} has no NAPI poller thread after enabling threaded mode (is a native XDP \
         program attached?)"
    );
    for p in &new {
        pin_pid(*p, cpu)?;
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_run_time_in_nanoseconds_and_a_gone_one_none() {
        let me = std::process::id() as i32;
        let before = cpu_us(&[me]);
        // Work that takes well under a 10 ms tick still moves the figure.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = cpu_us(&[me]);
        assert!(after > before, "{before} -> {after}");
        assert!(schedstat_ns(me).is_some());
        assert_eq!(schedstat_ns(i32::MAX), Some(0));
    }
}
