//! vpod-vmm boots the real kernel with vpod-init: the command's output and exit status come
//! back, every vCPU and the memory asked for are there, disks behave as configured, and a
//! guest panic or reboot ends the VMM with its documented code. Several VMM runs share one
//! emulated host where one is needed, to keep the suite's time down.

use std::path::PathBuf;
use std::time::Duration;
use vpod_e2e::{built, guest_command, repo_root, run_with_limit, Finished};

const LIMIT: Duration = Duration::from_secs(600);

fn vmm() -> String {
    built("target/release/vpod-vmm");
    built("build/vmlinux");
    built("build/initrd.img");
    "target/release/vpod-vmm".to_string()
}

fn run_vmm(args: &[&str]) -> Finished {
    let mut cmd = guest_command(vmm(), args);
    cmd.current_dir(repo_root());
    run_with_limit(&mut cmd, LIMIT)
}

/// Runs a shell script where guests boot (one emulated host for all of it, if needed).
fn run_script(script: &str) -> Finished {
    vmm();
    let mut cmd = guest_command("sh", ["-c", script]);
    cmd.current_dir(repo_root());
    run_with_limit(&mut cmd, LIMIT)
}

fn explain(done: &Finished) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        done.code(),
        done.stdout_text(),
        done.stderr_text()
    )
}

#[test]
fn command_output_and_exit_status_come_back() {
    let done = run_vmm(&[
        "--timings",
        "--",
        "sh",
        "-c",
        "echo hi from $(hostname); exit 7",
    ]);
    assert_eq!(done.code(), Some(7), "{}", explain(&done));
    assert!(
        done.stdout_text().lines().any(|l| l == "hi from vpod"),
        "{}",
        explain(&done)
    );
    let timings = done.stderr_text();
    let init_ms: f64 = timings
        .lines()
        .find_map(|l| l.strip_prefix("vpod-vmm: timings init_ms="))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no init_ms timing: {}", explain(&done)));
    assert!(init_ms > 0.0, "{}", explain(&done));
    let init_at_ns: u64 = timings
        .split_whitespace()
        .find_map(|w| w.strip_prefix("init_at_ns="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no init_at_ns timing: {}", explain(&done)));
    // A CLOCK_MONOTONIC reading at least init_ms after boot of the (emulated) host.
    assert!(init_at_ns as f64 >= init_ms * 1e6, "{}", explain(&done));
}

#[test]
fn a_signal_death_is_reported_as_128_plus_the_signal() {
    let done = run_vmm(&["--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(done.code(), Some(143), "{}", explain(&done));
}

#[test]
fn one_two_and_four_vcpus_are_all_online() {
    let script = "for n in 1 2 4; do \
        echo \"vcpus=$n: $(target/release/vpod-vmm --vcpus $n -- cat /sys/devices/system/cpu/online)\"; done";
    let done = run_script(script);
    let out = done.stdout_text();
    for want in ["vcpus=1: 0", "vcpus=2: 0-1", "vcpus=4: 0-3"] {
        assert!(
            out.lines().any(|l| l == want),
            "missing {want:?}\n{}",
            explain(&done)
        );
    }
}

#[test]
fn memory_from_64_mib_to_2_gib_is_reported_right() {
    let script = "for m in 64 512 2048; do \
        echo \"memory=$m: $(target/release/vpod-vmm --memory $m -- sed -n 's/^MemTotal: *//p' /proc/meminfo)\"; done";
    let done = run_script(script);
    let out = done.stdout_text();
    for mib in [64u64, 512, 2048] {
        let prefix = format!("memory={mib}: ");
        let line = out
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no line for {mib}\n{}", explain(&done)));
        let kib: u64 = line[prefix.len()..]
            .trim_end_matches(" kB")
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"));
        // MemTotal is RAM less what the kernel reserves for itself: most of it, never more.
        assert!(
            kib <= mib * 1024 && kib >= mib * 1024 * 3 / 5,
            "{mib} MiB guest reports {kib} KiB"
        );
    }
}

struct Disks {
    dir: PathBuf,
}

impl Drop for Disks {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn disks_read_write_read_only_and_serial() {
    let dir = repo_root().join(format!("target/e2e-disks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("disk dir");
    let disks = Disks { dir };
    let rw = disks.dir.join("rw.img");
    let ro = disks.dir.join("ro.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).expect("rw disk");
    std::fs::write(&ro, vec![b'r'; 1 << 20]).expect("ro disk");
    let rw_arg = format!("{},serial=rw-disk-01", rw.display());
    let ro_arg = format!("{},ro,serial=sha256-abc", ro.display());
    let guest = "for d in /sys/block/vd*; do echo disk $(basename $d) $(cat $d/serial) $(cat $d/ro) $(cat $d/size); done; \
        echo written-by-guest | dd of=/dev/vda bs=512 conv=sync,fsync 2>/dev/null && echo rw-ok; \
        echo nope | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null && echo ro-wrote || echo ro-refused; \
        head -c 4 /dev/vdb; echo";
    let done = run_vmm(&[
        "--disk", &rw_arg, "--disk", &ro_arg, "--", "sh", "-c", guest,
    ]);
    assert_eq!(done.code(), Some(0), "{}", explain(&done));
    let out = done.stdout_text();
    assert!(
        out.contains("disk vda rw-disk-01 0 2048"),
        "{}",
        explain(&done)
    );
    assert!(
        out.contains("disk vdb sha256-abc 1 2048"),
        "{}",
        explain(&done)
    );
    assert!(
        out.contains("rw-ok") && out.contains("ro-refused") && out.contains("rrrr"),
        "{}",
        explain(&done)
    );
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

#[test]
fn guest_panic_and_guest_reboot_have_their_exit_codes() {
    // rdinit=/bin/false: init exits at once, and the kernel panics ("Attempted to kill init").
    let script = "target/release/vpod-vmm --cmdline 'console=ttyS0 quiet reboot=k panic=-1 rdinit=/bin/false'; echo panic=$?; \
        target/release/vpod-vmm -- reboot -f; echo reboot=$?";
    let done = run_script(script);
    let out = done.stdout_text();
    assert!(out.lines().any(|l| l == "panic=120"), "{}", explain(&done));
    assert!(out.lines().any(|l| l == "reboot=0"), "{}", explain(&done));
}

#[test]
fn bzimage_kernel_boots_through_the_linux_boot_protocol() {
    // Debian's kernel (the emulated host's, cached by tests/kvm-host/prepare) is a bzImage
    // without a PVH note: it takes the 64-bit boot protocol path (zero page, page tables).
    let prepared = std::process::Command::new(repo_root().join("tests/kvm-host/prepare"))
        .output()
        .expect("tests/kvm-host/prepare runs");
    assert!(
        prepared.status.success(),
        "prepare failed: {}",
        String::from_utf8_lossy(&prepared.stderr)
    );
    let bzimage = PathBuf::from(String::from_utf8_lossy(&prepared.stdout).trim()).join("vmlinuz");
    let initrd = built("build/test-initrd.img");
    let done = run_vmm(&[
        "--kernel",
        bzimage.to_str().expect("utf-8 path"),
        "--initrd",
        initrd.to_str().expect("utf-8 path"),
        "--vcpus",
        "2",
        "--memory",
        "512",
    ]);
    assert_eq!(done.code(), Some(0), "{}", explain(&done));
    assert!(
        done.stdout_text()
            .lines()
            .any(|l| l.starts_with("vpod-test-init: ready cpus=2 online=0-1 ")),
        "{}",
        explain(&done)
    );
}
