//! `vpod-init`: PID 1 of a vpod micro-VM. See the library documentation.

use vpod_init::vmm_port::{IoPorts, NoPorts, VmmSignals};
use vpod_init::{cmdline, command, mounts};

fn main() {
    if std::process::id() != 1 {
        eprintln!("vpod-init: error: must run as PID 1 (the kernel's init) of a vpod micro-VM");
        std::process::exit(1);
    }
    if let Err(e) = mounts::mount_all(&mut mounts::SystemMounts) {
        eprintln!(
            "vpod-init: error: {e}: {}",
            e.source().map(|s| s.to_string()).unwrap_or_default()
        );
    }
    let config = cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    set_hostname(&config.hostname);
    let mut vmm: Box<dyn VmmSignals> = match IoPorts::open() {
        Ok(ports) => Box::new(ports),
        Err(e) => {
            eprintln!("vpod-init: warning: {e} Boot time and exit status will not reach the VMM.");
            Box::new(NoPorts)
        }
    };
    vmm.init_reached();

    let argv: Vec<String> = std::env::args().skip(1).collect();
    let status = if argv.is_empty() {
        eprintln!("vpod-init: no command given after `--` on the kernel command line");
        0
    } else {
        command::run_and_reap(&argv, &config.hostname).unwrap_or_else(|e| {
            eprintln!("vpod-init: error: {e}");
            125
        })
    };
    vmm.exit_status(status);
    power_off();
}

use std::error::Error as _;

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
