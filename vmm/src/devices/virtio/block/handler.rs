//! The virtio-blk queue handler: pops requests, runs them against the disk image, returns
//! the buffers and signals the guest. A pure type, generic over the disk and over how the
//! guest is signalled, so it runs in unit tests on plain memory.

use virtio_queue::{Queue, QueueT};
use vm_memory::Address;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::disk::DiskImage;
use super::request::{
    parse_request, status_address, Request, RequestKind, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
};
use super::SECTOR_SIZE;
use crate::config::DISK_SERIAL_LEN;
use crate::devices::virtio::QueueSignal;

/// Data moves between the disk and guest memory through a buffer of at most this size.
const BOUNCE_BUFFER_SIZE: usize = 64 * 1024;

pub struct BlockQueueHandler<S: QueueSignal, D: DiskImage> {
    pub queue: Queue,
    pub disk: D,
    pub signal: S,
    pub read_only: bool,
    pub serial: [u8; DISK_SERIAL_LEN],
    bounce: Vec<u8>,
}

/// Outcome of one request: the status byte and how many bytes went into guest buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Completion {
    status: u8,
    written: u32,
}

impl Completion {
    fn status(status: u8) -> Self {
        Completion { status, written: 0 }
    }
}

impl<S: QueueSignal, D: DiskImage> BlockQueueHandler<S, D> {
    pub fn new(
        queue: Queue,
        disk: D,
        signal: S,
        read_only: bool,
        serial: [u8; DISK_SERIAL_LEN],
    ) -> Self {
        BlockQueueHandler {
            queue,
            disk,
            signal,
            read_only,
            serial,
            bounce: Vec::new(),
        }
    }

    /// The disk's usable size: whole sectors only.
    fn disk_bytes(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE * SECTOR_SIZE
    }

