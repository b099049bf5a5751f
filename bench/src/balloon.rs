//! `balloon`: the host memory of a VM whose guest touches 256 MiB and frees it, with the
//! virtio-balloon's free page reporting (`--balloon`) beside the same VM without a balloon,
//! measured in the same run. Each run is a fresh VM (512 MiB, the busybox test initrd):
//! the guest idles 8 s (the kernel reports what boot freed), fills 256 MiB of a tmpfs,
//! deletes it and stays up. The VMM's RSS is read when the guest says it is idle (+2 s),
//! when the 256 MiB are written, and 10 s after the delete; with the balloon, also the time
//! until RSS is back within 10% + 8 MiB of idle.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_bench::stats::median_u64;

const TOUCHED_MIB: u64 = 256;
const AFTER: Duration = Duration::from_secs(10);

fn guest_script() -> String {
    format!(
        "mkdir -p /big; mount -t tmpfs -o size=300m tmpfs /big || exit 10; \
         sleep 8; echo idle-now; sleep 3; \
         dd if=/dev/zero of=/big/f bs=1M count={TOUCHED_MIB} 2>/dev/null || exit 11; \
         echo touched; sleep 3; rm /big/f; echo freed; sleep 20; echo done"
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

/// Kills the child by its PID when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_line(lines: &Receiver<String>, want: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.trim_end() == want => return Ok(()),
            Ok(_) => {}
            Err(_) => bail!("the guest printed no {want:?} within {limit:?}"),
        }
    }
}

/// One run's RSS (KiB): idle, touched, 10 s after the free; and the seconds until RSS was
/// back within 10% + 8 MiB of idle, if it was within those 10 s.
struct Run {
    idle: u64,
    touched: u64,
    after: u64,
    back_after: Option<f64>,
}

fn one_run(root: &Path, balloon: bool) -> Result<Run> {
    let mut cmd = Command::new(root.join("target/release/vpod-vmm"));
    cmd.args([
        "--kernel",
        "build/vmlinux",
        "--initrd",
        "build/test-initrd.img",
        "--memory",
        "512",
    ]);
    if balloon {
        cmd.arg("--balloon");
    }
    let mut child = cmd
        .args(["--", "sh", "-c", &guest_script()])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running vpod-vmm")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let vmm = Reaped(child);
    let pid = vmm.0.id();
    let (to, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                break;
            }
        }
    });
    wait_line(&lines, "idle-now", Duration::from_secs(300))?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = rss_kib(pid);
    wait_line(&lines, "touched", Duration::from_secs(120))?;
    let touched = rss_kib(pid);
    wait_line(&lines, "freed", Duration::from_secs(60))?;
    let freed = Instant::now();
    let target = idle + idle / 10 + 8 * 1024;
    let mut back_after = None;
    while freed.elapsed() < AFTER {
        if back_after.is_none() && rss_kib(pid) <= target {
            back_after = Some(freed.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = rss_kib(pid);
    drop(vmm);
    Ok(Run {
        idle,
        touched,
        after,
        back_after,
    })
}

pub fn balloon(root: &Path, runs: usize, host: &str) -> Result<Vec<Row>> {
    for f in [
        "target/release/vpod-vmm",
        "build/vmlinux",
        "build/test-initrd.img",
    ] {
        if !root.join(f).exists() {
            bail!("{f} is missing: run `make` first");
        }
    }
    let mut rows = Vec::new();
    let mut summary = Vec::new();
    for (imp, on) in [
        ("vpod-vmm --balloon (free page reporting)", true),
        ("vpod-vmm without a balloon", false),
    ] {
        let mut results = Vec::new();
        for _ in 0..runs {
            results.push(one_run(root, on)?);
        }
        let median = |f: fn(&Run) -> u64| median_u64(&results.iter().map(f).collect::<Vec<_>>());
        let back: Vec<f64> = results
            .iter()
            .filter_map(|r| r.back_after.map(|s| s * 1e3))
            .collect();
        for (phase, kib) in [
            ("idle", median(|r| r.idle)),
            ("256 MiB touched", median(|r| r.touched)),
            ("10 s after freeing it", median(|r| r.after)),
        ] {
            rows.push(Row {
                rss_kib: kib,
                ..Row::timing(
                    "balloon",
                    imp,
                    &format!("512 MiB guest, {phase}"),
                    host,
                    &[],
                )
            });
        }
        summary.push(format!(
            "{imp}: back within 10% + 8 MiB of idle in {} of {runs} runs (ms: {back:?})",
            back.len()
        ));
    }
    print!("{}", table(&rows));
    for line in summary {
        println!("{line}");
    }
    write_jsonl(&root.join("bench/results"), "balloon", &rows)?;
    Ok(rows)
}
