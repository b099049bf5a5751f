//! Guest memory and split virtqueues laid out from fuzz input, as a hostile driver would.
//!
//! An input is `control` bytes (queue size, feature bits, device choices; missing bytes read
//! as zero) followed by the guest's memory image: the descriptor tables, avail rings and
//! buffers are whatever the fuzzer wrote there. Memory is two regions with a page-sized hole
//! between them, so buffers can straddle regions or fall in the hole. The queues sit at fixed
//! places that depend only on the queue size ([`Layout`]); the seeds write valid rings there.

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use vpod_vmm::devices::virtio::QueueSignal;

/// The first region: `[0, FIRST_REGION)`.
pub const FIRST_REGION: u64 = 0x1_0000;
/// The second region starts one page after the first ends.
pub const SECOND_REGION_START: u64 = FIRST_REGION + 0x1000;
pub const SECOND_REGION: u64 = 0x8000;

/// Queue sizes a control byte picks from (its low three bits).
pub const QUEUE_SIZES: [u16; 8] = [1, 2, 4, 8, 16, 32, 64, 256];

/// Signals nothing; the handlers' signalling decisions are not what is fuzzed.
pub struct Quiet;

impl QueueSignal for Quiet {
    fn signal_used_queue(&self, _queue: u16) {}
}

/// A fuzz input cut into its control bytes and its memory image.
pub struct GuestInput<'a> {
    control: &'a [u8],
    image: &'a [u8],
}

impl<'a> GuestInput<'a> {
    pub fn split(data: &'a [u8], control_len: usize) -> Self {
        let (control, image) = data.split_at(data.len().min(control_len));
        GuestInput { control, image }
    }

    /// Control byte `index`, zero past the input's end.
    pub fn byte(&self, index: usize) -> u8 {
        self.control.get(index).copied().unwrap_or(0)
    }

    /// Two control bytes from `index`, little-endian.
    pub fn u16(&self, index: usize) -> u16 {
        u16::from_le_bytes([self.byte(index), self.byte(index + 1)])
    }

    /// The queue size control byte `index` picks.
    pub fn queue_size(&self, index: usize) -> u16 {
        QUEUE_SIZES[usize::from(self.byte(index) & 7)]
    }

    /// Guest memory holding the image (the first region first), zero beyond it.
    pub fn memory(&self) -> GuestMemoryMmap {
        guest_memory(self.image)
    }
}

/// Guest memory holding `image` from address 0 on (then the second region).
pub fn guest_memory(image: &[u8]) -> GuestMemoryMmap {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), FIRST_REGION as usize),
        (GuestAddress(SECOND_REGION_START), SECOND_REGION as usize),
    ])
    .expect("fuzz guest memory");
    let (first, second) = image.split_at(image.len().min(FIRST_REGION as usize));
    let second = &second[..second.len().min(SECOND_REGION as usize)];
    use vm_memory::Bytes;
    memory
        .write_slice(first, GuestAddress(0))
        .expect("first region");
    memory
        .write_slice(second, GuestAddress(SECOND_REGION_START))
        .expect("second region");
    memory
}

/// Where queue `n` of a given size lives: its descriptor table, avail ring and used ring, one
/// after the other, each queue on its own `stride`; buffers go from `data_base` on.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub size: u16,
    stride: u64,
}

impl Layout {
    pub fn new(size: u16) -> Self {
        let size64 = u64::from(size);
        let used_end = Self::used_offset(size) + 6 + 8 * size64;
        Layout {
            size,
            stride: used_end.next_multiple_of(0x100),
        }
    }

    fn used_offset(size: u16) -> u64 {
        (16 * u64::from(size) + 6 + 2 * u64::from(size)).next_multiple_of(4)
    }

    pub fn desc_table(&self, queue: usize) -> u64 {
        self.stride * queue as u64
    }

    pub fn avail(&self, queue: usize) -> u64 {
        self.desc_table(queue) + 16 * u64::from(self.size)
    }

