//! A CRI CreateContainer request and its pod, merged with the image into the OCI runtime
//! spec the sandbox runs: the image's process with the request's command, args, env,
//! working directory and user, then the security context (capabilities, read-only root,
//! no_new_privs, supplemental groups, masked and read-only paths, the PID namespace, the
//! seccomp profile), the
//! resources, and the pod's hostname and sysctls.

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxNamespaceType, LinuxResources, LinuxResourcesBuilder,
    Mount, MountBuilder, Spec,
};
use vpod_image::runtime_spec::{
    capability_set, change_capabilities, runtime_spec, ProcessOverrides, RuntimeSpecError,
};
use vpod_image::ImageConfig;

use super::CreateContainer;
use crate::runtime::{error_chain, RuntimeError};
use crate::state::{ContainerLimits, MountRecord, PodRecord};

/// The CRI mounts as the runtime spec's bind mounts, as containerd makes them: recursive,
/// read-only when asked, private or (HostToContainer) slave. The sandbox binds them through
/// the pod's shared directory.
pub fn bind_mounts(mounts: &[MountRecord]) -> Result<Vec<Mount>, RuntimeError> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if !m.host_path.starts_with('/') {
                return Err(RuntimeError::invalid(
                    format!("config.mounts[{i}].host_path"),
                    format!(
                        "the mount at {} has the host path {:?}, which is not absolute",
                        m.container_path, m.host_path
                    ),
                ));
            }
            let mut options = vec!["rbind".to_string()];
            options.push(if m.readonly { "ro" } else { "rw" }.to_string());
            options.push(
                if m.host_to_container {
                    "rslave"
                } else {
                    "rprivate"
                }
                .to_string(),
            );
            MountBuilder::default()
                .destination(&m.container_path)
                .source(&m.host_path)
                .typ("bind")
                .options(options)
                .build()
                .map_err(|e| RuntimeError::invalid(format!("config.mounts[{i}]"), e.to_string()))
        })
        .collect()
}

/// The runtime spec of `request`'s container in `pod`, from `image`'s config; `user` is
/// the request's "USER[:GROUP]" override, if any.
pub fn container_spec(
    image: &ImageConfig,
    request: &CreateContainer,
    pod: &PodRecord,
    user: Option<String>,
) -> Result<Spec, RuntimeError> {
    let overrides = ProcessOverrides {
        entrypoint: (!request.command.is_empty()).then(|| request.command.clone()),
        command: request.args.clone(),
        env: request.env.clone(),
        workdir: (!request.working_dir.is_empty()).then(|| request.working_dir.clone()),
        user,
    };
    let mut spec = runtime_spec(image, &overrides).map_err(|e| match e {
        RuntimeSpecError::Process(m) => RuntimeError::invalid("config", m.to_string()),
        other => RuntimeError::invalid("config", error_chain(&other)),
    })?;
    spec.set_hostname(Some(pod.settings.hostname.clone()));

    let mut process = spec.process().clone().unwrap_or_default();
    let mut user = process.user().clone();
    user.set_additional_gids(Some(request.supplemental_groups.clone()));
    process.set_user(user);
    let current = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().clone())
        .unwrap_or_default();
    let capabilities = change_capabilities(
        &current,
        &request.add_capabilities,
        &request.drop_capabilities,
    )
    .map_err(|e| {
        RuntimeError::invalid("config.linux.security_context.capabilities", e.to_string())
    })?;
    let names: Vec<String> = capabilities.iter().map(|c| c.to_string()).collect();
    let seccomp = request.seccomp.profile(&names)?;
    process.set_capabilities(Some(capability_set(capabilities)));
    process.set_no_new_privileges(Some(request.no_new_privs));
    if request.tty {
        // As containerd's WithTTY: a terminal, and TERM for programs that look for one.
        process.set_terminal(Some(true));
        let mut env = process.env().clone().unwrap_or_default();
        if !env.iter().any(|kv| kv.starts_with("TERM=")) {
            env.push("TERM=xterm".to_string());
        }
        process.set_env(Some(env));
    }
    spec.set_process(Some(process));

    if let Some(mut root) = spec.root().clone() {
        root.set_readonly(Some(request.readonly_rootfs));
        spec.set_root(Some(root));
    }

    let mut linux = spec.linux().clone().unwrap_or_default();
    if request.share_pod_pid {
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        linux.set_namespaces(Some(
            namespaces
                .into_iter()
                .filter(|n| n.typ() != LinuxNamespaceType::Pid)
                .collect(),
        ));
    }
    // Empty lists: the guest's defaults (containerd's), as before the spec carried them.
    linux.set_masked_paths(non_empty(&request.masked_paths));
    linux.set_readonly_paths(non_empty(&request.readonly_paths));
    linux.set_sysctl(Some(pod.settings.sysctls.clone()));
    linux.set_resources(Some(resources(&request.settings.limits)));
    linux.set_seccomp(seccomp);
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn non_empty(paths: &[String]) -> Option<Vec<String>> {
    (!paths.is_empty()).then(|| paths.to_vec())
}

/// The spec's resources for CRI's limits; zeros stay unset.
pub fn resources(limits: &ContainerLimits) -> LinuxResources {
    let mut cpu = LinuxCpuBuilder::default();
    if limits.cpu_shares != 0 {
        cpu = cpu.shares(limits.cpu_shares);
    }
    if limits.cpu_quota_us != 0 {
        cpu = cpu.quota(limits.cpu_quota_us);
    }
    if limits.cpu_period_us != 0 {
        cpu = cpu.period(limits.cpu_period_us);
    }
    let mut resources = LinuxResourcesBuilder::default();
    if let Ok(cpu) = cpu.build() {
        resources = resources.cpu(cpu);
    }
    if limits.memory_limit_bytes != 0 {
        if let Ok(memory) = LinuxMemoryBuilder::default()
            .limit(limits.memory_limit_bytes)
            .build()
        {
            resources = resources.memory(memory);
        }
    }
    resources.build().unwrap_or_default()
}
