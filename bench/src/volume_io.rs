//! `vpod-bench volume-io`: file I/O on a pod's volume through its share (virtio-fs, the
//! pod's virtiofsd) against the same work on the container's own writable disk in the same
//! pod VM, and against runc on a host directory, in one run.
//!
//! The work, one script run by `sh` in each place: a sequential write of `--mib` MiB with
//! `dd` (1 MiB blocks, `conv=fsync`), the guest's caches dropped, the sequential read of it;
//! then `--files` small files created (`echo x > f`, a shell builtin, so no process per
//! file), caches dropped, each stat'ed (`[ -f f ]`), and all unlinked (`rm -r`). Each step
//! is timed in the script with /proc/uptime (10 ms steps). The three places take turns
//! going first from run to run.
//!
//! - `vpod-share`: a container's volume `/vol`, a host directory bound into the pod's share
//!   (what an emptyDir or a hostPath directory is by default);
//! - `vpod-disk`: a directory in the same container's root file system, whose upper layer
//!   is the pod's writable virtio-blk disk;
//! - `vpod-emptydir`: the container's volume `/empty`, a directory shaped as the kubelet's
//!   plain emptyDir (outside /tmp, which is a tmpfs in the emulated host: a memory
//!   emptyDir), which vpod-cri keeps on a disk of its own (an ext4 image in the directory;
//!   `[pod] empty_dir_disks = true`);
//! - `runc`: `runc run` of the same script on the default image's root filesystem (from
//!   `vpod-bench prepare`) with a host directory bound at `/vol`.
//!
//! The container that runs the vpod sides has CAP_SYS_ADMIN and a writable /proc/sys to
//! drop the guest's caches (`echo 3 > /proc/sys/vm/drop_caches`); runc's side syncs only:
//! its host directory, like the vpod sides' backing files, is on the host's /tmp, a tmpfs in
//! the emulated KVM host, whose pages cannot be dropped.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use vpod_bench::report::{table, write_jsonl, Row};
use vpod_bench::stats::summarize;
use vpod_proto::cri::*;

use crate::cri::{connect, pod_config, pull_default, Clients, Daemon, Scratch};
use crate::fixtures::{bundle, copy_tree, work_dir};

/// The steps each script times, in order.
const STEPS: [&str; 5] = ["write", "read", "create", "stat", "unlink"];
/// Where the work runs.
const PLACES: [&str; 4] = ["vpod-share", "vpod-disk", "vpod-emptydir", "runc"];

/// The settings of one run.
pub struct VolumeIoBench {
    pub runs: usize,
    pub mib: u64,
    pub files: u64,
    pub pod_mib: u64,
    pub host: String,
}

/// The script: in `dir`, each step's `NAME START END` line; `drop` between writing and
/// reading.
fn script(dir: &str, mib: u64, files: u64, drop: &str) -> String {
    format!(
        "set -e; d={dir}/vpod-bench-io; rm -rf $d; mkdir -p $d/m; \
         read a r < /proc/uptime; dd if=/dev/zero of=$d/big bs=1M count={mib} conv=fsync \
         2>/dev/null; read b r < /proc/uptime; echo write $a $b; \
         sync; {drop}; \
         read a r < /proc/uptime; n=$(dd if=$d/big of=/dev/null bs=1M 2>&1 | grep -c \
         '^{mib}+0 records in'); read b r < /proc/uptime; [ $n = 1 ]; echo read $a $b; \
         read a r < /proc/uptime; i=0; while [ $i -lt {files} ]; do echo x > $d/m/f$i; \
         i=$((i+1)); done; read b r < /proc/uptime; echo create $a $b; \
         sync; {drop}; \
         read a r < /proc/uptime; i=0; while [ $i -lt {files} ]; do [ -f $d/m/f$i ]; \
         i=$((i+1)); done; read b r < /proc/uptime; echo stat $a $b; \
         read a r < /proc/uptime; rm -r $d/m; read b r < /proc/uptime; echo unlink $a $b; \
         rm -rf $d"
    )
}

