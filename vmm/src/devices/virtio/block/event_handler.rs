//! The glue between queue notifications and the block queue handler.

use super::device::BlockDevice;
use crate::devices::virtio::QueueEvents;

impl QueueEvents for BlockDevice {
    fn process_queue(&mut self, queue: usize) {
        if queue != 0 {
            return;
        }
        if let (Some(handler), Some(memory)) = (self.handler.as_mut(), self.memory.as_ref()) {
            handler.process_queue(memory);
        }
    }
}
