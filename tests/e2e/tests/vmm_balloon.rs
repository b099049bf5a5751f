//! vpod-vmm's virtio-balloon under the real guest driver: a guest that touches 256 MiB and
//! frees it shrinks again on the host through free page reporting, both with private guest
//! memory (MADV_DONTNEED) and with the shared memfd a virtio-fs share brings (MADV_REMOVE);
//! the control socket shows what was reported and the guest's memory stats, and a target
//! set through it inflates the balloon and a zero target deflates it again. The guest
//! reports free blocks as small as the host pages behind its RAM: 2 MiB (order 9) when
//! private, 4 KiB (order 0) on the shared memfd. The time the
//! shrinking takes is a benchmark (`vpod-bench balloon`), not checked here beyond a
//! generous limit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vpod_e2e::{built, in_guest_host, repo_root, Background, Checks};

const LIMIT: Duration = Duration::from_secs(900);
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
const TOUCHED_MIB: u64 = 256;

/// The guest: idle a while (the kernel reports what boot freed), fill 256 MiB of a tmpfs,
/// then free it and stay up. No double quotes: the kernel command line cannot carry them.
fn guest_script(stay_s: u32) -> String {
    format!(
        "echo reporting-order-$(cat /sys/module/page_reporting/parameters/page_reporting_order); \
         mkdir -p /big; mount -t tmpfs -o size=300m tmpfs /big || exit 10; \
         sleep 8; echo idle-now; sleep 6; \
         dd if=/dev/zero of=/big/f bs=1M count={TOUCHED_MIB} 2>/dev/null || exit 11; \
         echo touched; sleep 3; rm /big/f; echo freed; sleep {stay_s}; echo done"
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .trim_end_matches(" kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// One request on the control socket; its one-line JSON answer.
fn control(api: &Path, request: &str) -> serde_json::Value {
    let mut stream = UnixStream::connect(api).expect("the control socket accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(format!("{request}\n").as_bytes())
        .expect("request sent");
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .expect("an answer");
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("answer {line:?}: {e}"))
}

fn vmm(args: &[&str], api: &Path, stay_s: u32) -> Background {
    let mut cmd = Command::new(repo_root().join("target/release/vpod-vmm"));
    cmd.args([
        "--kernel",
        "build/vmlinux",
        "--initrd",
        "build/test-initrd.img",
        "--memory",
        "512",
        "--balloon",
        "--api",
    ])
    .arg(api)
    .args(args)
    .args(["--", "sh", "-c", &guest_script(stay_s)])
    .current_dir(repo_root());
    Background::spawn(&mut cmd)
}

/// Host RSS in KiB: idle, with 256 MiB touched, and the lowest seen after the free.
struct Shrink {
    idle: u64,
    touched: u64,
    after: u64,
    seconds: Option<f64>,
}

/// Runs the touch-and-free guest with `args`, checks the page order the guest reports free
/// memory in, and follows the VMM's RSS until it is back within 10% + 8 MiB of idle or
/// `limit` passes. Returns the figures and the running VM.
fn touch_and_free(args: &[&str], api: &Path, order: u32, limit: Duration) -> (Shrink, Background) {
    let mut guest = vmm(args, api, 90);
    let pid = guest.pid();
    let line = guest.wait_for_stdout_line_where(Duration::from_secs(300), |l| {
        l.starts_with("reporting-order-")
    });
    assert_eq!(line, format!("reporting-order-{order}"), "{args:?}");
    guest.wait_for_stdout_line("idle-now", Duration::from_secs(300));
    // The guest waits 6 s before touching memory: the idle sample has 5 s to spare on a
    // busy machine.
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(pid);
    guest.wait_for_stdout_line("touched", Duration::from_secs(120));
    let touched = rss_kib(pid);
    guest.wait_for_stdout_line("freed", Duration::from_secs(60));
    let freed_at = Instant::now();
    let target = idle + idle / 10 + 8 * 1024;
    let mut after = rss_kib(pid);
    let mut seconds = None;
    while freed_at.elapsed() < limit {
        after = after.min(rss_kib(pid));
        if after <= target {
            seconds = Some(freed_at.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let shrink = Shrink {
        idle,
        touched,
        after,
        seconds,
    };
    println!(
        "vpod-vmm RSS ({args:?}): idle {} KiB, touched {} KiB, after the free {} KiB \
         (back within 10% + 8 MiB after {:?} s)",
        shrink.idle, shrink.touched, shrink.after, shrink.seconds
    );
    (shrink, guest)
}

fn assert_shrinks(shrink: &Shrink) {
    assert!(
        shrink.touched >= shrink.idle + 200 * 1024,
        "touching {TOUCHED_MIB} MiB grew the VMM only from {} to {} KiB",
        shrink.idle,
        shrink.touched
    );
    assert!(
        shrink.seconds.is_some(),
        "RSS stayed at {} KiB after the free (idle {} KiB)",
        shrink.after,
        shrink.idle
    );
}

fn wait_for_actual(api: &Path, mib: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = control(api, r#"{"op":"balloon"}"#);
        if answer["actual_mib"] == mib {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "the balloon did not reach {mib} MiB: {answer}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn private_memory_shrinks_and_the_target_inflates_and_deflates(dir: &Path) {
    let api = dir.join("api.sock");
    let (shrink, guest) = touch_and_free(&[], &api, 9, Duration::from_secs(60));
    assert_shrinks(&shrink);
    // The first request asks for fresh stats; a later one shows them once the guest has
    // sent them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let answer = loop {
        let answer = control(&api, r#"{"op":"balloon"}"#);
        if answer["stats"]["total_memory"].as_u64().unwrap_or(0) > 0 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("balloon: {answer}");
    assert_eq!(answer["active"], true, "{answer}");
    assert_eq!(answer["free_page_reporting"], true, "{answer}");
    let reported = answer["reported_bytes"].as_u64().unwrap_or(0);
    assert!(reported >= 200 << 20, "{answer}");
    assert_eq!(answer["dropped_total"], 0, "{answer}");
    let total = answer["stats"]["total_memory"].as_u64().unwrap_or(0);
    assert!(
        (400 << 20..=512 << 20).contains(&total),
        "total_memory {total}: {answer}"
    );
    assert!(
        answer["stats"]["free_memory"].as_u64().unwrap_or(0) > 0,
        "{answer}"
    );

    let set = control(&api, r#"{"op":"set_balloon","target_mib":128}"#);
    assert_eq!(set["target_mib"], 128, "{set}");
    let inflated = wait_for_actual(&api, 128);
    assert!(
        inflated["inflated_pages"].as_u64().unwrap_or(0) >= 128 * 256,
        "{inflated}"
    );
    control(&api, r#"{"op":"set_balloon","target_mib":0}"#);
    let deflated = wait_for_actual(&api, 0);
    assert!(
        deflated["deflated_pages"].as_u64().unwrap_or(0) >= 128 * 256,
        "{deflated}"
    );
    let refused = control(&api, r#"{"op":"set_balloon","target_mib":4096}"#);
    assert!(refused["error"].is_string(), "{refused}");
    control(&api, r#"{"op":"stop"}"#);
    let done = guest.wait(Duration::from_secs(60));
    assert_eq!(done.code(), Some(143), "{}", done.explain());
}

fn shared_memory_shrinks(dir: &Path) {
    let share = dir.join("share");
    std::fs::create_dir_all(&share).expect("share dir");
    let socket = dir.join("fs.sock");
    let mut cmd = Command::new(VIRTIOFSD);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .args(["-o", &format!("source={}", share.display())])
        .args(["-o", "cache=none", "-o", "sandbox=namespace"]);
    let _virtiofsd = Background::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "virtiofsd made no socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let api = dir.join("api-fs.sock");
    let spec = format!("socket={},tag=share", socket.display());
    let (shrink, guest) = touch_and_free(&["--fs", &spec], &api, 0, Duration::from_secs(60));
    assert_shrinks(&shrink);
    control(&api, r#"{"op":"stop"}"#);
    let done = guest.wait(Duration::from_secs(60));
    assert_eq!(done.code(), Some(143), "{}", done.explain());
}

#[test]
fn freed_guest_memory_goes_back_to_the_host() {
    in_guest_host(LIMIT, || {
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/test-initrd.img");
        let dir = tempfile::tempdir().expect("a work directory");
        Checks::new()
            .check(
                "private_memory_shrinks_and_the_target_inflates_and_deflates",
                || private_memory_shrinks_and_the_target_inflates_and_deflates(dir.path()),
            )
            .check("shared_memfd_memory_shrinks", || {
                shared_memory_shrinks(dir.path())
            })
            .finish();
    });
}
