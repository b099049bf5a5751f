//! What a test or a benchmark that runs containerd finds through /proc and cleans up after
//! it: processes (arguments, parents, descendants, the shims of one containerd), sockets
//! nobody serves any more, and cgroups left empty. Nothing here panics: fixtures use it
//! from `Drop` while a failed test unwinds.

use std::path::{Path, PathBuf};

/// The PIDs of every process now.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// `pid`'s arguments (empty for a kernel thread or a process that is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

/// `pid`'s parent, unless it is gone or a zombie, from /proc/PID/stat ("pid (comm) S ppid
/// ...": the name may hold spaces and parentheses, so the fields are read after its last
/// ')').
pub fn live_parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let state = fields.next()?;
    (state != "Z").then(|| fields.next()?.parse().ok())?
}

/// Whether `pid` is a process that has not ended (not a zombie).
pub fn is_alive(pid: u32) -> bool {
    live_parent(pid).is_some()
}

/// The live descendants of `roots`, at any depth, in no particular order.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, live_parent(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = roots.to_vec();
    while let Some(parent) = frontier.pop() {
        for &(pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent) {
            if !found.contains(&pid) && !roots.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// The live shims (`containerd-shim-*`) of the containerd whose socket is `address` (every
/// v2 shim is given `-address <socket>`), with their program's name.
pub fn shims_of(address: &Path) -> Vec<(u32, String)> {
    let plain = address.display().to_string();
    let url = format!("unix://{plain}");
    all_pids()
        .into_iter()
        .filter(|&pid| is_alive(pid))
        .filter_map(|pid| {
            let args = cmdline(pid);
            let name = Path::new(args.first()?)
                .file_name()?
                .to_string_lossy()
                .into_owned();
            let ours = args
                .windows(2)
                .any(|w| w[0] == "-address" && (w[1] == plain || w[1] == url));
            (name.starts_with("containerd-shim") && ours).then_some((pid, name))
        })
        .collect()
}

/// Removes, bottom up, the unix sockets under `dir` that refuse connections and the
/// directories left empty (`dir` too).
pub fn remove_stale_under(dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            remove_stale_under(&path);
        } else if kind.is_socket() && std::os::unix::net::UnixStream::connect(&path).is_err() {
            let _ = std::fs::remove_file(&path);
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The cgroups runc makes for containerd namespaces `namespaces` (`/<namespace>`, the
/// parent of each container's cgroup) that are not there yet, in every cgroup hierarchy.
pub fn new_cgroup_candidates(namespaces: &[&str]) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let hierarchies: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split(' ').next()?;
            let point = before.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect();
    hierarchies
        .iter()
        .flat_map(|h| namespaces.iter().map(move |ns| h.join(ns)))
        .filter(|cgroup| !cgroup.exists())
        .collect()
}

/// Removes the cgroup `dir` and every cgroup under it, deepest first (only empty ones go).
pub fn remove_cgroup_tree(dir: &Path) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_descendant_of_its_parent() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(all_pids().contains(&me));
        let parent = live_parent(me).expect("a parent");
        assert!(descendants(&[parent]).contains(&me));
        assert!(!cmdline(me).is_empty());
    }
}
