//! Guest-side I/O benchmarks: `layer-read` (sequential read of a 256 MiB file on a layer
//! disk in the pod VM against the host reading the same bytes from its own filesystem) and
//! `vsock` (host <-> guest throughput through the host unix socket, vpod-vmm's hybrid vsock
//! and a guest process, beside a unix socket pair on the same host).

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_bench::stats::summarize;

use crate::fixtures::{work_dir, DATA_IN_IMAGE, PEER_IN_IMAGE};
use crate::pod::{run_container, runtime, spec, stage_images, start_pod, Scratch};

fn throughput_row(bench: &str, imp: &str, config: &str, host: &str, bytes: u64, ms: &[f64]) -> Row {
    let timing = summarize(ms);
    Row {
        bench: bench.into(),
        implementation: imp.into(),
        config: config.into(),
        host: host.into(),
        timing,
        rss_kib: None,
        overhead_kib: None,
        mb_s: timing.map(|t| bytes as f64 / (t.p50 / 1e3) / 1e6),
    }
}

/// Parses the peer's `read bytes=N ns=T` lines: (bytes, milliseconds) each.
fn parse_reads(text: &str) -> Result<Vec<(u64, f64)>> {
    text.lines()
        .filter(|l| l.starts_with("read "))
        .map(parse_read)
        .collect()
}

fn parse_read(line: &str) -> Result<(u64, f64)> {
    let value = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.parse::<u64>().ok())
    };
    let bytes = value("bytes=").context("no bytes= in the reader's line")?;
    let ns = value("ns=").context("no ns= in the reader's line")?;
    Ok((bytes, ns as f64 / 1e6))
}

fn drop_host_caches() -> Result<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("dropping the page cache (needs root)")
}

