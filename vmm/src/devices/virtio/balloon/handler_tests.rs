//! Tests of the balloon's queue handler on plain memory: free page reporting, inflate and
//! deflate, stats, the real release on anonymous and memfd-backed memory, and the property
//! test over random descriptor chains (the balloon's fuzz target).

use std::cell::Cell;
use std::os::fd::AsRawFd;

use proptest::prelude::*;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::device::BalloonDevice;
use super::handler::*;
use super::*;
use crate::config::BalloonConfig;
use crate::devices::virtio::test_queue::GuestQueue;
use crate::devices::virtio::{QueueSignal, VirtioDevice};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const QUEUE_SIZE: u16 = 16;
/// Rings of queue i at RINGS + i * 0x1000.
const RINGS: u64 = 0;
const BUFFERS: u64 = 0x1_0000;
/// Two RAM regions with a hole between them, like RAM around the MMIO gap.
const LOW_END: u64 = 0x40_0000;
const HIGH_START: u64 = 0x80_0000;
const HIGH_END: u64 = 0xc0_0000;
const MIB2: u64 = 2 << 20;

#[derive(Default)]
struct CountingSignal(Cell<usize>);

impl QueueSignal for &CountingSignal {
    fn signal_used_queue(&self, _queue: u16) {
        self.0.set(self.0.get() + 1);
    }
}

/// Records the ranges the handler releases; refuses them all when `fail`.
#[derive(Default)]
struct Recorder {
    ranges: Vec<(u64, u64)>,
    fail: bool,
}

impl MemoryRelease for Recorder {
    fn release(
        &mut self,
        _memory: &GuestMemoryMmap,
        addr: GuestAddress,
        len: u64,
    ) -> std::io::Result<()> {
        if self.fail {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        self.ranges.push((addr.0, len));
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), LOW_END as usize),
        (GuestAddress(HIGH_START), (HIGH_END - HIGH_START) as usize),
    ])
    .expect("memory")
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Queues for `features` on `memory`, each empty, and the guest's side of each.
fn queues(memory: &GuestMemoryMmap, features: u64) -> (Vec<GuestQueue<'_>>, QueueLayout) {
    let layout = QueueLayout::for_features(features);
    let guests = (0..layout.count)
        .map(|i| GuestQueue::new(memory, RINGS + 0x1000 * i as u64, QUEUE_SIZE))
        .collect();
    (guests, layout)
}

const ALL: u64 = VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_REPORTING;

fn handler<'a, R: MemoryRelease>(
    guests: &[GuestQueue<'_>],
    layout: QueueLayout,
    signal: &'a CountingSignal,
    release: R,
) -> BalloonQueueHandler<&'a CountingSignal, R> {
    let queues = guests.iter().map(|g| g.create_queue()).collect();
    BalloonQueueHandler::new(queues, layout, signal, release).expect("handler")
}

fn write_pfns(memory: &GuestMemoryMmap, at: u64, pfns: &[u32]) -> u32 {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    memory.write_slice(&bytes, GuestAddress(at)).expect("pfns");
    bytes.len() as u32
}

#[test]
fn queue_layout_follows_the_accepted_features() {
    let all = QueueLayout::for_features(ALL);
    assert_eq!((all.stats, all.reporting, all.count), (Some(2), Some(3), 4));
    let reporting = QueueLayout::for_features(VIRTIO_BALLOON_F_REPORTING);
    assert_eq!(
        (reporting.stats, reporting.reporting, reporting.count),
        (None, Some(2), 3)
    );
    let none = QueueLayout::for_features(0);
    assert_eq!((none.stats, none.reporting, none.count), (None, None, 2));
}

#[test]
fn handler_refuses_the_wrong_number_of_queues() {
    let m = memory();
    let (guests, _) = queues(&m, ALL);
    let signal = CountingSignal::default();
    let queues: Vec<_> = guests.iter().take(3).map(|g| g.create_queue()).collect();
    let layout = QueueLayout::for_features(ALL);
    assert!(BalloonQueueHandler::new(queues, layout, &signal, Recorder::default()).is_none());
}

