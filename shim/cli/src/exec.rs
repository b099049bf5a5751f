//! `vpod exec`: a process in a container of a running pod.
//!
//! Without `-i` or `-t` it runs through the agent's ExecSync: stdin is /dev/null and the
//! output is printed once the process ended. With either it runs through the agent's
//! streaming exec (`vpod_proto::streaming::exec`, as the CRI streaming server does): the
//! output is printed as it comes, `-i` sends our stdin (its end closes the process's) and
//! `-t` gives the process a pseudo-terminal sized as ours, resized on SIGWINCH, with our
//! terminal in raw mode for the session when our keys go to it (`-it`).
//!
//! A session ends when the process has exited and its output was printed, or early on
//! SIGINT, SIGTERM or SIGHUP to us or on `--timeout`: then the agent's stream is dropped,
//! which makes the agent kill the process.

use std::convert::Infallible;
use std::io::Read;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use vpod_proto::streaming::{self, ExecOptions, Output, ProcessExit, ProcessStreams};
use vpod_sandbox::Sandbox;

use crate::args::ExecCommand;
use crate::terminal::{self, RawMode};
use crate::RPC_TIMEOUT;

/// What `-t` without a terminal on stdin gets (docker says "the input device is not a TTY").
const NOT_A_TERMINAL: &str = "the input device is not a TTY: -t needs a terminal on stdin \
                              (run vpod from one, or leave out -t)";

/// The exit status of a process that `--timeout` killed (SIGKILL's, as ExecSync reports it).
const TIMED_OUT_STATUS: i32 = 128 + 9;

/// Stdin chunks queued between the thread that reads them and the session.
const STDIN_QUEUE: usize = 4;
/// The largest read from our stdin.
const STDIN_READ: usize = 32 * 1024;

pub async fn exec(args: ExecCommand) -> anyhow::Result<i32> {
    if args.tty && !terminal::stdin_is_terminal() {
        bail!(NOT_A_TERMINAL);
    }
    let target = args.target.clone();
    let (pod, container) = target.split_once(':').unwrap_or((&target, &target));
    let sandbox = Sandbox::open(&args.root, pod, RPC_TIMEOUT)
        .await
        .with_context(|| format!("opening pod {pod}"))?;
    if !args.interactive && !args.tty {
        return exec_sync(&sandbox, container, args).await;
    }
    let timeout = args.timeout;
    match session(&sandbox, container, args).await? {
        Ended::Exited(exit) => Ok(exit.exit_code),
        Ended::TimedOut => {
            eprintln!("vpod: the process timed out after {timeout:?} and was killed");
            Ok(TIMED_OUT_STATUS)
        }
        Ended::Signal(signo) => {
            eprintln!("vpod: ended by signal {signo}; the process was killed");
            Ok(128 + signo)
        }
    }
}

/// The process through ExecSync: its output once it ended, and its status.
async fn exec_sync(sandbox: &Sandbox, container: &str, args: ExecCommand) -> anyhow::Result<i32> {
    let reply = sandbox
        .exec_sync(container, args.command, args.timeout)
        .await
        .context("running the process")?;
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    stdout.write_all(&reply.stdout).await?;
    stdout.flush().await?;
    stderr.write_all(&reply.stderr).await?;
    if reply.timed_out {
        stderr
            .write_all(format!("vpod: the process timed out after {:?}\n", args.timeout).as_bytes())
            .await?;
    }
    stderr.flush().await?;
    Ok(reply.exit_code)
}

/// How a streaming session ended.
enum Ended {
    /// The process exited and all its output was printed.
    Exited(ProcessExit),
    /// `--timeout` passed first.
    TimedOut,
    /// We got this signal first.
    Signal(i32),
}

