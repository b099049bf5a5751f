//! Requests past what any pod can have are refused up front with InvalidArgument naming the
//! field, no VM started and the daemon still answering: absurd CPU and memory limits, a
//! container with 100,000 mounts or an environment the guest's execve would refuse; a
//! request over 16 MiB is refused before it is decoded. None of this boots a guest, so it
//! runs on any machine.

mod common;

use common::{container_config, pod_config, Daemon};
use vpod_e2e::built;
use vpod_proto::cri::*;

fn resources(cpu_quota: i64, memory: i64) -> LinuxContainerResources {
    LinuxContainerResources {
        cpu_quota,
        cpu_period: 100_000,
        memory_limit_in_bytes: memory,
        ..Default::default()
    }
}

fn assert_invalid(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(field), "{}", status.message());
}

#[tokio::test]
async fn absurd_requests_are_refused_before_anything_is_made() {
    built("target/release/vpod-cri");
    let daemon = Daemon::start("bounds");
    let mut c = daemon.connect().await;

    // A pod asking for a million CPUs, or 2^60 bytes, or an overhead of them.
    let mut pod = pod_config("absurd", &daemon.log_dir);
    for (linux, field) in [
        (
            LinuxPodSandboxConfig {
                resources: Some(resources(100_000_000_000, 0)),
                ..Default::default()
            },
            "config.linux.resources.cpu_quota",
        ),
        (
            LinuxPodSandboxConfig {
                resources: Some(resources(0, 1 << 60)),
                ..Default::default()
            },
            "config.linux.resources.memory_limit_in_bytes",
        ),
        (
            LinuxPodSandboxConfig {
                overhead: Some(resources(0, i64::MAX)),
                ..Default::default()
            },
            "config.linux.overhead.memory_limit_in_bytes",
        ),
    ] {
        pod.linux = Some(linux);
        let result = c
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await;
        assert_invalid(result, field);
    }
    assert!(daemon.vmm_pids().is_empty(), "a VM was started");
    assert!(
        daemon.sandbox_dirs().is_empty(),
        "{:?}",
        daemon.sandbox_dirs()
    );

    // Containers: checked before their pod is even looked up.
    let create = |config: ContainerConfig| CreateContainerRequest {
        pod_sandbox_id: "no-such-pod".into(),
        config: Some(config),
        sandbox_config: None,
    };
    let mut many_mounts = container_config("mounts", "busybox", &["true"]);
    many_mounts.mounts = (0..100_000)
        .map(|i| Mount {
            container_path: format!("/m/{i}"),
            host_path: "/tmp".into(),
            ..Default::default()
        })
        .collect();
    assert_invalid(
        c.runtime.create_container(create(many_mounts)).await,
        "config.mounts",
    );
    let mut big_env = container_config("env", "busybox", &["true"]);
    big_env.envs = (0..30)
        .map(|i| KeyValue {
            key: format!("V{i}"),
            value: "e".repeat(100 << 10),
        })
        .collect();
    assert_invalid(
        c.runtime.create_container(create(big_env)).await,
        "config.envs",
    );
    let mut huge_quota = container_config("cpu", "busybox", &["true"]);
    huge_quota.linux = Some(LinuxContainerConfig {
        resources: Some(resources(i64::MAX, 0)),
        ..Default::default()
    });
    assert_invalid(
        c.runtime.create_container(create(huge_quota)).await,
        "config.linux.resources.cpu_quota",
    );

    // A 20 MB request is not decoded at all.
    let mut flood = container_config("flood", "busybox", &["true"]);
    flood.envs = vec![KeyValue {
        key: "FLOOD".into(),
        value: "f".repeat(20 << 20),
    }];
    let status = c
        .runtime
        .create_container(create(flood))
        .await
        .expect_err("too large");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    // The daemon lives on.
    let version = c
        .runtime
        .version(VersionRequest::default())
        .await
        .expect("Version after the refusals")
        .into_inner();
    assert_eq!(version.runtime_name, "vpod");
}
