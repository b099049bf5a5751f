//! A guest driver's side of a split virtqueue for device tests (compiled for tests only, and
//! into `vpod-bench vsock-queue`, which includes this file: keep it free of `crate::` paths).

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// The guest's side of a split virtqueue, laid out as the virtio spec says: descriptor
/// table, then the avail ring, then the used ring, each entry written at `idx % size`.
///
/// virtio-queue's `MockSplitQueue` is not usable for more than a queue's worth of chains:
/// it computes the end of its avail ring from the entry count instead of the byte size, so
/// its used ring starts in the middle of the avail ring (the device's used-index write
/// lands on avail entry 129, and its used elements on entries 130..255), and it writes
/// avail entries past the ring instead of wrapping. That, not the device, was why about one
/// chain in 128 came out as a malformed chain (head 129, an empty descriptor) once the
/// guest had queued more than 128.
pub(crate) struct GuestQueue<'a> {
    memory: &'a GuestMemoryMmap,
    size: u16,
    desc_table: u64,
    avail: u64,
    used: u64,
}

impl<'a> GuestQueue<'a> {
    pub(crate) fn new(memory: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let queue = Self::attach(memory, base, size);
        for at in [queue.avail, queue.avail + 2, queue.used, queue.used + 2] {
            queue.write_u16(at, 0);
        }
        queue
    }

    /// The queue at `base` as [`Self::new`] laid it out, its rings as they are.
    pub(crate) fn attach(memory: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let desc_table = base;
        let avail = desc_table + 16 * u64::from(size);
        // flags, idx, ring, used_event; the used ring is 4-byte aligned.
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        GuestQueue {
            memory,
            size,
            desc_table,
            avail,
            used,
        }
    }

    fn write_u16(&self, at: u64, value: u16) {
        self.memory
            .write_obj(value.to_le(), GuestAddress(at))
            .expect("ring write");
    }

    fn read_u32(&self, at: u64) -> u32 {
        u32::from_le(self.memory.read_obj(GuestAddress(at)).expect("ring read"))
    }

    pub(crate) fn create_queue(&self) -> Queue {
        let mut queue = Queue::new(self.size).expect("queue");
        queue.set_size(self.size);
        queue.set_ready(true);
        let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
        let (low, high) = split(self.desc_table);
        queue.set_desc_table_address(low, high);
        let (low, high) = split(self.avail);
        queue.set_avail_ring_address(low, high);
        let (low, high) = split(self.used);
        queue.set_used_ring_address(low, high);
        queue
    }

    /// Writes `descs` into the table from index `offset` on and makes every chain head (a
    /// descriptor whose predecessor has no NEXT flag) available, as a driver would.
    pub(crate) fn add_desc_chains(
        &self,
        descs: &[RawDescriptor],
        offset: u16,
    ) -> Result<(), String> {
        let mut idx = u16::from_le(
            self.memory
                .read_obj(GuestAddress(self.avail + 2))
                .map_err(|e| e.to_string())?,
        );
        let mut previous_has_next = false;
        for (i, desc) in descs.iter().enumerate() {
            let index = (usize::from(offset) + i) % usize::from(self.size);
            self.memory
                .write_obj(*desc, GuestAddress(self.desc_table + 16 * index as u64))
                .map_err(|e| e.to_string())?;
            if !previous_has_next {
                let slot = u64::from(idx % self.size);
                self.write_u16(self.avail + 4 + 2 * slot, index as u16);
                idx = idx.wrapping_add(1);
            }
            previous_has_next = SplitDescriptor::from(*desc).flags() & NEXT != 0;
        }
        self.write_u16(self.avail + 2, idx);
        Ok(())
    }

    /// Used element `n`: (head index, length written).
    pub(crate) fn used_element(&self, n: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(n % self.size);
        (self.read_u32(at), self.read_u32(at + 4))
    }

    pub(crate) fn used_idx(&self) -> u16 {
        u16::from_le(
            self.memory
                .read_obj(GuestAddress(self.used + 2))
                .expect("used idx"),
        )
    }
}

impl GuestQueue<'_> {
    /// Writes avail entry `slot` (taken modulo the size) naming chain head `head`, without
    /// touching the descriptor table: for heads that do not exist.
    pub(crate) fn set_avail_entry(&self, slot: u16, head: u16) {
        self.write_u16(self.avail + 4 + 2 * u64::from(slot % self.size), head);
    }

    /// Publishes avail entries up to `idx`.
    pub(crate) fn set_avail_idx(&self, idx: u16) {
        self.write_u16(self.avail + 2, idx);
    }

    /// The driver's flags (VRING_AVAIL_F_NO_INTERRUPT).
    pub(crate) fn set_avail_flags(&self, flags: u16) {
        self.write_u16(self.avail, flags);
    }

    /// The driver's `used_event` (with VIRTIO_RING_F_EVENT_IDX): signal once the used index
    /// passes it.
    pub(crate) fn set_used_event(&self, idx: u16) {
        self.write_u16(self.avail + 4 + 2 * u64::from(self.size), idx);
    }

    /// The device's `avail_event` (with VIRTIO_RING_F_EVENT_IDX): where the driver is to
    /// notify next.
    pub(crate) fn avail_event(&self) -> u16 {
        self.read_u16(self.used + 4 + 8 * u64::from(self.size))
    }

    /// The device's flags (VRING_USED_F_NO_NOTIFY).
    pub(crate) fn used_flags(&self) -> u16 {
        self.read_u16(self.used)
    }

    fn read_u16(&self, at: u64) -> u16 {
        u16::from_le(self.memory.read_obj(GuestAddress(at)).expect("ring read"))
    }
}
