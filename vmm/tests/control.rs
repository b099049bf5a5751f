//! The control socket and the vsock unix socket on real KVM with the idle stub guest (which
//! has no drivers): requests and error replies, disk slots, disks passed as descriptors
//! (over the socket, and inherited with `--config`), vsock's connect timeout, and `stop`.
//! Every VMM is killed by PID if it outlives its time limit.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpod_proto::vmm::{ClientError, ReplyError, VmmClient};

mod support;
use support::{kvm_available, repo_root, wait_for};

const VMM: &str = env!("CARGO_BIN_EXE_vpod-vmm");

/// A temporary directory and a VMM running in it, both gone when dropped.
struct Vm {
    dir: PathBuf,
    child: Child,
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn vm_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vpod-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn idle_stub() -> PathBuf {
    let stub = repo_root().join("build/stub-idle.elf");
    assert!(stub.exists(), "build/stub-idle.elf is missing: run make");
    stub
}

fn spawn_vm(dir: PathBuf, command: &mut Command) -> Vm {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the VMM starts");
    let vm = Vm { dir, child };
    wait_for(&vm.dir.join("api.sock"));
    vm
}

fn start_vm(name: &str) -> Vm {
    let dir = vm_dir(name);
    let mut command = Command::new(VMM);
    command
        .arg("--kernel")
        .arg(idle_stub())
        .args([
            "--initrd",
            "/dev/null",
            "--console",
            "off",
            "--disk-slots",
            "2",
        ])
        .arg("--vsock")
        .arg(dir.join("v.sock"))
        .arg("--api")
        .arg(dir.join("api.sock"));
    spawn_vm(dir, &mut command)
}

/// The targets of the VMM's open descriptors.
fn open_files(vm: &Vm) -> Vec<String> {
    let fds = format!("/proc/{}/fd", vm.child.id());
    std::fs::read_dir(&fds)
        .expect("the VMM's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect()
}

struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Self {
        let writer = UnixStream::connect(path).expect("connect to the control socket");
        writer
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let reader = BufReader::new(writer.try_clone().expect("clone"));
        Client { reader, writer }
    }

    fn raw(&mut self, line: &str) -> Value {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("a reply line");
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("bad reply {reply:?}: {e}"))
    }

    fn call(&mut self, request: Value) -> Value {
        self.raw(&request.to_string())
    }
}

fn error_of(reply: &Value) -> String {
    reply["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {reply}"))
        .to_string()
}

