//! `vpod-kvm-host`: runs a command inside an emulated KVM host. See `--help`.

use anyhow::{Context, Result};
use clap::Parser;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vpod_kvm_host::config::{shareable, CommandLine, Options};
use vpod_kvm_host::qemu::Assets;
use vpod_kvm_host::runner::{run, Job};

fn git_top_level() -> Option<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn main() {
    let cli = CommandLine::parse();
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vpod-kvm-host: error: {e:#}");
            std::process::exit(vpod_kvm_host::runner::EXIT_HOST_FAILED);
        }
    }
}

fn real_main(cli: CommandLine) -> Result<i32> {
    let opts = Options::new(cli, &|k| std::env::var(k).ok())?;
    let cwd = std::env::current_dir().context("The current directory is unreadable.")?;
    let share = match std::env::var_os("VPOD_KVM_HOST_SHARE") {
        Some(s) if s.is_empty() => None,
        Some(s) => Some(PathBuf::from(s)),
        None => Some(git_top_level().unwrap_or_else(|| cwd.clone())),
    };
    let share = share.map(shareable).transpose()?;
    let prepare = std::env::var_os("VPOD_KVM_HOST_PREPARE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/prepare")));
    let assets = Assets::prepare(&prepare)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("Cannot watch for signals.")?;
    }
    let job = Job {
        command: opts.command,
        cwd,
        env: std::env::vars().collect(),
        share,
        memory_mib: opts.memory_mib,
        limits: opts.limits,
        retries: opts.retries,
        retry_log: std::env::var_os("VPOD_KVM_HOST_RETRY_LOG").map(PathBuf::from),
        qemu: std::env::var("VPOD_KVM_HOST_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
    };
    let code = run(
        &job,
        &assets,
        &stop,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )?;
    Ok(code)
}
