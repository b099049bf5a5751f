//! Seccomp through the CRI in the emulated KVM host: the runtime's default profile (which
//! follows the container's capabilities), a localhost profile from a file on the node (by
//! the `seccomp` field and by the deprecated profile path), unconfined, and the profiles
//! that are refused.

#![allow(deprecated)] // seccomp_profile_path: deprecated, still what critest sends

mod common;

use std::time::Duration;

use common::*;
use vpod_proto::cri::*;

fn with_seccomp(
    config: &mut ContainerConfig,
    path: &str,
    profile: Option<SecurityProfile>,
    add: &[&str],
) {
    config.linux = Some(LinuxContainerConfig {
        security_context: Some(LinuxContainerSecurityContext {
            seccomp_profile_path: path.into(),
            seccomp: profile,
            capabilities: Some(Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// ExecSync of `cmd`: stdout, stderr, exit code.
async fn exec(c: &mut Clients, container: &str, cmd: &[&str]) -> (String, String, i32) {
    exec_text(c, container, cmd, 20).await
}

#[test]
fn seccomp_profiles_are_applied_in_the_pod_vm() {
    in_guest_host(
        "seccomp_profiles_are_applied_in_the_pod_vm",
        Duration::from_secs(400),
        || async {
            let daemon = Daemon::start("seccomp");
            let mut c = daemon.connect().await;
            let image = pull(&mut c, &default_image()).await;
            let pod = pod_config("seccomp", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let profile = daemon.root.join("block-chmod.json");
            std::fs::write(
                &profile,
                r#"{"defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"],
                                  "action": "SCMP_ACT_ERRNO"}]}"#,
            )
            .unwrap();
            let profile = profile.display().to_string();
            let sleeper = |name: &str| container_config(name, &image, &["sleep", "3600"]);
            let seccomp_status = "grep Seccomp: /proc/self/status";

            // The runtime default: filtered; sethostname only with CAP_SYS_ADMIN.
            let mut plain = sleeper("default-plain");
            with_seccomp(&mut plain, "runtime/default", None, &[]);
            let plain = start_container(&mut c, &pod_id, &pod, plain).await;
            let (out, _, _) = exec(&mut c, &plain, &["sh", "-c", seccomp_status]).await;
            assert_eq!(out, "Seccomp:\t2\n");
            let (_, err, code) = exec(&mut c, &plain, &["hostname", "renamed"]).await;
            assert_ne!(code, 0, "{err}");
            let mut admin = sleeper("default-admin");
            with_seccomp(&mut admin, "docker/default", None, &["SYS_ADMIN"]);
            let admin = start_container(&mut c, &pod_id, &pod, admin).await;
            let (out, err, code) = exec(
                &mut c,
                &admin,
                &[
                    "sh",
                    "-c",
                    "hostname renamed && hostname && grep Seccomp: /proc/self/status",
                ],
            )
            .await;
            assert_eq!((out.as_str(), code), ("renamed\nSeccomp:\t2\n", 0), "{err}");

            // A localhost profile by the seccomp field: chmod is refused, the rest runs.
            let mut local = sleeper("localhost");
            with_seccomp(
                &mut local,
                "",
                Some(SecurityProfile {
                    profile_type: security_profile::ProfileType::Localhost as i32,
                    localhost_ref: profile.clone(),
                }),
                &[],
            );
            let local = start_container(&mut c, &pod_id, &pod, local).await;
            let (out, err, code) = exec(
                &mut c,
                &local,
                &["sh", "-c", "touch /tmp/f && chmod 600 /tmp/f; echo $?"],
            )
            .await;
            assert_eq!((out.as_str(), code), ("1\n", 0), "{err}");
            assert!(err.contains("Operation not permitted"), "{err}");

            // The same by the profile path; and unconfined when nothing is asked for.
            let mut by_path = sleeper("by-path");
            with_seccomp(&mut by_path, &format!("localhost/{profile}"), None, &[]);
            let by_path = start_container(&mut c, &pod_id, &pod, by_path).await;
            let (_, err, _) = exec(&mut c, &by_path, &["chmod", "600", "/"]).await;
            assert!(err.contains("Operation not permitted"), "{err}");
            let mut unconfined = sleeper("unconfined");
            with_seccomp(&mut unconfined, "", None, &[]);
            let unconfined = start_container(&mut c, &pod_id, &pod, unconfined).await;
            let (out, _, _) = exec(&mut c, &unconfined, &["sh", "-c", seccomp_status]).await;
            assert_eq!(out, "Seccomp:\t0\n");

            // Refused, naming the field: an unknown form, a relative or missing file, a
            // file that is not a profile, an action the guest cannot take.
            let not_json = daemon.root.join("not-a-profile.json");
            std::fs::write(&not_json, "{ nope").unwrap();
            let notify = daemon.root.join("notify.json");
            std::fs::write(
                &notify,
                r#"{"defaultAction": "SCMP_ACT_ALLOW",
                    "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            )
            .unwrap();
            for (i, path) in [
                profile.clone(),
                "localhost/relative.json".into(),
                "localhost//no/such/profile.json".into(),
                format!("localhost/{}", not_json.display()),
                format!("localhost/{}", notify.display()),
            ]
            .iter()
            .enumerate()
            {
                let mut bad = sleeper(&format!("refused-{i}"));
                with_seccomp(&mut bad, path, None, &[]);
                let refused = create_container(&mut c, &pod_id, &pod, bad)
                    .await
                    .expect_err(path);
                assert_eq!(
                    refused.code(),
                    tonic::Code::InvalidArgument,
                    "{path}: {refused:?}"
                );
                assert!(refused.message().contains("seccomp"), "{path}: {refused:?}");
            }
        },
    );
}
