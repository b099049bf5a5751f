//! The glue between queue notifications and the balloon's queue handler. The balloon
//! watches no host descriptors: the runtime reaches it through the control socket.

use super::device::BalloonDevice;
use crate::devices::virtio::DeviceEvents;

impl DeviceEvents for BalloonDevice {
    fn process_queue(&mut self, queue: usize) {
        if let (Some(handler), Some(memory)) = (self.handler.as_mut(), self.memory.as_ref()) {
            handler.process_queue(memory, queue);
        }
    }
}
