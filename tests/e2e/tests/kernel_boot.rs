//! The guest kernel boots under QEMU microvm with KVM (inside the emulated KVM host where
//! this machine's KVM cannot boot Linux), reaches the test initramfs' init, and sees every
//! vCPU it was given. Our own VMM takes QEMU's place in its own tests.

use std::time::Duration;
use vpod_e2e::{built, guest_command, run_with_limit};

fn boot_with_qemu(vcpus: u32) -> String {
    let kernel = built("build/vmlinux");
    let initrd = built("build/test-initrd.img");
    let smp = vcpus.to_string();
    let mut cmd = guest_command(
        "qemu-system-x86_64",
        [
            "-M",
            "microvm,acpi=off",
            "-enable-kvm",
            "-cpu",
            "host",
            "-smp",
            &smp,
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
            kernel.to_str().expect("utf-8 path"),
            "-initrd",
            initrd.to_str().expect("utf-8 path"),
            "-append",
            "console=ttyS0 quiet reboot=t panic=-1",
        ],
    );
    let done = run_with_limit(&mut cmd, Duration::from_secs(300));
    let stdout = done.stdout_text();
    assert_eq!(
        done.code(),
        Some(0),
        "QEMU failed\n--- stdout\n{stdout}\n--- stderr\n{}",
        done.stderr_text()
    );
    stdout
}

fn marker(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("vpod-test-init: ready"))
        .unwrap_or_else(|| panic!("the guest never reached init; console:\n{stdout}"))
}

#[test]
fn kernel_boots_to_init_with_one_vcpu() {
    let stdout = boot_with_qemu(1);
    let line = marker(&stdout);
    assert!(line.contains("cpus=1 online=0 "), "{line}");
}

#[test]
fn kernel_brings_two_vcpus_online() {
    let stdout = boot_with_qemu(2);
    let line = marker(&stdout);
    assert!(line.contains("cpus=2 online=0-1 "), "{line}");
}
