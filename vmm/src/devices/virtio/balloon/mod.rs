//! virtio-balloon (virtio 1.2, 5.5): the guest hands memory back to the host.
//!
//! Four queues, as the driver numbers them once features are agreed: inflate and deflate
//! (always), stats (with [`VIRTIO_BALLOON_F_STATS_VQ`]) and free page reporting (with
//! [`VIRTIO_BALLOON_F_REPORTING`]); a queue whose feature the driver refused is left out and
//! the next one takes its index ([`QueueLayout`]).
//!
//! - Free page reporting: the guest kernel (CONFIG_PAGE_REPORTING) posts chains of free
//!   guest-physical ranges a couple of seconds after they were freed, each a free block of
//!   at least `page_reporting.page_reporting_order` ([`reporting_order_param`]). The
//!   device releases the host memory behind each: `MADV_DONTNEED` for private anonymous
//!   guest RAM, `MADV_REMOVE` (a hole punched in the file) when guest RAM is a shared memfd
//!   (a pod with a virtio-fs share), then returns the chain.
//! - Inflate/deflate: the runtime sets a target (`num_pages` in the configuration space,
//!   4 KiB pages) through the control socket; the driver inflates by posting arrays of
//!   page frame numbers it gave up, which the device releases the same way, and deflates by
//!   posting the frames it takes back (nothing to do: they fault in again on first touch).
//!   With [`VIRTIO_BALLOON_F_DEFLATE_ON_OOM`] the guest deflates on its own before it would
//!   kill a process.
//! - Stats: the driver posts one buffer of (tag, value) pairs; the device holds it and
//!   returns it when the runtime asks for fresh figures, and the driver posts it again.
//!
//! Every chain is hostile until checked: ranges or frames outside guest memory, misaligned
//! ranges, oversized arrays, looping or truncated chains are dropped and counted in
//! [`BalloonMetrics`], never acted on.
//!
//! Files: [`handler`] (the queue processing, a pure type generic over how memory is
//! released and how the guest is signalled), [`device`] (features, configuration space,
//! activation, the runtime's target and stats), [`event_handler`] (queue notifications).

pub mod device;
pub mod event_handler;
pub mod handler;
#[cfg(test)]
mod handler_tests;

pub use device::{BalloonDevice, BalloonStatus};
pub use handler::{BalloonMetrics, BalloonQueueHandler, GuestRelease, MemoryRelease, QueueLayout};

/// The kernel parameter that makes the guest report free blocks as small as the host pages
/// behind guest RAM: 4 KiB (order 0) on a shared memfd of small pages, where each reported
/// page is a page the host frees; 2 MiB (order 9) on huge pages, where a smaller piece
/// would only split a huge page the host keeps allocated until a deferred split. The
/// guest's own default is its pageblock, 4 MiB in our kernel (no hugetlbfs), which leaves
/// every free run shorter than that on the host: in an idle pod with a share, 2.6 MiB of
/// guest RAM (the initrd and the root switch's freed copies, among others). None without
/// free page reporting.
pub fn reporting_order_param(reporting: bool, small_host_pages: bool) -> Option<String> {
    let order = if small_host_pages { 0 } else { 9 };
    reporting.then(|| format!("page_reporting.page_reporting_order={order}"))
}

/// Feature bits (virtio 1.2, 5.5.3).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u64 = 1 << 0;
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

/// The balloon's page size: page frame numbers and `num_pages` count 4 KiB pages.
pub const BALLOON_PAGE_SIZE: u64 = 4096;
pub const BALLOON_PAGE_SHIFT: u32 = 12;

/// Stats tags (virtio 1.2, 5.5.6.3) and the names the control socket gives them.
pub const STAT_NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kills",
    "alloc_stalls",
    "async_scans",
    "direct_scans",
    "async_reclaims",
    "direct_reclaims",
];
