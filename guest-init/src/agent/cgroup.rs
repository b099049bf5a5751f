//! Container cgroups (v2 only): one group `vpod/<id>` under the cgroup2 root carrying the
//! limits, joined by the container's processes before they exec. Without a cgroup2 root
//! (a host with the hybrid v1/v2 layout, where the agent runs in tests) containers run
//! without limits, and the agent says so once.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The magic number statfs reports for a cgroup2 filesystem.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// The group all containers live under.
const PARENT: &str = "vpod";
/// What the parent delegates to container groups.
const CONTROLLERS: &str = "+cpu +memory +pids";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("could not create the cgroup {0}")]
    Create(PathBuf, #[source] io::Error),
    #[error("could not write {value:?} to {file}")]
    Write {
        file: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("could not read {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("could not remove the cgroup {0}")]
    Remove(PathBuf, #[source] io::Error),
    #[error("no cgroup2 filesystem is mounted at {0}; containers run without cgroups")]
    Unavailable(PathBuf),
}

/// The limits a container asks for; zero means unset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub cpu_shares: u64,
    pub cpu_quota_us: i64,
    pub cpu_period_us: u64,
    pub memory_limit_bytes: i64,
    pub pids_limit: i64,
}

/// The cgroup v1 CPU shares to v2 weight conversion runc and crun use: shares 2..262144
/// map linearly onto weight 1..10000.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// The cgroup files and values that carry `limits`, in the order to write them.
pub fn limit_files(limits: &CgroupLimits) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    if limits.cpu_shares > 0 {
        files.push((
            "cpu.weight",
            shares_to_weight(limits.cpu_shares).to_string(),
        ));
    }
    if limits.cpu_quota_us > 0 || limits.cpu_period_us > 0 {
        let period = if limits.cpu_period_us > 0 {
            limits.cpu_period_us
        } else {
            100_000
        };
        let quota = if limits.cpu_quota_us > 0 {
            limits.cpu_quota_us.to_string()
        } else {
            "max".to_string()
        };
        files.push(("cpu.max", format!("{quota} {period}")));
    }
    if limits.memory_limit_bytes > 0 {
        files.push(("memory.max", limits.memory_limit_bytes.to_string()));
    }
    if limits.pids_limit > 0 {
        files.push(("pids.max", limits.pids_limit.to_string()));
    }
    files
}

/// Usage read back from a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    pub cpu_usage_ns: u64,
    pub memory_usage_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids_current: u64,
    /// memory.events `oom_kill`: processes of the group the OOM killer ended.
    pub oom_kills: u64,
}

/// The cgroup2 hierarchy the agent manages, or nothing.
#[derive(Debug, Clone)]
pub struct Cgroups {
    root: Option<PathBuf>,
}

impl Cgroups {
    /// Uses `root` if it is a cgroup2 mount; otherwise warns and disables cgroups.
    pub fn detect(root: &Path) -> Self {
        if is_cgroup2(root) {
            Cgroups {
                root: Some(root.to_path_buf()),
            }
        } else {
            eprintln!(
                "vpod-init: warning: {}",
                CgroupError::Unavailable(root.to_path_buf())
            );
            Cgroups { root: None }
        }
    }

    /// Uses `root` as it is, whatever filesystem it is on (tests use plain directories).
    pub fn at(root: &Path) -> Self {
        Cgroups {
            root: Some(root.to_path_buf()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.root.is_some()
    }

    /// The group of container `id`, if cgroups are enabled.
    pub fn group_path(&self, id: &str) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join(PARENT).join(id))
    }

    /// Creates the container's group with its limits. Returns its path, or None when
    /// cgroups are disabled.
    pub fn create(&self, id: &str, limits: &CgroupLimits) -> Result<Option<PathBuf>, CgroupError> {
        let Some(root) = &self.root else {
            return Ok(None);
        };
        let parent = root.join(PARENT);
        if !parent.exists() {
            fs::create_dir(&parent).map_err(|e| CgroupError::Create(parent.clone(), e))?;
        }
        // Delegation may partly fail (a controller the kernel lacks); limits on it then fail
        // below with a clear file name.
        let _ = write(&root.join("cgroup.subtree_control"), CONTROLLERS);
        let _ = write(&parent.join("cgroup.subtree_control"), CONTROLLERS);
        let group = parent.join(id);
        fs::create_dir(&group).map_err(|e| CgroupError::Create(group.clone(), e))?;
        for (file, value) in limit_files(limits) {
            if let Err(e) = write(&group.join(file), &value) {
                let _ = fs::remove_dir(&group);
                return Err(e);
            }
        }
        Ok(Some(group))
    }

    /// Rewrites the limits `limits` sets on an existing group; unset (zero) ones keep their
    /// value. Stops at the first file the kernel refuses (a memory.max below the usage it
    /// cannot reclaim, say), naming it.
    pub fn update(&self, group: &Path, limits: &CgroupLimits) -> Result<(), CgroupError> {
        for (file, value) in limit_files(limits) {
            write(&group.join(file), &value)?;
        }
        Ok(())
    }

