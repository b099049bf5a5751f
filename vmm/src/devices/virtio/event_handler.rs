//! The event-loop source of a virtio device's queue notifications: the transport's
//! ioeventfds, which KVM signals when the guest writes the notify register. What a device
//! watches on the host side is a source of its own ([`super::DeviceEvents::host_events`]).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use super::MmioTransport;
use crate::event_loop::{EventOps, EventSet, Events, Subscriber};

/// The event loop's handle on one virtio device behind its transport.
pub struct VirtioEvents {
    transport: Arc<Mutex<MmioTransport>>,
}

impl VirtioEvents {
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Self {
        VirtioEvents { transport }
    }

    fn transport(&self) -> MutexGuard<'_, MmioTransport> {
        self.transport.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Subscriber for VirtioEvents {
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        let transport = self.transport();
        if transport.external_notifications() {
            return Ok(());
        }
        for (queue, event) in transport.queue_events().iter().enumerate() {
            ops.add(Events::with_data(event, queue as u32, EventSet::IN))?;
        }
        Ok(())
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut transport = self.transport();
        let queue = events.data() as usize;
        // The data is the queue index `init` gave; the descriptor check is a cheap guard.
        if let Some(event) = transport.queue_events().get(queue) {
            if event.as_raw_fd() == events.fd() {
                let _ = event.read();
                transport.process_queue(queue);
            }
        }
    }
}
