//! The seccomp filters on real KVM with the stub guests: every thread of a running VMM is
//! filtered (and `--no-seccomp` leaves it unfiltered), every control request works under
//! the filters, and a guest-triggered call outside the lists (the `seccomp-probe` build,
//! which `make` builds into target/seccomp-probe) kills the VMM by SIGSYS with the line a
//! launcher reads back. Every VMM is killed by PID if it outlives its time limit.

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use vpod_proto::vmm::{AttachDisk, DiskSource, VmState, VmmClient};
use vpod_vmm::seccomp::seccomp_kill_from_log;

mod support;
use support::{built, kvm_available, wait_for};

const VMM: &str = env!("CARGO_BIN_EXE_vpod-vmm");
/// SYS_reboot on x86_64: the call the probe build makes.
const SYS_REBOOT: u64 = 169;

/// A temporary directory and a VMM running in it, both gone when dropped.
struct Vm {
    dir: PathBuf,
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh temporary directory for the VM `name`.
fn vm_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vpod-seccomp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

impl Vm {
    /// Starts `vmm` on `kernel` with `args` in `dir`, stdout and stderr to files there.
    fn start(dir: PathBuf, vmm: &Path, kernel: &Path, args: &[&str]) -> Vm {
        let stdout = File::create(dir.join("stdout")).expect("stdout file");
        let stderr = File::create(dir.join("stderr")).expect("stderr file");
        let mut command = Command::new(vmm);
        command
            .arg("--kernel")
            .arg(kernel)
            .args(["--initrd", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: setrlimit is async-signal-safe and touches only the child: no core file
        // for the VMM the probe kills.
        unsafe {
            command.pre_exec(|| {
                let none = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &none);
                Ok(())
            });
        }
        let child = command.spawn().expect("the VMM starts");
        Vm { dir, child }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    /// Waits for the VMM to end, killing it and failing the test past `limit`.
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status;
            }
            assert!(
                started.elapsed() < limit,
                "the VMM did not end within {limit:?}; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Each thread's `/proc/PID/task/TID/status`, while the VMM runs, but for KVM's own
    /// kernel workers (`kvm-nx-lpage-recovery`, listed among the process's tasks on recent
    /// kernels), which never run the VMM's code.
    fn thread_statuses(&self) -> Vec<String> {
        let tasks = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(&tasks)
            .map(|entries| {
                entries
                    .filter_map(|entry| {
                        std::fs::read_to_string(entry.ok()?.path().join("status")).ok()
                    })
                    .filter(|status| !status.starts_with("Name:\tkvm-"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until the VMM runs a vCPU thread and every thread shows `want`, or fails.
    fn wait_for_threads(&mut self, want: &str) -> Vec<String> {
        let started = Instant::now();
        loop {
            let statuses = self.thread_statuses();
            let has_vcpu = statuses.iter().any(|s| s.contains("Name:\tvcpu0"));
            if has_vcpu && statuses.iter().all(|s| s.contains(want)) {
                return statuses;
            }
            if let Some(status) = self.child.try_wait().expect("wait works") {
                panic!("the VMM ended ({status}); stderr: {}", self.stderr());
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "not every thread shows {want:?}: {statuses:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn every_thread_is_filtered_and_every_control_request_works_under_the_filters() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub-idle.elf");
    let dir = vm_dir("all");
    let (api_path, vsock_path) = (dir.join("api.sock"), dir.join("v.sock"));
    let mut vm = Vm::start(
        dir,
        Path::new(VMM),
        &stub,
        &[
            "--vcpus",
            "2",
            "--disk-slots",
            "2",
            "--balloon",
            "--vsock",
            vsock_path.to_str().expect("UTF-8 path"),
            "--api",
            api_path.to_str().expect("UTF-8 path"),
        ],
    );
    wait_for(&api_path);
    let statuses = vm.wait_for_threads("Seccomp:\t2");
    assert!(
        statuses.iter().all(|s| s.contains("NoNewPrivs:\t1")),
        "{statuses:#?}"
    );
    assert!(
        statuses
            .iter()
            .filter(|s| s.contains("Name:\tvcpu"))
            .count()
            == 2,
        "{statuses:#?}"
    );

    let api = VmmClient::new(&api_path);
    assert_eq!(api.state().expect("state").state, VmState::Running);
    api.boot_time().expect("boot_time");
    assert_eq!(api.metrics().expect("metrics").block.len(), 2);

    let image = vm.dir.join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("disk image");
    let by_path = api
        .attach_disk(AttachDisk {
            slot: Some(0),
            source: DiskSource::Path(image.clone()),
            read_only: true,
            serial: "by-path".into(),
        })
        .expect("attach by path");
    assert_eq!((by_path.slot, by_path.capacity_bytes), (0, 1 << 20));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .expect("open the image");
    let by_fd = api
        .attach_disk_fd(file.as_fd(), Some(1), false, "by-fd")
        .expect("attach by descriptor");
    assert_eq!((by_fd.slot, by_fd.read_only), (1, false));
    let metrics = api.metrics().expect("metrics");
    assert!(
        metrics.block.iter().all(|slot| slot.attached),
        "{metrics:?}"
    );
    api.detach_slot(0).expect("detach slot 0");
    api.detach_slot(1).expect("detach slot 1");

    api.balloon().expect("balloon");
    api.set_balloon(16).expect("set_balloon");

    // The vsock socket accepts a host connection (the idle guest never answers it).
    let _host = std::os::unix::net::UnixStream::connect(&vsock_path).expect("vsock connect");

    assert!(
        vm.wait_for_threads("Seccomp:\t2").len() >= 3,
        "the main thread and both vCPU threads still run"
    );
    api.stop(Duration::ZERO).expect("stop");
    let status = vm.wait(Duration::from_secs(20));
    let stderr = vm.stderr();
    assert_eq!(status.code(), Some(143), "{status}; stderr: {stderr}");
    assert_eq!(seccomp_kill_from_log(&stderr), None, "{stderr}");
    assert!(!api_path.exists(), "the control socket is removed");
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let stub = built("build/stub-idle.elf");
    let mut vm = Vm::start(
        vm_dir("off"),
        Path::new(VMM),
        &stub,
        &["--no-seccomp", "--console", "off"],
    );
    vm.wait_for_threads("Seccomp:\t0");
    // SAFETY: kill(2) on our own child's PID, which has not been reaped yet.
    unsafe {
        libc::kill(vm.child.id() as i32, libc::SIGTERM);
    }
    assert_eq!(vm.wait(Duration::from_secs(20)).code(), Some(143));
}

#[test]
fn a_guest_triggered_call_outside_the_lists_kills_the_vmm_by_sigsys_and_says_which() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let probe_vmm = built("target/seccomp-probe/release/vpod-vmm");
    let stub = built("build/stub-seccomp-probe.elf");
    let mut vm = Vm::start(vm_dir("probe"), &probe_vmm, &stub, &[]);
    let status = vm.wait(Duration::from_secs(20));
    let stderr = vm.stderr();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status}; stderr: {stderr}"
    );
    assert!(vm.stdout().contains("vpod-stub: ready"), "{}", vm.stdout());
    assert!(
        stderr.contains("vpod-vmm: killed by seccomp: syscall 169 in thread vcpu\n"),
        "{stderr:?}"
    );
    assert_eq!(
        seccomp_kill_from_log(&stderr),
        Some((SYS_REBOOT, "vcpu".to_string()))
    );
}
