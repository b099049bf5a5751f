//! The glue between queue notifications and the vsock queue handler.

use super::device::VsockDevice;
use super::{RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::QueueEvents;

impl QueueEvents for VsockDevice {
    fn process_queue(&mut self, queue: usize) {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
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
}
