//! Running the guest command as PID 1's child, and reaping every process that ends while
//! it runs (orphans are re-parented to PID 1, and nobody else will collect them).

use std::io;
use std::process::{Command, Stdio};

/// The PATH every command starts with.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why the command's status could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("waiting for the command failed")]
    Wait(#[source] io::Error),
}

/// The status a shell would report: the exit code, or 128 + the signal's number.
pub fn status_byte(raw_wait_status: libc::c_int) -> u8 {
    if libc::WIFEXITED(raw_wait_status) {
        (libc::WEXITSTATUS(raw_wait_status) & 0xff) as u8
    } else if libc::WIFSIGNALED(raw_wait_status) {
        u8::try_from(128 + libc::WTERMSIG(raw_wait_status)).unwrap_or(u8::MAX)
    } else {
        u8::MAX
    }
}

/// The status for a command that could not be started, as shells do: 127 when it does not
/// exist, 126 when it cannot be executed.
pub fn spawn_failure_status(e: &io::Error) -> u8 {
    match e.kind() {
        io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Starts `argv` with a clean environment, stdin from /dev/null and stdout/stderr on the
/// console (inherited), then reaps children until it ends. Returns its status byte.
pub fn run_and_reap(argv: &[String], hostname: &str) -> Result<u8, CommandError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(0);
    };
    let spawned = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("HOME", "/root")
        .env("TERM", "linux")
        .env("HOSTNAME", hostname)
        .current_dir("/")
        .stdin(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            eprintln!("vpod-init: cannot run {program}: {e}");
            return Ok(spawn_failure_status(&e));
        }
    };
    let pid = child.id() as libc::pid_t;
    // The child is waited for below with waitpid(-1); std's handle must not wait too.
    drop(child);
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes only to `raw`, a live local.
        let reaped = unsafe { libc::waitpid(-1, &mut raw, 0) };
        if reaped < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CommandError::Wait(e));
        }
        if reaped == pid {
            reap_finished();
            return Ok(status_byte(raw));
        }
    }
}

/// Collects every child that has already ended, without blocking.
pub fn reap_finished() {
    loop {
        let mut raw = 0;
        // SAFETY: waitpid writes only to `raw`, a live local.
        if unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) } <= 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_signals_map_like_a_shell() {
        // Wait statuses as the kernel encodes them: code << 8, or the signal number.
        assert_eq!(status_byte(7 << 8), 7);
        assert_eq!(status_byte(0), 0);
        assert_eq!(status_byte(255 << 8), 255);
        assert_eq!(status_byte(libc::SIGKILL), 137);
        assert_eq!(status_byte(libc::SIGTERM), 143);
    }

    #[test]
    fn spawn_failures_map_to_126_and_127() {
        assert_eq!(
            spawn_failure_status(&io::Error::from(io::ErrorKind::NotFound)),
            127
        );
        assert_eq!(
            spawn_failure_status(&io::Error::from(io::ErrorKind::PermissionDenied)),
            126
        );
    }

    #[test]
    fn a_command_runs_with_a_clean_environment_and_its_status_returns() {
        let argv: Vec<String> = [
            "/bin/sh",
            "-c",
            "test \"$PATH\" = \"$EXPECTED\" || exit 9; test -z \"$SECRET\" || exit 8; exit 5",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // EXPECTED is cleared too, so compare against the literal default.
        let argv: Vec<String> = argv
            .into_iter()
            .map(|a| a.replace("$EXPECTED", DEFAULT_PATH))
            .collect();
        std::env::set_var("SECRET", "leak");
        assert_eq!(run_and_reap(&argv, "h").unwrap(), 5);
    }

    #[test]
    fn a_missing_program_gives_127() {
        assert_eq!(
            run_and_reap(&["/no/such/program".to_string()], "h").unwrap(),
            127
        );
    }
}
