//! Volumes through the CRI in the emulated KVM host: a pod's mounts reach its containers
//! through the pod's shared directory (one virtiofsd per pod). A hostPath directory, a
//! directory two containers share (emptyDir-like), a read-only ConfigMap-like directory
//! updated the way the kubelet's atomic writer does, and a single file (the termination
//! log); what the guest must not reach; bidirectional propagation refused; a daemon
//! restart keeping the volumes; nothing left once the pod is removed. Once the VMM has
//! mapped the pod initrd over the guest pages holding it (a few seconds after the boot),
//! files going both ways through the share still arrive intact. What a guest root may
//! not leave on the host through its share (hardlinks across volumes or to its own files,
//! device nodes, set-user-ID files), and how virtiofsd is confined.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use vpod_proto::cri::*;

/// ExecSync of `sh -c script`: stdout, stderr, exit code.
async fn sh(c: &mut Clients, container: &str, script: &str) -> (String, String, i32) {
    exec_text(c, container, &["sh", "-c", script], 30).await
}

fn mount(container_path: &str, host_path: &Path, readonly: bool) -> Mount {
    Mount {
        container_path: container_path.into(),
        host_path: host_path.display().to_string(),
        readonly,
        ..Default::default()
    }
}

/// The kubelet's atomic writer: the data in a new timestamped directory, `..data` swapped
/// to it by a rename, the visible names links through `..data`.
fn atomic_write(dir: &Path, version: &str, value: &str) {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("key"), value).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if !dir.join("key").exists() {
        std::os::unix::fs::symlink("..data/key", dir.join("key")).unwrap();
    }
}

/// PIDs of live virtiofsd processes whose command line names a path under `dir`.
fn virtiofsd_under(dir: &Path) -> Vec<u32> {
    let inside = format!("{}/", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            stat.contains("(virtiofsd) ")
                && !stat.contains(") Z ")
                && String::from_utf8_lossy(&cmdline).contains(&inside)
        })
        .collect()
}

/// KiB of the pod initrd file mapped into the VMMs under the daemon's `root`.
fn initrd_mapped_kib(daemon: &Daemon) -> u64 {
    let mut kib = 0;
    for pid in daemon.vmm_pids() {
        let pid = vpod_sandbox::vmm::jailed_vmm_of(pid).unwrap_or(pid);
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mut in_initrd = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if first.contains('-') {
                in_initrd = line.ends_with("pod-initrd.img");
            } else if in_initrd && first == "Size:" {
                kib += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    kib
}

/// 8 MiB of bytes that differ from page to page, none of them all zeros.
fn patterned(seed: u32) -> Vec<u8> {
    (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8 | 1)
        .collect()
}

/// mountinfo's options of the mounts under `dir`: (mount point, options).
fn mount_options_under(dir: &Path) -> Vec<(String, String)> {
    let inside = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let (point, options) = (fields.get(4)?, fields.get(5)?);
            point
                .starts_with(&inside)
                .then(|| (point.to_string(), options.to_string()))
        })
        .collect()
}

