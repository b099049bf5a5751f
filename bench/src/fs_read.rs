//! `fs-read`: a sequential read of a 256 MiB file over virtio-fs (vpod-vmm's vhost-user-fs
//! device and Debian's virtiofsd) against the same bytes read from the guest's own virtio-blk
//! disk, in the same VM. Each run is a fresh VM, so the guest's page cache is cold for both;
//! the two reads alternate which goes first. The host's copies sit side by side (on a tmpfs
//! in the emulated host), so both are served from host memory.

use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_bench::stats::summarize;

const FILE_MIB: u64 = 256;
const VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";

/// The guest's script: each read timed with /proc/uptime (10 ms steps; busybox's dd here
/// prints no timing), and dd's record count.
fn guest_script(fs_first: bool) -> String {
    let read = |name: &str, path: &str| {
        format!(
            "read a rest < /proc/uptime; r=$(dd if={path} of=/dev/null bs=1M 2>&1 | tail -n 1); \
             read b rest < /proc/uptime; echo {name} $a $b $r"
        )
    };
    let (fs, blk) = (read("fs", "/mnt/big"), read("blk", "/dev/vda"));
    let (first, second) = if fs_first { (fs, blk) } else { (blk, fs) };
    format!("mkdir -p /mnt; mount -t virtiofs share /mnt || exit 10; {first}; {second}")
}

/// Seconds from the guest's `NAME START END N+0 records out` line after `prefix`.
fn dd_seconds(output: &str, prefix: &str) -> Result<f64> {
    let line = output
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(prefix))
        .with_context(|| format!("no {prefix:?} line in the guest's output:\n{output}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let want = format!("{FILE_MIB}+0");
    if words.get(2) != Some(&want.as_str()) {
        bail!("the guest did not read {FILE_MIB} MiB: {line:?}");
    }
    let time = |i: usize| -> Result<f64> {
        words
            .get(i)
            .and_then(|w| w.parse::<f64>().ok())
            .with_context(|| format!("no uptime in {line:?}"))
    };
    Ok(time(1)? - time(0)?)
}

/// Kills the child by its PID when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_virtiofsd(share: &Path, socket: &Path) -> Result<Reaped> {
    let child = Command::new(VIRTIOFSD)
        .arg(format!("--socket-path={}", socket.display()))
        .arg("-o")
        .arg(format!("source={}", share.display()))
        .args(["-o", "cache=auto", "-o", "sandbox=namespace"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {VIRTIOFSD}"))?;
    let server = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("virtiofsd made no socket at {}", socket.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// One VM: (virtio-fs ms, virtio-blk ms).
fn one_run(root: &Path, work: &Path, fs_first: bool) -> Result<(f64, f64)> {
    let socket = work.join("fs.sock");
    let _ = std::fs::remove_file(&socket);
    let _virtiofsd = start_virtiofsd(&work.join("share"), &socket)?;
    let out = Command::new(root.join("target/release/vpod-vmm"))
        .args([
            "--kernel",
            "build/vmlinux",
            "--initrd",
            "build/test-initrd.img",
        ])
        .args(["--memory", "512"])
        .arg("--disk")
        .arg(format!("{},ro", work.join("disk.img").display()))
        .arg("--fs")
        .arg(format!("socket={},tag=share", socket.display()))
        .args(["--", "sh", "-c", &guest_script(fs_first)])
        .current_dir(root)
        .output()
        .context("running vpod-vmm")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "vpod-vmm failed ({}):\n{text}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        dd_seconds(&text, "fs ")? * 1e3,
        dd_seconds(&text, "blk ")? * 1e3,
    ))
}

pub fn fs_read(root: &Path, runs: usize, host: &str) -> Result<Vec<Row>> {
    for f in [
        "target/release/vpod-vmm",
        "build/vmlinux",
        "build/test-initrd.img",
    ] {
        if !root.join(f).exists() {
            bail!("{f} is missing: run `make` first");
        }
    }
    let work = std::env::temp_dir().join(format!("vpod-bench-fs-read-{}", std::process::id()));
    std::fs::create_dir_all(work.join("share"))?;
    let result = (|| {
        // Not zeros: nothing on the way may shortcut an all-zero page.
        let mut block = vec![0u8; 1 << 20];
        for (i, byte) in block.iter_mut().enumerate() {
            *byte = (i * 7 + i / 4096) as u8;
        }
        let mut file = std::fs::File::create(work.join("share/big"))?;
        for _ in 0..FILE_MIB {
            file.write_all(&block)?;
        }
        drop(file);
        std::fs::copy(work.join("share/big"), work.join("disk.img"))?;
        let (mut fs_ms, mut blk_ms) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let (fs, blk) = one_run(root, &work, run % 2 == 0)?;
            fs_ms.push(fs);
            blk_ms.push(blk);
        }
        Ok::<_, anyhow::Error>((fs_ms, blk_ms))
    })();
    let _ = std::fs::remove_dir_all(&work);
    let (fs_ms, blk_ms) = result?;
    let bytes = FILE_MIB << 20;
    let config = format!("{FILE_MIB} MiB sequential read, bs=1M, cold guest cache");
    let row = |imp: &str, ms: &[f64]| {
        let timing = summarize(ms);
        Row {
            mb_s: timing.map(|t| bytes as f64 / (t.p50 / 1e3) / 1e6),
            ..Row::timing("fs-read", imp, &config, host, ms)
        }
    };
    let rows = vec![
        row("virtio-fs (virtiofsd, cache=auto)", &fs_ms),
        row("virtio-blk (guest's own disk)", &blk_ms),
    ];
    print!("{}", table(&rows));
    if let (Some(fs), Some(blk)) = (rows[0].mb_s, rows[1].mb_s) {
        println!("virtio-fs / virtio-blk throughput: {:.2}x", fs / blk);
    }
    write_jsonl(&root.join("bench/results"), "fs-read", &rows)?;
    Ok(rows)
}