#[test]
fn control_socket_reports_state_metrics_and_manages_slots() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let vm = start_vm("slots");
    let mut api = Client::connect(&vm.dir.join("api.sock"));

    let state = api.call(json!({"op": "state"}));
    assert_eq!(state["state"], "running", "{state}");
    assert_eq!(state["vcpus"], 1);
    assert_eq!(state["memory_mib"], 128);
    assert!(state["uptime_ms"].as_u64().is_some(), "{state}");
    assert_eq!(
        api.call(json!({"op": "boot_time"})),
        json!({"init_ms": null})
    );

    let metrics = api.call(json!({"op": "metrics"}));
    assert_eq!(metrics["vsock"]["connections_active"], 0, "{metrics}");
    assert_eq!(
        metrics["block"].as_array().map(Vec::len),
        Some(2),
        "{metrics}"
    );
    assert_eq!(metrics["block"][1]["slot"], 1);
    assert_eq!(metrics["block"][0]["attached"], false);

    // Malformed and unknown requests get error lines; the connection stays usable.
    assert!(error_of(&api.raw("{")).contains("not JSON"));
    assert!(error_of(&api.raw(r#"{"op":"reboot"}"#)).contains("unknown op"));

    let disk = vm.dir.join("layer.img");
    std::fs::write(&disk, vec![0u8; 3 << 20]).expect("disk");
    let attach = |slot: u32, path: &Path| json!({"op": "attach_disk", "slot": slot, "path": path, "read_only": true, "serial": "layer0"});
    assert!(error_of(&api.call(attach(5, &disk))).contains("no disk slot 5"));
    let missing = vm.dir.join("missing.img");
    assert!(error_of(&api.call(attach(0, &missing))).contains("cannot open disk"));

    let attached = api.call(attach(0, &disk));
    assert_eq!(attached["ok"], true, "{attached}");
    assert_eq!(attached["capacity_bytes"], 3 << 20);
    assert_eq!(attached["serial"], "layer0");
    assert!(error_of(&api.call(attach(0, &disk))).contains("already holds a disk"));
    let metrics = api.call(json!({"op": "metrics"}));
    assert_eq!(metrics["block"][0]["attached"], true, "{metrics}");
    assert_eq!(metrics["block"][0]["serial"], "layer0");

    let detached = api.call(json!({"op": "detach_disk", "serial": "layer0"}));
    assert_eq!(detached, json!({"ok": true, "slot": 0}));
    assert!(error_of(&api.call(json!({"op": "detach_disk", "slot": 0}))).contains("empty"));
    assert!(error_of(&api.call(json!({"op": "detach_disk", "serial": "nope"}))).contains("nope"));
    // Without a slot, the first empty one is used.
    let second = api.call(json!({"op": "attach_disk", "path": disk}));
    assert_eq!(second["slot"], 0, "{second}");
}

#[test]
fn vsock_connect_to_a_silent_guest_times_out_and_stop_ends_the_vmm() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let mut vm = start_vm("vsock");
    wait_for(&vm.dir.join("v.sock"));
    let mut client = UnixStream::connect(vm.dir.join("v.sock")).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    client.write_all(b"CONNECT 1234\n").expect("send");
    let mut reply = Vec::new();
    let _ = client.read_to_end(&mut reply);
    let waited = started.elapsed();
    assert!(
        reply.is_empty(),
        "got {:?}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        // The upper bound only catches a timeout that never fires.
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(30),
        "closed after {waited:?}"
    );

    let mut api = Client::connect(&vm.dir.join("api.sock"));
    let metrics = api.call(json!({"op": "metrics"}));
    assert_eq!(metrics["vsock"]["connect_timeouts"], 1, "{metrics}");
    assert_eq!(metrics["vsock"]["host_connections"], 1, "{metrics}");

    // Timed from before the request: the VMM's grace runs from when it reads it.
    let started = Instant::now();
    let stopping = api.call(json!({"op": "stop", "timeout_ms": 300}));
    assert_eq!(stopping, json!({"ok": true, "state": "stopping"}));
    let status = loop {
        if let Some(status) = vm.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the VMM did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(143));
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(
        !vm.dir.join("api.sock").exists(),
        "the control socket is removed"
    );
}

#[test]
fn a_disk_passed_as_a_descriptor_is_attached_though_its_path_is_gone() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let vm = start_vm("passed-fd");
    let api = VmmClient::new(vm.dir.join("api.sock"));

    // The VMM could not open this path any more: only the descriptor reaches it.
    let path = vm.dir.join("hidden.img");
    std::fs::write(&path, vec![7u8; 2 << 20]).expect("disk");
    let writable = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let read_only = File::open(&path).expect("open");
    std::fs::remove_file(&path).expect("unlink");

    let attached = api
        .attach_disk_fd(writable.as_fd(), Some(1), false, "passed")
        .expect("attached");
    assert_eq!(attached.slot, 1);
    assert_eq!(attached.capacity_bytes, 2 << 20);
    assert_eq!(
        (attached.serial.as_str(), attached.read_only),
        ("passed", false)
    );
    let metrics = api.metrics().expect("metrics");
    let slot = &metrics.block[1];
    assert!(slot.attached && slot.serial == "passed", "{slot:?}");
    assert!(
        open_files(&vm)
            .iter()
            .any(|f| f.ends_with("hidden.img (deleted)")),
        "the VMM holds the disk: {:?}",
        open_files(&vm)
    );

    // A descriptor opened read-only cannot back a writable disk; read-only it can.
    let refusal = api
        .attach_disk_fd(read_only.as_fd(), Some(0), false, "ro")
        .expect_err("read-only descriptor");
    assert!(
        matches!(&refusal, ClientError::Reply(ReplyError::Refused { message, .. })
            if message.contains("open read-only")),
        "{refusal}"
    );
    let attached = api
        .attach_disk_fd(read_only.as_fd(), Some(0), true, "ro")
        .expect("attached read-only");
    assert_eq!((attached.slot, attached.read_only), (0, true));

    // A request that names a descriptor nobody passed is refused, and the socket stays up.
    let mut raw = Client::connect(&vm.dir.join("api.sock"));
    let reply = raw.call(json!({"op": "attach_disk", "fd": 0}));
    assert!(error_of(&reply).contains("no descriptor 0"), "{reply}");
    assert_eq!(raw.call(json!({"op": "state"}))["state"], "running");
}

