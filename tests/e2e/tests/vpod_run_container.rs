//! `vpod run` end to end, what the container sees and what comes back: a pod VM boots, the
//! image's layers are attached, the agent runs the container, and its streams and exit code
//! return; options reach the container's environment, user, files and working directory;
//! written files land on the writable disk; layers merge as OCI says. One emulated host (where
//! guests need one) runs every check here, each with a store root of its own.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vpod_e2e::vpod::VpodRoot;
use vpod_e2e::{guest_mode, in_guest_host, sha256_hex, Checks, GuestMode};

const LIMIT: Duration = Duration::from_secs(900);

#[test]
fn a_container_gets_its_options_streams_exit_code_disk_and_layers() {
    in_guest_host(LIMIT, || {
        Checks::new()
            .check(
                "streams_and_exit_code_come_back_apart",
                streams_and_exit_code,
            )
            .check("env_workdir_user_and_args_reach_the_command", options)
            .check("timings_are_printed_on_stderr", timings)
            .check("files_written_land_on_the_writable_disk", writable_disk)
            .check("a_multi_layer_image_shows_exactly_the_merged_view", layers)
            .check("hostname_hosts_dns_and_named_users_are_set_up", names)
            .check("an_unknown_user_is_a_125_naming_etc_passwd", unknown_user)
            .finish();
    });
}

