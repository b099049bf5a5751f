//! virtio-vsock and hot-attached disks with a real Linux guest: host-to-guest streams
//! through the VM's unix socket (`CONNECT <port>`), guest-to-host streams to `PATH_<port>`,
//! resets for unlisted ports both ways, concurrent streams, 10 MiB intact both ways, and a
//! disk attached to an empty slot through the control socket showing up in the guest with
//! its size and serial. One VM in one emulated host serves every test here (the run is
//! shared), to keep the suite's time down.
//!
//! The guest has only the initrd, so the test helper (a small static C program, built here
//! with `cc -static`) reaches it as a raw disk that the guest copies out with `head -c`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use vpod_e2e::{built, guest_command, repo_root, run_with_limit, Finished};

const LIMIT: Duration = Duration::from_secs(600);

/// The helper: `vsock-echo PORT`, `vsock-connect CID PORT`, `unix-echo PATH`,
/// `unix-connect PATH PORT` (the hybrid handshake), `unix-pipe PATH`; the connecting modes
/// copy stdin to the socket (then half-close) and the socket to stdout.
const HELPER_SOURCE: &str = r#"/* vsock test helper: guest and host ends of the vpod vsock end-to-end tests. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static void die(const char *what) { perror(what); exit(2); }

static void echo(int fd) {
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(fd, buf + off, n - off);
      if (w < 0) { if (errno == EINTR) continue; return; }
      off += w;
    }
  }
}

/* Copies stdin to fd (then half-closes) while fd goes to stdout. */
static int pump(int fd) {
  pid_t child = fork();
  if (child == 0) {
    char buf[65536];
    ssize_t n;
    while ((n = read(0, buf, sizeof buf)) > 0)
      for (ssize_t off = 0; off < n;) {
        ssize_t w = write(fd, buf + off, n - off);
        if (w <= 0) _exit(3);
        off += w;
      }
    shutdown(fd, SHUT_WR);
    _exit(0);
  }
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0)
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(1, buf + off, n - off);
      if (w <= 0) return 3;
      off += w;
    }
  int status = 0;
  waitpid(child, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 4;
}

static int listen_on(int fd, int count) {
  if (listen(fd, 16) < 0) die("listen");
  signal(SIGCHLD, SIG_IGN);
  for (int i = 0; count == 0 || i < count; i++) {
    int c = accept(fd, NULL, NULL);
    if (c < 0) { if (errno == EINTR) { i--; continue; } die("accept"); }
    if (fork() == 0) { echo(c); _exit(0); }
    close(c);
  }
  sleep(1);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: vt vsock-echo PORT [N] | vsock-connect CID PORT | unix-echo PATH [N] | unix-connect PATH PORT | unix-pipe PATH\n"); return 2; }
  setvbuf(stdout, NULL, _IONBF, 0);
  if (!strcmp(argv[1], "vsock-echo")) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = atoi(argv[2]) };
    if (bind(fd, (void *)&a, sizeof a) < 0) die("bind");
    return listen_on(fd, argc > 3 ? atoi(argv[3]) : 0);
  }
  if (!strcmp(argv[1], "vsock-connect")) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = atoi(argv[2]), .svm_port = atoi(argv[3]) };
    if (connect(fd, (void *)&a, sizeof a) < 0) { perror("connect"); return 1; }
    return pump(fd);
  }
  struct sockaddr_un u = { .sun_family = AF_UNIX };
  strncpy(u.sun_path, argv[2], sizeof u.sun_path - 1);
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  if (!strcmp(argv[1], "unix-echo")) {
    unlink(argv[2]);
    if (bind(fd, (void *)&u, sizeof u) < 0) die("bind");
    return listen_on(fd, argc > 3 ? atoi(argv[3]) : 0);
  }
  if (!strcmp(argv[1], "unix-pipe")) {
    if (connect(fd, (void *)&u, sizeof u) < 0) die("connect");
    return pump(fd);
  }
  if (!strcmp(argv[1], "unix-connect")) {
    if (argc < 4) return 2;
    if (connect(fd, (void *)&u, sizeof u) < 0) die("connect");
    dprintf(fd, "CONNECT %s\n", argv[3]);
    char line[64];
    size_t len = 0;
    while (len < sizeof line - 1 && read(fd, line + len, 1) == 1 && line[len] != '\n') len++;
    line[len] = 0;
    if (strncmp(line, "OK ", 3)) { fprintf(stderr, "no OK: '%s'\n", line); return 1; }
    fprintf(stderr, "%s\n", line);
    return pump(fd);
  }
  return 2;
}
"#;

