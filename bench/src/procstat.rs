//! Memory and CPU of a process tree from /proc: VmRSS, VmHWM (resettable peak) and utime+stime.

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// One reading, summed over a process tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_ticks: u64,
}

fn status_kib(status: &str, key: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(close) = stat.rfind(')') else { return 0 };
    // Fields after "pid (comm) ": state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

pub fn read(pids: &[u32]) -> Usage {
    let mut usage = Usage::default();
    for &pid in pids {
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            usage.rss_kib += status_kib(&status, "VmRSS:");
            usage.hwm_kib += status_kib(&status, "VmHWM:");
        }
        usage.cpu_ticks += cpu_ticks(pid);
    }
    usage
}

/// Resets VmHWM to the current RSS (clear_refs value 5), so the next peak belongs to one phase.
pub fn reset_peak(pids: &[u32]) {
    for &pid in pids {
        // Best effort: without permission the peak covers the process's whole life, which only
        // overstates it.
        let _ = fs::write(format!("/proc/{pid}/clear_refs"), "5");
    }
}

pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Samples the summed VmRSS of a process tree every 20 ms until stopped; keeps the maximum. A
/// cross-check of VmHWM, and the only peak available if clear_refs is refused.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kib = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, max_kib) = (stop.clone(), max_kib.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    max_kib.fetch_max(read(&pids).rss_kib, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self { stop, max_kib, task }
    }

    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.max_kib.load(Ordering::Relaxed)
    }
}