#[test]
fn a_config_file_starts_the_vm_with_an_inherited_disk_descriptor() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let dir = vm_dir("config");
    let path = dir.join("inherited.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("disk");
    let disk = File::open(&path).expect("open");
    // Inherited by the VMM: std opens files close-on-exec.
    rustix::io::fcntl_setfd(&disk, rustix::io::FdFlags::empty()).expect("inheritable");
    let config = vpod_proto::vmm::VmConfig {
        disks: vec![vpod_proto::vmm::DiskConfig {
            source: vpod_proto::vmm::DiskSource::Fd(disk.as_raw_fd() as u32),
            read_only: true,
            serial: "inherited".into(),
        }],
        disk_slots: 1,
        console: vpod_proto::vmm::Console::Off,
        api_socket: Some(dir.join("api.sock")),
        ..vpod_proto::vmm::VmConfig::new(idle_stub())
    };
    let config_file = dir.join("vmm.json");
    std::fs::write(&config_file, config.to_json()).expect("config file");
    let vm = spawn_vm(dir, Command::new(VMM).arg("--config").arg(&config_file));
    drop(disk);

    let api = VmmClient::new(vm.dir.join("api.sock"));
    let state = api.state().expect("state");
    assert_eq!((state.vcpus, state.memory_mib), (1, 128));
    let metrics = api.metrics().expect("metrics");
    assert_eq!(metrics.block.len(), 2, "{metrics:?}");
    let disk = &metrics.block[0];
    assert_eq!(disk.slot, None);
    assert!(disk.attached && disk.read_only, "{disk:?}");
    assert_eq!(
        (disk.serial.as_str(), disk.capacity_bytes),
        ("inherited", 1 << 20)
    );
    assert!(metrics.vsock.is_none());
}

#[test]
fn metrics_list_each_nic_with_its_counters() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    // The VMM opens its tap in this thread's namespace, made for the test and gone after it.
    let metrics = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare touches no memory; CLONE_NEWNET moves only this thread.
                let unshared = unsafe { libc::unshare(libc::CLONE_NEWNET) };
                assert_eq!(
                    unshared, 0,
                    "a network namespace of the test's own (run as root)"
                );
                let dir = vm_dir("nic");
                let mut command = Command::new(VMM);
                command
                    .arg("--kernel")
                    .arg(idle_stub())
                    .args(["--initrd", "/dev/null", "--console", "off"])
                    .args(["--net", "tap=vpodctl0,mac=02:00:00:00:00:09"])
                    .arg("--api")
                    .arg(dir.join("api.sock"));
                let vm = spawn_vm(dir, &mut command);
                let mut api = Client::connect(&vm.dir.join("api.sock"));
                api.call(json!({"op": "metrics"}))
            })
            .join()
            .expect("netns thread")
    });
    let nics = metrics["net"].as_array().expect("a net list");
    assert_eq!(nics.len(), 1, "{metrics}");
    assert_eq!(nics[0]["index"], 0);
    // The idle stub never drives its NIC: nothing moved, nothing dropped.
    assert_eq!(nics[0]["tx_frames"], 0, "{metrics}");
    assert_eq!(nics[0]["dropped_total"], 0, "{metrics}");
    assert_eq!(nics[0]["dropped"]["tx_malformed_chain"], 0, "{metrics}");
}

/// A loop device over a file of ours, detached when dropped.
struct LoopDevice(String);

impl LoopDevice {
    fn over(file: &Path) -> LoopDevice {
        let output = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("losetup runs (util-linux)");
        assert!(
            output.status.success(),
            "losetup failed (this test needs root and the loop driver): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        LoopDevice(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_in_a_slot_has_the_device_s_size() {
    if !kvm_available() {
        eprintln!("skipped: no usable /dev/kvm");
        return;
    }
    let vm = start_vm("block-device");
    let api = VmmClient::new(vm.dir.join("api.sock"));
    let backing = vm.dir.join("backing.img");
    File::create(&backing)
        .and_then(|f| f.set_len(3 << 20))
        .expect("backing file");
    let device = LoopDevice::over(&backing);
    // Its metadata says 0 bytes; the size is where a seek to its end lands.
    let by_path = api
        .attach_disk(vpod_proto::vmm::AttachDisk {
            slot: Some(0),
            source: vpod_proto::vmm::DiskSource::Path(PathBuf::from(&device.0)),
            read_only: true,
            serial: "loop-path".into(),
        })
        .expect("attached by path");
    assert_eq!(by_path.capacity_bytes, 3 << 20);
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device.0)
        .expect("open the loop device");
    let by_fd = api
        .attach_disk_fd(opened.as_fd(), Some(1), false, "loop-fd")
        .expect("attached by descriptor");
    assert_eq!(by_fd.capacity_bytes, 3 << 20);
    drop(vm);
}