/// Milliseconds per step from the script's lines.
fn parse(output: &str) -> Result<BTreeMap<&'static str, f64>> {
    let mut out = BTreeMap::new();
    for step in STEPS {
        let line = output
            .lines()
            .find_map(|l| l.strip_prefix(step)?.strip_prefix(' '))
            .with_context(|| format!("no {step:?} line in the script's output:\n{output}"))?;
        let times: Vec<f64> = line
            .split_whitespace()
            .map(|w| w.parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{step}: {line:?} is not two uptimes"))?;
        let [a, b] = times[..] else {
            bail!("{step}: {line:?} is not two uptimes");
        };
        out.insert(step, (b - a) * 1e3);
    }
    Ok(out)
}

/// The container of the vpod sides: sleeps; `/vol` is the host directory `volume`, `/empty`
/// the emptyDir-shaped `empty_dir`.
fn worker(image: &str, volume: &Path, empty_dir: &Path) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "io".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: ["sleep", "100000"].map(String::from).to_vec(),
        mounts: vec![
            Mount {
                container_path: "/vol".into(),
                host_path: volume.display().to_string(),
                ..Default::default()
            },
            Mount {
                container_path: "/empty".into(),
                host_path: empty_dir.display().to_string(),
                ..Default::default()
            },
        ],
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                capabilities: Some(Capability {
                    add_capabilities: vec!["SYS_ADMIN".into()],
                    ..Default::default()
                }),
                // Not the default list, which has /proc/sys: drop_caches must be writable.
                readonly_paths: vec!["/proc/sysrq-trigger".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn exec(clients: &mut Clients, container: &str, script: &str) -> Result<String> {
    let reply = clients
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: ["sh", "-c", script].map(String::from).to_vec(),
            timeout: 1800,
        })
        .await
        .context("ExecSync of the I/O script")?
        .into_inner();
    let out = String::from_utf8_lossy(&reply.stdout).into_owned();
    if reply.exit_code != 0 {
        bail!(
            "the I/O script exited {} in the pod:\n{out}{}",
            reply.exit_code,
            String::from_utf8_lossy(&reply.stderr)
        );
    }
    Ok(out)
}

/// `runc run` of the script with `volume` bound at `/vol`; its stdout.
fn runc(repo: &Path, scratch: &Path, run: usize, volume: &Path, script: &str) -> Result<String> {
    let work = work_dir(repo);
    let rootfs = scratch.join("rootfs");
    if !rootfs.exists() {
        copy_tree(&work.join("rootfs"), &rootfs)
            .context("copying the runc root filesystem (run `vpod-bench prepare` first)")?;
    }
    let dir = scratch.join(format!("bundle-{run}"));
    bundle(&work, &dir, &rootfs, &["sh", "-c", script])?;
    let config = dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config)?)?;
    spec["mounts"]
        .as_array_mut()
        .context("the runc template has no mounts")?
        .push(serde_json::json!({
            "destination": "/vol",
            "type": "bind",
            "source": volume.display().to_string(),
            "options": ["rbind", "rw"],
        }));
    spec["process"]["terminal"] = false.into();
    std::fs::write(&config, serde_json::to_vec_pretty(&spec)?)?;
    let id = format!("vpod-bench-io-{}-{run}", std::process::id());
    let out = Command::new("runc")
        .args(["run", "--bundle"])
        .arg(&dir)
        .arg(&id)
        .stdin(Stdio::null())
        .output()
        .context("runc run")?;
    let _ = Command::new("runc")
        .args(["delete", "--force", &id])
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "runc run of the I/O script: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

