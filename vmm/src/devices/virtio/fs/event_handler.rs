//! The virtio-fs device's event glue. The guest's queue notifications go straight to the
//! backend (the transport's ioeventfds are its kick descriptors), so the device processes
//! no queue itself. Its host side relays the backend's interrupts to the guest: the
//! virtio-mmio interrupt must set the interrupt status register before raising the line,
//! so the backend's call descriptors cannot be KVM irqfds. It also watches the vhost-user
//! socket: a backend that hangs up marks the device failed.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::device::{FsDevice, FsShared};
use crate::devices::virtio::DeviceEvents;
use crate::event_loop::{EventOps, EventSet, Events, Subscriber};

impl DeviceEvents for FsDevice {
    fn process_queue(&mut self, _queue: usize) {
        // Notifications reach the backend directly; a write to the notify register that
        // missed the ioeventfd was forwarded to the same descriptor by the transport.
    }

    fn host_events(&mut self) -> Option<Box<dyn Subscriber>> {
        self.host_events
            .take()
            .map(|host| Box::new(host) as Box<dyn Subscriber>)
    }
}

/// Marks the socket's events apart from the queue indices of the call descriptors.
const SOCKET_DATA: u32 = u32::MAX;

/// The backend's call descriptors and its socket, served without the transport's lock.
pub struct FsHostEvents {
    shared: Arc<FsShared>,
    calls: Arc<Vec<EventFd>>,
    socket: UnixStream,
}

impl FsHostEvents {
    pub(super) fn new(shared: Arc<FsShared>, calls: Arc<Vec<EventFd>>, socket: UnixStream) -> Self {
        FsHostEvents {
            shared,
            calls,
            socket,
        }
    }
}

impl Subscriber for FsHostEvents {
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        for (queue, call) in self.calls.iter().enumerate() {
            ops.add(Events::with_data(call, queue as u32, EventSet::IN))?;
        }
        // Only a hang-up: replies are read by whoever sent the request.
        ops.add(Events::with_data(
            &self.socket,
            SOCKET_DATA,
            EventSet::HANG_UP | EventSet::READ_HANG_UP,
        ))
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == SOCKET_DATA && events.fd() == self.socket.as_raw_fd() {
            self.shared.mark_broken(&"the backend closed its socket");
            // Level-triggered: stop watching, or the loop would spin on the closed socket.
            let _ = ops.remove(events);
            return;
        }
        let Some(call) = self.calls.get(events.data() as usize) else {
            return;
        };
        if call.as_raw_fd() != events.fd() || call.read().is_err() {
            return;
        }
        if let Some(interrupt) = self.shared.interrupt().as_ref() {
            // A lost interrupt is recovered by the backend's next one.
            let _ = interrupt.signal_used_queue(events.data() as u16);
        }
    }
}
