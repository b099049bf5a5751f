//! The boot-progress ports of the guest port ABI ([`vpod_proto::vmm::port`], where vpod-init
//! takes the same numbers): a write of [`BOOT_MARK`] to [`BOOT_TIMER_PORT`] means "init
//! reached" (the VMM records the time since it started, like Firecracker's boot timer); a
//! byte written to [`EXIT_STATUS_PORT`] is the guest command's exit status, remembered until
//! the VMM exits.

use std::sync::Arc;

pub use vpod_proto::vmm::port::{BOOT_MARK, BOOT_TIMER_PORT, EXIT_STATUS_PORT, PORT_COUNT};

use crate::devices::BusDevice;
use crate::lifecycle::GuestEvents;

const INIT_OFFSET: u64 = 0;
const STATUS_OFFSET: u64 = (EXIT_STATUS_PORT - BOOT_TIMER_PORT) as u64;

pub struct BootPort {
    events: Arc<GuestEvents>,
}

impl BootPort {
    pub fn new(events: Arc<GuestEvents>) -> Self {
        BootPort { events }
    }
}

impl BusDevice for BootPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            INIT_OFFSET if value == BOOT_MARK => self.events.record_init_reached(),
            STATUS_OFFSET => self.events.record_status(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_write_marks_init_and_status_is_kept() {
        let events = Arc::new(GuestEvents::new().expect("eventfd"));
        let mut port = BootPort::new(events.clone());
        port.write(0, &[1]);
        assert_eq!(events.init_reached(), None);
        port.write(0, &[BOOT_MARK]);
        assert!(events.init_reached().is_some());
        port.write(1, &[3]);
        assert_eq!(events.status(), Some(3));
        port.write(1, &[]);
        assert_eq!(events.status(), Some(3));
        let mut data = [0u8; 1];
        port.read(0, &mut data);
        assert_eq!(data, [0xff]);
    }
}
