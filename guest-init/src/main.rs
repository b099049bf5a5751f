//! `vpod-init`: PID 1 of a vpod micro-VM. See the library documentation.
//!
//! Outside a VM, `vpod-init --agent-unix PATH [--state-dir DIR] [--cgroup-root DIR]
//! [--sys-block DIR]` serves the agent API on a unix socket (tests, debugging).

use std::path::PathBuf;

use vpod_init::agent::guest_info::GuestClock;
use vpod_init::agent::{self, AgentConfig, Listen};
use vpod_init::vmm_port::{IoPorts, NoPorts, VmmSignals};
use vpod_init::{cmdline, command, mounts};
use vpod_proto::error_chain;

fn main() {
    let since_boot = GuestClock::since_boot();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if std::process::id() != 1 {
        if argv.first().map(String::as_str) == Some("--agent-unix") {
            std::process::exit(agent_on_unix_socket(&argv, since_boot));
        }
        eprintln!("vpod-init: error: must run as PID 1 (the kernel's init) of a vpod micro-VM, or with --agent-unix PATH");
        std::process::exit(1);
    }
    // "Init reached" is the moment the kernel hands over to PID 1.
    let mut ports = IoPorts::open();
    if let Ok(ports) = &mut ports {
        ports.init_reached();
    }
    if let Err(e) = vpod_init::root_switch::leave_initramfs_mount() {
        // Still on the initramfs mount: containers cannot pivot_root, but command mode works.
        eprintln!("vpod-init: warning: {}", error_chain(&e));
    }
    if let Err(e) = mounts::mount_all(&mut mounts::SystemMounts) {
        eprintln!("vpod-init: error: {}", error_chain(&e));
    }
    // Where init's binary stays, for the VMM to share those pages with its initrd file.
    let staying =
        vpod_init::root_switch::pin_init(std::path::Path::new("/init")).unwrap_or_else(|e| {
            eprintln!("vpod-init: warning: {}", error_chain(&e));
            Vec::new()
        });
    let config = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    set_hostname(&config.hostname);
    let mut vmm: Box<dyn VmmSignals> = match ports {
        Ok(ports) => Box::new(ports),
        Err(e) => {
            eprintln!("vpod-init: warning: {e}; boot time and exit status will not reach the VMM");
            Box::new(NoPorts)
        }
    };
    vmm.staying_pages(&staying);

    let status = if argv.is_empty() {
        // The agent runs until the host ends the VM; it returns only when it cannot serve.
        let listen = Listen::Vsock {
            port: vpod_proto::AGENT_VSOCK_PORT,
        };
        match agent::run(AgentConfig::default(), listen, GuestClock::new(since_boot)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("vpod-init: error: {}", error_chain(&e));
                125
            }
        }
    } else {
        command::run_and_reap(&argv, &config.hostname).unwrap_or_else(|e| {
            eprintln!("vpod-init: error: {e}");
            125
        })
    };
    vmm.exit_status(status);
    power_off();
}

/// `--agent-unix PATH` and its options; returns the exit code.
fn agent_on_unix_socket(argv: &[String], since_boot: std::time::Duration) -> i32 {
    let mut config = AgentConfig::default();
    let mut socket = None;
    let mut words = argv.iter();
    while let Some(flag) = words.next() {
        let Some(value) = words.next() else {
            eprintln!("vpod-init: error: {flag} needs a value");
            return 2;
        };
        let value = PathBuf::from(value);
        match flag.as_str() {
            "--agent-unix" => socket = Some(value),
            "--state-dir" => config.state_dir = value,
            "--cgroup-root" => config.cgroup_root = value,
            "--sys-block" => config.sys_block = value,
            other => {
                eprintln!("vpod-init: error: unknown option {other}");
                return 2;
            }
        }
    }
    let Some(socket) = socket else {
        return 2;
    };
    // Processes orphaned inside exec'd trees come to the agent, as they would to PID 1.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    match agent::run(config, Listen::Unix(socket), GuestClock::new(since_boot)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vpod-init: error: {}", error_chain(&e));
            1
        }
    }
}

fn set_hostname(name: &str) {
    // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call.
    if unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) } != 0 {
        eprintln!(
            "vpod-init: warning: cannot set the hostname: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Ends the VM: the kernel resets the machine (`reboot=k` on the command line makes that an
/// i8042 reset), which ends the VMM. PID 1 must never return, so it halts if that fails.
fn power_off() -> ! {
    // SAFETY: sync and reboot take no pointers; RB_AUTOBOOT restarts the machine.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