#[test]
fn reported_ranges_are_released_and_returned() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let reporting = layout.reporting.expect("reporting");
    guests[reporting]
        .add_desc_chains(
            &[
                raw(0x20_0000, MIB2 as u32, WRITE | NEXT, 1),
                raw(HIGH_START, 4 << 20, WRITE, 0),
            ],
            0,
        )
        .expect("chain");
    let signal = CountingSignal::default();
    let mut h = handler(&guests, layout, &signal, Recorder::default());
    assert!(h.process_queue(&m, reporting));
    assert_eq!(h.release.ranges, [(0x20_0000, MIB2), (HIGH_START, 4 << 20)]);
    assert_eq!(guests[reporting].used_idx(), 1);
    assert_eq!(guests[reporting].used_element(0), (0, 0));
    assert_eq!(signal.0.get(), 1);
    assert_eq!(BalloonMetrics::get(&h.metrics.reported_bytes), 6 << 20);
    assert_eq!(BalloonMetrics::get(&h.metrics.reported_ranges), 2);
    assert_eq!(h.metrics.dropped_total(), 0);
}

#[test]
fn hostile_reported_ranges_are_dropped_counted_and_the_chain_returned() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let reporting = layout.reporting.expect("reporting");
    let descs = [
        // Past the end of RAM, in the hole, across a region's end, wrapping, misaligned,
        // empty, and one good range last.
        raw(HIGH_END, 4096, WRITE | NEXT, 1),
        raw(LOW_END, 4096, WRITE | NEXT, 2),
        raw(LOW_END - 4096, 8192, WRITE | NEXT, 3),
        raw(!4095, 4096 * 2, WRITE | NEXT, 4),
        raw(0x1000 + 512, 4096, WRITE | NEXT, 5),
        raw(0x2000, 4096 + 1, WRITE | NEXT, 6),
        raw(0x3000, 0, WRITE | NEXT, 7),
        raw(0x30_0000, 4096, WRITE, 0),
    ];
    guests[reporting].add_desc_chains(&descs, 0).expect("chain");
    let signal = CountingSignal::default();
    let mut h = handler(&guests, layout, &signal, Recorder::default());
    h.process_queue(&m, reporting);
    assert_eq!(h.release.ranges, [(0x30_0000, 4096)]);
    assert_eq!(h.metrics.dropped(BalloonDropReason::OutsideMemory), 4);
    assert_eq!(h.metrics.dropped(BalloonDropReason::Misaligned), 3);
    assert_eq!(guests[reporting].used_idx(), 1);
}

#[test]
fn looping_reporting_chain_ends_and_is_returned() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let reporting = layout.reporting.expect("reporting");
    guests[reporting]
        .add_desc_chains(
            &[
                raw(0x20_0000, 4096, WRITE | NEXT, 1),
                raw(0x20_1000, 4096, WRITE | NEXT, 0),
            ],
            0,
        )
        .expect("chain");
    let signal = CountingSignal::default();
    let mut h = handler(&guests, layout, &signal, Recorder::default());
    h.process_queue(&m, reporting);
    // The iterator stops the loop after at most a queue's worth of descriptors.
    assert!(h.release.ranges.len() <= usize::from(QUEUE_SIZE));
    assert_eq!(guests[reporting].used_idx(), 1);
}

#[test]
fn a_refused_release_is_counted() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let reporting = layout.reporting.expect("reporting");
    guests[reporting]
        .add_desc_chains(&[raw(0x20_0000, 4096, WRITE, 0)], 0)
        .expect("chain");
    let signal = CountingSignal::default();
    let failing = Recorder {
        fail: true,
        ..Recorder::default()
    };
    let mut h = handler(&guests, layout, &signal, failing);
    h.process_queue(&m, reporting);
    assert_eq!(h.metrics.dropped(BalloonDropReason::ReleaseFailed), 1);
    assert_eq!(BalloonMetrics::get(&h.metrics.reported_bytes), 0);
    assert_eq!(guests[reporting].used_idx(), 1);
}

#[test]
fn inflate_releases_runs_of_frames_and_drops_bad_ones() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let pfns = [0x200, 0x201, 0x202, 0x300, (HIGH_END >> 12) as u32, 0x301];
    let len = write_pfns(&m, BUFFERS, &pfns);
    guests[INFLATE_QUEUE]
        .add_desc_chains(&[raw(BUFFERS, len, 0, 0)], 0)
        .expect("chain");
    let signal = CountingSignal::default();
    let mut h = handler(&guests, layout, &signal, Recorder::default());
    assert!(h.process_queue(&m, INFLATE_QUEUE));
    assert_eq!(
        h.release.ranges,
        [(0x20_0000, 3 * 4096), (0x30_0000, 4096), (0x30_1000, 4096)]
    );
    assert_eq!(BalloonMetrics::get(&h.metrics.inflated_pages), 5);
    assert_eq!(h.metrics.dropped(BalloonDropReason::OutsideMemory), 1);
    assert_eq!(guests[INFLATE_QUEUE].used_idx(), 1);
}

