//! `vpod-bench cold-pull` (native): a cold pull from a local registry (Debian's
//! docker-registry on 127.0.0.1, plain HTTP) of a multi-layer image (4 gzip layers of
//! `mib`/4 MiB of tar each) and of a single-layer one (`mib` MiB in one gzip layer), each
//! layer half pseudo-random, half repetitive text (the conversion benchmark's generator).
//! Three pullers, interleaved in every run, each from empty state:
//! - `vpod pull` into a new layer store (fetch and convert to EROFS, streaming, fsync'd);
//! - Debian containerd's `ctr image pull` into a new containerd (its own root, state and
//!   socket, the CRI plugin off; started before the clock): download into the content
//!   store, then unpack into the overlayfs snapshotter;
//! - `skopeo copy` to an OCI layout, then `umoci unpack` into a bundle; the copy alone is
//!   also a row (`skopeo-copy-only`): the download with nothing unpacked.
//!
//! Whole commands are timed. Rows go to `bench/results/cold-pull.jsonl`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_image::oci::writer::{encode_layer, LayerCompression, OciLayoutWriter};

use crate::conversion::generated_tar_seeded;
use crate::pod::Scratch;

const PULLERS: [&str; 3] = ["vpod-pull", "ctr-image-pull", "skopeo-umoci"];
/// The rows: the pullers, then the download alone (`skopeo copy` of the skopeo-umoci
/// puller, timed apart): the floor a pull that converts while it downloads can approach.
const ROWS: [&str; 4] = [
    "vpod-pull",
    "ctr-image-pull",
    "skopeo-umoci",
    "skopeo-copy-only",
];

pub fn cold_pull(root: &Path, runs: usize, mib: u64) -> Result<Vec<Row>> {
    for tool in ["docker-registry", "skopeo", "containerd", "ctr", "umoci"] {
        which(tool).with_context(|| {
            format!("{tool} is missing: apt-get install docker-registry skopeo containerd umoci")
        })?;
    }
    let vpod = root.join("target/release/vpod");
    if !vpod.is_file() {
        bail!("{} is missing: run `make rust`", vpod.display());
    }
    let scratch = Scratch::new("cold-pull")?;
    let registry = Registry::start(&scratch.dir.join("registry"))?;
    let images = [
        (format!("4x{}mib-gzip", mib / 4), 4u64),
        (format!("1x{mib}mib-gzip"), 1),
    ];
    let mut rows = Vec::new();
    for (config, layers) in &images {
        let repository = format!("bench/{}:v1", config.replace('x', "-"));
        let layout = scratch.dir.join(format!("layout-{layers}"));
        let (tar_mb, blob_mb) = write_image(&layout, *layers, (mib << 20) / layers)?;
        registry.push(&layout, &repository)?;
        let _ = std::fs::remove_dir_all(&layout);
        println!("image {config}: {tar_mb:.0} MB of tar, {blob_mb:.0} MB of gzip blobs");
        let reference = format!("{}/{repository}", registry.address);
        // One warm-up of each puller, so the registry's files are cached for all alike.
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); ROWS.len()];
        for run in 0..=runs {
            for puller in PULLERS {
                let work = scratch.dir.join(format!("{puller}-{run}"));
                std::fs::create_dir_all(&work)?;
                let seconds = match puller {
                    "vpod-pull" => pull_vpod(&vpod, &work, &reference).map(|s| vec![(0, s)]),
                    "ctr-image-pull" => pull_containerd(&work, &reference).map(|s| vec![(1, s)]),
                    _ => pull_skopeo_umoci(&work, &reference)
                        .map(|(copy, total)| vec![(2, total), (3, copy)]),
                }
                .with_context(|| format!("{puller} of {reference}"))?;
                remove_all(&work)?;
                if run > 0 {
                    for (row, seconds) in seconds {
                        samples[row].push(seconds * 1e3);
                    }
                }
            }
        }
        for (puller, ms) in ROWS.iter().zip(&samples) {
            let row = Row::timing("cold_pull", puller, config, "native", ms);
            rows.push(Row {
                mb_s: row.timing.map(|t| blob_mb / (t.p50 / 1e3)),
                ..row
            });
        }
        let median = |index: usize| rows[rows.len() - ROWS.len() + index].timing.map(|t| t.p50);
        if let (Some(vpod), Some(ctr), Some(umoci), Some(copy)) =
            (median(0), median(1), median(2), median(3))
        {
            println!(
                "{config}: vpod pull {vpod:.0} ms, ctr image pull {ctr:.0} ms ({:.2}x), skopeo+umoci {umoci:.0} ms ({:.2}x), skopeo copy alone {copy:.0} ms ({:.2}x)",
                vpod / ctr,
                vpod / umoci,
                vpod / copy
            );
        }
    }
    print!("{}", table(&rows));
    write_jsonl(&root.join("bench/results"), "cold-pull", &rows)?;
    Ok(rows)
}

