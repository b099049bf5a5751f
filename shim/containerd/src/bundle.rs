//! The OCI bundle containerd hands the shim: its `config.json`, the CRI plugin's
//! annotations in it, and the spec as the guest takes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

/// The CRI plugin's annotations (containerd's `pkg/cri/annotations`).
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// containerd 1.7 and later: the pod's resources, for sizing its VM.
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("could not read the bundle's runtime spec {0}")]
    Read(PathBuf, #[source] oci_spec::OciSpecError),
}

/// What a container is to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The CRI plugin's sandbox (pause) container: it boots the pod's VM and runs nothing.
    Sandbox,
    /// A container of the CRI pod `sandbox_id`, placed in that pod's VM.
    InPod { sandbox_id: String },
    /// A container without a pod (plain `ctr run`): it gets a VM of its own.
    Alone,
}

/// A bundle's runtime spec and what its annotations say.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub spec: Spec,
    pub role: Role,
}

impl Bundle {
    pub fn read(dir: &Path) -> Result<Bundle, BundleError> {
        let path = dir.join("config.json");
        let spec = Spec::load(&path).map_err(|e| BundleError::Read(path, e))?;
        let role = role(spec.annotations().as_ref());
        Ok(Bundle { spec, role })
    }

    /// The id that groups this container's shim with its pod's: the CRI sandbox id, or the
    /// container's own.
    pub fn group(&self, id: &str) -> String {
        match &self.role {
            Role::InPod { sandbox_id } => sandbox_id.clone(),
            Role::Sandbox | Role::Alone => id.to_owned(),
        }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }
}

fn role(annotations: Option<&HashMap<String, String>>) -> Role {
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    match (get(CONTAINER_TYPE), get(SANDBOX_ID)) {
        (Some("sandbox"), _) => Role::Sandbox,
        (Some(_), Some(sandbox_id)) if !sandbox_id.is_empty() => Role::InPod {
            sandbox_id: sandbox_id.to_owned(),
        },
        _ => Role::Alone,
    }
}

/// Mount destinations the guest sets up itself for every container, whatever the spec
/// says: a bind of the host's here would hide the guest's own.
const GUEST_OWNED: &[&str] = &[
    "/dev/shm",
    "/dev/mqueue",
    "/dev/pts",
    "/dev",
    "/proc",
    "/sys",
];

/// The spec as the guest takes it. containerd writes a runc spec for the host; in a VM:
/// - the kernel file systems (proc, sysfs, the /dev tmpfs, devpts, mqueue, cgroup) are
///   the guest's own, and the pod's /dev/shm is the guest's, so those mounts go; bind
///   mounts (volumes, /etc/hosts, /etc/resolv.conf, the termination log) stay, and
///   reach the guest through the pod's shared directory;
/// - namespaces joined by path (the pause container's network, IPC, UTS and, for a
///   shared process namespace, PID) are the pod VM's: such entries go, so the container
///   shares them with its pod in the guest;
/// - hooks would run on the host, outside the VM: they go.
pub fn guest_spec(mut spec: Spec) -> Spec {
    if let Some(mounts) = spec.mounts().clone() {
        let kept: Vec<_> = mounts
            .into_iter()
            .filter(|m| {
                let destination = m.destination().to_string_lossy();
                let bind = m.typ().as_deref() == Some("bind")
                    || m.options()
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
                bind && !GUEST_OWNED.contains(&destination.trim_end_matches('/'))
            })
            .collect();
        spec.set_mounts(Some(kept));
    }
    if let Some(linux) = spec.linux_mut() {
        if let Some(namespaces) = linux.namespaces().clone() {
            let kept: Vec<_> = namespaces
                .into_iter()
                .filter(|n| n.path().is_none())
                .collect();
            linux.set_namespaces(Some(kept));
        }
    }
    spec.set_hooks(None);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType, MountBuilder};

    #[test]
    fn roles_come_from_the_cri_annotations() {
        let mut a = HashMap::new();
        assert_eq!(role(None), Role::Alone);
        a.insert(CONTAINER_TYPE.to_owned(), "sandbox".to_owned());
        a.insert(SANDBOX_ID.to_owned(), "p1".to_owned());
        assert_eq!(role(Some(&a)), Role::Sandbox);
        a.insert(CONTAINER_TYPE.to_owned(), "container".to_owned());
        assert_eq!(
            role(Some(&a)),
            Role::InPod {
                sandbox_id: "p1".to_owned()
            }
        );
        a.insert(SANDBOX_ID.to_owned(), String::new());
        assert_eq!(role(Some(&a)), Role::Alone);
    }

    #[test]
    fn the_guest_keeps_binds_and_its_own_namespaces() {
        let mut spec = Spec::default();
        let bind = |dst: &str| {
            MountBuilder::default()
                .destination(dst)
                .typ("bind")
                .source("/var/lib/x")
                .options(vec!["rbind".to_owned(), "ro".to_owned()])
                .build()
                .unwrap()
        };
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        mounts.push(bind("/etc/hosts"));
        mounts.push(bind("/dev/shm"));
        spec.set_mounts(Some(mounts));
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut namespaces = linux.namespaces().clone().unwrap_or_default();
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Network)
                .path("/proc/1/ns/net")
                .build()
                .unwrap(),
        );
        linux.set_namespaces(Some(namespaces));

        let guest = guest_spec(spec);
        let destinations: Vec<_> = guest
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().display().to_string())
            .collect();
        assert_eq!(destinations, ["/etc/hosts"]);
        let namespaces = guest
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        assert!(namespaces.iter().all(|n| n.path().is_none()));
        assert!(namespaces
            .iter()
            .any(|n| n.typ() == LinuxNamespaceType::Pid));
    }
}
