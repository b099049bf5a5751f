//! vpod-vmm's virtio-fs device (vhost-user) under the real guest driver, served by Debian's
//! virtiofsd on a temporary directory: the guest mounts the share, reads a file the host
//! wrote, writes one the host then reads, and sees a file the host adds while it runs. Then
//! the VMM's idle memory with and without a share (the cost of shared, memfd-backed guest
//! memory), printed for the record.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use vpod_e2e::{built, in_guest_host, repo_root, Background, Checks};

const LIMIT: Duration = Duration::from_secs(600);
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
// No double quotes: the kernel command line cannot carry them.
const GUEST_SCRIPT: &str = "mkdir -p /mnt; mount -t virtiofs share /mnt || exit 10; \
echo guest read: $(cat /mnt/from-host.txt); \
echo 'written by the guest' > /mnt/from-guest.txt || exit 11; sync; \
i=0; while [ ! -e /mnt/later.txt ] && [ $i -lt 90 ]; do sleep 1; i=$((i+1)); done; \
echo guest saw: $(cat /mnt/later.txt); umount /mnt || exit 12";

/// virtiofsd serving `share` on `socket`, sandboxed in its own namespaces, without caching
/// (host changes are seen at once); killed by PID when dropped. Waits for its socket.
fn start_virtiofsd(share: &Path, socket: &Path) -> Background {
    let mut cmd = Command::new(VIRTIOFSD);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .args(["-o", &format!("source={}", share.display())])
        .args(["-o", "cache=none", "-o", "sandbox=namespace"]);
    let server = Background::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn vmm(args: &[&str], guest: &str) -> Background {
    let mut cmd = Command::new(repo_root().join("target/release/vpod-vmm"));
    cmd.args([
        "--kernel",
        "build/vmlinux",
        "--initrd",
        "build/test-initrd.img",
        "--memory",
        "256",
    ])
    .args(args)
    .args(["--", "sh", "-c", guest])
    .current_dir(repo_root());
    Background::spawn(&mut cmd)
}

fn wait_for_file(path: &Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.is_empty() {
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn files_both_ways_and_live_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share dir");
    std::fs::write(share.join("from-host.txt"), "written by the host\n").expect("host file");
    let socket = dir.path().join("fs.sock");
    let _virtiofsd = start_virtiofsd(&share, &socket);
    let spec = format!("socket={},tag=share", socket.display());
    let mut guest = vmm(&["--fs", &spec], GUEST_SCRIPT);
    guest.wait_for_stdout_line("guest read: written by the host", Duration::from_secs(240));
    assert_eq!(
        wait_for_file(&share.join("from-guest.txt"), Duration::from_secs(60)),
        "written by the guest\n"
    );
    // Renamed into place, so the guest never sees it half written.
    std::fs::write(dir.path().join("later.tmp"), "changed by the host\n").expect("write");
    std::fs::rename(dir.path().join("later.tmp"), share.join("later.txt")).expect("rename");
    let done = guest.wait(Duration::from_secs(180));
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert!(
        done.has_stdout_line("guest saw: changed by the host"),
        "{}",
        done.explain()
    );
}

/// `field` of /proc/PID/status or smaps_rollup, in KiB.
fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The resident KiB of `pid` and its descendants (virtiofsd's sandbox forks).
fn tree_rss_kib(pid: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    proc_kib(pid, "status", "VmRSS:")
        + children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .map(tree_rss_kib)
            .sum::<u64>()
}

/// Memory figures of an idle guest, in KiB.
struct Idle {
    rss: u64,
    shmem: u64,
    shmem_in_huge_pages: u64,
    /// 2 MiB pages the guest's memory holds or has reserved in the hugetlb pool.
    hugetlb_pages: u64,
    /// The file server's processes, when there is one.
    server_rss: u64,
}

fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The VMM's memory once its guest is idle, with `args`, and that of the file server
/// `server` at the same moment.
fn idle_memory(args: &[&str], server: Option<&Background>) -> Idle {
    let mut guest = vmm(args, "echo idle-now; sleep 6");
    guest.wait_for_stdout_line("idle-now", Duration::from_secs(240));
    std::thread::sleep(Duration::from_secs(3));
    let pid = guest.pid();
    let figures = Idle {
        rss: proc_kib(pid, "status", "VmRSS:"),
        shmem: proc_kib(pid, "status", "RssShmem:"),
        shmem_in_huge_pages: proc_kib(pid, "smaps_rollup", "ShmemPmdMapped:"),
        hugetlb_pages: meminfo("HugePages_Total:") - meminfo("HugePages_Free:")
            + meminfo("HugePages_Rsvd:"),
        server_rss: server.map_or(0, |s| tree_rss_kib(s.pid())),
    };
    let done = guest.wait(Duration::from_secs(120));
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    figures
}

fn idle_memory_with_and_without_a_share() {
    let plain = idle_memory(&[], None);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("fs.sock");
    let virtiofsd = start_virtiofsd(dir.path(), &socket);
    let spec = format!("socket={},tag=share", socket.display());
    let shared = idle_memory(&["--fs", &spec], Some(&virtiofsd));
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .unwrap_or_default();
    println!(
        "idle vpod-vmm RSS, 256 MiB guest: without fs {} KiB (shmem {}); with fs {} KiB \
         (shmem {}, of it in 2 MiB pages {}); virtiofsd {} KiB; \
         shmem_enabled: {}",
        plain.rss,
        plain.shmem,
        shared.rss,
        shared.shmem,
        shared.shmem_in_huge_pages,
        shared.server_rss,
        thp.trim()
    );
    // A VM without a share keeps private memory: nothing of it is shmem.
    assert!(
        plain.shmem < 1024,
        "{} KiB of shmem without a share",
        plain.shmem
    );
    assert!(shared.shmem > 0, "guest memory with a share is shmem");
}

/// With 2 MiB pages reserved (only in the throwaway emulated host), a guest with a share
/// takes its memory from the hugetlb pool, and one without a share still does not.
fn hugetlb_backing_when_pages_are_reserved() {
    if !vpod_e2e::guest_host::inside_emulated_host() {
        println!(
            "hugetlb check skipped: it changes vm.nr_hugepages, done only in the emulated host"
        );
        return;
    }
    let set_pool = |pages: u32| {
        std::fs::write("/proc/sys/vm/nr_hugepages", format!("{pages}\n")).expect("nr_hugepages");
    };
    set_pool(160);
    let pool = meminfo("HugePages_Total:");
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("fs.sock");
    let virtiofsd = start_virtiofsd(dir.path(), &socket);
    let spec = format!("socket={},tag=share", socket.display());
    let result = std::panic::catch_unwind(|| {
        (
            idle_memory(&[], None),
            idle_memory(&["--fs", &spec], Some(&virtiofsd)),
        )
    });
    set_pool(0);
    let (plain, shared) = result.expect("both guests ran");
    println!(
        "hugetlb pool of {pool} pages: without fs {} pages held, RSS {} KiB; with fs {} pages \
         held, RSS {} KiB (shmem {})",
        plain.hugetlb_pages, plain.rss, shared.hugetlb_pages, shared.rss, shared.shmem
    );
    if pool < 128 {
        println!("hugetlb check inconclusive: the host gave only {pool} 2 MiB pages");
        return;
    }
    assert_eq!(
        plain.hugetlb_pages, 0,
        "a VM without a share stays off the pool"
    );
    assert_eq!(
        shared.hugetlb_pages, 128,
        "256 MiB of guest memory in 2 MiB pages"
    );
    assert!(shared.shmem < 1024, "hugetlb pages are not shmem");
}

/// A backend that dies under a running guest fails the device, not the VMM: the VMM says
/// why, the guest's command still ends and reports its status, and the VMM still obeys a
/// stop. (The guest's own reboot then waits forever in sync(2) for the dead share: nothing
/// completes requests the backend took, see the module's notes.)
fn a_backend_killed_under_the_guest_fails_the_device_not_the_vmm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("fs.sock");
    let virtiofsd = start_virtiofsd(dir.path(), &socket);
    let spec = format!("socket={},tag=share", socket.display());
    let mut guest = vmm(
        &["--fs", &spec],
        "mkdir -p /mnt; mount -t virtiofs share /mnt || exit 10; echo mounted; sleep 5; exit 3",
    );
    guest.wait_for_stdout_line("mounted", Duration::from_secs(240));
    drop(virtiofsd);
    guest.wait_for_stdout_line("vpod-test-init: exit=3", Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    guest.signal(Signal::TERM);
    let done = guest.wait(Duration::from_secs(30));
    assert!(
        matches!(done.code(), Some(3) | Some(143)),
        "the guest's status, or a stop: {}",
        done.explain()
    );
    assert!(
        done.has_stderr_line(
            "vpod-vmm: fs \"share\": device failed: the backend closed its socket"
        ),
        "{}",
        done.explain()
    );
}

/// No backend on the socket, or a bad tag: the VMM refuses to start, with the reason.
fn missing_backends_and_bad_tags_are_refused_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let absent = format!(
        "socket={},tag=share",
        dir.path().join("none.sock").display()
    );
    let long_tag = format!("socket=/s,tag={}", "t".repeat(37));
    for (spec, why) in [
        (absent.as_str(), "cannot connect to the vhost-user socket"),
        ("socket=/s,tag=", "the tag is empty"),
        (long_tag.as_str(), "the tag is longer than 36 bytes"),
    ] {
        let done = vmm(&["--fs", spec], "true").wait(Duration::from_secs(60));
        assert_eq!(done.code(), Some(125), "{}", done.explain());
        assert!(done.stderr_text().contains(why), "{}", done.explain());
    }
}

#[test]
fn linux_guest_mounts_a_virtiofs_share_reads_writes_and_sees_host_changes() {
    in_guest_host(LIMIT, || {
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/test-initrd.img");
        assert!(
            Path::new(VIRTIOFSD).exists(),
            "{VIRTIOFSD} is missing (apt install qemu-system-common)"
        );
        Checks::new()
            .check(
                "files_both_ways_and_live_changes",
                files_both_ways_and_live_changes,
            )
            .check(
                "idle_memory_with_and_without_a_share",
                idle_memory_with_and_without_a_share,
            )
            .check(
                "hugetlb_backing_when_pages_are_reserved",
                hugetlb_backing_when_pages_are_reserved,
            )
            .check(
                "a_backend_killed_under_the_guest_fails_the_device_not_the_vmm",
                a_backend_killed_under_the_guest_fails_the_device_not_the_vmm,
            )
            .check(
                "missing_backends_and_bad_tags_are_refused_at_start",
                missing_backends_and_bad_tags_are_refused_at_start,
            )
            .finish();
    });
}
