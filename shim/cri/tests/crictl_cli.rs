//! `vpod-crictl` against a running `vpod-cri`, for the calls that boot no VM (so this runs
//! on any machine): version, pull, images, inspect and update of nothing, rmi, and the
//! client-side refusal of a bad config file and of bad update flags. The pod flows with VMs are `shim/cri/demo.sh` (`make demo`).

mod common;

use std::process::{Command, Output};

use common::{default_image, Daemon};
use vpod_e2e::built;

fn crictl(daemon: &Daemon, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpod-crictl"))
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", daemon.socket.display()))
        .args(args)
        .output()
        .expect("vpod-crictl runs")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "vpod-crictl failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn crictl_pulls_lists_and_removes_an_image_and_refuses_a_misspelt_config() {
    built("target/release/vpod-cri");
    built("build/images/default/index.json");
    let daemon = Daemon::start("crictl");

    let version = stdout(&crictl(&daemon, &["version"]));
    assert!(version.contains("RuntimeName:  vpod"), "{version}");
    assert!(version.contains("RuntimeApiVersion:  v1"), "{version}");

    let pulled = stdout(&crictl(&daemon, &["pull", &default_image()]));
    let id = pulled
        .trim()
        .strip_prefix("Image is up to date for ")
        .unwrap_or_else(|| panic!("unexpected pull output {pulled:?}"))
        .to_string();
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(stdout(&crictl(&daemon, &["images", "-q"])).trim(), id);
    let endpoint = format!("unix://{}", daemon.socket.display());
    let both = crictl(&daemon, &["--image-endpoint", &endpoint, "images", "-q"]);
    assert_eq!(stdout(&both).trim(), id);
    assert!(stdout(&crictl(&daemon, &["pods", "-q"])).trim().is_empty());
    assert!(stdout(&crictl(&daemon, &["ps", "-a", "-q"]))
        .trim()
        .is_empty());

    let missing = crictl(&daemon, &["inspect", "0123456789abcdef"]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("NotFound"), "{err}");

    let update = crictl(
        &daemon,
        &["update", "--memory", "67108864", "0123456789abcdef"],
    );
    assert!(!update.status.success());
    let err = String::from_utf8_lossy(&update.stderr);
    assert!(
        err.contains("UpdateContainerResources failed: NotFound"),
        "{err}"
    );
    // Bad command lines are clap's usage errors: status 2, before any call.
    for (args, said) in [
        (
            &["update", "0123456789abcdef"][..],
            "required arguments were not provided",
        ),
        (
            &["update", "--memory", "lots", "0123456789abcdef"][..],
            "invalid value 'lots' for '--memory <BYTES>': needs a positive whole number",
        ),
        (
            &["update", "--cpus", "2", "0123456789abcdef"][..],
            "unexpected argument '--cpus'",
        ),
    ] {
        let refused = crictl(&daemon, args);
        assert_eq!(refused.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains(said), "{args:?}: {err}");
    }

    let dir = daemon.root.parent().expect("the scratch directory");
    let bad = dir.join("pod.json");
    std::fs::write(
        &bad,
        r#"{"metadata": {"name": "p"}, "log_directry": "/tmp"}"#,
    )
    .unwrap();
    let refused = crictl(&daemon, &["runp", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("log_directry"), "{err}");
    assert!(stdout(&crictl(&daemon, &["pods", "-q"])).trim().is_empty());

    stdout(&crictl(&daemon, &["rmi", &id]));
    assert!(stdout(&crictl(&daemon, &["images", "-q"]))
        .trim()
        .is_empty());
}
