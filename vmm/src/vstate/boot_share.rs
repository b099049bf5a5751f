//! Sharing guest pages with the files the guest booted from, once it has booted: the
//! kernel's code ([`crate::arch::kernel_text`]) and, where guest RAM is private (no
//! vhost-user backend maps it) or the guest keeps them in place
//! ([`BootFiles::initrd_pages_stay`]), the pages of the initrd: the files its kernel
//! unpacked into the initramfs, and the initrd itself where the kernel retains it
//! ([`crate::vstate::file_pages`]), so that every VM of the same kernel and initrd keeps one
//! host copy of them. An event-loop source whose timer
//! fires [`SHARE_AFTER`] after the vCPUs start indexes the initrd, pauses every vCPU, maps
//! the files copy-on-write over the guest pages that still hold their bytes, and lets the
//! vCPUs run again: a pause of a few milliseconds, once. Doing it after the boot rather
//! than at load time keeps the boot on huge pages (a 4 KiB page shared from a file costs
//! the guest one nested page fault on first touch, about a thousand during a boot).

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use crate::arch::kernel_text::{find_text, share_identical_pages, TextPages, TextSharing};
use crate::event_loop::{DeadlineTimer, EventOps, EventSet, Events, Subscriber};
use crate::lifecycle::GuestEvents;
use crate::vstate::file_pages::{share_matching_pages, FilePageIndex, GuestRam};
use crate::vstate::vcpu::VcpuPauser;

/// How long after the vCPUs start the boot files' pages are shared: past the boot (its code
/// patching happens in the first tenth of a second on real KVM) and, for a pod, usually past
/// its first container's start.
pub const SHARE_AFTER: Duration = Duration::from_secs(5);
/// Guest pages are 4 KiB.
const PAGE: u64 = 4096;
/// The longest a vCPU may take to leave the guest when told to pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the guest booted from that may be shared.
pub struct BootFiles {
    /// The kernel file.
    pub kernel: Option<File>,
    /// The initrd file.
    pub initrd: Option<File>,
    /// The guest keeps its initrd copy and the files it unpacked from it in place and never
    /// hands those pages to a device (`VmConfig.initrd_pages_stay`): then, where a vhost-user
    /// backend maps guest RAM too, the initrd's pages are shared there, and only there:
    /// inside the initrd copy the VMM loaded (`initrd_at`, which the kernel retains) and the
    /// runs of pages init reported through the port ABI
    /// ([`vpod_proto::vmm::port::STAYING_PAGES_PORT`]). Any other page of guest RAM that
    /// happens to hold the initrd's bytes (page cache of the same file read through the
    /// share, say) may be freed and reused as a device buffer, and is left alone.
    pub initrd_pages_stay: bool,
    /// Where the initrd copy lies in guest memory (address, length).
    pub initrd_at: Option<(u64, u64)>,
}

/// What a sharing did, in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shared {
    pub kernel_code: TextSharing,
    pub initrd: u64,
}

/// The event-loop source that shares the boot files' pages once.
pub struct BootFileSharer {
    timer: DeadlineTimer,
    memory: Arc<GuestMemoryMmap>,
    files: BootFiles,
    shared_memfd: bool,
    vcpus: VcpuPauser,
    events: Arc<GuestEvents>,
}

impl BootFileSharer {
    /// Shares the pages of `files` in `memory` (a memfd a vhost-user backend maps too when
    /// `shared_memfd`) `delay` from now.
    pub fn new(
        memory: Arc<GuestMemoryMmap>,
        files: BootFiles,
        shared_memfd: bool,
        vcpus: VcpuPauser,
        events: Arc<GuestEvents>,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let mut timer = DeadlineTimer::new()?;
        timer.set(Some(Instant::now() + delay))?;
        Ok(BootFileSharer {
            timer,
            memory,
            files,
            shared_memfd,
            vcpus,
            events,
        })
    }

    /// Finds the kernel's code and indexes the initrd (both file reads, done before the
    /// pause), pauses the guest, shares what it left unchanged, resumes it.
    pub fn share(&self) -> Result<Shared, String> {
        let text = match &self.files.kernel {
            Some(file) => find_text(file).map_err(|e| vpod_proto::error_chain(&e))?,
            None => None,
        };
        // Not with a vhost-user backend, unless the guest keeps these pages in place: the
        // backend reaches guest RAM through the memfd, not through this process's mapping,
        // and unlike the kernel's code these pages may otherwise become a device buffer (the
        // initrd copy the guest freed, a page the guest reuses): the backend would write into
        // the memfd while the guest reads the file's page.
        let index = match &self.files.initrd {
            Some(file) if !self.shared_memfd || self.files.initrd_pages_stay => {
                FilePageIndex::build(file).map_err(|e| format!("cannot read the initrd: {e}"))?
            }
            _ => FilePageIndex::default(),
        };
        if text.is_none() && index.is_empty() {
            return Ok(Shared::default());
        }
        if !self.vcpus.pause_all(PAUSE_TIMEOUT) {
            self.vcpus.resume_all();
            return Err("a vCPU did not pause".into());
        }
        let outcome = self.share_paused(text, &index);
        self.vcpus.resume_all();
        outcome.map_err(|e| vpod_proto::error_chain(&e))
    }