    pub fn used(&self, queue: usize) -> u64 {
        self.desc_table(queue) + Self::used_offset(self.size)
    }

    /// The first byte after `queues` queues: where seeds put their buffers.
    pub fn data_base(&self, queues: usize) -> u64 {
        self.stride * queues as u64
    }

    /// Queue `n`, ready, as a driver set it up through the transport.
    pub fn queue(&self, queue: usize) -> Queue {
        let mut q = Queue::new(256).expect("a queue of 256");
        q.set_size(self.size);
        q.set_ready(true);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (low, high) = split(self.desc_table(queue));
        q.set_desc_table_address(low, high);
        let (low, high) = split(self.avail(queue));
        q.set_avail_ring_address(low, high);
        let (low, high) = split(self.used(queue));
        q.set_used_ring_address(low, high);
        q
    }
}

static SCRATCH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// A per-process scratch directory in memory (`/dev/shm`, else the temp dir) for the targets
/// that need files or sockets; each input cleans up what it made.
pub fn scratch_dir() -> &'static std::path::Path {
    SCRATCH.get_or_init(|| {
        let base = std::path::Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("vpod-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz scratch directory");
        // Removed when the process exits (each input already removed what it made).
        // SAFETY: registers a plain function with no captured state.
        unsafe {
            libc::atexit(remove_scratch_dir);
        }
        dir
    })
}

extern "C" fn remove_scratch_dir() {
    if let Some(dir) = SCRATCH.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A fresh name in [`scratch_dir`], unique within the process.
pub fn scratch_path(prefix: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    scratch_dir().join(format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// Descriptor flags.
pub const NEXT: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
pub const WRITE: u16 = virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE as u16;

/// Builds a seed: a driver's memory image with valid rings at [`Layout`]'s places.
pub struct DriverImage {
    pub layout: Layout,
    memory: Vec<u8>,
    /// Per queue: the next free descriptor and the avail index.
    next_desc: [u16; 3],
    avail_idx: [u16; 3],
}

impl DriverImage {
    pub fn new(size: u16) -> Self {
        DriverImage {
            layout: Layout::new(size),
            memory: vec![0; FIRST_REGION as usize],
            next_desc: [0; 3],
            avail_idx: [0; 3],
        }
    }

    /// Writes `bytes` at guest address `at` (in the first region).
    pub fn write(&mut self, at: u64, bytes: &[u8]) {
        let at = at as usize;
        self.memory[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Queues a chain of (address, length, device-writable) buffers on `queue`.
    pub fn chain(&mut self, queue: usize, buffers: &[(u64, u32, bool)]) {
        let size = self.layout.size;
        let head = self.next_desc[queue] % size;
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = (self.next_desc[queue] + i as u16) % size;
            let last = i + 1 == buffers.len();
            let flags = if writable { WRITE } else { 0 } | if last { 0 } else { NEXT };
            let next = if last { 0 } else { (index + 1) % size };
            let at = self.layout.desc_table(queue) + 16 * u64::from(index);
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            self.write(at, &raw);
        }
        self.next_desc[queue] = self.next_desc[queue].wrapping_add(buffers.len() as u16);
        let slot = self.avail_idx[queue] % size;
        let avail = self.layout.avail(queue);
        self.write(avail + 4 + 2 * u64::from(slot), &head.to_le_bytes());
        self.avail_idx[queue] = self.avail_idx[queue].wrapping_add(1);
        let idx = self.avail_idx[queue];
        self.write(avail + 2, &idx.to_le_bytes());
    }

    /// The seed: `control`, then the memory image without its trailing zeros.
    pub fn into_input(self, control: &[u8]) -> Vec<u8> {
        let end = self
            .memory
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        let mut input = control.to_vec();
        input.extend_from_slice(&self.memory[..end]);
        input
    }
}

/// The index of `size` in [`QUEUE_SIZES`], for control bytes.
pub fn size_code(size: u16) -> u8 {
    QUEUE_SIZES
        .iter()
        .position(|&s| s == size)
        .expect("a fuzzable queue size") as u8
}
