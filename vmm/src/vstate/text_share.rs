//! Sharing the guest kernel's code with every VM of the same kernel once the guest has
//! booted ([`crate::arch::kernel_text`]): an event-loop source whose timer fires
//! [`SHARE_AFTER`] after the vCPUs start. It pauses every vCPU, maps the kernel file over
//! each code page the guest left unchanged, and lets the vCPUs run again: a pause of a few
//! milliseconds, once. Doing it after the boot rather than at load time keeps the boot on
//! huge pages (a 4 KiB page shared from the file costs the guest one nested page fault on
//! first touch, about a thousand during a boot).

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::GuestMemoryMmap;

use crate::arch::kernel_text::{share_identical_pages, TextPages, TextSharing};
use crate::event_loop::{DeadlineTimer, EventOps, EventSet, Events, Subscriber};
use crate::lifecycle::GuestEvents;
use crate::vstate::vcpu::VcpuPauser;

/// How long after the vCPUs start the kernel's code is shared: past the boot (its code
/// patching happens in the first tenth of a second on real KVM) and, for a pod, usually past
/// its first container's start.
pub const SHARE_AFTER: Duration = Duration::from_secs(5);
/// The longest a vCPU may take to leave the guest when told to pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The event-loop source that shares the kernel's code once.
pub struct KernelTextSharer {
    timer: DeadlineTimer,
    memory: Arc<GuestMemoryMmap>,
    kernel: File,
    pages: TextPages,
    shared_memfd: bool,
    vcpus: VcpuPauser,
    events: Arc<GuestEvents>,
}

impl KernelTextSharer {
    /// Shares `pages` of `kernel` in `memory` (a memfd a vhost-user backend maps too when
    /// `shared_memfd`) `delay` from now.
    pub fn new(
        memory: Arc<GuestMemoryMmap>,
        kernel: File,
        pages: TextPages,
        shared_memfd: bool,
        vcpus: VcpuPauser,
        events: Arc<GuestEvents>,
        delay: Duration,
    ) -> std::io::Result<Self> {
        let mut timer = DeadlineTimer::new()?;
        timer.set(Some(Instant::now() + delay))?;
        Ok(KernelTextSharer {
            timer,
            memory,
            kernel,
            pages,
            shared_memfd,
            vcpus,
            events,
        })
    }

    /// Pauses the guest, shares what it left unchanged, resumes it.
    fn share(&self) -> Result<TextSharing, String> {
        if !self.vcpus.pause_all(PAUSE_TIMEOUT) {
            self.vcpus.resume_all();
            return Err("a vCPU did not pause".into());
        }
        let outcome =
            share_identical_pages(&self.memory, &self.kernel, self.pages, self.shared_memfd);
        self.vcpus.resume_all();
        outcome.map_err(|e| vpod_proto::error_chain(&e))
    }
}

impl Subscriber for KernelTextSharer {
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
            // The guest runs on its own copy, as with --private-kernel-text.
            eprintln!("vpod-vmm: the kernel's code stays private to this VM: {why}");
        }
    }
}
