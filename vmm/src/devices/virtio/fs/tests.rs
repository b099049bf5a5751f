//! The pure parts of virtio-fs (configuration space, feature negotiation) and the device
//! against backends that misbehave: none may panic or block the VMM.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::backend::{backend_features, guest_features, protocol_features, BackendError};
use super::device::{config_space, FsDevice, FsError, CONFIG_SPACE_LEN};
use super::NUM_QUEUES;
use crate::config::FsConfig;
use crate::devices::virtio::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};

const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
const INDIRECT: u64 = 1 << 28;
const EVENT_IDX: u64 = 1 << 29;

#[test]
fn config_space_holds_the_padded_tag_then_one_request_queue() {
    let space = config_space("vpod", 1);
    assert_eq!(space.len(), CONFIG_SPACE_LEN);
    assert_eq!(&space[..4], b"vpod");
    assert!(space[4..36].iter().all(|&b| b == 0));
    assert_eq!(&space[36..], &1u32.to_le_bytes());
    // A 36-byte tag fills the field with no terminator, as the spec allows.
    let full = "x".repeat(36);
    assert_eq!(&config_space(&full, 1)[..36], full.as_bytes());
}

#[test]
fn the_guest_is_offered_only_ring_features_both_sides_have() {
    let backend = VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES_BIT | EVENT_IDX | (1 << 27) | 1;
    assert_eq!(
        guest_features(backend).expect("version 1"),
        VIRTIO_F_VERSION_1 | EVENT_IDX
    );
    assert!(matches!(
        guest_features(PROTOCOL_FEATURES_BIT | INDIRECT),
        Err(BackendError::NotVersion1(_))
    ));
}

#[test]
fn the_backend_gets_the_drivers_features_and_the_protocol_bit() {
    let backend = VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES_BIT | EVENT_IDX;
    // What the driver acked, bounded by what was offered, plus the vhost-user bit.
    assert_eq!(
        backend_features(VIRTIO_F_VERSION_1 | INDIRECT | (1 << 3), backend),
        VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES_BIT
    );
    // The driver cannot smuggle the vhost-user bit to a backend without it.
    assert_eq!(
        backend_features(
            VIRTIO_F_VERSION_1 | PROTOCOL_FEATURES_BIT,
            VIRTIO_F_VERSION_1
        ),
        VIRTIO_F_VERSION_1
    );
}

#[test]
fn only_reply_ack_is_taken_of_the_protocol_features() {
    let offered = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::CONFIG;
    assert_eq!(
        protocol_features(offered),
        VhostUserProtocolFeatures::REPLY_ACK
    );
    assert!(protocol_features(VhostUserProtocolFeatures::MQ).is_empty());
}

fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vpod-fs-{}-{name}.sock", std::process::id()))
}

fn share(socket: &Path) -> FsConfig {
    FsConfig {
        socket: socket.to_path_buf(),
        tag: "t".into(),
        queue_size: 16,
    }
}

/// Runs `backend` on the one connection to a fresh socket while `test` uses the socket.
fn with_backend<T>(
    name: &str,
    backend: impl FnOnce(std::os::unix::net::UnixStream) + Send + 'static,
    test: impl FnOnce(&Path) -> T,
) -> T {
    let path = socket_path(name);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            backend(stream);
        }
    });
    let result = test(&path);
    let _ = server.join();
    let _ = std::fs::remove_file(&path);
    result
}

/// Connects with a timeout a backend that answers never comes near, even on a busy machine.
fn connect(path: &Path) -> Result<FsDevice, FsError> {
    FsDevice::with_timeout(&share(path), Duration::from_secs(30))
}

/// Connects with a short timeout, for a backend that never answers.
fn connect_impatiently(path: &Path) -> Result<FsDevice, FsError> {
    FsDevice::with_timeout(&share(path), Duration::from_millis(300))
}

#[test]
fn no_backend_on_the_socket_is_an_error() {
    let path = socket_path("absent");
    let error = connect(&path).err().expect("refused");
    assert!(matches!(
        error,
        FsError::Backend(_, BackendError::Connect(..))
    ));
}

#[test]
fn a_backend_that_hangs_up_at_once_is_an_error() {
    let error = with_backend("hangup", drop, |path| connect(path).err().expect("refused"));
    assert!(
        matches!(error, FsError::Backend(_, BackendError::Request(..))),
        "{error:?}"
    );
}

