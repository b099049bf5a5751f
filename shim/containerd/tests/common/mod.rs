//! The harness of the containerd shim's end-to-end tests: each test runs where guests boot
//! (through `vpod_e2e`'s guest host: inside the emulated KVM host on machines whose KVM cannot
//! boot Linux), in a network namespace of its own, and starts a [`Containerd`] of its own:
//! Debian's containerd 1.6 with its own config, root, state and sockets under a scratch
//! directory, `target/release` first on its PATH so that it finds
//! `containerd-shim-vpod-v2`, the test images imported, and everything it started gone
//! when the fixture is dropped.

#![allow(dead_code)]

pub mod containerd;
pub mod cri;
pub mod images;
pub mod procs;

use std::path::Path;
use std::time::{Duration, Instant};

use vpod_e2e::{built, GuestHost};

pub use containerd::{Containerd, Setup};
pub use images::DEFAULT_IMAGE;

/// The runtime type containerd maps to `containerd-shim-vpod-v2`.
pub const VPOD_RUNTIME: &str = "io.containerd.vpod.v2";
/// The runtime type of Debian's runc shim.
pub const RUNC_RUNTIME: &str = "io.containerd.runc.v2";

/// Runs `body`, the test `test_name`, where guests boot (see `vpod_e2e::guest_host`), in a
/// network namespace of its own (loopback up): the bridges and veths CNI makes and the taps
/// of pod VMs go with it. containerd, its shims and every command the body runs inherit it.
/// Fails at once, naming what to install or build, when anything the tests need is missing.
pub fn in_guest_host(test_name: &str, limit: Duration, body: impl FnOnce() + Send) {
    GuestHost::new(limit).test_name(test_name).run(|| {
        required_files_exist();
        vpod_e2e::net::in_own_network(body)
    })
}

/// The files the tests need, from the build and from Debian's packages.
fn required_files_exist() {
    built("target/release/containerd-shim-vpod-v2");
    built("target/release/vpod-vmm");
    built("build/vmlinux");
    built("build/pod-initrd.img");
    built("build/images/default/index.json");
    for (path, package) in [
        ("/usr/bin/containerd", "containerd"),
        ("/usr/bin/ctr", "containerd"),
        ("/usr/bin/containerd-shim-runc-v2", "containerd"),
        ("/usr/sbin/runc", "runc"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/lib/cni/host-local", "containernetworking-plugins"),
        ("/usr/lib/cni/loopback", "containernetworking-plugins"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: apt-get install {package}"
        );
    }
}

/// Runs `future` to completion on a fresh multi-threaded tokio runtime (for the CRI
/// clients); its threads are this thread's children, in its network namespace.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// The release of the guest kernel, `build/vmlinux`, from its banner ("Linux version
/// 6.12.118 (...)"): what `uname -r` says inside a pod VM.
pub fn guest_kernel_release() -> String {
    const BANNER: &[u8] = b"Linux version ";
    let image = std::fs::read(built("build/vmlinux")).expect("reading build/vmlinux");
    let at = image
        .windows(BANNER.len())
        .position(|w| w == BANNER)
        .expect("build/vmlinux has a \"Linux version\" banner")
        + BANNER.len();
    let release: Vec<u8> = image[at..]
        .iter()
        .take_while(|b| b.is_ascii_graphic())
        .copied()
        .collect();
    let release = String::from_utf8(release).expect("an ASCII release");
    assert!(
        release.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "the guest kernel's release {release:?} looks like one"
    );
    release
}

/// The release of the kernel this test runs on: what `uname -r` says in a runc container.
pub fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("reading /proc/sys/kernel/osrelease")
        .trim()
        .to_string()
}

/// Polls `check` every 200 ms until it holds or `limit` passes; panics with `what` and the
/// last `explain()` otherwise.
pub fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        let last = match check() {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}: {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The mount points under `dir` in this mount namespace.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let inside = format!("{}/", dir.display().to_string().trim_end_matches('/'));
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|point| point.starts_with(&inside) || *point == inside.trim_end_matches('/'))
        .collect()
}

/// A mountinfo path with its octal escapes (`\040` for a space) decoded.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tun/tap devices of this network namespace, by name.
pub fn taps() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-d", "-o", "link", "show"])
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(" tun type "))
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}