    /// SIGKILLs every process left in a group: a container's background processes outlive
    /// its main process when it shares the pod's PID namespace (its end does not end
    /// them). `cgroup.kill` (Linux 5.14) where the kernel has it, else each pid listed.
    pub fn kill_all(&self, group: &Path) {
        // Opened without create: only the kernel's file, never one of our own.
        let killed = fs::OpenOptions::new()
            .write(true)
            .open(group.join("cgroup.kill"))
            .and_then(|mut file| io::Write::write_all(&mut file, b"1"));
        if killed.is_ok() {
            return;
        }
        let Ok(procs) = read(&group.join("cgroup.procs")) else {
            return;
        };
        for pid in procs
            .lines()
            .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
        {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Removes a group; its processes must have ended.
    pub fn remove(&self, group: &Path) -> Result<(), CgroupError> {
        match fs::remove_dir(group) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CgroupError::Remove(group.to_path_buf(), e)),
        }
    }

    pub fn stats(&self, group: &Path) -> Result<CgroupStats, CgroupError> {
        let cpu_stat = read(&group.join("cpu.stat"))?;
        let usage_usec = cpu_stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Ok(CgroupStats {
            cpu_usage_ns: usage_usec.saturating_mul(1000),
            memory_usage_bytes: parse_counter(&read(&group.join("memory.current"))?),
            memory_limit_bytes: parse_counter(&read(&group.join("memory.max"))?),
            pids_current: parse_counter(&read(&group.join("pids.current"))?),
            oom_kills: self.oom_kills(group),
        })
    }

    /// The group's OOM kills (memory.events `oom_kill`, which counts its descendants' too);
    /// 0 when the file cannot be read (no memory controller, or the group is gone).
    pub fn oom_kills(&self, group: &Path) -> u64 {
        fs::read_to_string(group.join("memory.events"))
            .map(|events| event_count(&events, "oom_kill"))
            .unwrap_or(0)
    }
}

/// The count of `key` in a flat-keyed file such as memory.events ("key value" lines).
fn event_count(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == key).then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// A counter file's value; "max" (no limit) reads as 0.
fn parse_counter(text: &str) -> u64 {
    text.trim().parse().unwrap_or(0)
}

fn read(file: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(file).map_err(|e| CgroupError::Read(file.to_path_buf(), e))
}

fn write(file: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(file, value).map_err(|source| CgroupError::Write {
        file: file.to_path_buf(),
        value: value.to_string(),
        source,
    })
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `stat` is a live, writable statfs.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs.
    let magic = stat.f_type as i64;
    magic == CGROUP2_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_map_to_weights_as_runc_does() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 1);
        assert_eq!(shares_to_weight(1 << 30), 10_000);
    }

    #[test]
    fn only_set_limits_are_written() {
        assert!(limit_files(&CgroupLimits::default()).is_empty());
        let files = limit_files(&CgroupLimits {
            cpu_shares: 512,
            cpu_quota_us: 50_000,
            cpu_period_us: 0,
            memory_limit_bytes: 64 << 20,
            pids_limit: 10,
        });
        assert_eq!(
            files,
            vec![
                ("cpu.weight", "20".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("memory.max", (64u64 << 20).to_string()),
                ("pids.max", "10".to_string()),
            ]
        );
    }

    #[test]
    fn a_period_without_quota_is_unlimited() {
        let files = limit_files(&CgroupLimits {
            cpu_period_us: 20_000,
            ..Default::default()
        });
        assert_eq!(files, vec![("cpu.max", "max 20000".to_string())]);
    }

    #[test]
    fn a_directory_that_is_not_cgroup2_disables_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::detect(dir.path());
        assert!(!cgroups.is_enabled());
        assert_eq!(
            cgroups.create("c1", &CgroupLimits::default()).unwrap(),
            None
        );
    }

    #[test]
    fn a_group_gets_its_limits_and_reports_stats() {
        let dir = tempfile::tempdir().unwrap();
        let cgroups = Cgroups::at(dir.path());
        let group = cgroups
            .create(
                "c1",
                &CgroupLimits {
                    pids_limit: 7,
                    ..Default::default()
                },
            )
            .unwrap()
            .unwrap();
        assert_eq!(fs::read_to_string(group.join("pids.max")).unwrap(), "7");
        cgroups
            .update(
                &group,
                &CgroupLimits {
                    memory_limit_bytes: 32 << 20,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            fs::read_to_string(group.join("memory.max")).unwrap(),
            (32u64 << 20).to_string()
        );
        assert_eq!(fs::read_to_string(group.join("pids.max")).unwrap(), "7");
        fs::write(group.join("cpu.stat"), "usage_usec 12\nuser_usec 10\n").unwrap();
        fs::write(group.join("memory.current"), "4096\n").unwrap();
        fs::write(group.join("memory.max"), "max\n").unwrap();
        fs::write(group.join("pids.current"), "3\n").unwrap();
        assert_eq!(
            cgroups.stats(&group).unwrap(),
            CgroupStats {
                cpu_usage_ns: 12_000,
                memory_usage_bytes: 4096,
                memory_limit_bytes: 0,
                pids_current: 3,
                oom_kills: 0,
            }
        );
        fs::write(
            group.join("memory.events"),
            "low 0\nhigh 0\nmax 41\noom 2\noom_kill 2\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(cgroups.stats(&group).unwrap().oom_kills, 2);
    }
}
