//! The virtio-balloon queue handler: pops the chains of each queue, checks every range and
//! page frame against guest memory, releases the host memory behind the ones that pass,
//! returns the chains and signals the guest. A pure type, generic over how memory is
//! released and how the guest is signalled, so tests run it on plain memory and record what
//! it would release.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use super::{
    BALLOON_PAGE_SHIFT, BALLOON_PAGE_SIZE, STAT_NAMES, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::devices::virtio::QueueSignal;

/// Most page frame numbers one inflate or deflate buffer may carry (Linux sends at most
/// 256); a longer buffer is dropped whole.
pub const MAX_PFNS_PER_BUFFER: usize = 1024;
/// Size of one stats entry: a le16 tag and a le64 value, packed.
const STAT_ENTRY_LEN: usize = 10;
/// Most stats entries read from one buffer; later ones are ignored.
const MAX_STAT_ENTRIES: usize = 32;

pub const INFLATE_QUEUE: usize = 0;
pub const DEFLATE_QUEUE: usize = 1;

/// Where each queue sits once the features are agreed: the driver leaves out the queues of
/// features it refused and numbers the rest in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLayout {
    pub stats: Option<usize>,
    pub reporting: Option<usize>,
    /// How many queues the driver sets up.
    pub count: usize,
}

impl QueueLayout {
    pub fn for_features(acked: u64) -> Self {
        let mut next = 2;
        let mut take = |on: bool| {
            on.then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(acked & VIRTIO_BALLOON_F_STATS_VQ != 0);
        // Free page hinting (bit 3) is not offered, so its queue never sits in between.
        let reporting = take(acked & VIRTIO_BALLOON_F_REPORTING != 0);
        QueueLayout {
            stats,
            reporting,
            count: next,
        }
    }
}

/// Releases the host memory behind guest RAM.
pub trait MemoryRelease {
    /// Releases `len` bytes at `addr`; the handler has checked that they are whole balloon
    /// pages inside one region of `memory`.
    fn release(
        &mut self,
        memory: &GuestMemoryMmap,
        addr: GuestAddress,
        len: u64,
    ) -> std::io::Result<()>;
}

/// Releases guest RAM for real: `MADV_DONTNEED` on private anonymous memory (the next touch
/// gets a zero page), `MADV_REMOVE` on a shared memfd (punches a hole in the file; a plain
/// `MADV_DONTNEED` would only unmap the shared pages and keep them in the file).
#[derive(Debug, Default, Clone, Copy)]
pub struct GuestRelease;

impl MemoryRelease for GuestRelease {
    fn release(
        &mut self,
        memory: &GuestMemoryMmap,
        addr: GuestAddress,
        len: u64,
    ) -> std::io::Result<()> {
        let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
        let region = memory.find_region(addr).ok_or_else(invalid)?;
        let offset = addr.0 - region.start_addr().0;
        if offset.checked_add(len).is_none_or(|end| end > region.len()) {
            return Err(invalid());
        }
        let host = region
            .get_host_address(MemoryRegionAddress(offset))
            .map_err(|_| invalid())?;
        let advice = if region.file_offset().is_some() {
            libc::MADV_REMOVE
        } else {
            libc::MADV_DONTNEED
        };
        let len = usize::try_from(len).map_err(|_| invalid())?;
        // SAFETY: [host, host + len) lies inside the region's live mapping (checked above),
        // which stays mapped while the VM runs. The advice only drops the pages' contents:
        // the mapping stays, and the next access (by the guest, or by the VMM through
        // vm-memory's volatile accessors, which hold no references) reads zeros. The guest
        // gave these pages up, so nothing it still uses is lost.
        let rc = unsafe { libc::madvise(host.cast::<libc::c_void>(), len, advice) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Why part of a chain was not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalloonDropReason {
    /// A range or page frame outside guest RAM (or across the end of a region).
    OutsideMemory,
    /// A reported range that is empty or not whole 4 KiB pages.
    Misaligned,
    /// An inflate/deflate buffer with more than [`MAX_PFNS_PER_BUFFER`] frames, or whose
    /// length is not whole frame numbers.
    Oversized,
    /// A buffer the device must read that is device-writable, or cannot be read.
    MalformedChain,
    /// A stats buffer that is not whole entries.
    BadStats,
    /// The host refused to release a checked range (e.g. 4 KiB of a hugetlbfs memfd).
    ReleaseFailed,
}

impl BalloonDropReason {
    pub const ALL: [BalloonDropReason; 6] = [
        BalloonDropReason::OutsideMemory,
        BalloonDropReason::Misaligned,
        BalloonDropReason::Oversized,
        BalloonDropReason::MalformedChain,
        BalloonDropReason::BadStats,
        BalloonDropReason::ReleaseFailed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            BalloonDropReason::OutsideMemory => "outside_memory",
            BalloonDropReason::Misaligned => "misaligned",
            BalloonDropReason::Oversized => "oversized",
            BalloonDropReason::MalformedChain => "malformed_chain",
            BalloonDropReason::BadStats => "bad_stats",
            BalloonDropReason::ReleaseFailed => "release_failed",
        }
    }
}

/// Counters of the balloon, shared with the control socket; all monotonic.
#[derive(Debug, Default)]
pub struct BalloonMetrics {
    /// Free page reporting: ranges and bytes released.
    pub reported_ranges: AtomicU64,
    pub reported_bytes: AtomicU64,
    /// Pages the guest put into the balloon (released) and took back.
    pub inflated_pages: AtomicU64,
    pub deflated_pages: AtomicU64,
    /// Stats buffers read.
    pub stats_updates: AtomicU64,
    dropped: [AtomicU64; BalloonDropReason::ALL.len()],
}

impl BalloonMetrics {
    pub fn count_drop(&self, reason: BalloonDropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: BalloonDropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn dropped_total(&self) -> u64 {
        BalloonDropReason::ALL
            .iter()
            .map(|&r| self.dropped(r))
            .sum()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// The guest's memory statistics as its driver last reported them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Value of each tag the driver sent, by tag ([`STAT_NAMES`]).
    pub values: [Option<u64>; STAT_NAMES.len()],
    /// When the buffer was read.
    pub at: Option<Instant>,
}

/// Checks that `len` bytes at `addr` are whole balloon pages inside one region.
pub fn check_range(memory: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), BalloonDropReason> {
    if len == 0 || addr % BALLOON_PAGE_SIZE != 0 || len % BALLOON_PAGE_SIZE != 0 {
        return Err(BalloonDropReason::Misaligned);
    }
    let end = addr
        .checked_add(len)
        .ok_or(BalloonDropReason::OutsideMemory)?;
    let region = memory
        .find_region(GuestAddress(addr))
        .ok_or(BalloonDropReason::OutsideMemory)?;
    let region_end = region.start_addr().0.saturating_add(region.len());
    if end > region_end {
        return Err(BalloonDropReason::OutsideMemory);
    }
    Ok(())
}

/// The balloon's queues and what it knows of the guest.
pub struct BalloonQueueHandler<S: QueueSignal, R: MemoryRelease> {
    pub inflate: Queue,
    pub deflate: Queue,
    pub stats_queue: Option<Queue>,
    pub reporting: Option<Queue>,
    pub layout: QueueLayout,
    pub signal: S,
    pub release: R,
    pub metrics: Arc<BalloonMetrics>,
    pub stats: GuestStats,
    /// The stats buffer the device holds until the runtime wants fresh figures.
    stats_head: Option<u16>,
    pfns: Vec<u32>,
}

/// One popped chain: its head and (at most a queue's worth of) descriptors.
type Chain = (u16, Vec<Descriptor>);

/// Pops every available chain of `queue`. No chain is longer than the queue: the iterator
/// enforces that for direct chains and the cut bounds an indirect table (a feature not
/// offered).
fn pop_chains(queue: &mut Queue, memory: &GuestMemoryMmap) -> Vec<Chain> {
    let limit = usize::from(queue.size());
    let mut chains = Vec::new();
    while let Some(chain) = queue.pop_descriptor_chain(memory) {
        let head = chain.head_index();
        chains.push((head, chain.take(limit).collect()));
    }
    chains
}

/// Returns `heads` with nothing written and signals `index` if the driver wants it.
fn return_chains<S: QueueSignal>(
    queue: &mut Queue,
    memory: &GuestMemoryMmap,
    signal: &S,
    index: usize,
    heads: impl IntoIterator<Item = u16>,
) -> bool {
    let mut used_any = false;
    for head in heads {
        match queue.add_used(memory, head, 0) {
            Ok(()) => used_any = true,
            // A head index past the queue cannot be returned: drop that chain alone.
            Err(virtio_queue::Error::InvalidDescriptorIndex) => {}
            // The used ring is outside guest memory: the driver broke the queue.
            Err(_) => break,
        }
    }
    if used_any && queue.needs_notification(memory).unwrap_or(true) {
        signal.signal_used_queue(index as u16);
        return true;
    }
    false
}

fn device_writable(descriptor: &Descriptor) -> bool {
    descriptor.flags() & VRING_DESC_F_WRITE as u16 != 0
}

impl<S: QueueSignal, R: MemoryRelease> BalloonQueueHandler<S, R> {
    /// The handler for the driver's `queues`, laid out as `layout` says; `None` when their
    /// number does not match.
    pub fn new(queues: Vec<Queue>, layout: QueueLayout, signal: S, release: R) -> Option<Self> {
        if queues.len() != layout.count {
            return None;
        }
        let mut queues = queues.into_iter().map(Some).collect::<Vec<_>>();
        let mut take = |index: Option<usize>| index.and_then(|i| queues.get_mut(i)?.take());
        let inflate = take(Some(INFLATE_QUEUE))?;
        let deflate = take(Some(DEFLATE_QUEUE))?;
        let stats_queue = take(layout.stats);
        let reporting = take(layout.reporting);
        Some(BalloonQueueHandler {
            inflate,
            deflate,
            stats_queue,
            reporting,
            layout,
            signal,
            release,
            metrics: Arc::default(),
            stats: GuestStats::default(),
            stats_head: None,
            pfns: Vec::new(),
        })
    }

    /// Processes queue `index` after a notification. Returns whether the guest was signalled.
    pub fn process_queue(&mut self, memory: &GuestMemoryMmap, index: usize) -> bool {
        match index {
            INFLATE_QUEUE => self.process_pfns(memory, true),
            DEFLATE_QUEUE => self.process_pfns(memory, false),
            _ if Some(index) == self.layout.stats => self.process_stats(memory),
            _ if Some(index) == self.layout.reporting => self.process_reporting(memory),
            _ => false,
        }
    }

    /// Checks a range and releases it; false when it was dropped.
    fn release_range(&mut self, memory: &GuestMemoryMmap, addr: u64, len: u64) -> bool {
        if let Err(reason) = check_range(memory, addr, len) {
            self.metrics.count_drop(reason);
            return false;
        }
        if self
            .release
            .release(memory, GuestAddress(addr), len)
            .is_err()
        {
            self.metrics.count_drop(BalloonDropReason::ReleaseFailed);
            return false;
        }
        true
    }

    /// Free page reporting: every descriptor is one range of free guest pages.
    fn process_reporting(&mut self, memory: &GuestMemoryMmap) -> bool {
        let Some(mut queue) = self.reporting.take() else {
            return false;
        };
        let chains = pop_chains(&mut queue, memory);
        for (_, descriptors) in &chains {
            for descriptor in descriptors {
                let (addr, len) = (descriptor.addr().0, u64::from(descriptor.len()));
                if self.release_range(memory, addr, len) {
                    BalloonMetrics::add(&self.metrics.reported_ranges, 1);
                    BalloonMetrics::add(&self.metrics.reported_bytes, len);
                }
            }
        }
        let index = self.layout.reporting.unwrap_or_default();
        let signalled = return_chains(
            &mut queue,
            memory,
            &self.signal,
            index,
            chains.iter().map(|c| c.0),
        );
        self.reporting = Some(queue);
        signalled
    }

    /// Reads one inflate/deflate buffer's page frame numbers into `self.pfns`.
    fn read_pfns(
        &mut self,
        memory: &GuestMemoryMmap,
        descriptor: &Descriptor,
    ) -> Result<(), BalloonDropReason> {
        if device_writable(descriptor) {
            return Err(BalloonDropReason::MalformedChain);
        }
        let len = descriptor.len() as usize;
        if len % 4 != 0 || len / 4 > MAX_PFNS_PER_BUFFER {
            return Err(BalloonDropReason::Oversized);
        }
        let mut bytes = vec![0u8; len];
        memory
            .read_slice(&mut bytes, descriptor.addr())
            .map_err(|_| BalloonDropReason::MalformedChain)?;
        self.pfns.clear();
        self.pfns.extend(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
        Ok(())
    }

    /// Inflate (release the frames) or deflate (count them: they fault in again when the
    /// guest touches them).
    fn process_pfns(&mut self, memory: &GuestMemoryMmap, inflate: bool) -> bool {
        let (mut queue, index) = if inflate {
            (self.take_queue(INFLATE_QUEUE), INFLATE_QUEUE)
        } else {
            (self.take_queue(DEFLATE_QUEUE), DEFLATE_QUEUE)
        };
        let chains = pop_chains(&mut queue, memory);
        for (_, descriptors) in &chains {
            for descriptor in descriptors {
                if let Err(reason) = self.read_pfns(memory, descriptor) {
                    self.metrics.count_drop(reason);
                    continue;
                }
                let pfns = std::mem::take(&mut self.pfns);
                if inflate {
                    self.inflate_pfns(memory, &pfns);
                } else {
                    let valid = pfns
                        .iter()
                        .filter(|&&pfn| {
                            let addr = u64::from(pfn) << BALLOON_PAGE_SHIFT;
                            let ok = check_range(memory, addr, BALLOON_PAGE_SIZE).is_ok();
                            if !ok {
                                self.metrics.count_drop(BalloonDropReason::OutsideMemory);
                            }
                            ok
                        })
                        .count();
                    BalloonMetrics::add(&self.metrics.deflated_pages, valid as u64);
                }
                self.pfns = pfns;
            }
        }
        let signalled = return_chains(
            &mut queue,
            memory,
            &self.signal,
            index,
            chains.iter().map(|c| c.0),
        );
        self.put_queue(index, queue);
        signalled
    }

    /// Releases runs of consecutive frames as one range each.
    fn inflate_pfns(&mut self, memory: &GuestMemoryMmap, pfns: &[u32]) {
        let mut run: Option<(u64, u64)> = None;
        let flush = |this: &mut Self, run: (u64, u64)| {
            let (first, pages) = run;
            if this.release_range(
                memory,
                first << BALLOON_PAGE_SHIFT,
                pages << BALLOON_PAGE_SHIFT,
            ) {
                BalloonMetrics::add(&this.metrics.inflated_pages, pages);
            } else {
                // Retry page by page so one bad frame does not cost its neighbours.
                for pfn in first..first + pages {
                    if pages > 1
                        && this.release_range(memory, pfn << BALLOON_PAGE_SHIFT, BALLOON_PAGE_SIZE)
                    {
                        BalloonMetrics::add(&this.metrics.inflated_pages, 1);
                    }
                }
            }
        };
        for &pfn in pfns {
            let pfn = u64::from(pfn);
            run = match run {
                Some((first, pages)) if first + pages == pfn => Some((first, pages + 1)),
                Some(done) => {
                    flush(self, done);
                    Some((pfn, 1))
                }
                None => Some((pfn, 1)),
            };
        }
        if let Some(done) = run {
            flush(self, done);
        }
    }

    fn take_queue(&mut self, index: usize) -> Queue {
        let slot = if index == INFLATE_QUEUE {
            &mut self.inflate
        } else {
            &mut self.deflate
        };
        // A size-1 placeholder while the queue is out; `Queue::new(1)` cannot fail.
        let placeholder = Queue::new(1).unwrap_or_else(|_| unreachable!("a queue of size 1"));
        std::mem::replace(slot, placeholder)
    }

    fn put_queue(&mut self, index: usize, queue: Queue) {
        if index == INFLATE_QUEUE {
            self.inflate = queue;
        } else {
            self.deflate = queue;
        }
    }

    /// Parses a stats buffer into `self.stats`.
    fn read_stats(
        &mut self,
        memory: &GuestMemoryMmap,
        descriptors: &[Descriptor],
    ) -> Result<(), BalloonDropReason> {
        let descriptor = descriptors
            .first()
            .ok_or(BalloonDropReason::MalformedChain)?;
        if device_writable(descriptor) {
            return Err(BalloonDropReason::MalformedChain);
        }
        let len = descriptor.len() as usize;
        if len % STAT_ENTRY_LEN != 0 {
            return Err(BalloonDropReason::BadStats);
        }
        let entries = (len / STAT_ENTRY_LEN).min(MAX_STAT_ENTRIES);
        let mut bytes = vec![0u8; entries * STAT_ENTRY_LEN];
        memory
            .read_slice(&mut bytes, descriptor.addr())
            .map_err(|_| BalloonDropReason::MalformedChain)?;
        let mut stats = GuestStats {
            values: Default::default(),
            at: Some(Instant::now()),
        };
        for entry in bytes.chunks_exact(STAT_ENTRY_LEN) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&entry[2..]);
            // Tags this device does not know are skipped.
            if let Some(slot) = stats.values.get_mut(usize::from(tag)) {
                *slot = Some(u64::from_le_bytes(value));
            }
        }
        self.stats = stats;
        Ok(())
    }

    /// A stats buffer arrived: read it and hold it (returning any older one the driver
    /// should not have left with us).
    fn process_stats(&mut self, memory: &GuestMemoryMmap) -> bool {
        let (Some(mut queue), Some(index)) = (self.stats_queue.take(), self.layout.stats) else {
            return false;
        };
        let chains = pop_chains(&mut queue, memory);
        let mut done = Vec::new();
        for (head, descriptors) in chains {
            match self.read_stats(memory, &descriptors) {
                Ok(()) => {
                    BalloonMetrics::add(&self.metrics.stats_updates, 1);
                    done.extend(self.stats_head.replace(head));
                }
                Err(reason) => {
                    self.metrics.count_drop(reason);
                    done.push(head);
                }
            }
        }
        let signalled = return_chains(&mut queue, memory, &self.signal, index, done);
        self.stats_queue = Some(queue);
        signalled
    }

    /// Hands the held stats buffer back so the driver refills it. Returns whether one was
    /// held.
    pub fn request_stats(&mut self, memory: &GuestMemoryMmap) -> bool {
        let (Some(queue), Some(index), Some(head)) = (
            self.stats_queue.as_mut(),
            self.layout.stats,
            self.stats_head.take(),
        ) else {
            return false;
        };
        return_chains(queue, memory, &self.signal, index, [head]);
        true
    }
}
