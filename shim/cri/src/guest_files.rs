//! Files the runtime writes into each container's root: `/etc/hostname`, `/etc/hosts` and,
//! when the pod has a DNS config, `/etc/resolv.conf`; and CRI mounts of small regular host
//! files (the kubelet's /etc/hosts, /dev/termination-log, ...) copied in at creation.
//!
//! Mounts go through the pod's shared directory (`[pod] volumes`, the default). Without
//! one, a VM shares no filesystem with the host and a file mount is a copy taken when the
//! container is created: later changes on either side are not seen by the other. Directory
//! mounts cannot be copied this way and are reported as skipped.

use std::io::Read;
use std::path::Path;

use vpod_sandbox::container::ContainerFile;
use vpod_sandbox::network_files::{DnsConfig, NetworkIdentity};

use crate::state::{MountRecord, PodRecord};

/// The largest host file a mount copies in.
pub const MAX_MOUNT_FILE: u64 = 1 << 20;

/// The pod's hostname and DNS config as the sandbox writes them.
pub fn network_identity(pod: &PodRecord) -> NetworkIdentity {
    NetworkIdentity {
        hostname: Some(pod.settings.hostname.clone()),
        extra_hosts: Vec::new(),
        dns: DnsConfig {
            servers: pod.settings.dns_servers.clone(),
            searches: pod.settings.dns_searches.clone(),
            options: pod.settings.dns_options.clone(),
        },
    }
}

/// Why a mount was not copied in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedMount {
    pub container_path: String,
    pub why: String,
}

/// The files of a container of `pod`: generated ones first, then the mounted host files
/// (which replace generated ones at the same path).
pub fn container_files(
    pod: &PodRecord,
    mounts: &[MountRecord],
) -> (Vec<ContainerFile>, Vec<SkippedMount>) {
    let mut files = network_identity(pod).files();
    let mut skipped = Vec::new();
    for mount in mounts {
        match read_small_file(Path::new(&mount.host_path)) {
            Ok((content, mode)) => {
                files.retain(|f| f.path != mount.container_path);
                files.push(ContainerFile {
                    path: mount.container_path.clone(),
                    content,
                    mode,
                });
            }
            Err(why) => skipped.push(SkippedMount {
                container_path: mount.container_path.clone(),
                why,
            }),
        }
    }
    (files, skipped)
}

fn read_small_file(path: &Path) -> Result<(Vec<u8>, u32), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is not a regular file; directory volumes cannot be shared with a VM pod yet",
            path.display()
        ));
    }
    if meta.len() > MAX_MOUNT_FILE {
        return Err(format!(
            "{} is larger than {MAX_MOUNT_FILE} bytes",
            path.display()
        ));
    }
    let mut content = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_MOUNT_FILE).read_to_end(&mut content))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((content, meta.permissions().mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PodSettings;

    fn pod() -> PodRecord {
        PodRecord {
            id: "p".into(),
            settings: PodSettings {
                name: "web".into(),
                uid: "u".into(),
                namespace: "ns".into(),
                hostname: "web-0".into(),
                dns_servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
                dns_searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
                dns_options: vec!["ndots:5".into()],
                ..Default::default()
            },
            created_at_ns: 1,
            vcpus: 1,
            memory_mib: 128,
            phase: crate::state::PodPhase::Ready,
            reason: String::new(),
            network: None,
            cgroup: None,
        }
    }

    #[test]
    fn resolv_conf_has_searches_servers_and_options() {
        assert_eq!(
            network_identity(&pod()).resolv_conf().unwrap(),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\n\
             nameserver 10.0.0.11\noptions ndots:5\n"
        );
        let mut bare = pod();
        bare.settings.dns_servers.clear();
        bare.settings.dns_searches.clear();
        bare.settings.dns_options.clear();
        assert_eq!(network_identity(&bare).resolv_conf(), None);
    }

    #[test]
    fn generated_files_name_the_host() {
        let (files, skipped) = container_files(&pod(), &[]);
        assert!(skipped.is_empty());
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/etc/hostname", "/etc/hosts", "/etc/resolv.conf"]);
        assert_eq!(files[0].content, b"web-0\n");
        assert!(String::from_utf8_lossy(&files[1].content).contains("127.0.1.1\tweb-0"));
    }

    #[test]
    fn small_file_mounts_are_copied_and_replace_generated_files() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts");
        std::fs::write(&hosts, "1.2.3.4 db\n").unwrap();
        let mounts = [
            MountRecord {
                container_path: "/etc/hosts".into(),
                host_path: hosts.display().to_string(),
                readonly: false,
                host_to_container: false,
            },
            MountRecord {
                container_path: "/data".into(),
                host_path: dir.path().display().to_string(),
                readonly: false,
                host_to_container: false,
            },
            MountRecord {
                container_path: "/missing".into(),
                host_path: dir.path().join("nope").display().to_string(),
                readonly: true,
                host_to_container: false,
            },
        ];
        let (files, skipped) = container_files(&pod(), &mounts);
        let hosts_files: Vec<_> = files.iter().filter(|f| f.path == "/etc/hosts").collect();
        assert_eq!(hosts_files.len(), 1);
        assert_eq!(hosts_files[0].content, b"1.2.3.4 db\n");
        let skipped: Vec<&str> = skipped.iter().map(|s| s.container_path.as_str()).collect();
        assert_eq!(skipped, ["/data", "/missing"]);
    }
}
