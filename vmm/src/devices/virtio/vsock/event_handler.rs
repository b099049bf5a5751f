//! The vsock device's event glue: queue notifications, and its host side as an event source
//! of its own (the muxer's epoll over the unix sockets, and a timer for late handshakes and
//! connects).

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::device::{lock, VsockCore, VsockDevice};
use super::{RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::DeviceEvents;
use crate::event_loop::{DeadlineTimer, EventOps, EventSet, Events, Subscriber};

impl DeviceEvents for VsockDevice {
    fn process_queue(&mut self, queue: usize) {
        let mut core = lock(&self.core);
        let core = &mut *core;
        let Some(active) = core.active.as_mut() else {
            return;
        };
        match queue {
            TX_QUEUE => {
                active.handler.process_tx(&active.memory, &mut core.muxer);
            }
            // New rx buffers: the loop below fills them.
            RX_QUEUE => {}
            // The device sends no events (only a transport reset on migration would).
            _ => return,
        }
        // What the guest sent usually calls for an answer (responses, credit, resets).
        core.deliver();
    }

    fn host_events(&mut self) -> Option<Box<dyn Subscriber>> {
        self.host_events
            .take()
            .map(|host| Box::new(host) as Box<dyn Subscriber>)
    }
}

/// The unix sockets and the timeouts of the device, served without the transport's lock.
pub struct VsockHostEvents {
    core: Arc<Mutex<VsockCore>>,
    /// Armed for the muxer's next deadline. Only host events set deadlines; a guest answer
    /// that ends one early leaves a timer that finds nothing to expire.
    timer: DeadlineTimer,
}

impl VsockHostEvents {
    pub(super) fn new(core: Arc<Mutex<VsockCore>>, timer: DeadlineTimer) -> Self {
        VsockHostEvents { core, timer }
    }
}

impl Subscriber for VsockHostEvents {
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        let host_sockets = lock(&self.core).muxer.epoll_fd();
        ops.add(Events::new_raw(host_sockets, EventSet::IN))?;
        ops.add(Events::new(&self.timer, EventSet::IN))
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut core = lock(&self.core);
        if events.fd() == self.timer.as_raw_fd() {
            self.timer.fired();
            core.muxer.expire(Instant::now());
        } else {
            core.muxer.process_host_events();
        }
        // Host sockets and timeouts produce packets for the guest (requests, data, resets).
        core.deliver();
        // Setting a valid timerfd does not fail; if it did, a connection the peer gave up on
        // would only close later.
        let _ = self.timer.set(core.muxer.next_deadline());
    }
}