fn streams_and_exit_code() {
    let root = VpodRoot::new("streams");
    let done = root.run(&["--", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(done.code(), Some(3), "{}", done.explain());
    assert!(done.has_stdout_line("out"), "{}", done.explain());
    assert!(done.has_stderr_line("err"), "{}", done.explain());
    assert!(
        !done.has_stdout_line("err") && !done.has_stderr_line("out"),
        "the streams crossed\n{}",
        done.explain()
    );
}

fn options() {
    let root = VpodRoot::new("options");
    let done = root.run(&[
        "--env",
        "FOO=bar",
        "--env",
        "PATH=/bin",
        "--workdir",
        "/tmp",
        "--user",
        "1000:1001",
        "--",
        "sh",
        "-c",
        r#"echo "foo=$FOO path=$PATH cwd=$(pwd) id=$(id -u):$(id -g) n=$# one=$1""#,
        "zero",
        "a b",
    ]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert!(
        done.has_stdout_line("foo=bar path=/bin cwd=/tmp id=1000:1001 n=1 one=a b"),
        "{}",
        done.explain()
    );
}

fn timings() {
    let root = VpodRoot::new("timings");
    let done = root.run(&["--timings", "--", "true"]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    let timings = done
        .stderr_lines()
        .into_iter()
        .find(|l| l.starts_with("vpod: timings "))
        .unwrap_or_else(|| panic!("no timings line\n{}", done.explain()));
    eprintln!(
        "vpod run true (emulated={}): {timings}",
        guest_mode() == GuestMode::Emulated
    );
}

fn writable_disk() {
    let root = VpodRoot::new("disk");
    // 64 MiB in a 128 MiB guest: impossible if the upper dir lived in RAM.
    let done = root.run(&[
        "--memory",
        "128",
        "--",
        "sh",
        "-c",
        "dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null && sync && echo size=$(wc -c < /big) \
         && grep ' / ' /proc/mounts",
    ]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert!(done.has_stdout_line("size=67108864"), "{}", done.explain());
    // /proc/mounts: device, mount point, type, options.
    let upper_dirs: Vec<String> = done
        .stdout_lines()
        .iter()
        .filter_map(|l| l.split(' ').nth(3))
        .flat_map(|options| options.split(','))
        .filter_map(|o| o.strip_prefix("upperdir="))
        .map(str::to_string)
        .collect();
    assert!(
        upper_dirs.iter().any(|dir| dir.contains("/vpod-rw-")),
        "the root's upper dir is not on the writable disk\n{}",
        done.explain()
    );
}

/// An OCI layout (uncompressed tar layers) built from directories, lowest first.
fn write_oci_layout(dir: &Path, layers: &[&Path], env: &[&str]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let blob = |bytes: &[u8]| -> (String, usize) {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        (format!("sha256:{hex}"), bytes.len())
    };
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let tar = Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(layer)
            .args(["-cf", "-", "."])
            .output()
            .expect("tar runs");
        assert!(tar.status.success(), "tar failed");
        let (digest, size) = blob(&tar.stdout);
        descriptors.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": size,
        }));
        diff_ids.push(digest);
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": env, "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (config_digest, config_size) = blob(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": descriptors,
    });
    let (manifest_digest, manifest_size) = blob(manifest.to_string().as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index.json");
}

fn layers() {
    let root = VpodRoot::new("layers");
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let write = |path: &Path, text: &str| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, text).expect("file");
    };
    let lower = scratch.path().join("l1");
    let upper = scratch.path().join("l2");
    std::fs::create_dir_all(lower.join("bin")).expect("bin");
    std::fs::copy("/bin/busybox", lower.join("bin/busybox"))
        .expect("host busybox (busybox-static)");
    std::os::unix::fs::symlink("busybox", lower.join("bin/sh")).expect("sh link");
    write(&lower.join("a/keep"), "kept\n");
    write(&lower.join("a/gone"), "whited out\n");
    write(&lower.join("a/changed"), "old\n");
    write(&lower.join("d/old1"), "x\n");
    write(&lower.join("d/sub/old2"), "x\n");
    write(&upper.join("a/.wh.gone"), "");
    write(&upper.join("a/changed"), "new\n");
    write(&upper.join("a/added"), "added\n");
    write(&upper.join("d/.wh..wh..opq"), "");
    write(&upper.join("d/new"), "fresh\n");
    let layout = scratch.path().join("image");
    write_oci_layout(&layout, &[&lower, &upper], &["PATH=/bin"]);
    let image = format!("oci:{}:latest", layout.display());
    let done = root.run(&[
        &image,
        "--",
        "sh",
        "-c",
        r#"cd /a && echo a: $(busybox ls -A | busybox tr "\n" " "); echo changed: $(busybox cat changed); cd /d && echo d: $(busybox find . | busybox sort | busybox tr "\n" " ")"#,
    ]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert!(
        done.has_stdout_line("a: added changed keep"),
        "{}",
        done.explain()
    );
    assert!(done.has_stdout_line("changed: new"), "{}", done.explain());
    assert!(done.has_stdout_line("d: . ./new"), "{}", done.explain());
}

fn names() {
    let root = VpodRoot::new("names");
    let done = root.run(&[
        "--hostname",
        "web-1",
        "--add-host",
        "db:10.0.0.2",
        "--dns",
        "10.0.0.10",
        "--user",
        "nobody",
        "--",
        "sh",
        "-c",
        r#"echo "id=$(id -u):$(id -g) home=$HOME host=$(hostname)"; sed "s/^/H:/" /etc/hosts; sed "s/^/R:/" /etc/resolv.conf; sed "s/^/N:/" /etc/hostname"#,
    ]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    for line in [
        "id=65534:65534 home=/nonexistent host=web-1",
        "H:10.0.0.2\tdb",
        "H:127.0.0.1\tlocalhost",
        "R:nameserver 10.0.0.10",
        "N:web-1",
    ] {
        assert!(done.has_stdout_line(line), "{line:?}\n{}", done.explain());
    }
    let done = root.run(&["--user", "nobody:root", "--", "sh", "-c", "id -u; id -g"]);
    assert_eq!(done.code(), Some(0), "{}", done.explain());
    assert_eq!(done.stdout_lines(), ["65534", "0"], "{}", done.explain());
}

fn unknown_user() {
    let root = VpodRoot::new("ghost");
    let done = root.run(&["--user", "ghost", "--", "true"]);
    assert_eq!(done.code(), Some(125), "{}", done.explain());
    assert!(
        done.stderr_lines()
            .iter()
            .any(|l| l.contains("ghost") && l.contains("/etc/passwd")),
        "{}",
        done.explain()
    );
}