/// Interleaved: the host reads its copy (caches dropped first: on the emulated host that
/// copy is on a tmpfs, so the read is a memory copy), then a fresh container in the pod
/// reads the file from its layer disk, then again from the guest's page cache. Each container attaches the data layer anew
/// (the previous one's removal detached it), so the guest's page cache never holds it.
pub fn layer_read(root: &Path, runs: usize, host: &str) -> Result<Vec<Row>> {
    let scratch = Scratch::new("layer-read")?;
    let work = work_dir(root);
    let images = stage_images(root, &scratch, &["default", "tools", "data"])?;
    let config = images[0].0.clone();
    let layers: Vec<_> = images.iter().flat_map(|(_, l)| l.clone()).collect();
    let host_copy = scratch.dir.join("data.bin");
    std::fs::copy(work.join("data.bin"), &host_copy).context("copying data.bin")?;
    let peer = work.join("vpod-bench-peer");

    let rt = runtime()?;
    let mut sandbox = rt.block_on(start_pod(root, &scratch, 512))?;
    let (mut guest_ms, mut cached_ms, mut host_ms) = (Vec::new(), Vec::new(), Vec::new());
    let mut size = 0;
    // The first read comes from the layer disk; the second from the guest's page cache
    // (what the guest's CPU and memory alone can do, for comparison).
    let twice =
        format!("{PEER_IN_IMAGE} read {DATA_IN_IMAGE} && {PEER_IN_IMAGE} read {DATA_IN_IMAGE}");
    for i in 0..runs {
        drop_host_caches()?;
        let out = Command::new(&peer)
            .arg("read")
            .arg(&host_copy)
            .output()
            .context("running the reader on the host")?;
        if !out.status.success() {
            bail!(
                "the host reader failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let reads = parse_reads(&String::from_utf8_lossy(&out.stdout))?;
        let &[(bytes, ms)] = reads.as_slice() else {
            bail!("the host reader printed {reads:?}");
        };
        host_ms.push(ms);
        size = bytes;
        let run = rt.block_on(run_container(
            &mut sandbox,
            spec(
                &format!("read-{i}"),
                &config,
                layers.clone(),
                &["sh", "-c", &twice],
            ),
            None,
        ))?;
        if run.exit_code != 0 {
            bail!(
                "the reader in the guest exited with {}: {:?}",
                run.exit_code,
                run.stdout
            );
        }
        let reads = parse_reads(&run.stdout)?;
        let &[(cold, cold_ms), (warm, warm_ms)] = reads.as_slice() else {
            bail!("the guest reader printed {:?}", run.stdout);
        };
        if cold != size || warm != size {
            bail!("the guest read {cold} and {warm} bytes, the host {size}");
        }
        guest_ms.push(cold_ms);
        cached_ms.push(warm_ms);
    }
    rt.block_on(sandbox.stop())?;
    let config = format!("{}mib-1mib-blocks", size >> 20);
    let rows = vec![
        throughput_row("layer_seq_read", "guest", &config, host, size, &guest_ms),
        throughput_row("layer_seq_read", "host", &config, host, size, &host_ms),
        throughput_row(
            "layer_seq_read",
            "guest-cached",
            &config,
            host,
            size,
            &cached_ms,
        ),
    ];
    print!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "layer-read", &rows)?;
    Ok(rows)
}

const SINK_PORT: u32 = 5000;
const SOURCE_PORT: u32 = 5001;
const BLOCK: usize = 256 * 1024;

/// Connects to the VM's vsock socket and the guest's `port`, retrying while the guest is
/// not listening yet (the VMM closes the client then).
fn connect_guest(vsock: &Path, port: u32) -> Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = (|| -> std::io::Result<Option<UnixStream>> {
            let mut stream = UnixStream::connect(vsock)?;
            stream.write_all(format!("CONNECT {port}\n").as_bytes())?;
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while stream.read(&mut byte)? == 1 {
                if byte[0] == b'\n' {
                    break;
                }
                line.push(byte[0]);
            }
            Ok(line.starts_with(b"OK ").then_some(stream))
        })();
        if let Ok(Some(stream)) = attempt {
            return Ok(stream);
        }
        if Instant::now() > deadline {
            bail!("the guest never accepted vsock port {port}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn send_counted(stream: &mut impl Write, bytes: u64) -> std::io::Result<()> {
    let block = vec![0xa5u8; BLOCK];
    stream.write_all(&bytes.to_le_bytes())?;
    let mut left = bytes;
    while left > 0 {
        let n = block.len().min(left as usize);
        stream.write_all(&block[..n])?;
        left -= n as u64;
    }
    stream.flush()
}

/// Reads the 8-byte length and that many bytes; the count read.
fn receive_counted(stream: &mut impl Read) -> std::io::Result<u64> {
    let mut length = [0u8; 8];
    stream.read_exact(&mut length)?;
    let want = u64::from_le_bytes(length);
    let mut buffer = vec![0u8; BLOCK];
    let mut got = 0;
    while got < want {
        let n = buffer.len().min((want - got) as usize);
        match stream.read(&mut buffer[..n])? {
            0 => break,
            n => got += n as u64,
        }
    }
    Ok(got)
}

/// Host to guest: the length and the bytes, then the guest's count back; milliseconds.
fn host_to_guest(vsock: &Path, bytes: u64) -> Result<f64> {
    let mut stream = connect_guest(vsock, SINK_PORT)?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let started = Instant::now();
    send_counted(&mut stream, bytes)?;
    let mut answer = [0u8; 8];
    stream
        .read_exact(&mut answer)
        .context("reading the guest's count")?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if u64::from_le_bytes(answer) != bytes {
        bail!(
            "the guest received {} of {bytes} bytes",
            u64::from_le_bytes(answer)
        );
    }
    Ok(ms)
}

/// Guest to host: one connection of the guest's `source`, from its accept to its last byte.
fn guest_to_host(listener: &UnixListener, bytes: u64) -> Result<f64> {
    // Non-blocking with a deadline: a guest that never connects is an error, not a hang.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("accepting the guest's connection"),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let started = Instant::now();
    let got = receive_counted(&mut stream)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    stream.write_all(&got.to_le_bytes())?;
    if got != bytes {
        bail!("the host received {got} of {bytes} bytes from the guest");
    }
    Ok(ms)
}

/// A unix socket pair in this host moving the same bytes the same way: the ceiling of
/// anything the host-side proxy can do here.
fn unix_pair(bytes: u64) -> Result<f64> {
    let (mut a, mut b) = UnixStream::pair()?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let got = receive_counted(&mut b)?;
        b.write_all(&got.to_le_bytes())?;
        Ok(got)
    });
    let started = Instant::now();
    send_counted(&mut a, bytes)?;
    let mut answer = [0u8; 8];
    a.read_exact(&mut answer)?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader panicked"))??;
    if got != bytes {
        bail!("the socket pair moved {got} of {bytes} bytes");
    }
    Ok(ms)
}

