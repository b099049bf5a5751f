//! virtio-vsock and hot-attached disks with a real Linux guest: host-to-guest streams
//! through the VM's unix socket (`CONNECT <port>`), guest-to-host streams to `PATH_<port>`,
//! resets for unlisted ports both ways, concurrent streams, 10 MiB intact both ways, and a
//! disk attached to an empty slot through the control socket showing up in the guest with
//! its size and serial. One VM in one emulated host (where guests need one) serves every
//! check here.
//!
//! The host side is this test: its own unix sockets, listener and control-socket client.
//! The guest has only the initrd, so the guest side is a small static C program (built here
//! with `cc -static`) that reaches it as a raw disk the guest copies out with `head -c`, run
//! by a guest command that prints what it saw on the console.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vpod_e2e::{built, in_guest_host, repo_root, sha256_hex, Background, Checks, Finished};

const LIMIT: Duration = Duration::from_secs(600);
const TEN_MIB: usize = 10 << 20;

/// The guest's end: `vsock-echo PORT` echoes every connection to PORT; `vsock-connect CID
/// PORT` copies stdin to a stream to CID:PORT (then half-closes) and the stream to stdout,
/// exiting 1 when the connection is refused or reset.
const HELPER_SOURCE: &str = r#"/* vsock test helper: the guest's end of the vpod vsock end-to-end test. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: vt vsock-echo PORT | vsock-connect CID PORT\n"); return 2; }
  setvbuf(stdout, NULL, _IONBF, 0);
  int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  if (!strcmp(argv[1], "vsock-echo")) {
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = atoi(argv[2]) };
    if (bind(fd, (void *)&a, sizeof a) < 0) die("bind");
    if (listen(fd, 16) < 0) die("listen");
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
      int c = accept(fd, NULL, NULL);
      if (c < 0) { if (errno == EINTR) continue; die("accept"); }
      if (fork() == 0) { echo(c); _exit(0); }
      close(c);
    }
  }
  if (!strcmp(argv[1], "vsock-connect") && argc > 3) {
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = atoi(argv[2]), .svm_port = atoi(argv[3]) };
    if (connect(fd, (void *)&a, sizeof a) < 0) { perror("connect"); return 1; }
    return pump(fd);
  }
  return 2;
}
"#;

/// The guest's command: copy the helper out of its disk, serve port 52, report the hot
/// disk once it has a size, send 10 MiB to host port 1025 and back, connect to the unlisted
/// host port 1026; then stay up until the host stops the VM.
fn guest_command(helper_size: u64) -> String {
    format!(
        "head -c {helper_size} /dev/vda > /vt; chmod +x /vt; /vt vsock-echo 52 & \
         (i=0; while [ $(cat /sys/block/vdb/size) = 0 ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done; \
          echo HOTPLUG size=$(cat /sys/block/vdb/size) serial=$(cat /sys/block/vdb/serial)) & \
         sleep 2; head -c {TEN_MIB} /dev/urandom > /big; \
         /vt vsock-connect 2 1025 < /big > /back; echo GUEST-BIG rc=$?; cmp /big /back && echo GUEST-BIG-OK; \
         /vt vsock-connect 2 1026 < /dev/null; echo GUEST-UNLISTED rc=$?; sleep 600"
    )
}

/// The helper as a raw disk (padded to whole sectors) and its size: built once per source
/// under target/, named by the source's hash and renamed into place, so that the run inside
/// the emulated host finds what the run outside built, and parallel runs never see a
/// half-written file.
fn helper_disk() -> (PathBuf, u64) {
    let dir = repo_root().join("target/e2e-vsock-helper");
    let image = dir.join(format!(
        "{}.img",
        &sha256_hex(HELPER_SOURCE.as_bytes())[..16]
    ));
    let size_file = image.with_extension("size");
    if let Ok(size) = std::fs::read_to_string(&size_file) {
        if let (Ok(size), true) = (size.trim().parse(), image.exists()) {
            return (image, size);
        }
    }
    std::fs::create_dir_all(&dir).expect("helper dir");
    let work = tempfile::tempdir_in(&dir).expect("a build directory");
    let source = work.path().join("vt.c");
    std::fs::write(&source, HELPER_SOURCE).expect("helper source");
    let binary = work.path().join("vt");
    let status = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("cc runs");
    assert!(status.success(), "cannot build the static vsock helper");
    let mut bytes = std::fs::read(&binary).expect("helper");
    let size = bytes.len() as u64;
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let staged = work.path().join("vt.img");
    std::fs::write(&staged, bytes).expect("helper disk");
    std::fs::rename(&staged, &image).expect("helper disk in place");
    std::fs::write(&size_file, size.to_string()).expect("helper size");
    (image, size)
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    std::fs::File::open("/dev/urandom")
        .expect("/dev/urandom")
        .take(len as u64)
        .read_to_end(&mut bytes)
        .expect("random bytes");
    bytes
}