#[test]
fn volumes_reach_the_pod_vm_through_its_share() {
    in_guest_host(
        "volumes_reach_the_pod_vm_through_its_share",
        Duration::from_secs(600),
        || async {
            let mut daemon = Daemon::start("volumes");
            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let host = daemon.root.parent().unwrap().join("host");
            let data = host.join("data");
            let shared = host.join("shared");
            let config = host.join("config");
            std::fs::create_dir_all(&data).unwrap();
            std::fs::create_dir_all(&shared).unwrap();
            std::fs::create_dir_all(&config).unwrap();
            std::fs::write(data.join("hello.txt"), "from the host\n").unwrap();
            // Outside every volume: a symlink in one must not lead the guest to it.
            let secret = host.join("secret");
            std::fs::write(&secret, "host secret 5f1d\n").unwrap();
            std::os::unix::fs::symlink(&secret, data.join("leak")).unwrap();
            std::os::unix::fs::symlink("../secret", data.join("leak-relative")).unwrap();
            std::os::unix::fs::symlink("/etc/shadow", data.join("shadow")).unwrap();
            atomic_write(&config, "v1", "one");
            let termination_log = host.join("termination-log");
            std::fs::write(&termination_log, "").unwrap();

            let pod = pod_config("volumes", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let sandbox_dir = daemon.root.join("sandboxes").join(&pod_id);
            // virtiofsd's sandbox is a parent and its child in new namespaces.
            assert!(
                !virtiofsd_under(&daemon.root).is_empty(),
                "the pod's virtiofsd"
            );

            let mut writer = container_config("writer", &image, &["sleep", "3600"]);
            writer.mounts = vec![
                mount("/data", &data, false),
                mount("/shared", &shared, false),
                mount("/config", &config, true),
                mount("/dev/termination-log", &termination_log, false),
            ];
            let writer = start_container(&mut c, &pod_id, &pod, writer).await;
            let mut reader = container_config("reader", &image, &["sleep", "3600"]);
            reader.mounts = vec![mount("/shared", &shared, false)];
            let reader = start_container(&mut c, &pod_id, &pod, reader).await;

            // A hostPath directory is visible.
            let (out, err, code) = sh(&mut c, &writer, "cat /data/hello.txt").await;
            assert_eq!((out.as_str(), code), ("from the host\n", 0), "{err}");

            // One container writes, the other reads, the host has it.
            let (_, err, code) = sh(&mut c, &writer, "echo a wrote > /shared/from-a").await;
            assert_eq!(code, 0, "{err}");
            let (out, err, code) = sh(&mut c, &reader, "cat /shared/from-a").await;
            assert_eq!((out.as_str(), code), ("a wrote\n", 0), "{err}");
            assert_eq!(
                std::fs::read_to_string(shared.join("from-a")).unwrap(),
                "a wrote\n"
            );

            // The read-only volume refuses writes, and is read-only on the host's side too.
            let (out, _, code) = sh(
                &mut c,
                &writer,
                "echo no > /config/new; echo $?; echo changed > /config/..data/key; echo $?",
            )
            .await;
            assert_eq!((out.as_str(), code), ("1\n1\n", 0));
            assert!(!config.join("new").exists());
            assert_eq!(std::fs::read_to_string(config.join("key")).unwrap(), "one");
            let binds = mount_options_under(&sandbox_dir.join("share"));
            assert!(
                binds
                    .iter()
                    .any(|(point, options)| point.contains("/c/") && options.starts_with("ro")),
                "no read-only bind under the share: {binds:?}"
            );

            // A container that may remount its own mounts read-write still cannot write: the
            // host's side of the volume is read-only.
            let mut admin = container_config("admin", &image, &["sleep", "3600"]);
            admin.mounts = vec![mount("/config", &config, true)];
            admin.linux = Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: vec!["SYS_ADMIN".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let admin = start_container(&mut c, &pod_id, &pod, admin).await;
            let (out, err, _) = sh(
                &mut c,
                &admin,
                "mount -o remount,rw /config && echo remounted; echo no > /config/new; echo $?",
            )
            .await;
            assert_eq!(out, "remounted\n1\n", "{err}");
            assert!(err.contains("Read-only file system"), "{err}");
            assert!(!config.join("new").exists());

            // A change on the host (the atomic writer's swap) is seen within seconds.
            let (out, _, _) = sh(&mut c, &writer, "cat /config/key").await;
            assert_eq!(out, "one");
            atomic_write(&config, "v2", "two");
            eventually("the new ConfigMap value", Duration::from_secs(10), || {
                let mut c = c.clone();
                let writer = writer.clone();
                async move { sh(&mut c, &writer, "cat /config/key").await.0 == "two" }
            })
            .await;

            // Symlinks are the guest's to resolve, in the guest: never to the host's files.
            let (out, _, _) = sh(
                &mut c,
                &writer,
                "cat /data/leak /data/leak-relative /data/shadow 2>/dev/null",
            )
            .await;
            assert!(!out.contains("host secret"), "{out}");
            let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
            assert!(
                host_shadow.is_empty() || !out.contains(host_shadow.trim()),
                "{out}"
            );

            // The termination log written in the guest is the host's file.
            let (_, err, code) = sh(&mut c, &writer, "echo bye > /dev/termination-log").await;
            assert_eq!(code, 0, "{err}");
            assert_eq!(std::fs::read_to_string(&termination_log).unwrap(), "bye\n");

            // Bidirectional propagation cannot cross into a VM: refused, naming the mount.
            let mut bidirectional = container_config("bidi", &image, &["sleep", "3600"]);
            let mut m = mount("/bidi", &shared, false);
            m.propagation = MountPropagation::PropagationBidirectional as i32;
            bidirectional.mounts = vec![m];
            let refused = create_container(&mut c, &pod_id, &pod, bidirectional)
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(refused.message().contains("/bidi"), "{}", refused.message());

            // A restarted daemon keeps the pod's volumes and binds new ones.
            daemon.kill9();
            daemon.spawn();
            let mut c = daemon.connect().await;
            let (out, err, code) = sh(&mut c, &writer, "cat /shared/from-a").await;
            assert_eq!((out.as_str(), code), ("a wrote\n", 0), "{err}");
            let mut late = container_config("late", &image, &["sleep", "3600"]);
            late.mounts = vec![mount("/data", &data, true)];
            let late = start_container(&mut c, &pod_id, &pod, late).await;
            let (out, err, code) = sh(&mut c, &late, "cat /data/hello.txt").await;
            assert_eq!((out.as_str(), code), ("from the host\n", 0), "{err}");

            // The VMM maps the pod initrd (3.4 MB) over the guest's retained copy of it and
            // over the agent's pages, whose frames vpod-init reported: both, so more than 5
            // MiB (virtiofsd writes guest RAM through the memfd beside that mapping). What
            // then goes through the share, into fresh guest page cache and back, is intact.
            eventually(
                "the pod initrd's pages shared",
                Duration::from_secs(60),
                || {
                    let kib = initrd_mapped_kib(&daemon);
                    async move { kib >= 5120 }
                },
            )
            .await;
            let into_guest = patterned(1);
            std::fs::write(data.join("big"), &into_guest).unwrap();
            let (out, err, code) = sh(
                &mut c,
                &writer,
                "sha256sum /data/big | cut -d' ' -f1; cp /data/big /shared/back && sync && echo copied",
            )
            .await;
            assert_eq!(code, 0, "{err}");
            let host_sum = String::from_utf8(
                std::process::Command::new("sha256sum")
                    .arg(data.join("big"))
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            let host_sum = host_sum.split_whitespace().next().unwrap_or("").to_string();
            assert_eq!(out, format!("{host_sum}\ncopied\n"), "{err}");
            assert!(
                std::fs::read(shared.join("back")).unwrap() == into_guest,
                "the copy written back through the share differs"
            );

            // Removing a container unbinds its volumes; removing the pod leaves nothing.
            c.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: late.clone(),
                })
                .await
                .expect("RemoveContainer");
            assert!(
                !sandbox_dir.join("share/c").join(&late).exists(),
                "the removed container's volumes are still bound"
            );
            stop_and_remove_pod(&mut c, &pod_id).await;
            assert!(virtiofsd_under(&daemon.root).is_empty());
            assert!(mount_options_under(&daemon.root).is_empty());
            assert!(!sandbox_dir.exists());
            // The volumes' own content is untouched by the cleanup.
            assert_eq!(
                std::fs::read_to_string(data.join("hello.txt")).unwrap(),
                "from the host\n"
            );
            assert!(shared.join("from-a").exists());
        },
    );
}

/// `text` without its ANSI colour sequences (ESC ... m).
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\u{1b}') => in_escape = true,
            (false, c) => out.push(c),
            (true, 'm') => in_escape = false,
            (true, _) => {}
        }
    }
    out
}

