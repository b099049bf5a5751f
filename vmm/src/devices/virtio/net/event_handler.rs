//! The virtio-net device's event glue: queue notifications, and the tap as an event source
//! of its own.
//!
//! The tap is watched edge-triggered, so a tap left unread while the guest has no rx
//! buffers does not wake the loop again and again; an edge comes with each new frame.
//! Reading stops only when the tap is empty (the next frame brings an edge) or when the
//! guest has no rx buffers (its rx notification, when it posts some, resumes reading): no
//! frame is left behind without something to wake it. A pass that stops at its frame budget
//! ([`super::handler::FRAMES_PER_CALL`]) writes the core's `again` eventfd, which brings
//! both queues back after the loop's other events.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use super::device::{lock, NetCore, NetDevice};
use super::{RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::DeviceEvents;
use crate::event_loop::{EventOps, EventSet, Events, Subscriber};

impl DeviceEvents for NetDevice {
    fn process_queue(&mut self, queue: usize) {
        let mut core = lock(&self.core);
        match queue {
            TX_QUEUE => core.transmit(),
            // New rx buffers: what waits in the tap can go now.
            RX_QUEUE => core.receive(),
            _ => {}
        }
    }

    fn host_events(&mut self) -> Option<Box<dyn Subscriber>> {
        self.host_events
            .take()
            .map(|host| Box::new(host) as Box<dyn Subscriber>)
    }
}

/// The tap, served without the transport's lock.
pub struct NetHostEvents {
    core: Arc<Mutex<NetCore>>,
}

impl NetHostEvents {
    pub(super) fn new(core: Arc<Mutex<NetCore>>) -> Self {
        NetHostEvents { core }
    }
}

impl Subscriber for NetHostEvents {
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        let core = lock(&self.core);
        ops.add(Events::new(
            &core.tap,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        ))?;
        ops.add(Events::new(&core.again, EventSet::IN))
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut core = lock(&self.core);
        if events.fd() == core.again.as_raw_fd() {
            let _ = core.again.read();
            core.transmit();
        }
        // Readable, or an error (the interface went away): reading tells which.
        core.receive();
    }
}