#[test]
fn oversized_or_writable_frame_buffers_are_dropped() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let too_many = vec![0x200u32; MAX_PFNS_PER_BUFFER + 1];
    let len = write_pfns(&m, BUFFERS, &too_many);
    guests[INFLATE_QUEUE]
        .add_desc_chains(
            &[
                raw(BUFFERS, len, NEXT, 1),
                raw(BUFFERS, 8, WRITE | NEXT, 2),
                raw(BUFFERS, 6, NEXT, 3),
                raw(HIGH_END - 4, 8, 0, 0),
                // A chain of its own: the chain iterator may end a chain at a descriptor
                // that reaches past the address space.
                raw(BUFFERS, u32::MAX - 3, 0, 0),
            ],
            0,
        )
        .expect("chain");
    let signal = CountingSignal::default();
    let mut h = handler(&guests, layout, &signal, Recorder::default());
    h.process_queue(&m, INFLATE_QUEUE);
    assert!(h.release.ranges.is_empty());
    assert!(h.metrics.dropped(BalloonDropReason::Oversized) >= 2);
    assert_eq!(h.metrics.dropped(BalloonDropReason::MalformedChain), 2);
    assert_eq!(guests[INFLATE_QUEUE].used_idx(), 2);
}

#[test]
fn deflate_counts_frames_and_releases_nothing() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let len = write_pfns(&m, BUFFERS, &[0x200, 0x201, u32::MAX]);
    guests[DEFLATE_QUEUE]
        .add_desc_chains(&[raw(BUFFERS, len, 0, 0)], 0)
        .expect("chain");
    let signal = CountingSignal::default();
    let mut h = handler(&guests, layout, &signal, Recorder::default());
    h.process_queue(&m, DEFLATE_QUEUE);
    assert!(h.release.ranges.is_empty());
    assert_eq!(BalloonMetrics::get(&h.metrics.deflated_pages), 2);
    assert_eq!(h.metrics.dropped(BalloonDropReason::OutsideMemory), 1);
    assert_eq!(guests[DEFLATE_QUEUE].used_idx(), 1);
}

fn write_stats(memory: &GuestMemoryMmap, at: u64, entries: &[(u16, u64)]) -> u32 {
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|(tag, value)| {
            let mut entry = tag.to_le_bytes().to_vec();
            entry.extend_from_slice(&value.to_le_bytes());
            entry
        })
        .collect();
    memory.write_slice(&bytes, GuestAddress(at)).expect("stats");
    bytes.len() as u32
}

#[test]
fn stats_are_read_held_and_handed_back_on_request() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let stats = layout.stats.expect("stats");
    let len = write_stats(
        &m,
        BUFFERS,
        &[(4, 100 << 20), (5, 128 << 20), (99, 7), (6, 90 << 20)],
    );
    guests[stats]
        .add_desc_chains(&[raw(BUFFERS, len, 0, 0)], 0)
        .expect("chain");
    let signal = CountingSignal::default();
    let mut h = handler(&guests, layout, &signal, Recorder::default());
    assert!(!h.process_queue(&m, stats));
    // Held: nothing returned until the runtime asks.
    assert_eq!(guests[stats].used_idx(), 0);
    assert_eq!(h.stats.values[4], Some(100 << 20));
    assert_eq!(h.stats.values[5], Some(128 << 20));
    assert_eq!(h.stats.values[6], Some(90 << 20));
    assert_eq!(h.stats.values[0], None);
    assert!(h.stats.at.is_some());
    assert!(h.request_stats(&m));
    assert_eq!(guests[stats].used_idx(), 1);
    assert_eq!(signal.0.get(), 1);
    // Nothing held any more.
    assert!(!h.request_stats(&m));
    assert_eq!(BalloonMetrics::get(&h.metrics.stats_updates), 1);
}

