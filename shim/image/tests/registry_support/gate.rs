//! A TCP proxy in front of a test registry that holds back the answer to any request for
//! one of some named blobs until every one of them has been asked for (or a deadline
//! passes). A client that fetches those blobs side by side gets through at once; one that
//! waits for a blob before asking for the next is held until the deadline, and the gate
//! says so. Unlike timing the client's progress, this does not depend on how busy the
//! machine is.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Indices (into the gate's blob list) of blobs a request has named.
    requested: BTreeSet<usize>,
    /// The gate opened; `by_deadline` when it did so without every blob asked for.
    open: bool,
    by_deadline: bool,
}

struct Shared {
    blobs: Vec<String>,
    deadline: Instant,
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
}

pub struct BlobGate {
    /// `127.0.0.1:PORT`, to pull through.
    pub address: String,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl BlobGate {
    /// A gate in front of `upstream` for the blobs whose digests (`sha256:...`) are
    /// `blobs`, opening by itself `wait` from now.
    pub fn start(upstream: &str, blobs: Vec<String>, wait: Duration) -> BlobGate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        let address = listener.local_addr().unwrap().to_string();
        let shared = Arc::new(Shared {
            blobs,
            deadline: Instant::now() + wait,
            state: Mutex::default(),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
        });
        let upstream = upstream.to_owned();
        let for_acceptor = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            for client in listener.incoming() {
                if for_acceptor.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                relay(client, server, Arc::clone(&for_acceptor));
            }
        });
        BlobGate {
            address,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Whether every blob was asked for while none of their answers had been let through.
    pub fn all_requested_while_held(&self) -> bool {
        let state = self.shared.state.lock().unwrap();
        state.open && !state.by_deadline
    }
}

impl Drop for BlobGate {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(&self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Copies both ways between `client` and `server`, noting the gated blobs the client names
/// and holding the server's answers on this connection until the gate opens.
fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let gated = Arc::new(AtomicBool::new(false));
    let (mut client_in, mut server_out) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (up_shared, up_gated) = (Arc::clone(&shared), Arc::clone(&gated));
    thread::spawn(move || {
        let mut window = Vec::new();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let count = match client_in.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            // Requests are short; keep enough of the last read to find a digest split
            // between two reads.
            let keep = window.len().saturating_sub(128);
            window.drain(..keep);
            window.extend_from_slice(&buffer[..count]);
            note_requests(&window, &up_shared, &up_gated);
            if server_out.write_all(&buffer[..count]).is_err() {
                break;
            }
        }
        let _ = server_out.shutdown(Shutdown::Write);
    });
    let (mut server_in, mut client_out) = (server, client);
    thread::spawn(move || {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let count = match server_in.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(count) => count,
            };
            if gated.load(Ordering::SeqCst) {
                wait_open(&shared);
            }
            if client_out.write_all(&buffer[..count]).is_err() {
                break;
            }
        }
        let _ = client_out.shutdown(Shutdown::Write);
    });
}

fn note_requests(window: &[u8], shared: &Shared, gated: &AtomicBool) {
    let text = String::from_utf8_lossy(window);
    let mut state = shared.state.lock().unwrap();
    for (index, digest) in shared.blobs.iter().enumerate() {
        if text.contains(&format!("/blobs/{digest}")) {
            gated.store(true, Ordering::SeqCst);
            state.requested.insert(index);
        }
    }
    if !state.open && state.requested.len() == shared.blobs.len() {
        state.open = true;
        shared.changed.notify_all();
    }
}

fn wait_open(shared: &Shared) {
    let mut state = shared.state.lock().unwrap();
    while !state.open {
        let now = Instant::now();
        if now >= shared.deadline {
            state.open = true;
            state.by_deadline = true;
            shared.changed.notify_all();
            break;
        }
        state = shared
            .changed
            .wait_timeout(state, shared.deadline - now)
            .unwrap()
            .0;
    }
}