/// `[pod] volumes = false` leaves a pod as before the share (no virtiofsd, no share
/// directory, no virtio-fs device, so no shared memfd for guest memory); and what the share
/// costs at pod start: RunPodSandbox's time with and without it, and virtiofsd's memory,
/// printed.
#[test]
fn without_volumes_a_pod_has_no_share_and_what_the_share_costs() {
    in_guest_host(
        "without_volumes_a_pod_has_no_share_and_what_the_share_costs",
        Duration::from_secs(600),
        || async {
            for (round, volumes) in [false, true, false, true].into_iter().enumerate() {
                let name = format!("cost-{round}");
                let daemon = Daemon::start_with_config(&name, &format!("volumes = {volumes}\n"));
                let mut c = daemon.connect().await;
                let mut times = Vec::new();
                let mut pods = Vec::new();
                for i in 0..3 {
                    let pod = pod_config(&format!("cost{i}"), &daemon.log_dir);
                    let started = std::time::Instant::now();
                    pods.push(run_pod(&mut c, pod).await);
                    times.push(started.elapsed().as_millis());
                }
                let virtiofsd = virtiofsd_under(&daemon.root);
                let rss: Vec<String> = virtiofsd
                    .iter()
                    .map(|pid| {
                        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                            .unwrap_or_default();
                        let line = status.lines().find(|l| l.starts_with("VmRSS:"));
                        line.and_then(|l| l.split_whitespace().nth(1))
                            .unwrap_or("?")
                            .to_string()
                    })
                    .collect();
                let log = without_colours(&daemon.log());
                let logged = |key: &str| -> Vec<String> {
                    log.split(&format!(" {key}="))
                        .skip(1)
                        .filter_map(|rest| rest.split_whitespace().next().map(str::to_string))
                        .collect()
                };
                println!(
                    "volumes = {volumes}: RunPodSandbox {times:?} ms, VMM start to agent {:?} \
                     ms, share start and mount {:?} ms; virtiofsd RSS (KiB) {rss:?}",
                    logged("vmm_to_agent_ms"),
                    logged("share_ms"),
                );
                for pod in &pods {
                    let dir = daemon.root.join("sandboxes").join(pod);
                    let vmm = std::fs::read_to_string(dir.join("vmm.json")).unwrap();
                    let has_fs = vmm.contains("vpod-share");
                    assert_eq!(dir.join("share").exists(), volumes);
                    assert_eq!(has_fs, volumes, "{vmm}");
                }
                assert_eq!(virtiofsd.is_empty(), !volumes);
            }
        },
    );
}