/// Runs the process through the agent's streaming exec until it ended (see [`Ended`]).
async fn session(sandbox: &Sandbox, container: &str, args: ExecCommand) -> anyhow::Result<Ended> {
    let mut stops = StopSignals::new()?;
    // Before the size is read, so that a change in between is not missed.
    let window_changes = if args.tty {
        Some(signal(SignalKind::window_change()).context("handling SIGWINCH")?)
    } else {
        None
    };
    let options = ExecOptions {
        container_id: container.to_string(),
        args: args.command,
        tty: args.tty,
        stdin: args.interactive,
        terminal_size: args.tty.then(terminal::window_size).flatten(),
        ..ExecOptions::default()
    };
    let mut agent = sandbox.agent_client();
    let ProcessStreams {
        input,
        output,
        exit,
        ..
    } = streaming::exec(&mut agent, options)
        .await
        .map_err(agent_error)
        .context("running the process")?;
    // Our keys go to the process as typed only when they go to it at all.
    let _raw = if args.tty && args.interactive {
        Some(RawMode::enable().context("putting the terminal in raw mode")?)
    } else {
        None
    };
    let stdin = if args.interactive {
        Some(read_stdin()?)
    } else {
        None
    };

    let forward_stdin = async {
        let Some(mut stdin) = stdin else { return };
        while let Some(data) = stdin.recv().await {
            if input.stdin(data).await.is_err() {
                return;
            }
        }
        let _ = input.close_stdin().await;
    };
    let forward_resizes = async {
        let Some(mut changes) = window_changes else {
            return;
        };
        while changes.recv().await.is_some() {
            if let Some(size) = terminal::window_size() {
                if input.resize(size).await.is_err() {
                    return;
                }
            }
        }
    };
    // The input side stays open until the process ended: only the end of our stdin
    // closes the process's.
    let forward_input = async {
        tokio::join!(forward_stdin, forward_resizes);
        std::future::pending::<Infallible>().await
    };
    let deliver_output = async {
        print_output(output).await?;
        exit.await
            .map_err(agent_error)
            .context("waiting for the process")
    };
    let timer = async {
        if args.timeout.is_zero() {
            std::future::pending().await
        } else {
            tokio::time::sleep(args.timeout).await
        }
    };
    // Returning drops the agent's stream (the process is killed if it still runs) and
    // `_raw`, which restores the terminal.
    tokio::select! {
        exit = deliver_output => exit.map(Ended::Exited),
        never = forward_input => match never {},
        signo = stops.recv() => Ok(Ended::Signal(signo)),
        () = timer => Ok(Ended::TimedOut),
    }
}

/// Copies the process's output to ours (stdout to stdout, stderr to stderr; with a
/// terminal it all comes as stdout) until it ends.
async fn print_output(mut output: mpsc::Receiver<Output>) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(chunk) = output.recv().await {
        match chunk {
            Output::Stdout(data) => write_now(&mut stdout, &data).await,
            Output::Stderr(data) => write_now(&mut stderr, &data).await,
            // Only attachers fall behind; an exec's output is never dropped.
            Output::Dropped(_) => Ok(()),
        }
        .context("writing the process's output")?;
    }
    Ok(())
}

async fn write_now(to: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> std::io::Result<()> {
    to.write_all(data).await?;
    to.flush().await
}

/// Our stdin, read on a thread of its own and ending (the receiver yields `None`) at its
/// end or at a read error. A thread and not tokio's stdin: a read from a terminal cannot
/// be cancelled, and tokio's runtime would wait for it at shutdown, that is for a key
/// after the session; a plain thread just ends with the process.
fn read_stdin() -> anyhow::Result<mpsc::Receiver<Vec<u8>>> {
    let (sender, receiver) = mpsc::channel(STDIN_QUEUE);
    std::thread::Builder::new()
        .name("stdin".to_string())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0; STDIN_READ];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if sender.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })
        .context("starting the thread that reads stdin")?;
    Ok(receiver)
}

/// SIGINT, SIGTERM and SIGHUP: each ends a session (and vpod), whose terminal is then
/// restored, rather than leaving a raw terminal behind.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<StopSignals> {
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt()).context("handling SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("handling SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("handling SIGHUP")?,
        })
    }

    /// The number of the next of them that comes.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => SignalKind::interrupt().as_raw_value(),
            _ = self.terminate.recv() => SignalKind::terminate().as_raw_value(),
            _ = self.hangup.recv() => SignalKind::hangup().as_raw_value(),
        }
    }
}

/// A status from the agent's streaming exec, as an error.
fn agent_error(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::Unimplemented => anyhow!(
            "this pod's agent has no streaming exec (an initrd from before protocol 1.{}): \
             recreate the pod, or leave out -i and -t",
            streaming::STREAMING_MINOR
        ),
        code => anyhow!("the agent answered {code:?}: {}", status.message()),
    }
}