struct Shared {
    done: Finished,
}

/// One directory per test process: nextest runs each of this file's tests in a process of
/// its own, two at a time, and each builds the helper. A shared directory let one process
/// execute the helper while another's linker was rewriting it; the half-written binary
/// once created a file named with bytes of an ELF header in the checkout's root.
fn work_dir() -> PathBuf {
    repo_root().join(format!("target/e2e-vmm-vsock-{}", std::process::id()))
}

/// Builds the helper and its raw disk image; returns the helper's size in bytes.
fn build_helper(dir: &Path) -> u64 {
    std::fs::create_dir_all(dir).expect("work dir");
    let source = dir.join("vt.c");
    std::fs::write(&source, HELPER_SOURCE).expect("helper source");
    let helper = dir.join("vt");
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&helper)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(status.success(), "cannot build the static vsock helper");
    let size = std::fs::metadata(&helper).expect("helper").len();
    let mut image = std::fs::read(&helper).expect("helper");
    image.resize(size.div_ceil(512) as usize * 512, 0);
    std::fs::write(dir.join("vt.img"), image).expect("helper disk");
    std::fs::write(dir.join("hot.img"), vec![0x5au8; 3 << 20]).expect("slot disk");
    size
}

fn script(dir: &Path, helper_size: u64) -> String {
    let dir = dir
        .strip_prefix(repo_root())
        .expect("under the checkout")
        .display();
    let guest = format!(
        "head -c {helper_size} /dev/vda > /vt; chmod +x /vt; /vt vsock-echo 52 & \
         (i=0; while [ $(cat /sys/block/vdb/size) = 0 ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done; \
          echo HOTPLUG size=$(cat /sys/block/vdb/size) serial=$(cat /sys/block/vdb/serial)) & \
         sleep 2; head -c 10485760 /dev/urandom > /big; \
         /vt vsock-connect 2 1025 < /big > /back; echo GUEST-BIG rc=$?; cmp /big /back && echo GUEST-BIG-OK; \
         /vt vsock-connect 2 1026 < /dev/null; echo GUEST-UNLISTED rc=$?; sleep 600"
    );
    format!(
        r#"
D={dir}
H=$D/vt
T=$(mktemp -d)
now() {{ date +%s.%N; }}
target/release/vpod-vmm --memory 512 --disk $D/vt.img,ro --disk-slots 1 --vsock $T/v.sock --api $T/api.sock -- sh -c '{guest}' > $T/console 2>&1 &
VMM=$!
$H unix-echo $T/v.sock_1025 &
ECHO=$!
i=0; while [ ! -S $T/v.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
# The guest's echo server is up once a connection is answered; until then the VMM resets
# connections to port 52 (tried every 0.5 s for up to 2 minutes: boots slow down under load).
i=0; while :; do
  echo hello-over-vsock | timeout 30 $H unix-connect $T/v.sock 52 > $T/hello 2>$T/hello.err; rc=$?
  if [ $rc = 0 ] || [ $i -ge 240 ]; then break; fi
  i=$((i+1)); sleep 0.5
done
echo "HELLO rc=$rc $(cat $T/hello) $(cat $T/hello.err)"
timeout 30 $H unix-connect $T/v.sock 99 < /dev/null > /dev/null 2>&1; echo "UNLISTED rc=$?"
head -c 10485760 /dev/urandom > $T/big
start=$(now)
timeout 120 $H unix-connect $T/v.sock 52 < $T/big > $T/back 2>/dev/null; echo "BIG rc=$?"
end=$(now)
cmp $T/big $T/back && echo BIG-OK
echo "THROUGHPUT echo_10MiB_seconds=$(echo "$end - $start" | bc -l 2>/dev/null || echo "$start $end")"
head -c 1048576 /dev/urandom > $T/a; head -c 1048576 /dev/urandom > $T/b
timeout 60 $H unix-connect $T/v.sock 52 < $T/a > $T/a.back 2>/dev/null & A=$!
timeout 60 $H unix-connect $T/v.sock 52 < $T/b > $T/b.back 2>/dev/null & B=$!
wait $A; wait $B
cmp $T/a $T/a.back && cmp $T/b $T/b.back && echo TWO-STREAMS-OK
printf '{{"op":"attach_disk","slot":0,"path":"%s","read_only":true,"serial":"hot-layer-1"}}\n' "$PWD/$D/hot.img" | timeout 10 $H unix-pipe $T/api.sock
i=0; while ! grep -q GUEST-UNLISTED $T/console || ! grep -q HOTPLUG $T/console; do [ $i -lt 600 ] || break; sleep 0.2; i=$((i+1)); done
echo '{{"op":"metrics"}}' | timeout 10 $H unix-pipe $T/api.sock
echo '{{"op":"stop"}}' | timeout 10 $H unix-pipe $T/api.sock
wait $VMM; echo "VMM rc=$?"
kill $ECHO 2>/dev/null
echo --- console; cat $T/console
"#
    )
}

fn shared() -> &'static Finished {
    static RUN: OnceLock<Shared> = OnceLock::new();
    &RUN.get_or_init(|| {
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/initrd.img");
        let dir = work_dir();
        let size = build_helper(&dir);
        let mut cmd = guest_command("sh", ["-c", &script(&dir, size)]);
        cmd.current_dir(repo_root());
        let done = run_with_limit(&mut cmd, LIMIT);
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!("{}", explain(&done));
        Shared { done }
    })
    .done
}