/// What the host sees of a tree: per path below `dir`, (mode, uid, gid, size, links, rdev);
/// a directory's size is left out (tmpfs counts its entries, a file removed since included).
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, u32, u32, u64, u64, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let name = path.strip_prefix(dir).unwrap().display().to_string();
        let entry = (
            meta.mode(),
            meta.uid(),
            meta.gid(),
            if meta.is_dir() { 0 } else { meta.len() },
            meta.nlink(),
            meta.rdev(),
        );
        out.insert(name, entry);
        if meta.is_dir() {
            for child in std::fs::read_dir(&path).unwrap() {
                stack.push(child.unwrap().path());
            }
        }
    }
    out
}

/// A `/proc/PID/status` field's text.
fn status_field(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Capability numbers of linux/capability.h.
const CAP_FSETID: u32 = 4;
const CAP_MKNOD: u32 = 27;
const CAP_SETFCAP: u32 = 31;

#[test]
fn a_guest_root_leaves_no_links_devices_or_set_id_files_on_the_host() {
    in_guest_host(
        "a_guest_root_leaves_no_links_devices_or_set_id_files_on_the_host",
        Duration::from_secs(600),
        || async {
            let daemon = Daemon::start("escapes");
            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let host = daemon.root.parent().unwrap().join("host");
            let (data, shared, config) =
                (host.join("data"), host.join("shared"), host.join("config"));
            for dir in [&data, &shared, &config] {
                std::fs::create_dir_all(dir).unwrap();
            }
            std::fs::write(data.join("hello"), "hostpath file\n").unwrap();
            std::fs::write(config.join("key"), "read-only\n").unwrap();
            std::os::unix::fs::symlink("/etc/shadow", data.join("shadow")).unwrap();
            let prog = shared.join("prog");
            std::fs::copy("/bin/sh", &prog).unwrap();
            std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o755)).unwrap();
            // Set-user-ID root already (the host's doing): a guest's write must clear it.
            let suid = shared.join("suid");
            std::fs::write(&suid, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();

            let pod = pod_config("escapes", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let sandbox_dir = daemon.root.join("sandboxes").join(&pod_id);
            // The container holds every capability these attempts need, so what refuses
            // them is the host's side, not the guest kernel.
            let mut attacker = container_config("attacker", &image, &["sleep", "3600"]);
            attacker.mounts = vec![
                mount("/data", &data, false),
                mount("/shared", &shared, false),
                mount("/config", &config, true),
            ];
            attacker.linux = Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    capabilities: Some(Capability {
                        add_capabilities: ["MKNOD", "FSETID", "FOWNER", "CHOWN", "SETFCAP"]
                            .map(String::from)
                            .to_vec(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let attacker = start_container(&mut c, &pod_id, &pod, attacker).await;
            let before = snapshot(&host);

            // Each attempt prints its exit status; 0 would be a way out.
            let attempts = [
                // A hardlink across volumes (the host's bind mounts): EXDEV.
                "ln /data/hello /shared/hello",
                "ln /config/key /shared/key",
                // To the guest's own files, or through a symlink resolved in the guest.
                "ln /etc/passwd /shared/passwd",
                "ln -L /data/shadow /shared/shadow",
                // A device node: virtiofsd has no CAP_MKNOD.
                "mknod /shared/null c 1 3",
                "mknod /shared/sda b 8 0",
                // A set-user-ID or set-group-ID mode: our seccomp filter on virtiofsd.
                "chmod 4755 /shared/prog",
                "chmod u+s /shared/prog",
                "chmod 2755 /shared/prog",
                "chmod g+s /shared",
                // The same through the other writable volume.
                "cp /shared/prog /data/prog 2>/dev/null && chmod 4755 /data/prog",
            ];
            for attempt in attempts {
                let (out, err, _) = sh(&mut c, &attacker, &format!("{attempt}; echo $?")).await;
                assert_ne!(out.trim(), "0", "{attempt} succeeded: {err}");
            }
            // The container could do each in its own file system: the capabilities are there.
            let (out, err, _) = sh(
                &mut c,
                &attacker,
                "mknod /tmp/null c 1 3 && cp /bin/busybox /tmp/p && chmod 4755 /tmp/p && \
                 ln /tmp/p /tmp/q && echo done",
            )
            .await;
            assert_eq!(out, "done\n", "{err}");
            let mut after = snapshot(&host);
            // The last attempt's copy is an ordinary file; without its set-user-ID bit.
            if let Some((mode, ..)) = after.remove("data/prog") {
                assert_eq!(mode & 0o6000, 0, "data/prog has mode {mode:o}");
            }
            assert_eq!(before, after, "the host's files changed");

            // A guest's write to a host set-user-ID file clears the bit (as the kernel does
            // for a writer without CAP_FSETID), whatever the guest's kernel asks.
            let (_, err, code) = sh(&mut c, &attacker, "echo 'id' >> /shared/suid").await;
            assert_eq!(code, 0, "{err}");
            let mode = std::fs::metadata(&suid).unwrap().mode();
            assert_eq!(
                mode & 0o6000,
                0,
                "suid has mode {mode:o} after the guest's write"
            );

            // The host's side of every volume is nosuid and nodev.
            let binds = mount_options_under(&sandbox_dir.join("share/c"));
            assert_eq!(binds.len(), 3, "{binds:?}");
            for (point, options) in &binds {
                let options: Vec<&str> = options.split(',').collect();
                assert!(
                    options.contains(&"nosuid") && options.contains(&"nodev"),
                    "{point}: {options:?}"
                );
            }

            // virtiofsd: its own sandbox (a PID namespace of its own: its server is PID 1
            // there), its seccomp filter on top of ours, no new privileges, and without the
            // capabilities dropped.
            let pids = virtiofsd_under(&daemon.root);
            assert!(!pids.is_empty());
            for &pid in &pids {
                assert_eq!(status_field(pid, "NoNewPrivs"), "1", "virtiofsd {pid}");
                assert_eq!(status_field(pid, "Seccomp"), "2", "virtiofsd {pid}");
            }
            let server = *pids
                .iter()
                .max_by_key(|&&pid| {
                    status_field(pid, "Seccomp_filters")
                        .parse::<u32>()
                        .unwrap_or(0)
                })
                .unwrap();
            let filters: u32 = status_field(server, "Seccomp_filters").parse().unwrap();
            assert!(
                filters >= 2,
                "virtiofsd {server} has {filters} seccomp filters"
            );
            let namespace_pids = status_field(server, "NSpid");
            assert_eq!(
                namespace_pids.split_whitespace().last(),
                Some("1"),
                "NSpid {namespace_pids}"
            );
            let effective = u64::from_str_radix(&status_field(server, "CapEff"), 16).unwrap();
            for cap in [CAP_FSETID, CAP_MKNOD, CAP_SETFCAP] {
                assert_eq!(effective & (1 << cap), 0, "CapEff {effective:x} has {cap}");
            }
            let own_ns = std::fs::read_link("/proc/self/ns/mnt").unwrap();
            let server_ns = std::fs::read_link(format!("/proc/{server}/ns/mnt")).unwrap();
            assert_ne!(
                own_ns, server_ns,
                "virtiofsd shares the host's mount namespace"
            );
            println!(
                "virtiofsd {server}: CapEff {effective:x}, {filters} seccomp filters, NSpid {namespace_pids}"
            );

            c.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod_id.clone(),
                })
                .await
                .expect("RemovePodSandbox");
            assert!(virtiofsd_under(&daemon.root).is_empty());
            assert!(!sandbox_dir.exists());
        },
    );
}

/// A directory shaped as the kubelet's emptyDir of a pod (`<pods>/<uid>/volumes/
/// kubernetes.io~empty-dir/<name>`), on the emulated host's root (an overlay, as a node's
/// disk; /tmp there is a tmpfs, which is a medium "Memory" emptyDir).
fn kubelet_empty_dir(root: &Path, name: &str) -> std::path::PathBuf {
    let dir = root
        .join("pods/uid-1/volumes/kubernetes.io~empty-dir")
        .join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The filesystem type of the mount at `path` inside `container`.
async fn fstype_in(c: &mut Clients, container: &str, path: &str) -> String {
    let (out, err, code) = sh(c, container, &format!("grep ' {path} ' /proc/mounts")).await;
    assert_eq!(code, 0, "no mount at {path}: {err}");
    out.split_whitespace().nth(2).unwrap_or("").to_string()
}

/// Bytes the host file takes on disk.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_plain_empty_dir_lives_on_a_disk_of_its_own_inside_its_host_directory() {
    in_guest_host(
        "a_plain_empty_dir_lives_on_a_disk_of_its_own_inside_its_host_directory",
        Duration::from_secs(600),
        || async {
            // The default image has two layers: one slot is left for a volume disk.
            let mut daemon = Daemon::start_with_config(
                "emptydir",
                "layer_slots = 3\nempty_dir_disks = true\nempty_dir_disk_mib = 256\n",
            );
            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let kubelet = std::path::PathBuf::from(format!(
                "/var/lib/vpod-e2e-kubelet-{}",
                std::process::id()
            ));
            let cache = kubelet_empty_dir(&kubelet, "cache");
            // Used through the share before (something is in it): stays there.
            let used = kubelet_empty_dir(&kubelet, "used");
            std::fs::write(used.join("seed"), "written before\n").unwrap();
            let overflow = kubelet_empty_dir(&kubelet, "overflow");

            let pod = pod_config("emptydir", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let sandbox_dir = daemon.root.join("sandboxes").join(&pod_id);
            let mut writer = container_config("writer", &image, &["sleep", "3600"]);
            writer.mounts = vec![
                mount("/cache", &cache, false),
                mount("/used", &used, false),
                mount("/overflow", &overflow, false),
            ];
            let writer = start_container(&mut c, &pod_id, &pod, writer).await;
            let mut reader = container_config("reader", &image, &["sleep", "3600"]);
            reader.mounts = vec![mount("/cache", &cache, true)];
            let reader = start_container(&mut c, &pod_id, &pod, reader).await;

            // The emptyDir is an ext4 disk in both containers, its image in the host
            // directory; the one used before and the one without a free slot are shared.
            assert_eq!(fstype_in(&mut c, &writer, "/cache").await, "ext4");
            assert_eq!(fstype_in(&mut c, &reader, "/cache").await, "ext4");
            assert_eq!(fstype_in(&mut c, &writer, "/used").await, "virtiofs");
            assert_eq!(fstype_in(&mut c, &writer, "/overflow").await, "virtiofs");
            let (out, _, _) = sh(&mut c, &writer, "cat /used/seed").await;
            assert_eq!(out, "written before\n");
            let image_file = cache.join(".vpod-volume.ext4");
            let names: Vec<_> = std::fs::read_dir(&cache)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(
                names,
                [".vpod-volume.ext4"],
                "the host directory holds the image"
            );
            assert_eq!(std::fs::metadata(&image_file).unwrap().len(), 256 << 20);

            // A subPath of it, which the kubelet prepares on the host directory, cannot
            // be given: refused, naming the setting.
            let sub_path = kubelet.join("pods/uid-1/volume-subpaths/cache/sub/0");
            std::fs::create_dir_all(&sub_path).unwrap();
            let mut sub = container_config("sub", &image, &["sleep", "3600"]);
            sub.mounts = vec![mount("/etc/app", &sub_path, false)];
            let refused = create_container(&mut c, &pod_id, &pod, sub)
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(
                refused.message().contains("empty_dir_disks"),
                "{}",
                refused.message()
            );

            // One container writes, the other reads; the read-only one cannot write.
            let (out, err, code) = sh(
                &mut c,
                &writer,
                "mkdir /cache/d && echo small > /cache/d/note && \
                 dd if=/dev/urandom of=/cache/big bs=1M count=24 2>/dev/null && sync && \
                 md5sum /cache/big",
            )
            .await;
            assert_eq!(code, 0, "{err}");
            let (read, err, code) = sh(&mut c, &reader, "md5sum /cache/big").await;
            assert_eq!((read.as_str(), code), (out.as_str(), 0), "{err}");
            let (out, _, _) = sh(&mut c, &reader, "echo no > /cache/new; echo $?").await;
            assert_eq!(out, "1\n");

            // The kubelet's du of the directory counts what the pod stored, and what the
            // pod deletes is given back (discard punches holes in the image).
            let full = allocated(&image_file);
            assert!(
                full >= 24 << 20,
                "the image takes {full} bytes after 24 MiB"
            );
            let (_, err, code) = sh(&mut c, &writer, "rm /cache/big && sync").await;
            assert_eq!(code, 0, "{err}");
            eventually("the image to shrink", Duration::from_secs(30), || {
                let image_file = image_file.clone();
                let mut c = c.clone();
                let writer = writer.clone();
                async move {
                    // A second sync commits the journal, after which ext4 discards.
                    sh(&mut c, &writer, "sync").await;
                    allocated(&image_file) + (20 << 20) <= full
                }
            })
            .await;

            // The writer goes and a new container gets what was written; so does one made
            // by a restarted daemon.
            c.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: writer.clone(),
                })
                .await
                .expect("RemoveContainer");
            let mut again = container_config("again", &image, &["sleep", "3600"]);
            again.mounts = vec![mount("/cache", &cache, false)];
            let again = start_container(&mut c, &pod_id, &pod, again).await;
            let (out, err, code) = sh(&mut c, &again, "cat /cache/d/note").await;
            assert_eq!((out.as_str(), code), ("small\n", 0), "{err}");
            daemon.kill9();
            daemon.spawn();
            let mut c = daemon.connect().await;
            let mut late = container_config("late", &image, &["sleep", "3600"]);
            late.mounts = vec![mount("/cache", &cache, false)];
            let late = start_container(&mut c, &pod_id, &pod, late).await;
            let (out, err, code) = sh(
                &mut c,
                &late,
                "echo late >> /cache/d/note; cat /cache/d/note",
            )
            .await;
            assert_eq!((out.as_str(), code), ("small\nlate\n", 0), "{err}");

            // After the last container that had it goes, the disk is written back and
            // detached: the image holds what was written, as a host fsck sees it.
            for container in [&reader, &again, &late] {
                c.runtime
                    .remove_container(RemoveContainerRequest {
                        container_id: container.to_string(),
                    })
                    .await
                    .expect("RemoveContainer");
            }
            let check = std::process::Command::new("e2fsck")
                .args(["-fn"])
                .arg(&image_file)
                .output()
                .expect("e2fsck");
            assert!(
                check.status.success(),
                "the detached image is not clean:\n{}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            let listing = std::process::Command::new("debugfs")
                .args(["-R", "cat /d/note"])
                .arg(&image_file)
                .output()
                .expect("debugfs");
            assert_eq!(String::from_utf8_lossy(&listing.stdout), "small\nlate\n");

            stop_and_remove_pod(&mut c, &pod_id).await;
            assert!(mount_options_under(&daemon.root).is_empty());
            assert!(!sandbox_dir.exists());
            // The volume's directory is the kubelet's to remove.
            assert!(image_file.exists());
            std::fs::remove_dir_all(&kubelet).unwrap();
        },
    );
}
