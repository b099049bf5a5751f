//! The glue between queue notifications and the block queue handler. A raw file needs no
//! host descriptors of its own.

use super::device::BlockDevice;
use crate::devices::virtio::DeviceEvents;

impl DeviceEvents for BlockDevice {
    fn process_queue(&mut self, queue: usize) {
        if queue != 0 {
            return;
        }
        if let (Some(handler), Some(memory)) = (self.handler.as_mut(), self.memory.as_ref()) {
            handler.process_queue(memory);
        }
    }
}