fn explain(done: &Finished) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        done.code(),
        done.stdout_text(),
        done.stderr_text()
    )
}

fn assert_line(done: &Finished, want: &str) {
    assert!(
        done.stdout_text().lines().any(|l| l.trim_end() == want),
        "missing {want:?}\n{}",
        explain(done)
    );
}

#[test]
fn host_to_guest_connect_echoes_and_answers_ok() {
    let done = shared();
    let line = done
        .stdout_text()
        .lines()
        .find(|l| l.starts_with("HELLO "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no HELLO line\n{}", explain(done)));
    assert!(
        line.starts_with("HELLO rc=0 hello-over-vsock OK "),
        "{line}"
    );
}

#[test]
fn host_connect_to_an_unlisted_guest_port_is_closed() {
    assert_line(shared(), "UNLISTED rc=1");
}

#[test]
fn ten_mib_cross_intact_both_ways() {
    let done = shared();
    assert_line(done, "BIG rc=0");
    assert_line(done, "BIG-OK");
    assert_line(done, "GUEST-BIG rc=0");
    assert_line(done, "GUEST-BIG-OK");
}

#[test]
fn two_concurrent_streams_stay_apart() {
    assert_line(shared(), "TWO-STREAMS-OK");
}

#[test]
fn guest_connect_to_an_unlisted_host_port_is_reset() {
    assert_line(shared(), "GUEST-UNLISTED rc=1");
}

#[test]
fn hot_attached_disk_shows_its_size_and_serial_in_the_guest() {
    let done = shared();
    // 3 MiB = 6144 sectors.
    assert_line(done, "HOTPLUG size=6144 serial=hot-layer-1");
    assert!(
        done.stdout_text()
            .contains(r#""ok":true,"read_only":true,"serial":"hot-layer-1","slot":0}"#),
        "{}",
        explain(done)
    );
}

#[test]
fn api_stop_ends_the_vmm_with_143() {
    assert_line(shared(), "VMM rc=143");
}
