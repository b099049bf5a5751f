//! `vpod run` end to end: a pod VM boots, the image's layers are attached, the agent runs
//! the container, and its output and exit code come back; signals, a dying VM, the writable
//! disk and layer merging behave. Each test runs one shell script in one emulated host
//! (where guests need one), with the layer store in a fresh root that the script removes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use vpod_e2e::{
    built, guest_command, guest_mode, repo_root, run_with_limit, sha256_hex, Finished, GuestMode,
};

const LIMIT: Duration = Duration::from_secs(600);

/// A per-test directory under target/, removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = repo_root().join(format!("target/e2e-vpod-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch { dir }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The store root the script uses: a tmpfs in the emulated host (its view of /work/main
/// cannot hold the whiteout devices layer extraction makes), the scratch dir natively.
fn store_root(scratch: &Scratch) -> String {
    match guest_mode() {
        GuestMode::Emulated => format!("/tmp/vpod-e2e-{}", std::process::id()),
        GuestMode::Native => scratch.dir.join("root").display().to_string(),
    }
}

/// Runs `body` where guests boot, with `$VPOD` (`vpod run` with the test's root)
/// and `$R` (the root) defined; kills any VMM left running by its PID and removes the root.
fn run_script(scratch: &Scratch, body: &str) -> Finished {
    built("target/release/vpod");
    built("target/release/vpod-vmm");
    built("build/vmlinux");
    built("build/images/default/index.json");
    let initrd = built("build/initrd.img");
    let root = store_root(scratch);
    let script = format!(
        "R={root}; VPOD=\"target/release/vpod run --root $R --initrd {initrd}\"\n\
         trap 'for p in $R/sandboxes/*/vmm.pid; do [ -f $p ] && kill -9 $(cat $p); done; rm -rf $R $R.*' EXIT\n{body}",
        initrd = initrd.display()
    );
    let mut cmd = guest_command("sh", ["-c", &script]);
    cmd.current_dir(repo_root());
    run_with_limit(&mut cmd, LIMIT)
}

fn explain(done: &Finished) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        done.code(),
        done.stdout_text(),
        done.stderr_text()
    )
}

fn has_line(done: &Finished, want: &str) -> bool {
    done.stdout_text().lines().any(|l| l == want)
}