#[test]
fn bad_stats_buffers_are_returned_at_once() {
    let m = memory();
    let (guests, layout) = queues(&m, ALL);
    let stats = layout.stats.expect("stats");
    guests[stats]
        .add_desc_chains(&[raw(BUFFERS, 11, 0, 0), raw(BUFFERS, 10, WRITE, 0)], 0)
        .expect("chain");
    let signal = CountingSignal::default();
    let mut h = handler(&guests, layout, &signal, Recorder::default());
    h.process_queue(&m, stats);
    assert_eq!(guests[stats].used_idx(), 2);
    assert_eq!(h.metrics.dropped(BalloonDropReason::BadStats), 1);
    assert_eq!(h.metrics.dropped(BalloonDropReason::MalformedChain), 1);
    assert_eq!(h.stats.at, None);
}

#[test]
fn guest_release_zeroes_anonymous_memory() {
    let m = memory();
    m.write_slice(&vec![0xaa; LOW_END as usize], GuestAddress(0))
        .expect("fill");
    GuestRelease
        .release(&m, GuestAddress(MIB2 / 2), MIB2 / 2)
        .expect("released");
    let mut byte = [0u8; 1];
    for (at, expected) in [
        (MIB2 / 2 - 1, 0xaa),
        (MIB2 / 2, 0),
        (MIB2 - 1, 0),
        (MIB2, 0xaa),
    ] {
        m.read_slice(&mut byte, GuestAddress(at)).expect("read");
        assert_eq!(byte[0], expected, "at {at:#x}");
    }
    assert!(GuestRelease
        .release(&m, GuestAddress(LOW_END - 4096), 8192)
        .is_err());
}

#[test]
fn guest_release_punches_holes_in_shared_memory() {
    let ranges = [(GuestAddress(0), 8 * MIB2)];
    let (m, _) = crate::vstate::memory::create_shared_guest_memory(&ranges, 16).expect("memfd");
    let region = m.find_region(GuestAddress(0)).expect("region");
    let file = region.file_offset().expect("a file").file();
    let blocks = || {
        // SAFETY: fstat writes only into `stat`, a valid out-parameter.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and out-parameter.
        assert_eq!(unsafe { libc::fstat(file.as_raw_fd(), &mut stat) }, 0);
        stat.st_blocks as u64 * 512
    };
    m.write_slice(&vec![0x55; 8 * MIB2 as usize], GuestAddress(0))
        .expect("fill");
    let before = blocks();
    assert!(before >= 8 * MIB2, "{before} bytes allocated");
    GuestRelease
        .release(&m, GuestAddress(2 * MIB2), 4 * MIB2)
        .expect("released");
    assert_eq!(before - blocks(), 4 * MIB2);
    let mut byte = [0u8; 1];
    m.read_slice(&mut byte, GuestAddress(3 * MIB2))
        .expect("read");
    assert_eq!(byte[0], 0);
    m.read_slice(&mut byte, GuestAddress(6 * MIB2))
        .expect("read");
    assert_eq!(byte[0], 0x55);
}

#[test]
fn device_config_space_holds_the_target_and_the_drivers_actual() {
    let mut device = BalloonDevice::new(&BalloonConfig::default());
    let offered = device.avail_features();
    assert_ne!(offered & VIRTIO_BALLOON_F_REPORTING, 0);
    assert_ne!(offered & VIRTIO_BALLOON_F_STATS_VQ, 0);
    assert_ne!(offered & VIRTIO_BALLOON_F_DEFLATE_ON_OOM, 0);
    assert_eq!(offered & VIRTIO_BALLOON_F_MUST_TELL_HOST, 0);
    assert!(device.set_target_bytes(64 << 20));
    assert!(!device.set_target_bytes(64 << 20));
    let mut word = [0u8; 4];
    device.read_config(0, &mut word);
    assert_eq!(u32::from_le_bytes(word), 16384);
    device.write_config(4, &100u32.to_le_bytes());
    // Only `actual` is writable.
    device.write_config(0, &7u32.to_le_bytes());
    device.write_config(5, &[1]);
    device.read_config(4, &mut word);
    assert_eq!(u32::from_le_bytes(word), 100);
    let status = device.status();
    assert_eq!((status.target_pages, status.actual_pages), (16384, 100));
    // Targets past 16 TiB saturate the 32-bit page count.
    device.set_target_bytes(u64::MAX);
    assert_eq!(device.status().target_pages, u32::MAX);

    device.set_acked_features(VIRTIO_BALLOON_F_REPORTING);
    assert_eq!(device.queue_count(), 3);
    device.set_acked_features(offered);
    assert_eq!(device.queue_count(), 4);
    let without = BalloonDevice::new(&BalloonConfig {
        free_page_reporting: false,
        deflate_on_oom: false,
    });
    assert_eq!(without.avail_features() & VIRTIO_BALLOON_F_REPORTING, 0);
    assert_eq!(
        without.avail_features() & VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
        0
    );
}

