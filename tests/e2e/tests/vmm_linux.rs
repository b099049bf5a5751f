//! vpod-vmm boots the real kernel with the busybox test initramfs (no vpod-init needed):
//! SMP and memory sizes are reported right (including above the 4 GiB hole), virtio-blk
//! disks carry their serials and honour read-only, the kernel has what containers ask of
//! its network (bridges, veth, netfilter), a reboot ends the VMM with 0 and a guest panic
//! with 120. Every boot shares one emulated host where one is needed.

use std::process::Command;
use std::time::Duration;

use vpod_e2e::{built, in_guest_host, repo_root, run_with_limit, Checks, Finished};

const LIMIT: Duration = Duration::from_secs(600);

/// `vpod-vmm` on build/vmlinux with the test initramfs, and `args`.
fn boot(args: &[&str]) -> Finished {
    let mut cmd = Command::new(repo_root().join("target/release/vpod-vmm"));
    cmd.args([
        "--kernel",
        "build/vmlinux",
        "--initrd",
        "build/test-initrd.img",
    ])
    .args(args)
    .current_dir(repo_root());
    run_with_limit(&mut cmd, Duration::from_secs(300))
}

/// The test init's `vpod-test-init: ready ...` line of a boot that ended in a reboot.
fn ready_line(done: &Finished) -> String {
    assert_eq!(
        done.code(),
        Some(0),
        "a reboot ends the VMM with 0\n{}",
        done.explain()
    );
    done.stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("vpod-test-init: ready"))
        .unwrap_or_else(|| panic!("the boot never reached init\n{}", done.explain()))
}

fn mem_kib(line: &str) -> u64 {
    line.split("mem_kib=")
        .nth(1)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no mem_kib in {line:?}"))
}

#[test]
fn vmm_boots_linux_with_smp_memory_disks_reboot_and_panic() {
    in_guest_host(LIMIT, || {
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/test-initrd.img");
        Checks::new()
            .check("two_vcpus_are_online", || {
                let line = ready_line(&boot(&["--vcpus", "2", "--memory", "512"]));
                assert!(line.contains("cpus=2 online=0-1 "), "{line}");
            })
            .check("memory_sizes_are_reported_right_above_4_gib_too", || {
                for mib in [64u64, 2048, 4608] {
                    let kib = mem_kib(&ready_line(&boot(&["--memory", &mib.to_string()])));
                    assert!(
                        kib <= mib * 1024 && kib >= mib * 1024 * 3 / 5,
                        "{mib} MiB guest reports {kib} KiB"
                    );
                }
            })
            .check("disks_carry_serials_and_honour_read_only", disks)
            .check("the_kernel_has_bridges_veth_and_netfilter", || {
                // What containers ask of the pod's kernel: `brctl addbr` (critest's
                // capability spec), veth pairs, and iptables/nftables with NAT.
                let done = boot(&[
                    "--",
                    "sh",
                    "-c",
                    "brctl addbr br0 && ip link add v0 type veth peer name v1 \
                     && ip link set v0 master br0 && test -e /proc/net/ip_tables_names \
                     && test -e /proc/net/ip6_tables_names \
                     && test -d /proc/sys/net/netfilter && echo kernel-net-ok",
                ]);
                assert!(
                    done.stdout_text().contains("kernel-net-ok"),
                    "{}",
                    done.explain()
                );
            })
            .check("a_guest_panic_ends_the_vmm_with_120", || {
                let done = boot(&[
                    "--console",
                    "off",
                    "--cmdline",
                    "console=ttyS0 quiet reboot=k panic=-1 rdinit=/bin/busybox",
                ]);
                assert_eq!(done.code(), Some(120), "{}", done.explain());
            })
            .finish();
    });
}

fn disks() {
    let dir = tempfile::tempdir().expect("a disk directory");
    let rw = dir.path().join("rw.img");
    let ro = dir.path().join("ro.img");
    std::fs::write(&rw, vec![0u8; 1 << 20]).expect("rw disk");
    std::fs::write(&ro, vec![b'r'; 1 << 20]).expect("ro disk");
    let done = boot(&[
        "--disk",
        &format!("{},serial=layer-0", rw.display()),
        "--disk",
        &format!("{},ro,serial=sha256-abc", ro.display()),
        "--",
        "sh",
        "-c",
        "echo serials $(cat /sys/block/vda/serial) $(cat /sys/block/vdb/serial) ro=$(cat /sys/block/vdb/ro); \
         echo from-guest > /dev/vda; sync; echo x > /dev/vdb || echo ro-refused; head -c 4 /dev/vdb; echo",
    ]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    let out = done.stdout_text();
    assert!(
        out.contains("serials layer-0 sha256-abc ro=1"),
        "{}",
        done.explain()
    );
    assert!(
        out.contains("ro-refused") && out.contains("rrrr"),
        "{}",
        done.explain()
    );
    let rw = std::fs::read(&rw).unwrap_or_default();
    assert!(
        rw.starts_with(b"from-guest\n"),
        "rw disk: {:?}",
        &rw[..rw.len().min(16)]
    );
    let ro = std::fs::read(&ro).unwrap_or_default();
    assert!(ro.iter().all(|&b| b == b'r'), "the read-only disk changed");
}