/// Echoes every connection to `path` (the host's port 1025 for the guest), in the
/// background for the rest of the test process.
fn serve_echo(path: &Path) {
    let listener = UnixListener::bind(path).expect("the echo listener");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut reader) = stream.try_clone() else {
                    return;
                };
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
                let _ = writer.shutdown(Shutdown::Write);
            });
        }
    });
}

/// What the device answered to `CONNECT <port>`.
enum Answer {
    /// `OK <host port>`: the stream is connected to the guest's port.
    Connected(UnixStream, String),
    /// The device closed the connection instead, after this text (if any).
    Closed(String),
}

fn connect(socket: &Path, port: u32) -> Answer {
    let mut stream = UnixStream::connect(socket).expect("the VM's vsock socket accepts");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .expect("the CONNECT line");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while matches!(stream.read(&mut byte), Ok(1)) && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if line.starts_with("OK ") {
        Answer::Connected(stream, line)
    } else {
        Answer::Closed(line)
    }
}

/// Sends `data` and half-closes while reading everything that comes back, within `limit`.
fn exchange(stream: UnixStream, data: Vec<u8>, limit: Duration) -> Vec<u8> {
    stream.set_read_timeout(Some(limit)).expect("read timeout");
    let mut writer = stream.try_clone().expect("a second handle");
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).expect("sending");
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    let mut back = Vec::new();
    let mut reader = stream;
    reader.read_to_end(&mut back).expect("reading the echo");
    sender.join().expect("the sender");
    back
}

/// One request on the control socket; its one-line JSON answer.
fn control(api: &Path, request: &str) -> serde_json::Value {
    let stream = UnixStream::connect(api).expect("the control socket accepts");
    let answer = exchange(
        stream,
        format!("{request}\n").into_bytes(),
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&answer);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("answer {text:?}: {e}"))
}