#[test]
fn output_streams_exit_code_env_cwd_user_and_args_come_through() {
    let scratch = Scratch::new("basic");
    let done = run_script(
        &scratch,
        r#"$VPOD -- sh -c 'echo out; echo err >&2; exit 3' >$R.out 2>$R.err; echo "rc=$?"
sed 's/^/OUT:/' $R.out; sed 's/^/ERR:/' $R.err
$VPOD --env FOO=bar --env PATH=/bin --workdir /tmp --user 1000:1001 -- \
  sh -c 'echo "foo=$FOO path=$PATH cwd=$(pwd) id=$(id -u):$(id -g) n=$# one=$1"' zero 'a b'; echo "rc2=$?"
$VPOD --timings -- true; echo "rc3=$?"
rm -f $R.out $R.err"#,
    );
    let d = &done;
    assert!(has_line(d, "rc=3"), "{}", explain(d));
    assert!(has_line(d, "OUT:out"), "{}", explain(d));
    assert!(has_line(d, "ERR:err"), "{}", explain(d));
    assert!(
        !has_line(d, "OUT:err") && !has_line(d, "ERR:out"),
        "{}",
        explain(d)
    );
    assert!(
        has_line(d, "foo=bar path=/bin cwd=/tmp id=1000:1001 n=1 one=a b"),
        "{}",
        explain(d)
    );
    assert!(has_line(d, "rc2=0"), "{}", explain(d));
    assert!(has_line(d, "rc3=0"), "{}", explain(d));
    let timings = d
        .stderr_text()
        .lines()
        .find(|l| l.starts_with("vpod: timings "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no timings line\n{}", explain(d)));
    eprintln!(
        "vpod run true (emulated={}): {timings}",
        guest_mode() == GuestMode::Emulated
    );
}

#[test]
fn files_written_by_a_container_land_on_the_writable_disk() {
    let scratch = Scratch::new("disk");
    // 64 MiB in a 128 MiB guest: impossible if the upper dir lived in RAM.
    let done = run_script(
        &scratch,
        r#"$VPOD --memory 128 -- sh -c 'dd if=/dev/zero of=/big bs=1M count=64 2>/dev/null && sync && ls -l /big | awk "{print \"size=\" \$5}"; grep " / " /proc/mounts | tr , "\n" | grep upperdir'; echo "rc=$?""#,
    );
    assert!(has_line(&done, "rc=0"), "{}", explain(&done));
    assert!(has_line(&done, "size=67108864"), "{}", explain(&done));
    assert!(
        done.stdout_text()
            .lines()
            .any(|l| l.starts_with("upperdir=") && l.contains("/vpod-rw-")),
        "{}",
        explain(&done)
    );
}

#[test]
fn sigterm_is_forwarded_and_sigkill_follows_the_grace_period() {
    let scratch = Scratch::new("signals");
    // Each container prints "ready" once its trap is set; then vpod gets SIGTERM.
    let done = run_script(
        &scratch,
        r#"stop_when_ready() {
  i=0; until grep -q ready $R.out 2>/dev/null; do sleep 0.2; i=$((i+1)); [ $i -lt 300 ] || break; done
  t0=$(date +%s%N); kill -TERM $1; wait $1; rc=$?; t1=$(date +%s%N)
  echo "$2 rc=$rc ms=$(( (t1 - t0) / 1000000 ))"; rm -f $R.out
}
mkdir -p $R
$VPOD -- sh -c 'trap "echo term; exit 7" TERM; echo ready; while :; do sleep 0.1; done' >$R.out &
stop_when_ready $! polite
$VPOD --stop-timeout 2 -- sh -c 'trap "" TERM; echo ready; while :; do sleep 0.1; done' >$R.out &
stop_when_ready $! stubborn
$VPOD --stop-timeout 20 -- sh -c 'echo ready; top -b -d 1' >$R.out &
stop_when_ready $! top
$VPOD -- sh -c 'grep ^SigIgn /proc/self/status; true'"#,
    );
    let out = done.stdout_text();
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {name} line\n{}", explain(&done)))
    };
    let ms = |l: &str| -> u64 {
        l.rsplit("ms=")
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let polite = line("polite ");
    assert!(polite.starts_with("polite rc=7 "), "{}", explain(&done));
    let stubborn = line("stubborn ");
    assert!(
        stubborn.starts_with("stubborn rc=137 "),
        "{}",
        explain(&done)
    );
    assert!(
        ms(&stubborn) >= 2000,
        "SIGKILL came before the grace period: {stubborn}"
    );
    assert!(ms(&stubborn) < 30_000, "{stubborn}");
    // busybox top, the container's PID 1 (sh execs it), ends on its own SIGTERM handler
    // at once, as under runc: not at the SIGKILL after the grace period.
    let top = line("top ");
    assert!(top.starts_with("top rc=143 "), "{}", explain(&done));
    assert!(ms(&top) < 10_000, "{top}");
    // A container starts with no signal ignored (the agent's SIGPIPE, ignored by Rust's
    // runtime, must not leak into it: `yes | head` relies on SIGPIPE).
    assert!(
        has_line(&done, "SigIgn:\t0000000000000000"),
        "{}",
        explain(&done)
    );
}

#[test]
fn the_vm_dying_under_a_running_container_is_an_error_not_a_hang() {
    let scratch = Scratch::new("vmdies");
    let done = run_script(
        &scratch,
        r#"mkdir -p $R
$VPOD -- sh -c 'echo ready; sleep 1000' >$R.out 2>$R.err &
vpod=$!
i=0; until grep -q ready $R.out 2>/dev/null; do sleep 0.2; i=$((i+1)); [ $i -lt 300 ] || break; done
t0=$(date +%s%N); kill -KILL $(cat $R/sandboxes/*/vmm.pid); wait $vpod; rc=$?; t1=$(date +%s%N)
echo "rc=$rc ms=$(( (t1 - t0) / 1000000 ))"; sed 's/^/ERR:/' $R.err
ls $R/sandboxes | wc -l | sed 's/^/pods-left=/'"#,
    );
    let out = done.stdout_text();
    let rc_line = out
        .lines()
        .find(|l| l.starts_with("rc="))
        .unwrap_or_else(|| panic!("{}", explain(&done)));
    assert!(rc_line.starts_with("rc=125 "), "{}", explain(&done));
    let ms: u64 = rc_line
        .rsplit("ms=")
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(
        ms < 10_000,
        "vpod took {ms} ms to notice\n{}",
        explain(&done)
    );
    assert!(out.contains("The pod's VM ended"), "{}", explain(&done));
    assert!(has_line(&done, "pods-left=0"), "{}", explain(&done));
}

/// An OCI layout (uncompressed tar layers) built from directories, lowest first.
fn write_oci_layout(dir: &Path, layers: &[PathBuf], env: &[&str]) {
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
        descriptors.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":{size}}}"#
        ));
        diff_ids.push(format!("\"{digest}\""));
    }
    let env_json: Vec<String> = env.iter().map(|e| format!("\"{e}\"")).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":[{}],"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        env_json.join(","),
        diff_ids.join(",")
    );
    let (config_digest, config_size) = blob(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{}]}}"#,
        descriptors.join(",")
    );
    let (manifest_digest, manifest_size) = blob(manifest.as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    std::fs::write(
        dir.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"annotations":{{"org.opencontainers.image.ref.name":"latest"}}}}]}}"#
        ),
    )
    .expect("index.json");
}

#[test]
fn a_multi_layer_image_shows_exactly_the_merged_view() {
    let scratch = Scratch::new("layers");
    let write = |path: &Path, text: &str| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
        std::fs::write(path, text).expect("file");
    };
    let lower = scratch.dir.join("l1");
    let upper = scratch.dir.join("l2");
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
    let layout = scratch.dir.join("image");
    write_oci_layout(&layout, &[lower, upper], &["PATH=/bin"]);
    let body = format!(
        r#"$VPOD oci:{}:latest -- sh -c 'cd /a && echo a: $(busybox ls -A | busybox tr "\n" " "); echo changed: $(busybox cat changed); cd /d && echo d: $(busybox find . | busybox sort | busybox tr "\n" " ")'; echo "rc=$?""#,
        layout.display()
    );
    let done = run_script(&scratch, &body);
    assert!(has_line(&done, "rc=0"), "{}", explain(&done));
    assert!(
        has_line(&done, "a: added changed keep"),
        "{}",
        explain(&done)
    );
    assert!(has_line(&done, "changed: new"), "{}", explain(&done));
    assert!(has_line(&done, "d: . ./new"), "{}", explain(&done));
}

#[test]
fn exec_and_a_second_container_share_the_pod_but_not_its_namespaces() {
    let scratch = Scratch::new("pod");
    let done = run_script(
        &scratch,
        r#"V="target/release/vpod"
pod=$($VPOD -d -- sh -c 'echo one > /marker; exec sleep 1000'); echo "pod=$pod"
$VPOD -d --pod $pod --name c2 -- sleep 1000 >/dev/null; echo "second=$?"
$V ps --root $R
$V exec --root $R $pod -- sh -c 'echo exec-out; echo exec-err >&2; exit 5' >$R.o 2>$R.e; echo "exec-rc=$?"
sed 's/^/EO:/' $R.o; sed 's/^/EE:/' $R.e
t0=$(date +%s%N); $V exec --root $R --timeout 1 $pod -- sleep 30; rc=$?; t1=$(date +%s%N)
echo "timeout-rc=$rc ms=$(( (t1 - t0) / 1000000 ))"
ns='echo $(readlink /proc/self/ns/pid) $(readlink /proc/self/ns/mnt) $(cat /marker 2>/dev/null || echo none) $(ps -o comm | grep -c sleep)'
echo "c1: $($V exec --root $R $pod -- sh -c "$ns")"
echo "c2: $($V exec --root $R $pod:c2 -- sh -c "$ns")"
$V rm --root $R $pod; echo "rm=$?"; echo "pods-left=$(ls $R/sandboxes | wc -l)""#,
    );
    let d = &done;
    assert!(has_line(d, "second=0"), "{}", explain(d));
    assert!(has_line(d, "exec-rc=5"), "{}", explain(d));
    assert!(
        has_line(d, "EO:exec-out") && has_line(d, "EE:exec-err"),
        "{}",
        explain(d)
    );
    let out = d.stdout_text();
    let field = |prefix: &str| -> Vec<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line\n{}", explain(d)))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let timeout = field("timeout-rc=");
    assert_ne!(timeout[0], "0", "{}", explain(d));
    let ms: u64 = timeout[1]
        .trim_start_matches("ms=")
        .parse()
        .unwrap_or(u64::MAX);
    assert!(ms < 15_000, "exec --timeout 1 took {ms} ms\n{}", explain(d));
    let (c1, c2) = (field("c1: "), field("c2: "));
    assert_eq!(c1.len(), 4, "{}", explain(d));
    assert_eq!(c2.len(), 4, "{}", explain(d));
    assert_ne!(c1[0], c2[0], "same PID namespace\n{}", explain(d));
    assert_ne!(c1[1], c2[1], "same mount namespace\n{}", explain(d));
    assert_eq!(
        (c1[2].as_str(), c2[2].as_str()),
        ("one", "none"),
        "{}",
        explain(d)
    );
    // Each sees only its own sleep.
    assert_eq!(
        (c1[3].as_str(), c2[3].as_str()),
        ("1", "1"),
        "{}",
        explain(d)
    );
    assert!(
        has_line(d, "rm=0") && has_line(d, "pods-left=0"),
        "{}",
        explain(d)
    );
}

#[test]
fn files_user_names_and_logs_of_a_detached_container() {
    let scratch = Scratch::new("files-user-logs");
    let done = run_script(
        &scratch,
        r#"V="target/release/vpod"
$VPOD --hostname web-1 --add-host db:10.0.0.2 --dns 10.0.0.10 --user nobody -- \
  sh -c 'echo "id=$(id -u):$(id -g) home=$HOME host=$(hostname)"; sed "s/^/H:/" /etc/hosts; sed "s/^/R:/" /etc/resolv.conf; sed "s/^/N:/" /etc/hostname'
echo "rc=$?"
$VPOD --user nobody:root -- sh -c 'echo "id2=$(id -u):$(id -g)"'
$VPOD --user ghost -- true 2>$R.e; echo "ghost-rc=$?"; sed 's/^/GE:/' $R.e
pod=$($VPOD -d --user nobody -- sh -c 'echo out1; echo err1 >&2; sleep 3; echo out2'); echo "pod=$pod"
$V logs -f --root $R $pod >$R.o 2>$R.e; echo "follow-rc=$?"
sed 's/^/FO:/' $R.o; sed 's/^/FE:/' $R.e
$V logs --root $R $pod:$pod >$R.o 2>$R.e; echo "logs-rc=$?"
sed 's/^/LO:/' $R.o; sed 's/^/LE:/' $R.e
$V logs --root $R nosuch 2>/dev/null; echo "nosuch-rc=$?"
$V rm --root $R $pod; echo "rm=$?"; rm -f $R.o $R.e"#,
    );
    let d = &done;
    assert!(has_line(d, "rc=0"), "{}", explain(d));
    assert!(
        has_line(d, "id=65534:65534 home=/nonexistent host=web-1"),
        "{}",
        explain(d)
    );
    assert!(has_line(d, "H:10.0.0.2\tdb"), "{}", explain(d));
    assert!(has_line(d, "H:127.0.0.1\tlocalhost"), "{}", explain(d));
    assert!(has_line(d, "R:nameserver 10.0.0.10"), "{}", explain(d));
    assert!(has_line(d, "N:web-1"), "{}", explain(d));
    assert!(has_line(d, "id2=65534:0"), "{}", explain(d));
    assert!(has_line(d, "ghost-rc=125"), "{}", explain(d));
    assert!(
        d.stdout_text()
            .lines()
            .any(|l| l.starts_with("GE:") && l.contains("ghost") && l.contains("/etc/passwd")),
        "{}",
        explain(d)
    );
    for line in [
        "follow-rc=0",
        "FO:out1",
        "FO:out2",
        "FE:err1",
        "logs-rc=0",
        "LO:out1",
        "LO:out2",
        "LE:err1",
        "rm=0",
    ] {
        assert!(has_line(d, line), "{line}\n{}", explain(d));
    }
    assert!(
        !has_line(d, "FO:err1") && !has_line(d, "FE:out1"),
        "{}",
        explain(d)
    );
    assert!(!has_line(d, "nosuch-rc=0"), "{}", explain(d));
}