/// Property tests: a hostile driver's descriptor tables on every queue.
mod hostile {
    use super::*;

    fn address() -> impl Strategy<Value = u64> {
        prop_oneof![
            (0..0x400u64).prop_map(|p| p * 4096),
            (0..0x400u64).prop_map(|p| HIGH_START + p * 4096),
            (LOW_END - 0x2000)..(LOW_END + 0x2000),
            (HIGH_END - 0x2000)..(HIGH_END + 0x2000),
            (0..0x100u64).prop_map(|d| u64::MAX - d),
            any::<u64>(),
        ]
    }

    fn length() -> impl Strategy<Value = u32> {
        prop_oneof![
            (0..0x400u32).prop_map(|p| p * 4096),
            prop::sample::select(vec![0u32, 1, 4, 10, 40, 4095, 4096, 4097, 4100]),
            (0..0x100u32).prop_map(|d| u32::MAX - d),
            any::<u32>(),
        ]
    }

    fn descriptor() -> impl Strategy<Value = (u64, u32, u16, u16)> {
        (
            address(),
            length(),
            prop_oneof![
                4 => prop::sample::subsequence(vec![NEXT, WRITE], 0..=2)
                    .prop_map(|bits| bits.into_iter().fold(0, |a, b| a | b)),
                1 => any::<u16>(),
            ],
            0..(QUEUE_SIZE + 4),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_chains_never_panic_or_release_outside_guest_memory(
            per_queue in prop::collection::vec(prop::collection::vec(descriptor(), 0..16), 4),
            pfns in prop::collection::vec(any::<u32>(), 0..64),
            stats in prop::collection::vec((0..20u16, any::<u64>()), 0..20),
            requests in 0..3usize,
        ) {
            let m = memory();
            write_pfns(&m, BUFFERS, &pfns);
            write_stats(&m, BUFFERS + 0x1000, &stats);
            let (guests, layout) = queues(&m, ALL);
            for (guest, descs) in guests.iter().zip(&per_queue) {
                let descs: Vec<_> = descs
                    .iter()
                    .map(|&(addr, len, flags, next)| raw(addr, len, flags, next))
                    .collect();
                guest.add_desc_chains(&descs, 0).expect("chains");
            }
            let signal = CountingSignal::default();
            let mut h = handler(&guests, layout, &signal, Recorder::default());
            for queue in 0..layout.count + 1 {
                h.process_queue(&m, queue);
                for _ in 0..requests {
                    h.request_stats(&m);
                }
                // A second notification finds nothing new (or the same broken ring).
                h.process_queue(&m, queue);
            }
            for &(addr, len) in &h.release.ranges {
                prop_assert!(addr % 4096 == 0 && len % 4096 == 0 && len > 0);
                let region = m.find_region(GuestAddress(addr));
                prop_assert!(region.is_some(), "released {addr:#x} outside memory");
                let region = region.expect("checked");
                let end = region.start_addr().0 + region.len();
                prop_assert!(addr + len <= end, "released {addr:#x}+{len:#x} past {end:#x}");
            }
            for (i, guest) in guests.iter().enumerate() {
                let queue = match i {
                    INFLATE_QUEUE => &h.inflate,
                    DEFLATE_QUEUE => &h.deflate,
                    _ if Some(i) == layout.stats => h.stats_queue.as_ref().expect("stats"),
                    _ => h.reporting.as_ref().expect("reporting"),
                };
                prop_assert!(guest.used_idx() <= QUEUE_SIZE);
                prop_assert_eq!(guest.used_idx(), queue.next_used());
            }
        }
    }
}

#[test]
fn the_reporting_order_follows_the_host_pages_behind_guest_ram() {
    assert_eq!(
        reporting_order_param(true, true).as_deref(),
        Some("page_reporting.page_reporting_order=0")
    );
    assert_eq!(
        reporting_order_param(true, false).as_deref(),
        Some("page_reporting.page_reporting_order=9")
    );
    assert_eq!(reporting_order_param(false, true), None);
}