#[test]
fn vsock_streams_resets_and_a_hot_attached_disk_with_a_linux_guest() {
    let (helper, helper_size) = helper_disk();
    in_guest_host(LIMIT, || {
        built("target/release/vpod-vmm");
        built("build/vmlinux");
        built("build/initrd.img");
        let dir = tempfile::tempdir().expect("a work directory");
        let socket = dir.path().join("v.sock");
        let api = dir.path().join("api.sock");
        let hot = dir.path().join("hot.img");
        std::fs::write(&hot, vec![0x5au8; 3 << 20]).expect("slot disk");
        let mut vmm = Background::spawn(
            Command::new(repo_root().join("target/release/vpod-vmm"))
                .args(["--memory", "512", "--disk"])
                .arg(format!("{},ro", helper.display()))
                .args(["--disk-slots", "1", "--vsock"])
                .arg(&socket)
                .arg("--api")
                .arg(&api)
                .args(["--", "sh", "-c", &guest_command(helper_size)])
                .current_dir(repo_root()),
        );
        serve_echo(&dir.path().join("v.sock_1025"));
        let started = Instant::now();
        while !socket.exists() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }

        let mut checks = Checks::new();
        checks
            .check("host_to_guest_connect_echoes_and_answers_ok", || {
                host_to_guest_hello(&socket)
            })
            .check(
                "host_connect_to_an_unlisted_guest_port_is_closed",
                || match connect(&socket, 99) {
                    Answer::Closed(_) => {}
                    Answer::Connected(_, line) => panic!("port 99 answered {line:?}"),
                },
            )
            .check("ten_mib_cross_intact_host_to_guest_and_back", || {
                ten_mib_from_the_host(&socket)
            })
            .check("two_concurrent_streams_stay_apart", || two_streams(&socket))
            .check("a_disk_attaches_to_an_empty_slot", || {
                let answer = control(
                    &api,
                    &serde_json::json!({
                        "op": "attach_disk", "slot": 0, "path": hot,
                        "read_only": true, "serial": "hot-layer-1",
                    })
                    .to_string(),
                );
                assert_eq!(answer["ok"], true, "{answer}");
                assert_eq!(answer["slot"], 0, "{answer}");
                assert_eq!(answer["read_only"], true, "{answer}");
                assert_eq!(answer["serial"], "hot-layer-1", "{answer}");
            });
        // The guest's own report: its streams to the host, and the disk once it sees it.
        for prefix in ["GUEST-UNLISTED ", "HOTPLUG "] {
            vmm.wait_for_stdout_line_where(Duration::from_secs(120), |l| l.starts_with(prefix));
        }
        eprintln!("metrics: {}", control(&api, r#"{"op":"metrics"}"#));
        control(&api, r#"{"op":"stop"}"#);
        let done = vmm.wait(Duration::from_secs(60));
        eprintln!("--- console\n{}", done.stdout_text());
        let console = |want: &str| console_has(&done, want);
        checks
            .check("ten_mib_cross_intact_guest_to_host_and_back", || {
                console("GUEST-BIG rc=0");
                console("GUEST-BIG-OK");
            })
            .check("guest_connect_to_an_unlisted_host_port_is_reset", || {
                console("GUEST-UNLISTED rc=1")
            })
            .check(
                "hot_attached_disk_shows_its_size_and_serial_in_the_guest",
                || {
                    // 3 MiB = 6144 sectors.
                    console("HOTPLUG size=6144 serial=hot-layer-1")
                },
            )
            .check("api_stop_ends_the_vmm_with_143", || {
                assert_eq!(done.code(), Some(143), "{}", done.explain())
            })
            .finish();
    });
}

fn console_has(done: &Finished, want: &str) {
    assert!(
        done.stdout_text().lines().any(|l| l.trim_end() == want),
        "the console has no line {want:?}\n{}",
        done.explain()
    );
}

/// The guest's echo server is up once a connection is answered; until then the device
/// closes connections to port 52 (tried every 0.5 s for up to 2 minutes: boots slow down
/// under load).
fn host_to_guest_hello(socket: &Path) {
    let started = Instant::now();
    let (stream, ok) = loop {
        match connect(socket, 52) {
            Answer::Connected(stream, line) => break (stream, line),
            Answer::Closed(_) if started.elapsed() < Duration::from_secs(120) => {
                std::thread::sleep(Duration::from_millis(500));
            }
            Answer::Closed(line) => panic!("port 52 never answered; last: {line:?}"),
        }
    };
    let port: Option<u32> = ok.strip_prefix("OK ").and_then(|p| p.trim().parse().ok());
    assert!(port.is_some(), "the device answered {ok:?}");
    let back = exchange(
        stream,
        b"hello-over-vsock\n".to_vec(),
        Duration::from_secs(30),
    );
    assert_eq!(String::from_utf8_lossy(&back), "hello-over-vsock\n");
}

fn echoed(socket: &Path, data: Vec<u8>, limit: Duration) -> Vec<u8> {
    match connect(socket, 52) {
        Answer::Connected(stream, _) => exchange(stream, data, limit),
        Answer::Closed(line) => panic!("port 52 answered {line:?}"),
    }
}

fn ten_mib_from_the_host(socket: &Path) {
    let data = random_bytes(TEN_MIB);
    let started = Instant::now();
    let back = echoed(socket, data.clone(), Duration::from_secs(120));
    eprintln!(
        "throughput: 10 MiB echoed through the guest in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo differs from what was sent");
}

fn two_streams(socket: &Path) {
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let socket = socket.to_path_buf();
            let data = random_bytes(1 << 20);
            std::thread::spawn(move || {
                let back = echoed(&socket, data.clone(), Duration::from_secs(60));
                back == data
            })
        })
        .collect();
    for (i, stream) in streams.into_iter().enumerate() {
        assert!(
            stream.join().expect("a stream"),
            "stream {i} came back changed"
        );
    }
}
