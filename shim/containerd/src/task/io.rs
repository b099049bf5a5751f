//! The FIFOs containerd passes for a process's stdio (its client, or the CRI plugin that
//! writes the CRI log from them, holds the other ends), and the copies between them and
//! the agent's streams.
//!
//! Both ends are opened read-write, as containerd's own shims do: opening never blocks or
//! fails for want of a peer, and a stdin whose writer comes and goes does not read as
//! ended; stdin ends when containerd says so (CloseIO).

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

/// The stdio paths of a process, as CreateTask and Exec give them (empty: none).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// A process's output FIFOs, open for writing.
pub struct OutputFifos {
    stdout: Option<pipe::Sender>,
    stderr: Option<pipe::Sender>,
}

impl OutputFifos {
    pub fn open(paths: &StdioPaths) -> std::io::Result<OutputFifos> {
        Ok(OutputFifos {
            stdout: open_sender(&paths.stdout)?,
            stderr: open_sender(&paths.stderr)?,
        })
    }

    /// Writes `data` to stdout (or stderr); a reader that went away loses it.
    pub async fn write(&mut self, stderr: bool, data: &[u8]) {
        let fifo = if stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        if let Some(sender) = fifo {
            if sender.write_all(data).await.is_err() {
                *fifo = None;
            }
        }
    }
}

fn open_sender(path: &str) -> std::io::Result<Option<pipe::Sender>> {
    if path.is_empty() {
        return Ok(None);
    }
    pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(Path::new(path))
        .map(Some)
}

/// A process's stdin FIFO, open for reading.
pub struct InputFifo {
    receiver: pipe::Receiver,
    buffer: Vec<u8>,
}

impl InputFifo {
    pub fn open(path: &str) -> std::io::Result<Option<InputFifo>> {
        if path.is_empty() {
            return Ok(None);
        }
        let receiver = pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(Path::new(path))?;
        Ok(Some(InputFifo {
            receiver,
            buffer: vec![0; 32 * 1024],
        }))
    }

    /// The next bytes written to stdin; `None` at its end or on an error.
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        match self.receiver.read(&mut self.buffer).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(self.buffer[..n].to_vec()),
        }
    }
}

impl InputFifo {
    /// What is in the FIFO now, without waiting.
    fn drain(&mut self) -> Option<Vec<u8>> {
        match self.receiver.try_read(&mut self.buffer) {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(self.buffer[..n].to_vec()),
        }
    }

    /// Copies stdin into `to` (each chunk through `wrap`) until containerd closes it
    /// (`closed`, from CloseIO) or the FIFO fails; what was written before the close goes
    /// first, then `wrap(None)`, the end of stdin.
    pub async fn copy<T>(
        mut self,
        mut closed: oneshot::Receiver<()>,
        to: mpsc::Sender<T>,
        wrap: fn(Option<Vec<u8>>) -> T,
    ) {
        loop {
            tokio::select! {
                data = self.read() => match data {
                    Some(data) => {
                        if to.send(wrap(Some(data))).await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                _ = &mut closed => {
                    while let Some(data) = self.drain() {
                        if to.send(wrap(Some(data))).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
            }
        }
        let _ = to.send(wrap(None)).await;
    }
}
