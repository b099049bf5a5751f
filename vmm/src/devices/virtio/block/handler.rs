//! The virtio-blk queue handler: pops requests, runs them against the disk image, returns
//! the buffers and signals the guest. A pure type, generic over the disk and over how the
//! guest is signalled, so it runs in unit tests on plain memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::Address;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::discard::{self, DiscardError};
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
    pub metrics: Arc<BlockMetrics>,
    bounce: Vec<u8>,
}

/// Counters of one block device, shared with the control socket.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    pub requests: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub errors: AtomicU64,
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
            metrics: Arc::default(),
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
        // Straight into guest memory when every buffer lies within one memory region (all of
        // them, unless a driver makes one straddle two regions); else through the buffer.
        let targets: Option<Vec<_>> = request
            .data
            .iter()
            .map(|&(addr, len)| memory.get_slice(addr, len as usize).ok())
            .collect();
        if let Some(targets) = targets {
            return match self.disk.read_exact_into_at(&targets, offset) {
                Ok(()) => Completion {
                    status: VIRTIO_BLK_S_OK,
                    written: u32::try_from(request.data_len()).unwrap_or(u32::MAX),
                },
                Err(_) => Completion::status(VIRTIO_BLK_S_IOERR),
            };
        }
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

    /// Checks every segment lies within the disk before giving any back.
    fn discard(&mut self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        if self.read_only {
            return Completion::status(VIRTIO_BLK_S_IOERR);
        }
        let segments = match discard::read_segments(memory, &request.data) {
            Ok(segments) => segments,
            Err(DiscardError::Unsupported) => return Completion::status(VIRTIO_BLK_S_UNSUPP),
            Err(DiscardError::Malformed) => return Completion::status(VIRTIO_BLK_S_IOERR),
        };
        let ranges: Option<Vec<(u64, u64)>> = segments
            .iter()
            .map(|segment| {
                let len = u64::from(segment.sectors) * SECTOR_SIZE;
                self.in_bounds(segment.sector, len)
                    .map(|offset| (offset, len))
            })
            .collect();
        let Some(ranges) = ranges else {
            return Completion::status(VIRTIO_BLK_S_IOERR);
        };
        for (offset, len) in ranges {
            if len > 0 && self.disk.discard(offset, len).is_err() {
                return Completion::status(VIRTIO_BLK_S_IOERR);
            }
        }
        Completion::status(VIRTIO_BLK_S_OK)
    }

    fn write_serial(&self, memory: &GuestMemoryMmap, request: &Request) -> Completion {
        let mut remaining: &[u8] = &self.serial;
        let mut written: u32 = 0;
        for &(addr, len) in &request.data {
            if remaining.is_empty() {
                break;
            }
            // A buffer shorter than the id (even an empty one) gets what fits.
            let Some((part, rest)) = remaining.split_at_checked(remaining.len().min(len as usize))
            else {
                break;
            };
            if !part.is_empty() && memory.write_slice(part, addr).is_err() {
                return Completion::status(VIRTIO_BLK_S_IOERR);
            }
            remaining = rest;
            written = written.saturating_add(part.len() as u32);
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
            RequestKind::Discard => self.discard(memory, request),
            RequestKind::Unsupported(_) => Completion::status(VIRTIO_BLK_S_UNSUPP),
        }
    }

    /// Runs one popped chain; returns the used length to report.
    fn complete_chain(
        &mut self,
        memory: &GuestMemoryMmap,
        descriptors: &[virtio_queue::desc::split::Descriptor],
    ) -> u32 {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let (completion, status_at): (Completion, Option<GuestAddress>) =
            match parse_request(descriptors, memory) {
                Ok(request) => {
                    let completion = self.execute(memory, &request);
                    let counter = match request.kind {
                        RequestKind::Out if completion.status == VIRTIO_BLK_S_OK => {
                            Some((&self.metrics.write_bytes, request.data_len()))
                        }
                        RequestKind::In => {
                            Some((&self.metrics.read_bytes, u64::from(completion.written)))
                        }
                        _ => None,
                    };
                    if let Some((counter, bytes)) = counter {
                        counter.fetch_add(bytes, Ordering::Relaxed);
                    }
                    (completion, Some(request.status))
                }
                Err(_) => (
                    Completion::status(VIRTIO_BLK_S_IOERR),
                    status_address(descriptors, memory),
                ),
            };
        if completion.status != VIRTIO_BLK_S_OK {
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        }
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
            // No chain may be longer than the queue. The iterator enforces that for direct
            // chains; an indirect table (a feature not offered) could otherwise hold 65535
            // descriptors. The cut leaves a last descriptor with NEXT set: a truncated chain.
            let descriptors: Vec<_> = chain.take(usize::from(self.queue.size())).collect();
            let used_len = self.complete_chain(memory, &descriptors);
            match self.queue.add_used(memory, head, used_len) {
                Ok(()) => used_any = true,
                // A head index past the queue cannot be returned: drop that chain alone.
                Err(virtio_queue::Error::InvalidDescriptorIndex) => {}
                // The used ring is outside guest memory: the driver broke the queue.
                Err(_) => break,
            }
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
        VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
    };
    use crate::devices::virtio::test_queue::GuestQueue;
    use std::cell::Cell;
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

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
            ..MemoryDisk::default()
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
        let guest = GuestQueue::new(memory, 0, 16);
        guest.add_desc_chains(descs, 0).expect("chain");
        let queue = guest.create_queue();
        let signal = CountingSignal::default();
        let mut handler =
            BlockQueueHandler::new(queue, disk, &signal, read_only, *b"serial-0123456789abc");
        handler.process_queue(memory);
        let status: u8 = memory.read_obj(GuestAddress(STATUS)).expect("status");
        let (_, used_len) = guest.used_element(0);
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

    fn segments(memory: &GuestMemoryMmap, segments: &[(u64, u32, u32)]) -> u32 {
        let mut raw = Vec::new();
        for &(sector, sectors, flags) in segments {
            raw.extend_from_slice(&sector.to_le_bytes());
            raw.extend_from_slice(&sectors.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
        }
        memory.write_slice(&raw, GuestAddress(DATA)).expect("data");
        raw.len() as u32
    }

    #[test]
    fn discard_gives_back_each_segment_and_checks_all_first() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_DISCARD, 0);
        let len = segments(&m, &[(1, 2, 0), (6, 1, 0)]);
        let (status, used, done, _) = run(&m, &three(0, len), disk(8), false);
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 1));
        assert_eq!(done.discards, vec![(512, 1024), (3072, 512)]);
        assert!(done.bytes[512..1536].iter().all(|&b| b == 0));
        assert!(done.bytes[1536..2048].iter().all(|&b| b == 3));

        // One segment past the end: nothing is discarded, not even the good one.
        let len = segments(&m, &[(1, 2, 0), (7, 2, 0)]);
        let (status, _, done, _) = run(&m, &three(0, len), disk(8), false);
        assert_eq!(status, VIRTIO_BLK_S_IOERR);
        assert!(done.discards.is_empty());
        // A sector number that overflows a byte offset.
        let len = segments(&m, &[(u64::MAX / 2, 1, 0)]);
        let (status, _, done, _) = run(&m, &three(0, len), disk(8), false);
        assert_eq!((status, done.discards.len()), (VIRTIO_BLK_S_IOERR, 0));
        // The unmap flag is for write-zeroes: unsupported.
        let len = segments(&m, &[(1, 1, 1)]);
        let (status, _, _, _) = run(&m, &three(0, len), disk(8), false);
        assert_eq!(status, VIRTIO_BLK_S_UNSUPP);
        // Device-writable segments are not a request.
        let len = segments(&m, &[(1, 1, 0)]);
        let (status, _, done, _) = run(&m, &three(WRITE, len), disk(8), false);
        assert_eq!((status, done.discards.len()), (VIRTIO_BLK_S_IOERR, 0));
        // A read-only disk gives nothing back.
        let (status, _, done, _) = run(&m, &three(0, len), disk(8), true);
        assert_eq!((status, done.discards.len()), (VIRTIO_BLK_S_IOERR, 0));
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

    #[test]
    fn get_id_skips_an_empty_buffer_and_fills_a_short_one() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let descs = vec![
            raw(HEADER, 16, NEXT, 1),
            raw(DATA, 0, WRITE | NEXT, 2),
            raw(DATA + 0x100, 4, WRITE | NEXT, 3),
            raw(STATUS, 1, WRITE, 0),
        ];
        let (status, used, _, _) = run(&m, &descs, disk(1), false);
        assert_eq!((status, used), (VIRTIO_BLK_S_OK, 5));
        let mut id = [0u8; 5];
        m.read_slice(&mut id, GuestAddress(DATA + 0x100))
            .expect("id");
        assert_eq!(&id, b"seri\0");
    }

    #[test]
    fn indirect_table_longer_than_the_queue_is_truncated() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_IN, 0);
        // An indirect table of 64 descriptors (the queue has 16): header, 62 data, status.
        const TABLE: u64 = 0x38_0000;
        let mut table = vec![raw(HEADER, 16, NEXT, 1)];
        table.extend((1..63).map(|i| raw(DATA + 512 * u64::from(i), 512, WRITE | NEXT, i + 1)));
        table.push(raw(STATUS, 1, WRITE, 0));
        for (i, desc) in table.iter().enumerate() {
            m.write_obj(*desc, GuestAddress(TABLE + 16 * i as u64))
                .expect("table");
        }
        let indirect = VRING_DESC_F_INDIRECT as u16;
        let descs = vec![raw(TABLE, 16 * table.len() as u32, indirect, 0)];
        let (status, used, _, signals) = run(&m, &descs, disk(64), false);
        assert_eq!((status, used, signals), (0xaa, 0, 1));
    }

    #[test]
    fn head_index_past_the_queue_is_dropped_and_later_chains_complete() {
        let m = memory();
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        m.write_obj(0xaau8, GuestAddress(STATUS)).expect("status");
        let guest = GuestQueue::new(&m, 0, 16);
        guest
            .add_desc_chains(&[raw(HEADER, 16, NEXT, 1), raw(STATUS, 1, WRITE, 0)], 0)
            .expect("chain");
        // Two available entries: first a head of 200 (no such descriptor), then head 0.
        guest.set_avail_entry(0, 200);
        guest.set_avail_entry(1, 0);
        guest.set_avail_idx(2);
        let queue = guest.create_queue();
        let signal = CountingSignal::default();
        let mut handler = BlockQueueHandler::new(queue, disk(1), &signal, false, [0; 20]);
        assert!(handler.process_queue(&m));
        assert_eq!(handler.queue.next_used(), 1);
        assert_eq!(guest.used_element(0), (0, 1));
        let status: u8 = m.read_obj(GuestAddress(STATUS)).expect("status");
        assert_eq!(status, VIRTIO_BLK_S_OK);
    }

    /// Property tests: a hostile driver's descriptor tables, rings and request headers.
    mod hostile {
        use super::*;
        use crate::devices::virtio::block::disk::RawFile;
        use proptest::prelude::*;
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU64, Ordering};

        const QUEUE_SIZE: u16 = 16;
        const DESC_TABLE: u64 = 0x0;
        const AVAIL_RING: u64 = 0x400;
        const USED_RING: u64 = 0x800;
        const HEADERS: u64 = 0x1000;
        const INDIRECT_TABLE: u64 = 0x2000;
        /// Two RAM regions with a hole between them, like RAM around the MMIO gap.
        const LOW_END: u64 = 0x1_0000;
        const HIGH_START: u64 = 0x2_0000;
        const HIGH_END: u64 = 0x3_0000;
        /// Eight whole sectors and a partial one the device must never touch.
        const DISK_BYTES: u64 = 8 * 512;
        const DISK_FILE_LEN: usize = 8 * 512 + 100;

        type RawDesc = (u64, u32, u16, u16);

        /// A temporary disk file, removed even when a case fails.
        struct TempDisk(PathBuf);

        impl TempDisk {
            fn new(contents: &[u8]) -> Self {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let path = std::env::temp_dir().join(format!(
                    "vpod-blk-prop-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, contents).expect("temp disk");
                TempDisk(path)
            }
        }

        impl Drop for TempDisk {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }

        fn address() -> impl Strategy<Value = u64> {
            prop_oneof![
                (0..4u64).prop_map(|i| HEADERS + 16 * i),
                (0..16u64).prop_map(|i| INDIRECT_TABLE + 16 * i),
                prop::sample::select(vec![DESC_TABLE, AVAIL_RING, USED_RING]),
                0x3000..HIGH_END,
                (LOW_END - 0x100)..(LOW_END + 0x100),
                (HIGH_END - 0x100)..(HIGH_END + 0x100),
                (0..0x100u64).prop_map(|d| u64::MAX - d),
                any::<u64>(),
            ]
        }

        fn length() -> impl Strategy<Value = u32> {
            prop_oneof![
                prop::sample::select(vec![0u32, 1, 15, 16, 19, 20, 512, 1024, 4096, 4608]),
                (1..=64u32).prop_map(|n| n * 16),
                0..0x2_0000u32,
                (0..0x100u32).prop_map(|d| u32::MAX - d),
                any::<u32>(),
            ]
        }

        fn flags() -> impl Strategy<Value = u16> {
            let next = VRING_DESC_F_NEXT as u16;
            let write = VRING_DESC_F_WRITE as u16;
            let indirect = VRING_DESC_F_INDIRECT as u16;
            prop_oneof![
                4 => prop::sample::subsequence(vec![next, write, indirect], 0..=3)
                    .prop_map(|bits| bits.into_iter().fold(0, |a, b| a | b)),
                1 => any::<u16>(),
            ]
        }

        fn wild_descriptor() -> impl Strategy<Value = RawDesc> {
            (address(), length(), flags(), 0..(QUEUE_SIZE + 4))
        }

        /// One request as a driver would lay it out: header, data buffers, status; the
        /// links are filled in when the chain is placed in a table.
        fn planned_chain() -> impl Strategy<Value = Vec<RawDesc>> {
            let write = VRING_DESC_F_WRITE as u16;
            let data = (
                prop_oneof![3 => 0x3000..HIGH_END, 1 => address()],
                prop_oneof![
                    (1..=9u32).prop_map(|n| n * 512),
                    1..700u32,
                    (4000..4300u32),
                    length(),
                ],
                any::<bool>(),
            );
            (
                0..4u64,
                prop_oneof![4 => Just(16u32), 1 => length()],
                prop::collection::vec(data, 0..=3),
                prop_oneof![3 => 0x3000..HIGH_END, 1 => address()],
                prop_oneof![4 => Just(1u32), 1 => length()],
            )
                .prop_map(move |(slot, header_len, data, status_at, status_len)| {
                    let mut chain = vec![(HEADERS + 16 * slot, header_len, 0, 0)];
                    chain.extend(
                        data.into_iter()
                            .map(|(at, len, w)| (at, len, if w { write } else { 0 }, 0)),
                    );
                    chain.push((status_at, status_len, write, 0));
                    chain
                })
        }

        /// Places `chains` one after another in a table of `size` slots (linking each
        /// chain's descriptors), fills the rest with wild descriptors, then lets `mutations`
        /// overwrite some slots. Returns the table and each placed chain's head.
        fn build_table(
            chains: &[Vec<RawDesc>],
            size: usize,
            mutations: &[Option<RawDesc>],
            filler: &[RawDesc],
        ) -> (Vec<RawDesc>, Vec<u16>) {
            let next_flag = VRING_DESC_F_NEXT as u16;
            let mut table = Vec::new();
            let mut heads = Vec::new();
            for chain in chains {
                if table.len() + chain.len() > size {
                    break;
                }
                heads.push(table.len() as u16);
                let last = chain.len() - 1;
                for (j, &(addr, len, flags, _)) in chain.iter().enumerate() {
                    let index = table.len() as u16;
                    if j < last {
                        table.push((addr, len, flags | next_flag, index + 1));
                    } else {
                        table.push((addr, len, flags, 0));
                    }
                }
            }
            table.extend(filler.iter().copied().take(size - table.len()));
            for (slot, mutation) in table.iter_mut().zip(mutations) {
                if let Some(desc) = mutation {
                    *slot = *desc;
                }
            }
            (table, heads)
        }

        fn request_header() -> impl Strategy<Value = (u32, u64)> {
            (
                prop_oneof![
                    prop::sample::select(vec![
                        VIRTIO_BLK_T_IN,
                        VIRTIO_BLK_T_OUT,
                        VIRTIO_BLK_T_FLUSH,
                        VIRTIO_BLK_T_GET_ID,
                    ]),
                    any::<u32>(),
                ],
                prop_oneof![
                    0..10u64,
                    prop::sample::select(vec![u64::MAX / 512, u64::MAX / 512 + 1, u64::MAX]),
                    any::<u64>(),
                ],
            )
        }

        fn store_descriptors(memory: &GuestMemoryMmap, at: u64, descs: &[RawDesc]) {
            for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
                memory
                    .write_obj(
                        raw(addr, len, flags, next),
                        GuestAddress(at + 16 * i as u64),
                    )
                    .expect("descriptor");
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(384))]

            #[test]
            fn random_descriptor_chains_never_panic_or_write_past_disk_end(
                chains in prop::collection::vec(planned_chain(), 0..6),
                indirect_chain in planned_chain(),
                indirect_len in prop_oneof![(0..=20u32).prop_map(|n| n * 16), length()],
                filler in prop::collection::vec(wild_descriptor(), 16),
                mutations in prop::collection::vec(
                    prop::option::weighted(0.1, wild_descriptor()),
                    16,
                ),
                headers in prop::collection::vec(request_header(), 4),
                extra_heads in prop::collection::vec(0..(QUEUE_SIZE + 4), 0..4),
                avail_idx_override in prop::option::weighted(0.1, any::<u16>()),
                read_only in any::<bool>(),
                fill in any::<u8>(),
            ) {
                let memory = GuestMemoryMmap::<()>::from_ranges(&[
                    (GuestAddress(0), LOW_END as usize),
                    (GuestAddress(HIGH_START), (HIGH_END - HIGH_START) as usize),
                ])
                .expect("memory");
                memory
                    .write_slice(&vec![fill; 0x1_0000], GuestAddress(HIGH_START))
                    .expect("fill");
                // A chain that is one INDIRECT descriptor pointing at the indirect table.
                let indirect_head = vec![(
                    INDIRECT_TABLE,
                    indirect_len,
                    VRING_DESC_F_INDIRECT as u16,
                    0,
                )];
                let mut direct = chains.clone();
                direct.insert(chains.len() / 2, indirect_head);
                let (table, mut heads) =
                    build_table(&direct, usize::from(QUEUE_SIZE), &mutations, &filler);
                let (indirect, _) = build_table(&[indirect_chain], 16, &mutations[8..], &filler);
                heads.extend(extra_heads);
                heads.truncate(usize::from(QUEUE_SIZE));
                store_descriptors(&memory, DESC_TABLE, &table);
                store_descriptors(&memory, INDIRECT_TABLE, &indirect);
                for (i, &(kind, sector)) in headers.iter().enumerate() {
                    let mut raw = [0u8; 16];
                    raw[..4].copy_from_slice(&kind.to_le_bytes());
                    raw[8..].copy_from_slice(&sector.to_le_bytes());
                    memory
                        .write_slice(&raw, GuestAddress(HEADERS + 16 * i as u64))
                        .expect("header");
                }
                for (i, &head) in heads.iter().enumerate() {
                    memory
                        .write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * i as u64))
                        .expect("avail ring");
                }
                let avail_idx = avail_idx_override.unwrap_or(heads.len() as u16);
                memory
                    .write_obj(avail_idx, GuestAddress(AVAIL_RING + 2))
                    .expect("avail idx");

                let contents: Vec<u8> = (0..DISK_FILE_LEN).map(|i| (i % 251) as u8).collect();
                let temp = TempDisk::new(&contents);
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&temp.0)
                    .expect("open disk");
                let disk = RawFile::new(file).expect("disk");

                let mut queue = Queue::new(QUEUE_SIZE).expect("queue");
                queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
                queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
                queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
                queue.set_ready(true);
                prop_assert!(queue.is_valid(&memory));

                let signal = CountingSignal::default();
                let mut handler =
                    BlockQueueHandler::new(queue, disk, &signal, read_only, *b"serial-0123456789abc");
                handler.process_queue(&memory);
                // A second notification finds nothing new (or the same broken ring).
                handler.process_queue(&memory);
                let next_used = handler.queue.next_used();
                drop(handler);

                // A hostile driver may point device-writable buffers at its own rings; the
                // device then overwrites them, which harms only that guest. The ring checks
                // below hold only when no writable buffer covers the rings.
                let write = VRING_DESC_F_WRITE as u16;
                let rings_overwritable = table.iter().chain(indirect.iter()).any(|&(addr, len, flags, _)| {
                    flags & write != 0 && addr < HEADERS && addr.saturating_add(u64::from(len)) > DESC_TABLE
                });
                // The used ring holds exactly the entries the handler added, each naming a head
                // the driver made available, with a length no request can exceed.
                let used_idx: u16 = memory.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
                if !rings_overwritable {
                prop_assert_eq!(used_idx, next_used);
                let offered = if usize::from(avail_idx) <= usize::from(QUEUE_SIZE) {
                    &heads[..usize::from(avail_idx).min(heads.len())]
                } else {
                    &heads[..0]
                };
                prop_assert!(usize::from(used_idx) <= offered.len());
                for i in 0..u64::from(used_idx) {
                    let at = USED_RING + 4 + 8 * i;
                    let id: u32 = memory.read_obj(GuestAddress(at)).expect("used id");
                    let len: u32 = memory.read_obj(GuestAddress(at + 4)).expect("used len");
                    prop_assert!(id < u32::from(QUEUE_SIZE), "used id {} out of the queue", id);
                    prop_assert!(offered.iter().any(|&h| u32::from(h) == id));
                    prop_assert!(u64::from(len) <= DISK_BYTES + 1, "used len {} too large", len);
                }
                }

                // Nothing was written past the whole sectors, and the file did not grow.
                let after = std::fs::read(&temp.0).expect("read disk");
                prop_assert_eq!(after.len(), DISK_FILE_LEN);
                prop_assert!(after[DISK_BYTES as usize..] == contents[DISK_BYTES as usize..]);
                if read_only {
                    prop_assert!(after == contents);
                }
            }
        }
    }
}