    /// Whether `len` bytes at `sector` lie within the disk.
    fn in_bounds(&self, sector: u64, len: u64) -> Option<u64> {
        let offset = sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len)?;
        (end <= self.disk_bytes()).then_some(offset)
    }

    fn read_into_guest(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        let Some(mut offset) = self.in_bounds(request.sector, request.data_len()) else {
            return Completion::status(VIRTIO_BLK_S_IOERR);
        };
        let mut written: u32 = 0;
        for &(addr, len) in &request.data {
            let mut done: u32 = 0;
            while done < len {
                let chunk = ((len - done) as usize).min(BOUNCE_BUFFER_SIZE);
                self.bounce.resize(chunk, 0);
                let ok = self
                    .disk
                    .read_exact_at(&mut self.bounce[..chunk], offset)
                    .is_ok()
                    && addr
                        .checked_add(u64::from(done))
                        .is_some_and(|at| memory.write_slice(&self.bounce[..chunk], at).is_ok());
                if !ok {
                    return Completion {
                        status: VIRTIO_BLK_S_IOERR,
                        written,
                    };
                }
                done += chunk as u32;
                written = written.saturating_add(chunk as u32);
                offset += chunk as u64;
            }
        }
        Completion {
            status: VIRTIO_BLK_S_OK,
            written,
        }
    }

    fn write_from_guest(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        if self.read_only {
            return Completion::status(VIRTIO_BLK_S_IOERR);
        }
        let Some(mut offset) = self.in_bounds(request.sector, request.data_len()) else {
            return Completion::status(VIRTIO_BLK_S_IOERR);
        };
        for &(addr, len) in &request.data {
            let mut done: u32 = 0;
            while done < len {
                let chunk = ((len - done) as usize).min(BOUNCE_BUFFER_SIZE);
                self.bounce.resize(chunk, 0);
                let ok = addr
                    .checked_add(u64::from(done))
                    .is_some_and(|at| memory.read_slice(&mut self.bounce[..chunk], at).is_ok())
                    && self
                        .disk
                        .write_all_at(&self.bounce[..chunk], offset)
                        .is_ok();
                if !ok {
                    return Completion::status(VIRTIO_BLK_S_IOERR);
                }
                done += chunk as u32;
                offset += chunk as u64;
            }
        }
        Completion::status(VIRTIO_BLK_S_OK)
    }

    fn write_serial(&self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        let mut remaining: &[u8] = &self.serial;
        let mut written: u32 = 0;
        for &(addr, len) in &request.data {
            let take = remaining.len().min(len as usize);
            if take == 0 {
                break;
            }
            if memory.write_slice(&remaining[..take], addr).is_err() {
                return Completion::status(VIRTIO_BLK_S_IOERR);
            }
            remaining = &remaining[take..];
            written += take as u32;
        }
        Completion {
            status: VIRTIO_BLK_S_OK,
            written,
        }
    }

    fn execute(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        match request.kind {
            RequestKind::In => self.read_into_guest(memory, request),
            RequestKind::Out => self.write_from_guest(memory, request),
            RequestKind::Flush if self.read_only => Completion::status(VIRTIO_BLK_S_OK),
            RequestKind::Flush => match self.disk.flush() {
                Ok(()) => Completion::status(VIRTIO_BLK_S_OK),
                Err(_) => Completion::status(VIRTIO_BLK_S_IOERR),
            },
            RequestKind::GetId => self.write_serial(memory, request),
            RequestKind::Unsupported(_) => Completion::status(VIRTIO_BLK_S_UNSUPP),
        }
    }

    /// Runs one popped chain; returns the used length to report.
    fn complete_chain(
        &mut self,
        memory: &GuestMemoryMmap,
        descriptors: &[virtio_queue::desc::split::Descriptor],
    ) -> u32 {
        let (completion, status_at): (Completion, Option<GuestAddress>) =
            match parse_request(descriptors, memory) {
                Ok(request) => (self.execute(memory, &request), Some(request.status)),
                Err(_) => (
                    Completion::status(VIRTIO_BLK_S_IOERR),
                    status_address(descriptors, memory),
                ),
            };
        match status_at {
            Some(at) if memory.write_obj(completion.status, at).is_ok() => {
                completion.written.saturating_add(1)
            }
            // Nowhere to put a status: return the chain with nothing written.
            _ => 0,
        }
    }

    /// Processes every available request. Returns whether the guest was signalled.
    pub fn process_queue(&mut self, memory: &GuestMemoryMmap) -> bool {
        let mut used_any = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let descriptors: Vec<_> = chain.collect();
            let used_len = self.complete_chain(memory, &descriptors);
            if self.queue.add_used(memory, head, used_len).is_err() {
                // The used ring is outside guest memory: the driver broke the queue.
                break;
            }
            used_any = true;
        }
        if used_any && self.queue.needs_notification(memory).unwrap_or(true) {
            self.signal.signal_used_queue(0);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::block::disk::MemoryDisk;
    use crate::devices::virtio::block::request::{
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };
    use std::cell::Cell;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;

    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const HEADER: u64 = 0x10_0000;
    const DATA: u64 = 0x20_0000;
    const STATUS: u64 = 0x30_0000;

    #[derive(Default)]
    struct CountingSignal(Cell<usize>);

    impl QueueSignal for &CountingSignal {
        fn signal_used_queue(&self, _queue: u16) {
            self.0.set(self.0.get() + 1);
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("memory")
    }

    fn disk(sectors: usize) -> MemoryDisk {
        MemoryDisk {
            bytes: (0..sectors * 512).map(|i| (i / 512) as u8).collect(),
            flushes: 0,
        }
    }

    fn header(memory: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&kind.to_le_bytes());
        raw[8..].copy_from_slice(&sector.to_le_bytes());
        memory
            .write_slice(&raw, GuestAddress(HEADER))
            .expect("header");
    }

    fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// Builds a queue holding one chain of `descs`, returns the handler's result and status.
    fn run(
        memory: &GuestMemoryMmap,
        descs: &[RawDescriptor],
        disk: MemoryDisk,
        read_only: bool,
    ) -> (u8, u32, MemoryDisk, usize) {
        memory
            .write_obj(0xaau8, GuestAddress(STATUS))
            .expect("status");
        let mock = MockSplitQueue::new(memory, 16);
        mock.add_desc_chains(descs, 0).expect("chain");
        let queue: Queue = mock.create_queue().expect("queue");
        let signal = CountingSignal::default();
        let mut handler =
            BlockQueueHandler::new(queue, disk, &signal, read_only, *b"serial-0123456789abc");
        handler.process_queue(memory);
        let status: u8 = memory.read_obj(GuestAddress(STATUS)).expect("status");
        let used_len = mock
            .used()
            .ring()
            .ref_at(0)
            .expect("used elem")
            .load()
            .len();
        (status, used_len, handler.disk, signal.0.get())
    }

    fn three(kind_flags: u16, len: u32) -> Vec<RawDescriptor> {
        vec![
            raw(HEADER, 16, NEXT, 1),
            raw(DATA, len, kind_flags | NEXT, 2),
            raw(STATUS, 1, WRITE, 0),
        ]
    }

    #[test]
    fn read_copies_the_sectors_into_guest_memory() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_IN, 2);
        let (status, used, _, signals) = run(&m, &three(WRITE, 1024), disk(8), false);
        assert_eq!((status, used, signals), (VIRTIO_BLK_S_OK, 1025, 1));
        let mut data = [0u8; 1024];
        m.read_slice(&mut data, GuestAddress(DATA)).expect("data");
        assert!(data[..512].iter().all(|&b| b == 2));
        assert!(data[512..].iter().all(|&b| b == 3));
    }

    #[test]
    fn large_read_crosses_the_bounce_buffer() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let (status, used, _, _) = run(&m, &three(WRITE, 256 * 512), disk(256), false);
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 256 * 512 + 1));
        let last: u8 = m.read_obj(GuestAddress(DATA + 255 * 512)).expect("data");
        assert_eq!(last, 255);
    }

    #[test]
    fn write_lands_on_the_disk() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_OUT, 1);
        m.write_slice(&[0x5a; 512], GuestAddress(DATA))
            .expect("data");
        let (status, used, disk, _) = run(&m, &three(0, 512), disk(4), false);
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
        assert!(disk.bytes[512..1024].iter().all(|&b| b == 0x5a));
        assert!(disk.bytes[..512].iter().all(|&b| b == 0));
    }

    #[test]
    fn write_to_read_only_disk_is_ioerr_and_leaves_it_alone() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_OUT, 0);
        m.write_slice(&[0x5a; 512], GuestAddress(DATA))
            .expect("data");
        let (status, _, disk, _) = run(&m, &three(0, 512), disk(4), true);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert!(disk.bytes[..512].iter().all(|&b| b == 0));
    }

    #[test]
    fn block_read_past_end_returns_ioerr() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_IN, 3);
        let (status, used, _, _) = run(&m, &three(WRITE, 1024), disk(4), false);
        assert_eq!((status, used), (VIRTIO_BLK_S_IOERR, 1));
        header(&m, VIRTIO_BLK_T_IN, u64::MAX / 256);
        let (status, _, _, _) = run(&m, &three(WRITE, 512), disk(4), false);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
    }

    #[test]
    fn block_write_past_end_returns_ioerr() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_OUT, 4);
        let (status, _, disk, _) = run(&m, &three(0, 512), disk(4), false);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert_eq!(disk.bytes.len(), 4 * 512);
    }

    #[test]
    fn flush_syncs_the_disk() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let descs = vec![raw(HEADER, 16, NEXT, 1), raw(STATUS, 1, WRITE, 0)];
        let (status, _, disk, _) = run(&m, &descs, disk(1), false);
        assert_eq!((status, disk.flushes), (VIRTIO_BLK_S_OK, 1));
    }

    #[test]
    fn get_id_writes_the_serial() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let (status, used, _, _) = run(&m, &three(WRITE, 20), disk(1), false);
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(DATA)).expect("id");
        assert_eq!(&id, b"serial-0123456789abc");
    }

    #[test]
    fn unsupported_type_is_unsupp() {
        let m = memory();
        header(&m, 99, 0);
        let descs = vec![raw(HEADER, 16, NEXT, 1), raw(STATUS, 1, WRITE, 0)];
        assert_eq!(run(&m, &descs, disk(1), false).0, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn looping_chain_gets_no_status_and_does_not_hang() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_IN, 0);
        // 0 -> 1 -> 0 -> 1 ... ; the chain iterator stops at the queue size.
        let descs = vec![raw(HEADER, 16, NEXT, 1), raw(DATA, 512, WRITE | NEXT, 0)];
        let (status, used, _, signals) = run(&m, &descs, disk(1), false);
        assert_eq!((status, used, signals), (0xaa, 0, 1));
    }

    #[test]
    fn out_of_range_descriptor_is_ioerr() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let descs = vec![
            raw(HEADER, 16, NEXT, 1),
            raw(0x3f_ff00, 4096, WRITE | NEXT, 2),
            raw(STATUS, 1, WRITE, 0),
        ];
        let (status, used, _, _) = run(&m, &descs, disk(8), false);
        assert_eq!((status, used), (VIRTIO_BLK_S_IOERR, 1));
    }

    #[test]
    fn next_index_beyond_the_queue_is_truncated() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_IN, 0);
        let descs = vec![raw(HEADER, 16, NEXT, 1), raw(DATA, 512, WRITE | NEXT, 200)];
        let (status, used, _, _) = run(&m, &descs, disk(1), false);
        assert_eq!((status, used), (0xaa, 0));
    }
}
