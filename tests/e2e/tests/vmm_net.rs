//! vpod-vmm's virtio-net device under a real Linux guest driver: the real kernel with the
//! busybox test initramfs, a NIC on a tap that the VMM creates, all in a network namespace
//! the test makes for itself (the VMM inherits it), so nothing touches the machine's own
//! network. The guest reads its MAC from the device, pings the host's end of the tap, sends
//! 10 MiB over TCP and receives 4 MiB back (checksum and segmentation offloads, mergeable rx
//! buffers, whatever the driver negotiates).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use vpod_e2e::net::in_own_network;
use vpod_e2e::{built, in_guest_host, repo_root, run_with_limit, Finished};

const LIMIT: Duration = Duration::from_secs(600);
const SENT_BY_GUEST: usize = 160 * 65536;
const SENT_BY_HOST: usize = 4 << 20;
const GUEST_SCRIPT: &str = "sleep 2; echo guest mac $(cat /sys/class/net/eth0/address); \
echo guest features $(cat /sys/class/net/eth0/device/features); \
ip addr add 10.9.0.2/24 dev eth0; ip link set eth0 up; sleep 2; ping -c 3 -W 5 10.9.0.1; \
dd if=/dev/zero bs=65536 count=160 2>/dev/null | timeout 60 nc 10.9.0.1 5000 | wc -c";

/// Runs `what` on the `ip` command (in the calling thread's namespace).
fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// The host's end: takes what the guest sends until it closes, answers SENT_BY_HOST bytes.
fn serve_one_connection(listener: &TcpListener, deadline: Instant) -> Option<usize> {
    listener.set_nonblocking(true).ok()?;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return None,
        }
    };
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(_) => return Some(received),
        }
    }
    stream.write_all(&vec![b'x'; SENT_BY_HOST]).ok()?;
    Some(received)
}

/// Boots the guest with a NIC on tap `vt0` and serves it from this thread's namespace.
fn boot_with_nic() -> (Finished, Option<usize>) {
    std::thread::scope(|scope| {
        let vmm = scope.spawn(|| {
            let mut cmd = Command::new(repo_root().join("target/release/vpod-vmm"));
            cmd.args([
                "--kernel",
                "build/vmlinux",
                "--initrd",
                "build/test-initrd.img",
            ])
            .args(["--memory", "256", "--net", "tap=vt0,mac=02:00:00:00:00:42"])
            .args(["--", "sh", "-c", GUEST_SCRIPT])
            .current_dir(repo_root());
            run_with_limit(&mut cmd, Duration::from_secs(300))
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ip(&["link", "show", "vt0"]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let served = (ip(&["addr", "add", "10.9.0.1/24", "dev", "vt0"])
            && ip(&["link", "set", "vt0", "up"]))
        .then(|| TcpListener::bind("10.9.0.1:5000").ok())
        .flatten()
        .and_then(|listener| serve_one_connection(&listener, deadline));
        (vmm.join().expect("the VMM thread"), served)
    })
}

#[test]
fn linux_guest_nic_has_its_mac_pings_the_tap_and_moves_tcp_both_ways() {
    in_guest_host(LIMIT, || {
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/test-initrd.img");
        let (done, served) = in_own_network(boot_with_nic);
        assert_eq!(done.code(), Some(0), "{}", done.explain());
        assert!(
            done.has_stdout_line("guest mac 02:00:00:00:00:42"),
            "{}",
            done.explain()
        );
        assert!(
            done.stdout_text()
                .contains("3 packets transmitted, 3 packets received"),
            "{}",
            done.explain()
        );
        // The driver took the offloads and mergeable buffers, so the transfers used them.
        let features = done
            .stdout_after("guest features ")
            .unwrap_or_else(|| panic!("no features line\n{}", done.explain()));
        for (bit, name) in [
            (0, "CSUM"),
            (1, "GUEST_CSUM"),
            (5, "MAC"),
            (7, "GUEST_TSO4"),
            (11, "HOST_TSO4"),
            (15, "MRG_RXBUF"),
            (32, "VERSION_1"),
        ] {
            assert_eq!(
                features.as_bytes().get(bit),
                Some(&b'1'),
                "{name} in {features}"
            );
        }
        assert_eq!(features.as_bytes().get(17), Some(&b'0'), "no control queue");
        assert_eq!(served, Some(SENT_BY_GUEST), "{}", done.explain());
        assert!(
            done.has_stdout_line(&SENT_BY_HOST.to_string()),
            "{}",
            done.explain()
        );
    });
}
