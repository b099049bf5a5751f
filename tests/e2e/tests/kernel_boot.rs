//! The guest kernel boots under QEMU microvm with KVM (inside the emulated KVM host where
//! this machine's KVM cannot boot Linux), reaches the test initramfs' init, and sees every
//! vCPU it was given. Our own VMM takes QEMU's place in its own tests.

use std::process::Command;
use std::time::Duration;

use vpod_e2e::{built, in_guest_host, run_with_limit, Checks};

/// The init's `vpod-test-init: ready ...` line of a QEMU boot with `vcpus`.
fn boot_with_qemu(vcpus: u32) -> String {
    let kernel = built("build/vmlinux");
    let initrd = built("build/test-initrd.img");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-M", "microvm,acpi=off", "-enable-kvm", "-cpu", "host"])
        .args(["-smp", &vcpus.to_string(), "-m", "256"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio", "-kernel"])
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet reboot=t panic=-1"]);
    let done = run_with_limit(&mut cmd, Duration::from_secs(300));
    assert_eq!(done.code(), Some(0), "QEMU failed\n{}", done.explain());
    done.stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("vpod-test-init: ready"))
        .unwrap_or_else(|| panic!("the guest never reached init\n{}", done.explain()))
}

#[test]
fn kernel_boots_to_init_with_one_and_two_vcpus() {
    in_guest_host(Duration::from_secs(600), || {
        Checks::new()
            .check("kernel_boots_to_init_with_one_vcpu", || {
                let line = boot_with_qemu(1);
                assert!(line.contains("cpus=1 online=0 "), "{line}");
            })
            .check("kernel_brings_two_vcpus_online", || {
                let line = boot_with_qemu(2);
                assert!(line.contains("cpus=2 online=0-1 "), "{line}");
            })
            .finish();
    });
}
