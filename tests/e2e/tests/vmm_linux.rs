//! vpod-vmm boots the real kernel with the busybox test initramfs (no vpod-init needed):
//! SMP and memory sizes are reported right (including above the 4 GiB hole), virtio-blk
//! disks carry their serials and honour read-only, a reboot ends the VMM with 0 and a guest
//! panic with 120. All boots run in one shell script, so where an emulated KVM host is
//! needed it is started once.

use std::time::Duration;
use vpod_e2e::{built, guest_command, repo_root, run_with_limit, Finished};

const LIMIT: Duration = Duration::from_secs(600);

fn explain(done: &Finished) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        done.code(),
        done.stdout_text(),
        done.stderr_text()
    )
}

/// The `vpod-test-init: ready` line of the boot labelled `label` in the script's output.
fn ready_line<'a>(out: &'a str, label: &str) -> &'a str {
    let start = out
        .find(&format!("=== {label}\n"))
        .unwrap_or_else(|| panic!("no section {label}:\n{out}"));
    out[start..]
        .lines()
        .find(|l| l.starts_with("vpod-test-init: ready"))
        .unwrap_or_else(|| panic!("boot {label} never reached init:\n{out}"))
}

fn mem_kib(line: &str) -> u64 {
    line.split("mem_kib=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no mem_kib in {line:?}"))
}

#[test]
fn vmm_boots_linux_with_smp_memory_disks_reboot_and_panic() {
    built("target/release/vpod-vmm");
    built("build/vmlinux");
    built("build/test-initrd.img");
    let dir = format!("target/vmm-linux-e2e-{}", std::process::id());
    let root = repo_root();
    std::fs::create_dir_all(root.join(&dir)).expect("scratch dir");
    std::fs::write(root.join(&dir).join("rw.img"), vec![0u8; 1 << 20]).expect("rw disk");
    std::fs::write(root.join(&dir).join("ro.img"), vec![b'r'; 1 << 20]).expect("ro disk");

    let script = format!(
        r#"
V="target/release/vpod-vmm --kernel build/vmlinux --initrd build/test-initrd.img"
echo "=== smp2"; $V --vcpus 2 --memory 512; echo "rc=$?"
echo "=== mem64"; $V --memory 64; echo "rc=$?"
echo "=== mem2048"; $V --memory 2048; echo "rc=$?"
echo "=== mem4608"; $V --memory 4608; echo "rc=$?"
echo "=== disks"; $V --disk {dir}/rw.img,serial=layer-0 --disk {dir}/ro.img,ro,serial=sha256-abc -- \
  sh -c 'echo serials $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial) ro=$(cat /sys/block/vdb/ro); \
         echo from-guest > /dev/vda; sync; echo x > /dev/vdb || echo ro-refused; head -c 4 /dev/vdb; echo'
echo "disks-rc=$?"
echo "=== panic"; $V --console off --cmdline 'console=ttyS0 quiet reboot=k panic=-1 rdinit=/bin/busybox'; echo "panic-rc=$?"
"#
    );
    let mut cmd = guest_command("sh", ["-c", script.as_str()]);
    cmd.current_dir(&root);
    let done = run_with_limit(&mut cmd, LIMIT);
    let rw = std::fs::read(root.join(&dir).join("rw.img")).unwrap_or_default();
    let ro = std::fs::read(root.join(&dir).join("ro.img")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(root.join(&dir));
    let out = done.stdout_text();

    assert!(
        ready_line(&out, "smp2").contains("cpus=2 online=0-1 "),
        "{}",
        explain(&done)
    );
    for (label, mib) in [("mem64", 64u64), ("mem2048", 2048), ("mem4608", 4608)] {
        let kib = mem_kib(ready_line(&out, label));
        assert!(
            kib <= mib * 1024 && kib >= mib * 1024 * 3 / 5,
            "{mib} MiB guest reports {kib} KiB\n{}",
            explain(&done)
        );
    }
    let reboots = out.lines().filter(|l| *l == "rc=0").count();
    assert_eq!(reboots, 4, "every reboot ends with 0\n{}", explain(&done));

    assert!(
        out.contains("serials layer-0 sha256-abc ro=1"),
        "{}",
        explain(&done)
    );
    assert!(
        out.contains("ro-refused") && out.contains("rrrr"),
        "{}",
        explain(&done)
    );
    assert!(out.contains("disks-rc=0"), "{}", explain(&done));
    assert!(
        rw.starts_with(b"from-guest\n"),
        "rw disk: {:?}",
        &rw[..rw.len().min(16)]
    );
    assert!(ro.iter().all(|&b| b == b'r'), "the read-only disk changed");

    assert!(out.contains("panic-rc=120"), "{}", explain(&done));
}
