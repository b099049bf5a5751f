//! vpod-vmm boots the real kernel with vpod-init: the command's output and exit status come
//! back, every vCPU and the memory asked for are there, disks behave as configured, a guest
//! panic or reboot ends the VMM with its documented code, and a bzImage boots through the
//! Linux boot protocol. Every VMM run here shares one emulated host (where one is needed),
//! to keep the suite's time down.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vpod_e2e::{built, repo_root, run_with_limit, Checks, Finished, GuestHost};

const LIMIT: Duration = Duration::from_secs(900);

/// `vpod-vmm ARGS...` run to completion in the checkout (where it finds build/vmlinux and
/// build/initrd.img).
fn vmm(args: &[&str]) -> Finished {
    let mut cmd = Command::new(repo_root().join("target/release/vpod-vmm"));
    cmd.args(args).current_dir(repo_root());
    run_with_limit(&mut cmd, Duration::from_secs(300))
}

#[test]
fn vpod_vmm_runs_vpod_init_with_its_vcpus_memory_disks_and_exit_codes() {
    let mut host = GuestHost::new(LIMIT);
    // apt-cache, which finds the cached kernel, takes seconds natively and half a minute in
    // the emulated host.
    let kvm_host_cache = host.prepare_outside("VPOD_E2E_KVM_HOST_CACHE", kvm_host_cache);
    host.run(|| {
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/initrd.img");
        Checks::new()
            .check(
                "command_output_and_exit_status_come_back",
                output_and_status,
            )
            .check("a_signal_death_is_reported_as_128_plus_the_signal", || {
                let done = vmm(&["--", "sh", "-c", "kill -TERM $$"]);
                assert_eq!(done.code(), Some(143), "{}", done.explain());
            })
            .check("one_two_and_four_vcpus_are_all_online", vcpus)
            .check("memory_from_64_mib_to_2_gib_is_reported_right", memory)
            .check("disks_read_write_read_only_and_serial", disks)
            .check("guest_panic_and_guest_reboot_have_their_exit_codes", || {
                // rdinit=/bin/false: init exits at once, and the kernel panics
                // ("Attempted to kill init").
                let panic = vmm(&[
                    "--cmdline",
                    "console=ttyS0 quiet reboot=k panic=-1 rdinit=/bin/false",
                ]);
                assert_eq!(panic.code(), Some(120), "{}", panic.explain());
                let reboot = vmm(&["--", "reboot", "-f"]);
                assert_eq!(reboot.code(), Some(0), "{}", reboot.explain());
            })
            .check(
                "bzimage_kernel_boots_through_the_linux_boot_protocol",
                || bzimage(Path::new(&kvm_host_cache)),
            )
            .finish();
    });
}

