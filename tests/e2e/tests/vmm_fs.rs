//! vpod-vmm's virtio-fs device (vhost-user) under the real guest driver, served by Debian's
//! virtiofsd on a temporary directory: the guest mounts the share, reads a file the host
//! wrote, writes one the host then reads, and sees a file the host adds while it runs. Then
//! the VMM's idle memory with and without a share (the cost of shared, memfd-backed guest
//! memory), printed for the record.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// The VMM's RSS once its guest is idle, with `args`.
fn idle_rss(args: &[&str]) -> (u64, u64, u64) {
    let mut guest = vmm(args, "echo idle-now; sleep 6");
    guest.wait_for_stdout_line("idle-now", Duration::from_secs(240));
    std::thread::sleep(Duration::from_secs(3));
    let pid = guest.pid();
    let figures = (
        proc_kib(pid, "status", "VmRSS:"),
        proc_kib(pid, "status", "RssShmem:"),
        proc_kib(pid, "smaps_rollup", "ShmemPmdMapped:"),
    );
    let done = guest.wait(Duration::from_secs(120));
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    figures
}

fn idle_memory_with_and_without_a_share() {
    let (plain, plain_shmem, _) = idle_rss(&[]);
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("fs.sock");
    let _virtiofsd = start_virtiofsd(dir.path(), &socket);
    let spec = format!("socket={},tag=share", socket.display());
    let (shared, shared_shmem, pmd) = idle_rss(&["--fs", &spec]);
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
        .unwrap_or_default();
    println!(
        "idle vpod-vmm RSS, 256 MiB guest: without fs {plain} KiB (shmem {plain_shmem}); \
         with fs {shared} KiB (shmem {shared_shmem}, in 2 MiB pages {pmd}); \
         shmem_enabled: {}",
        thp.trim()
    );
    // A VM without a share keeps private memory: nothing of it is shmem.
    assert!(
        plain_shmem < 1024,
        "{plain_shmem} KiB of shmem without a share"
    );
    assert!(shared_shmem > 0, "guest memory with a share is shmem");
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
            .finish();
    });
}
