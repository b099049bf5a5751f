//! Raw block volumes (CRI `devices`) in the emulated KVM host: a disk image file on the
//! host becomes a block device node in the container, attached to one of the pod's disk
//! slots. Writes reach the host's file (also what a container left unsynced when it is
//! removed); without "w" the device is read-only and the host's file stays as it was; a
//! removed container's disk is detached and its slot free for another; what cannot be a
//! disk, and more volumes than slots, are refused by field; a daemon restart keeps them.
//! The emulated host has no loop driver, so the host paths are regular files.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use vpod_proto::cri::*;
use vpod_proto::vmm::VmmClient;

const DISK_BYTES: u64 = 16 << 20;
/// The default image's layers (two) and two block volumes.
const SLOTS: u32 = 4;

async fn sh(c: &mut Clients, container: &str, script: &str) -> (String, String, i32) {
    exec_text(c, container, &["sh", "-c", script], 60).await
}

fn device(host_path: &Path, container_path: &str, permissions: &str) -> Device {
    Device {
        host_path: host_path.display().to_string(),
        container_path: container_path.into(),
        permissions: permissions.into(),
    }
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let file = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// The pod's disk slots that hold a block volume (serial "d-..."): (serial, read-only),
/// as the VMM reports them.
fn volume_slots(sandbox_dir: &Path) -> Vec<(String, bool)> {
    let metrics = VmmClient::new(vpod_sandbox::jail::api_socket(sandbox_dir))
        .metrics()
        .expect("the VMM's metrics");
    metrics
        .block
        .iter()
        .filter(|b| b.slot.is_some() && b.attached && b.serial.starts_with("d-"))
        .map(|b| (b.serial.clone(), b.read_only))
        .collect()
}

async fn container_count(c: &mut Clients) -> usize {
    c.runtime
        .list_containers(ListContainersRequest { filter: None })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers
        .len()
}

#[test]
fn block_volumes_attach_as_disks_and_detach_on_removal() {
    in_guest_host(
        "block_volumes_attach_as_disks_and_detach_on_removal",
        Duration::from_secs(600),
        || async {
            let mut daemon =
                Daemon::start_with_config("devices", &format!("layer_slots = {SLOTS}\n"));
            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let host = daemon.root.parent().unwrap().join("host");
            std::fs::create_dir_all(&host).unwrap();
            let disk = host.join("disk.img");
            let other = host.join("other.img");
            for path in [&disk, &other] {
                std::fs::File::create(path)
                    .unwrap()
                    .set_len(DISK_BYTES)
                    .unwrap();
            }
            let pod = pod_config("devices", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let sandbox_dir = daemon.root.join("sandboxes").join(&pod_id);

            // A read-write volume, held open by the main process so that the page cache
            // stays the container's until it is removed.
            let mut writer = container_config(
                "writer",
                &image,
                &["sh", "-c", "exec 3<>/dev/xvdb; exec sleep 3600"],
            );
            writer.devices = vec![device(&disk, "/dev/xvdb", "mrw")];
            let writer = start_container(&mut c, &pod_id, &pod, writer).await;
            let (out, err, code) = sh(
                &mut c,
                &writer,
                "test -b /dev/xvdb && echo block; dd if=/dev/xvdb bs=1M 2>/dev/null | wc -c",
            )
            .await;
            assert_eq!((out.as_str(), code), ("block\n16777216\n", 0), "{err}");
            assert_eq!(volume_slots(&sandbox_dir).len(), 1);

            // A synced write is on the host's file at once.
            let (_, err, code) = sh(
                &mut c,
                &writer,
                "printf vpod-synced | dd of=/dev/xvdb bs=512 seek=2048 conv=notrunc && sync",
            )
            .await;
            assert_eq!(code, 0, "{err}");
            assert_eq!(read_at(&disk, 2048 * 512, 11), b"vpod-synced");

            // Without "w": read-only. The same file in the other mode is a disk of its own.
            let mut reader = container_config("reader", &image, &["sleep", "3600"]);
            reader.devices = vec![device(&disk, "/dev/disks/ro", "r")];
            let reader = start_container(&mut c, &pod_id, &pod, reader).await;
            let before = std::fs::read(&disk).unwrap();
            let (out, err, code) = sh(
                &mut c,
                &reader,
                "dd if=/dev/disks/ro bs=512 skip=2048 count=1 2>/dev/null | head -c 11; echo; \
                 printf overwritten | dd of=/dev/disks/ro bs=512 seek=4096 conv=notrunc; \
                 echo status=$?",
            )
            .await;
            assert_eq!(code, 0, "{err}");
            assert!(out.starts_with("vpod-synced\n"), "{out} {err}");
            // The guest's device is read-only: the write fails at once, not at writeback.
            assert!(!out.contains("status=0"), "a write succeeded: {out} {err}");
            assert!(err.contains("Operation not permitted"), "{err}");
            assert_eq!(
                std::fs::read(&disk).unwrap(),
                before,
                "the host file changed"
            );
            let mut slots = volume_slots(&sandbox_dir);
            slots.sort_by_key(|(_, ro)| *ro);
            assert_eq!(
                slots.iter().map(|(_, ro)| *ro).collect::<Vec<_>>(),
                vec![false, true]
            );

            // Every slot is in use now: one more volume is refused, naming the limit.
            let mut extra = container_config("extra", &image, &["sleep", "3600"]);
            extra.devices = vec![device(&other, "/dev/xvdc", "rw")];
            let count = container_count(&mut c).await;
            let refused = create_container(&mut c, &pod_id, &pod, extra.clone())
                .await
                .unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument);
            assert!(
                refused.message().contains("config.devices")
                    && refused.message().contains(&format!("{SLOTS} disk slots")),
                "{}",
                refused.message()
            );
            // What cannot be a disk: refused by field, and no container is made.
            for (bad, why) in [
                (host.join("absent.img"), "absent.img"),
                ("/dev/null".into(), "character device"),
            ] {
                let mut config = container_config("bad", &image, &["sleep", "3600"]);
                config.devices = vec![device(&bad, "/dev/xvdd", "rwm")];
                let refused = create_container(&mut c, &pod_id, &pod, config)
                    .await
                    .unwrap_err();
                assert_eq!(refused.code(), tonic::Code::InvalidArgument);
                assert!(
                    refused.message().contains("config.devices[0].host_path")
                        && refused.message().contains(why),
                    "{}",
                    refused.message()
                );
            }
            assert_eq!(container_count(&mut c).await, count);
            assert_eq!(volume_slots(&sandbox_dir).len(), 2);

            // An unsynced write (the main process keeps the device open) reaches the host
            // when the container is removed; its disk is detached, its slot free again.
            let (_, err, code) = sh(
                &mut c,
                &writer,
                "printf vpod-unsynced | dd of=/dev/xvdb bs=512 seek=8192 conv=notrunc",
            )
            .await;
            assert_eq!(code, 0, "{err}");
            c.runtime
                .remove_container(RemoveContainerRequest {
                    container_id: writer.clone(),
                })
                .await
                .expect("RemoveContainer");
            assert_eq!(read_at(&disk, 8192 * 512, 13), b"vpod-unsynced");
            assert_eq!(
                volume_slots(&sandbox_dir)
                    .iter()
                    .map(|(_, ro)| *ro)
                    .collect::<Vec<_>>(),
                vec![true]
            );
            let extra = start_container(&mut c, &pod_id, &pod, extra).await;
            let (_, err, code) = sh(
                &mut c,
                &extra,
                "printf vpod-other | dd of=/dev/xvdc bs=512 seek=1 conv=notrunc && sync",
            )
            .await;
            assert_eq!(code, 0, "{err}");
            assert_eq!(read_at(&other, 512, 10), b"vpod-other");

            // A restarted daemon (kill -9) keeps the volumes and detaches them on removal.
            daemon.kill9();
            daemon.spawn();
            let mut c = daemon.connect().await;
            let (out, err, code) = sh(
                &mut c,
                &reader,
                "dd if=/dev/disks/ro bs=512 skip=8192 count=1 2>/dev/null | head -c 13",
            )
            .await;
            assert_eq!((out.as_str(), code), ("vpod-unsynced", 0), "{err}");
            for id in [&reader, &extra] {
                c.runtime
                    .remove_container(RemoveContainerRequest {
                        container_id: id.to_string(),
                    })
                    .await
                    .expect("RemoveContainer");
            }
            assert_eq!(volume_slots(&sandbox_dir), Vec::new());

            // A volume still attached when the pod goes leaves nothing behind.
            let mut last = container_config("last", &image, &["sleep", "3600"]);
            last.devices = vec![device(&other, "/dev/xvdb", "rw")];
            start_container(&mut c, &pod_id, &pod, last).await;
            assert_eq!(volume_slots(&sandbox_dir).len(), 1);
            stop_and_remove_pod(&mut c, &pod_id).await;
            assert!(!sandbox_dir.exists());
            assert!(daemon.vmm_pids().is_empty());
            assert_eq!(read_at(&other, 512, 10), b"vpod-other");
        },
    );
}
