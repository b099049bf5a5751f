//! Images from a real registry through the ImageService: Debian's `docker-registry` on
//! 127.0.0.1 behind basic auth, the embedded image pushed to it with skopeo, pulled with the
//! request's credentials (concurrent pulls done once), run in a pod, removed.

mod common;

use std::time::Duration;

use common::registry::Registry;
use common::*;
use tonic::Code;
use vpod_proto::cri::*;

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

#[test]
fn a_private_image_is_pulled_with_credentials_run_and_removed() {
    in_guest_host(
        "a_private_image_is_pulled_with_credentials_run_and_removed",
        Duration::from_secs(300),
        || async {
            let mut registry = Registry::start(
                std::path::PathBuf::from(format!(
                    "/tmp/vpod-cri-e2e-registry-{}",
                    std::process::id()
                )),
                "alice",
                "s3cret",
            );
            registry.push(&default_image(), "vpod/private:v1");
            let reference = format!("{}/vpod/private:v1", registry.address);
            let daemon = Daemon::start_with_config(
                "images",
                &format!(
                    "[registry]\ninsecure_registries = [\"{}\"]\n",
                    registry.address
                ),
            );
            let mut c = daemon.connect().await;

            // Without credentials the registry says no.
            let refused = c
                .images
                .pull_image(PullImageRequest {
                    image: spec(&reference),
                    auth: None,
                    sandbox_config: None,
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

            // With them, three concurrent pulls give one image.
            let auth = AuthConfig {
                username: "alice".into(),
                password: "s3cret".into(),
                ..Default::default()
            };
            let mut pulls = Vec::new();
            for _ in 0..3 {
                let mut c = c.clone();
                let (reference, auth) = (reference.clone(), auth.clone());
                pulls.push(tokio::spawn(async move {
                    c.images
                        .pull_image(PullImageRequest {
                            image: spec(&reference),
                            auth: Some(auth),
                            sandbox_config: None,
                        })
                        .await
                        .map(|r| r.into_inner().image_ref)
                }));
            }
            let mut ids = Vec::new();
            for pull in pulls {
                ids.push(pull.await.unwrap().expect("PullImage with credentials"));
            }
            assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
            let image_id = ids[0].clone();

            let status = c
                .images
                .image_status(ImageStatusRequest {
                    image: spec(&reference),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner()
                .image
                .expect("the pulled image");
            assert_eq!(status.id, image_id);
            assert!(status.repo_tags.contains(&reference), "{status:?}");
            assert!(status.size > 0);
            let fs = c
                .images
                .image_fs_info(ImageFsInfoRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);

            // Run it by its tag.
            let pod = pod_config("private", &daemon.log_dir);
            let pod_id = run_pod(&mut c, pod.clone()).await;
            let ctr = create_container(
                &mut c,
                &pod_id,
                &pod,
                container_config(
                    "hello",
                    &reference,
                    &["sh", "-c", "cat /etc/vpod-release; echo $GREETING"],
                ),
            )
            .await
            .expect("CreateContainer from the registry image");
            c.runtime
                .start_container(StartContainerRequest {
                    container_id: ctr.clone(),
                })
                .await
                .expect("StartContainer");
            let mut probe = c.clone();
            let id = ctr.clone();
            eventually("the container to exit", Duration::from_secs(30), || {
                let mut probe = probe.clone();
                let id = id.clone();
                async move {
                    container_status(&mut probe, &id).await.state
                        == ContainerState::ContainerExited as i32
                }
            })
            .await;
            let done = container_status(&mut probe, &ctr).await;
            assert_eq!(done.exit_code, 0, "{done:?}");
            assert_eq!(done.image_id, image_id);
            let texts = log_texts(&done.log_path);
            assert!(
                texts.contains(&("stdout".into(), "hello from vpod".into())),
                "{texts:?}"
            );
            c.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod_id,
                })
                .await
                .expect("RemovePodSandbox");

            // rmi by tag; a second rmi is fine.
            for _ in 0..2 {
                c.images
                    .remove_image(RemoveImageRequest {
                        image: spec(&reference),
                    })
                    .await
                    .expect("RemoveImage");
            }
            let listed = c
                .images
                .list_images(ListImagesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .images;
            assert!(listed.is_empty(), "{listed:?}");
        },
    );
}