    fn share_paused(
        &self,
        text: Option<TextPages>,
        index: &FilePageIndex,
    ) -> Result<Shared, crate::arch::kernel_text::KernelTextError> {
        let mut shared = Shared::default();
        let mut text_range = 0..0;
        let mut ram = GuestRam::new(&self.memory, self.shared_memfd);
        let only = self.shared_memfd.then(|| self.staying_ranges());
        if let (Some(file), Some(pages)) = (&self.files.kernel, text) {
            shared.kernel_code = share_identical_pages(&self.memory, file, pages, &mut ram)?;
            text_range = pages.guest_addr..pages.guest_addr + pages.len;
        }
        // An empty index (no initrd, or a vhost-user backend with pages that may move: see
        // `share`) matches nothing.
        if let Some(file) = &self.files.initrd {
            shared.initrd = share_matching_pages(
                &self.memory,
                file,
                index,
                &mut ram,
                text_range,
                only.as_deref(),
            )?;
        }
        Ok(shared)
    }
}

impl BootFileSharer {
    /// The guest ranges where the initrd's pages stay, sorted and merged: its loaded copy,
    /// and the page runs init reported (guest-written: bounded by
    /// [`vpod_proto::vmm::port::MAX_STAYING_RUNS`] runs, overflowing ones dropped; pages
    /// outside guest RAM never match).
    fn staying_ranges(&self) -> Vec<std::ops::Range<u64>> {
        let reported = self
            .events
            .staying_pages()
            .into_iter()
            .filter_map(|(first, count)| {
                let start = first.checked_mul(PAGE)?;
                Some(start..start.checked_add(count.checked_mul(PAGE)?)?)
            });
        let mut ranges: Vec<_> = self
            .files
            .initrd_at
            .map(|(at, len)| at..at.saturating_add(len))
            .into_iter()
            .chain(reported)
            .collect();
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<std::ops::Range<u64>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        merged
    }
}

impl Subscriber for BootFileSharer {
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        ops.add(Events::new(&self.timer, EventSet::IN))
    }

    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        self.timer.fired();
        let _ = ops.remove(Events::new(&self.timer, EventSet::IN));
        // A VM on its way down keeps its copy.
        if self.events.stop_reason().is_some() {
            return;
        }
        if let Err(why) = self.share() {
            // The guest runs on its own copy, as with --private-boot-files.
            eprintln!("vpod-vmm: the boot files' pages stay private to this VM: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::{create_guest_memory, create_shared_guest_memory};
    use std::sync::mpsc::channel;
    use vm_memory::{Bytes, GuestAddress};

    const MIB: u64 = 1 << 20;

    /// A sharer of `initrd` in `memory`, with no vCPUs to pause.
    fn sharer(
        memory: &Arc<GuestMemoryMmap>,
        initrd: File,
        shared_memfd: bool,
        initrd_pages_stay: bool,
    ) -> BootFileSharer {
        let (_, acks) = channel();
        BootFileSharer::new(
            memory.clone(),
            BootFiles {
                kernel: None,
                initrd: Some(initrd),
                initrd_pages_stay,
                initrd_at: None,
            },
            shared_memfd,
            VcpuPauser::new(Vec::new(), acks),
            Arc::new(GuestEvents::new().expect("events")),
            Duration::from_secs(3600),
        )
        .expect("sharer")
    }

    /// Guest RAM holding the initrd's two pages, as an unpacked file would.
    fn with_initrd_pages(memory: &GuestMemoryMmap, bytes: &[u8]) {
        memory
            .write_slice(bytes, GuestAddress(0x40_0000))
            .expect("write");
    }

    #[test]
    fn initrd_pages_are_shared_only_where_no_backend_maps_guest_ram_or_they_stay() {
        let bytes: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8 | 1).collect();
        let path = std::env::temp_dir().join(format!("vpod-boot-share-{}", std::process::id()));
        std::fs::write(&path, &bytes).expect("initrd");
        let open = || File::open(&path).expect("open");

        let private = create_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8, false).expect("ram");
        with_initrd_pages(&private, &bytes);
        let private_outcome = sharer(&Arc::new(private), open(), false, false).share();

        // A vhost-user backend writes these pages through the memfd: they must stay the
        // guest's, or the guest would read the file where the backend wrote.
        let (shared, _) =
            create_shared_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8).expect("shared ram");
        with_initrd_pages(&shared, &bytes);
        let shared_outcome = sharer(&Arc::new(shared), open(), true, false).share();

        // Unless the guest keeps them in place and never hands them to a device: then the
        // pages init reported (and the initrd copy the VMM loaded) are shared, the guest reads
        // the file there, and the memfd's pages behind are freed. The same bytes elsewhere
        // (page cache of the same file read through the share, say) stay the guest's.
        let (kept, _) =
            create_shared_guest_memory(&[(GuestAddress(0), 8 * MIB)], 8).expect("shared ram");
        with_initrd_pages(&kept, &bytes);
        kept.write_slice(&bytes, GuestAddress(0x60_0000))
            .expect("write");
        kept.write_slice(&bytes, GuestAddress(0x70_0000))
            .expect("write");
        let kept = Arc::new(kept);
        let mut kept_sharer = sharer(&kept, open(), true, true);
        kept_sharer.events.record_staying_pages(0x400, 2);
        kept_sharer.files.initrd_at = Some((0x70_0000, bytes.len() as u64));
        let kept_outcome = kept_sharer.share();
        let _ = std::fs::remove_file(&path);

        assert_eq!(private_outcome.expect("private").initrd, 2);
        assert_eq!(shared_outcome.expect("shared").initrd, 0);
        assert_eq!(
            kept_outcome.expect("kept").initrd,
            4,
            "the reported run and the copy"
        );
        let mut read = vec![0u8; bytes.len()];
        kept.read_slice(&mut read, GuestAddress(0x40_0000))
            .expect("read");
        assert_eq!(read, bytes, "the guest reads the file's bytes");
    }
}