/// An OCI layout tagged `v1` of `layers` gzip layers of `bytes` of tar each; returns MB
/// of tar and of blobs.
fn write_image(dir: &Path, layers: u64, bytes: u64) -> Result<(f64, f64)> {
    let writer = OciLayoutWriter::create(dir)?;
    let mut written = Vec::new();
    let (mut tar_bytes, mut blob_bytes) = (0, 0);
    for layer in 0..layers {
        let tar = generated_tar_seeded(bytes, 0x5eed_0000 + layer)?;
        let encoded = encode_layer(&tar, LayerCompression::Gzip)?;
        tar_bytes += tar.len();
        blob_bytes += encoded.blob.len();
        written.push(writer.write_layer(&encoded)?);
    }
    let config = oci_spec::image::ImageConfigurationBuilder::default()
        .architecture(oci_spec::image::Arch::Amd64)
        .os(oci_spec::image::Os::Linux)
        .build()?;
    let manifest = writer.write_image(config, &written, Some("v1"))?;
    writer.write_index(vec![manifest])?;
    Ok((tar_bytes as f64 / 1e6, blob_bytes as f64 / 1e6))
}

fn pull_vpod(vpod: &Path, work: &Path, reference: &str) -> Result<f64> {
    let started = Instant::now();
    run_quietly(
        Command::new(vpod)
            .arg("pull")
            .arg("--root")
            .arg(work.join("store"))
            .arg(reference),
    )?;
    Ok(started.elapsed().as_secs_f64())
}

fn pull_containerd(work: &Path, reference: &str) -> Result<f64> {
    let containerd = Containerd::start(work)?;
    let started = Instant::now();
    run_quietly(
        Command::new("ctr")
            .arg("--address")
            .arg(&containerd.socket)
            .args(["image", "pull", "--plain-http", reference]),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    drop(containerd);
    Ok(seconds)
}

/// The seconds of the copy alone and of the whole.
fn pull_skopeo_umoci(work: &Path, reference: &str) -> Result<(f64, f64)> {
    let started = Instant::now();
    run_quietly(
        Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:v1", work.join("layout").display()))
            .env("TMPDIR", work),
    )?;
    let copied = started.elapsed().as_secs_f64();
    run_quietly(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:v1", work.join("layout").display()))
            .arg(work.join("bundle")),
    )?;
    Ok((copied, started.elapsed().as_secs_f64()))
}

fn run_quietly(command: &mut Command) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

fn which(tool: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{tool} not found"))
}

/// Removes `dir`, unmounting first whatever a puller left mounted below it.
fn remove_all(dir: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    below.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in below {
        let _ = Command::new("umount").arg(point).status();
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// docker-registry serving plain HTTP on a free loopback port, storage under `dir`.
struct Registry {
    child: Child,
    address: String,
    dir: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                dir.join("storage").display()
            ),
        )?;
        let child = Command::new(which("docker-registry")?)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry")?;
        let registry = Registry {
            child,
            address,
            dir: dir.to_owned(),
        };
        wait_until(Duration::from_secs(15), "docker-registry to listen", || {
            TcpStream::connect(&registry.address).is_ok()
        })?;
        Ok(registry)
    }

    fn push(&self, layout: &Path, repository: &str) -> Result<()> {
        run_quietly(
            Command::new("skopeo")
                .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:v1", layout.display()))
                .arg(format!("docker://{}/{repository}", self.address))
                .env("TMPDIR", &self.dir),
        )
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Child::kill signals this very PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A containerd of its own under `work`: root, state, socket; the CRI plugin off.
struct Containerd {
    child: Child,
    socket: PathBuf,
}

impl Containerd {
    fn start(work: &Path) -> Result<Containerd> {
        let socket = work.join("containerd.sock");
        let config = work.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n",
                work.join("root").display(),
                work.join("state").display(),
                socket.display(),
                socket.display()
            ),
        )?;
        let log = std::fs::File::create(work.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let containerd = Containerd { child, socket };
        wait_until(Duration::from_secs(20), "containerd to answer", || {
            Command::new("ctr")
                .arg("--address")
                .arg(&containerd.socket)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })?;
        Ok(containerd)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM to this very PID, then wait for it to finish its shutdown.
        // SAFETY: kill(2) with a PID of a child we have not yet reaped, and a valid signal.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