fn output_and_status() {
    let done = vmm(&[
        "--timings",
        "--",
        "sh",
        "-c",
        "echo hi from $(hostname); exit 7",
    ]);
    assert_eq!(done.code(), Some(7), "{}", done.explain());
    assert!(done.has_stdout_line("hi from vpod"), "{}", done.explain());
    let timings = done.stderr_text();
    let init_ms: f64 = timings
        .lines()
        .find_map(|l| l.strip_prefix("vpod-vmm: timings init_ms="))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no init_ms timing: {}", done.explain()));
    assert!(init_ms > 0.0, "{}", done.explain());
    let init_at_ns: u64 = timings
        .split_whitespace()
        .find_map(|w| w.strip_prefix("init_at_ns="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no init_at_ns timing: {}", done.explain()));
    // A CLOCK_MONOTONIC reading at least init_ms after boot of the (emulated) host.
    assert!(init_at_ns as f64 >= init_ms * 1e6, "{}", done.explain());
}

fn vcpus() {
    for (vcpus, online) in [("1", "0"), ("2", "0-1"), ("4", "0-3")] {
        let done = vmm(&[
            "--vcpus",
            vcpus,
            "--",
            "cat",
            "/sys/devices/system/cpu/online",
        ]);
        assert_eq!(done.code(), Some(0), "{}", done.explain());
        // The command's line, then the kernel's "reboot: Restarting system".
        assert_eq!(
            done.stdout_lines().first().map(String::as_str),
            Some(online),
            "{vcpus} vCPUs\n{}",
            done.explain()
        );
    }
}

fn memory() {
    for mib in [64u64, 512, 2048] {
        let done = vmm(&[
            "--memory",
            &mib.to_string(),
            "--",
            "sed",
            "-n",
            "s/^MemTotal: *//p",
            "/proc/meminfo",
        ]);
        assert_eq!(done.code(), Some(0), "{}", done.explain());
        let kib: u64 = done
            .stdout_lines()
            .first()
            .and_then(|l| l.trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("{mib} MiB: {}", done.explain()));
        // MemTotal is RAM less what the kernel reserves for itself: most of it, never more.
        assert!(
            kib <= mib * 1024 && kib >= mib * 1024 * 3 / 5,
            "{mib} MiB guest reports {kib} KiB"
        );
    }
}

fn disks() {
    let dir = tempfile::tempdir().expect("a disk directory");
    let rw = dir.path().join("rw.img");
    let ro = dir.path().join("ro.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).expect("rw disk");
    std::fs::write(&ro, vec![b'r'; 1 << 20]).expect("ro disk");
    let rw_arg = format!("{},serial=rw-disk-01", rw.display());
    let ro_arg = format!("{},ro,serial=sha256-abc", ro.display());
    let guest = "for d in /sys/block/vd*; do echo disk $(basename $d) $(cat $d/serial) $(cat $d/ro) $(cat $d/size); done; \
        echo written-by-guest | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null && echo rw-ok; \
        echo nope | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null && echo ro-wrote || echo ro-refused; \
        head -c 4 /dev/vdb; echo";
    let done = vmm(&[
        "--disk", &rw_arg, "--disk", &ro_arg, "--", "sh", "-c", guest,
    ]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    // name, serial, read-only flag, size in sectors
    for line in [
        "disk vda rw-disk-01 0 2048",
        "disk vdb sha256-abc 1 2048",
        "rw-ok",
        "ro-refused",
        "rrrr",
    ] {
        assert!(done.has_stdout_line(line), "{line:?}\n{}", done.explain());
    }
    let rw_bytes = std::fs::read(&rw).expect("rw disk readable");
    assert!(
        rw_bytes.starts_with(b"written-by-guest\n"),
        "host file: {:?}",
        &rw_bytes[..32]
    );
    assert!(std::fs::read(&ro)
        .expect("ro disk")
        .iter()
        .all(|&b| b == b'r'));
}

/// Where tests/kvm-host/prepare caches the emulated host's kernel and initramfs.
fn kvm_host_cache() -> String {
    let prepared = Command::new(repo_root().join("tests/kvm-host/prepare"))
        .output()
        .expect("tests/kvm-host/prepare runs");
    assert!(
        prepared.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    String::from_utf8_lossy(&prepared.stdout).trim().to_string()
}

fn bzimage(kvm_host_cache: &Path) {
    // Debian's kernel (the emulated host's, cached by tests/kvm-host/prepare) is a bzImage
    // without a PVH note: it takes the 64-bit boot protocol path (zero page, page tables).
    let bzimage = kvm_host_cache.join("vmlinuz");
    let initrd = built("build/test-initrd.img");
    let done = vmm(&[
        "--kernel",
        bzimage.to_str().expect("utf-8 path"),
        "--initrd",
        initrd.to_str().expect("utf-8 path"),
        "--vcpus",
        "2",
        "--memory",
        "512",
    ]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert!(
        done.stdout_lines()
            .iter()
            .any(|l| l.starts_with("vpod-test-init: ready cpus=2 online=0-1 ")),
        "{}",
        done.explain()
    );
}