pub fn volume_io(repo: &Path, bench: &VolumeIoBench) -> Result<Vec<Row>> {
    let scratch = Scratch::new("volume-io")?;
    let (volume, runc_dir) = (scratch.dir.join("volume"), scratch.dir.join("runc-volume"));
    std::fs::create_dir(&volume)?;
    std::fs::create_dir(&runc_dir)?;
    // As the kubelet lays out a pod's emptyDir, on the root file system (not /tmp).
    let kubelet = Scratch::new_in(Path::new("/var/lib"), "kubelet")?;
    let empty_dir = kubelet
        .dir
        .join("pods/uid/volumes/kubernetes.io~empty-dir/scratch");
    std::fs::create_dir_all(&empty_dir)?;
    // The writable disk holds the file and the small files with room to spare.
    let disk_mib = (bench.mib * 2).max(256) + 256;
    let daemon = Daemon::start_configured(
        repo,
        &scratch.dir,
        bench.pod_mib,
        disk_mib,
        "empty_dir_disks = true\n",
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let drop_guest = "echo 3 > /proc/sys/vm/drop_caches";
    let result = rt.block_on(async {
        let mut clients = connect(&daemon.socket).await?;
        let image = pull_default(&mut clients, repo).await?;
        let config = pod_config("volume-io", &scratch.dir.join("logs"));
        let pod = clients
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        let container = clients
            .runtime
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(worker(&image, &volume, &empty_dir)),
                sandbox_config: Some(config),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        clients
            .runtime
            .start_container(StartContainerRequest {
                container_id: container.clone(),
            })
            .await
            .context("StartContainer")?;
        let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
        for run in 0..bench.runs {
            for turn in 0..PLACES.len() {
                let place = PLACES[(run + turn) % PLACES.len()];
                let out = match place {
                    "vpod-share" => {
                        let s = script("/vol", bench.mib, bench.files, drop_guest);
                        exec(&mut clients, &container, &s).await?
                    }
                    "vpod-disk" => {
                        let s = script("/io", bench.mib, bench.files, drop_guest);
                        exec(&mut clients, &container, &s).await?
                    }
                    "vpod-emptydir" => {
                        let s = script("/empty", bench.mib, bench.files, drop_guest);
                        exec(&mut clients, &container, &s).await?
                    }
                    _ => {
                        let s = script("/vol", bench.mib, bench.files, "true");
                        runc(repo, &scratch.dir, run, &runc_dir, &s)?
                    }
                };
                let times = parse(&out)?;
                eprintln!("volume-io: run {run} {place}: {times:?} ms");
                for (step, ms) in times {
                    samples.entry((place, step)).or_default().push(ms);
                }
            }
        }
        clients
            .runtime
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await
            .context("RemovePodSandbox")?;
        Ok::<_, anyhow::Error>(samples)
    });
    let samples = result.with_context(|| format!("vpod-cri's log ends:\n{}", daemon.log_tail()))?;
    drop(kubelet);
    let mut rows = Vec::new();
    for place in PLACES {
        for step in STEPS {
            let ms = &samples[&(place, step)];
            let (bench_name, config) = match step {
                "write" | "read" => (format!("volume_seq_{step}"), format!("{}m", bench.mib)),
                _ => (
                    format!("volume_meta_{step}"),
                    format!("{}files", bench.files),
                ),
            };
            let mut row = Row::timing(&bench_name, place, &config, &bench.host, ms);
            if matches!(step, "write" | "read") {
                row.mb_s = summarize(ms).map(|s| (bench.mib as f64 * 1048.576) / s.p50);
            }
            rows.push(row);
        }
    }
    print!("{}", table(&rows));
    let p50 = |place: &str, step: &str| summarize(&samples[&(place, step)]).map(|s| s.p50);
    for step in STEPS {
        if let (Some(share), Some(disk), Some(host)) = (
            p50("vpod-share", step),
            p50("vpod-disk", step),
            p50("runc", step),
        ) {
            println!(
                "volume-io {step}: share {share:.0} ms, guest disk {disk:.0} ms, runc {host:.0} ms; \
                 share speed / disk speed {:.2}x, share / runc {:.2}x",
                disk / share,
                host / share
            );
        }
    }
    for step in STEPS {
        if let (Some(share), Some(empty_dir), Some(disk)) = (
            p50("vpod-share", step),
            p50("vpod-emptydir", step),
            p50("vpod-disk", step),
        ) {
            println!(
                "volume-io {step}: emptyDir on its disk {empty_dir:.0} ms; emptyDir speed / share \
                 speed {:.2}x, / guest disk speed {:.2}x",
                share / empty_dir,
                disk / empty_dir
            );
        }
    }
    write_jsonl(&repo.join("bench/results"), "volume-io", &rows)?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_is_read_from_the_script_s_lines() {
        let out = "write 10.00 12.50\nread 12.60 13.10\ncreate 1 2\nstat 2 2.25\nunlink 3 3.5\n";
        let times = parse(out).unwrap();
        assert_eq!(times["write"], 2500.0);
        assert_eq!(times["stat"], 250.0);
        assert!(parse("write 1 2\n").is_err());
        assert!(parse("write 1\nread 1 2\ncreate 1 2\nstat 1 2\nunlink 1 2\n").is_err());
    }
}