pub fn vsock(root: &Path, runs: usize, mib: u64, host: &str) -> Result<Vec<Row>> {
    let scratch = Scratch::new("vsock")?;
    let images = stage_images(root, &scratch, &["default", "tools"])?;
    let config = images[0].0.clone();
    let layers: Vec<_> = images.iter().flat_map(|(_, l)| l.clone()).collect();
    let bytes = mib << 20;
    let rt = runtime()?;
    let mut sandbox = rt.block_on(start_pod(root, &scratch, 256))?;
    let vsock = vpod_sandbox::jail::vsock_socket(sandbox.dir());
    let listener_path = vsock.with_file_name(format!("vsock.sock_{SOURCE_PORT}"));
    let listener = UnixListener::bind(&listener_path)?;
    // The jailed VMM connects as the pod's user; its directory admits no one else.
    std::fs::set_permissions(&listener_path, std::fs::Permissions::from_mode(0o666))?;
    let sink_port = SINK_PORT.to_string();
    rt.block_on(async {
        sandbox
            .create_container(spec(
                "sink",
                &config,
                layers.clone(),
                &[PEER_IN_IMAGE, "sink", &sink_port],
            ))
            .await?;
        sandbox.start_container("sink").await?;
        let source_port = SOURCE_PORT.to_string();
        let count = bytes.to_string();
        let rounds = runs.to_string();
        sandbox
            .create_container(spec(
                "source",
                &config,
                layers.clone(),
                &[PEER_IN_IMAGE, "source", &source_port, &count, &rounds],
            ))
            .await?;
        sandbox.start_container("source").await.map(drop)
    })
    .context("starting the guest's vsock peers")?;
    let (mut h2g, mut g2h, mut pair) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        h2g.push(host_to_guest(&vsock, bytes)?);
        g2h.push(guest_to_host(&listener, bytes)?);
        pair.push(unix_pair(bytes)?);
    }
    let source_exit = rt.block_on(sandbox.wait("source"))?;
    if source_exit.code != 0 {
        bail!("the guest's source exited with {}", source_exit.code);
    }
    rt.block_on(sandbox.stop())?;
    let config = format!("{mib}mib-stream");
    let rows = vec![
        throughput_row(
            "vsock_host_to_guest",
            "vpod-vmm",
            &config,
            host,
            bytes,
            &h2g,
        ),
        throughput_row(
            "vsock_guest_to_host",
            "vpod-vmm",
            &config,
            host,
            bytes,
            &g2h,
        ),
        throughput_row("unix_socket_pair", "host", &config, host, bytes, &pair),
    ];
    print!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "vsock", &rows)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_lines_parse_and_garbage_is_an_error() {
        let text = "read bytes=268435456 ns=1500000000\nread bytes=268435456 ns=500000000\n";
        let reads = parse_reads(text).unwrap();
        assert_eq!(reads, vec![(268435456, 1500.0), (268435456, 500.0)]);
        assert!(parse_reads("read bytes=1\n").is_err());
        assert!(parse_reads("nothing\n").unwrap().is_empty());
    }

    #[test]
    fn counted_streams_round_trip_over_a_socket_pair() {
        let ms = unix_pair(3 << 20).unwrap();
        assert!(ms > 0.0);
    }
}
