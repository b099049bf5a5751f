//! GuestInfo: what the host may want to know about the VM it booted.

use std::time::{Duration, Instant};

/// Facts gathered once when the agent starts.
#[derive(Debug, Clone)]
pub struct GuestClock {
    started: Instant,
    boot_to_init: Duration,
}

impl GuestClock {
    /// `since_boot` is CLOCK_BOOTTIME now, read as early as possible in init.
    pub fn new(since_boot: Duration) -> Self {
        GuestClock {
            started: Instant::now(),
            boot_to_init: since_boot,
        }
    }

    /// CLOCK_BOOTTIME now.
    pub fn since_boot() -> Duration {
        // SAFETY: timespec is plain data; clock_gettime writes it.
        let mut now: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: `now` is a live, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestInfo {
    pub kernel_release: String,
    pub boot_to_init_ns: u64,
    pub init_uptime_ns: u64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub vcpus: u32,
}

pub fn guest_info(clock: &GuestClock) -> GuestInfo {
    let (total, available) = meminfo(&std::fs::read_to_string("/proc/meminfo").unwrap_or_default());
    // SAFETY: sysconf takes an integer.
    let vcpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    GuestInfo {
        kernel_release: kernel_release(),
        boot_to_init_ns: clock.boot_to_init.as_nanos() as u64,
        init_uptime_ns: clock.started.elapsed().as_nanos() as u64,
        memory_total_bytes: total,
        memory_available_bytes: available,
        vcpus: u32::try_from(vcpus).unwrap_or(0),
    }
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it with NUL-terminated strings.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a live, writable utsname.
    if unsafe { libc::uname(&mut name) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = name
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// MemTotal and MemAvailable from /proc/meminfo, in bytes.
pub fn meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_reads_total_and_available_in_bytes() {
        let text = "MemTotal:         120000 kB\nMemFree:  1 kB\nMemAvailable:      60000 kB\n";
        assert_eq!(meminfo(text), (120_000 * 1024, 60_000 * 1024));
        assert_eq!(meminfo(""), (0, 0));
    }

    #[test]
    fn this_machine_has_a_kernel_and_cpus() {
        let info = guest_info(&GuestClock::new(Duration::from_millis(5)));
        assert!(!info.kernel_release.is_empty());
        assert!(info.vcpus >= 1);
        assert_eq!(info.boot_to_init_ns, 5_000_000);
    }
}