#[test]
fn a_backend_that_never_answers_is_given_up_on_after_the_timeout() {
    let error = with_backend(
        "silent",
        |mut stream| {
            // Read whatever comes until the VMM side gives up and shuts the socket.
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink);
        },
        |path| {
            let started = Instant::now();
            let error = connect_impatiently(path).err().expect("refused");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
            error
        },
    );
    assert!(
        matches!(error, FsError::Backend(_, BackendError::Request(..))),
        "{error:?}"
    );
}

/// Reads one vhost-user request header (request, flags, size) and its body.
fn read_request(stream: &mut std::os::unix::net::UnixStream) -> Option<u32> {
    let mut header = [0u8; 12];
    stream.read_exact(&mut header).ok()?;
    let size = u32::from_le_bytes(header[8..12].try_into().ok()?) as usize;
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).ok()?;
    Some(u32::from_le_bytes(header[..4].try_into().ok()?))
}

const GET_FEATURES: u32 = 1;

/// A reply header for `request` with a u64 body.
fn reply_u64(request: u32, value: u64) -> Vec<u8> {
    let mut reply = Vec::new();
    reply.extend_from_slice(&request.to_le_bytes());
    reply.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes()); // version 1, reply
    reply.extend_from_slice(&8u32.to_le_bytes());
    reply.extend_from_slice(&value.to_le_bytes());
    reply
}

#[test]
fn a_backend_that_answers_garbage_is_an_error() {
    let error = with_backend(
        "garbage",
        |mut stream| {
            while let Some(request) = read_request(&mut stream) {
                if request == GET_FEATURES {
                    // A reply for another request, with a body of the wrong size.
                    let _ = stream.write_all(&[7, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 1, 2, 3]);
                }
            }
        },
        |path| connect(path).err().expect("refused"),
    );
    assert!(
        matches!(error, FsError::Backend(_, BackendError::Request(..))),
        "{error:?}"
    );
}

#[test]
fn a_backend_without_version_1_is_refused() {
    let error = with_backend(
        "legacy",
        |mut stream| {
            while let Some(request) = read_request(&mut stream) {
                if request == GET_FEATURES {
                    let _ = stream.write_all(&reply_u64(GET_FEATURES, 0));
                }
            }
        },
        |path| connect(path).err().expect("refused"),
    );
    assert!(
        matches!(error, FsError::Backend(_, BackendError::NotVersion1(0))),
        "{error:?}"
    );
}

struct NoInterrupt;

impl VirtioInterrupt for NoInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_changed(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_backend_that_dies_after_negotiating_fails_activation_not_the_vmm() {
    with_backend(
        "dies",
        |mut stream| {
            // Negotiate (no protocol features), then die.
            while let Some(request) = read_request(&mut stream) {
                if request == GET_FEATURES {
                    let _ = stream.write_all(&reply_u64(GET_FEATURES, VIRTIO_F_VERSION_1));
                    return;
                }
            }
        },
        |path| {
            let mut device = connect(path).expect("negotiated");
            assert_eq!(device.avail_features(), VIRTIO_F_VERSION_1);
            let mut config = [0u8; 4];
            device.read_config(36, &mut config);
            assert_eq!(u32::from_le_bytes(config), 1);
            let kicks: Vec<_> = (0..NUM_QUEUES)
                .map(|_| vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd"))
                .collect();
            assert!(device.set_queue_notifiers(&kicks).expect("cloned"));
            device.set_acked_features(VIRTIO_F_VERSION_1);
            // Shared memory is what the backend would map; its mapping is never reached.
            let (memory, _) =
                crate::vstate::memory::create_shared_guest_memory(&[(GuestAddress(0), 2 << 20)], 2)
                    .expect("memory");
            let queues = (0..NUM_QUEUES)
                .map(|_| Queue::new(16).expect("queue"))
                .collect();
            let result = device.activate(
                Arc::new(memory) as Arc<GuestMemoryMmap>,
                Arc::new(NoInterrupt),
                queues,
            );
            assert!(
                matches!(result, Err(ActivateError::Backend(_))),
                "{result:?}"
            );
            assert!(device.is_broken());
            // A second try fails at once, and a reset is harmless.
            let queues = (0..NUM_QUEUES)
                .map(|_| Queue::new(16).expect("queue"))
                .collect();
            let started = Instant::now();
            let again = device.activate(
                Arc::new(GuestMemoryMmap::default()),
                Arc::new(NoInterrupt),
                queues,
            );
            assert!(matches!(again, Err(ActivateError::Backend(_))));
            // At once: well inside the 30 s a backend request could wait.
            assert!(started.elapsed() < Duration::from_secs(10));
            device.reset();
        },
    );
}
