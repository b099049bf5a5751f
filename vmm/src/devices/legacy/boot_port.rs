//! The boot-progress ports of the guest port ABI ([`vpod_proto::vmm::port`], where vpod-init
//! takes the same numbers): a write of [`BOOT_MARK`] to [`BOOT_TIMER_PORT`] means "init
//! reached" (the VMM records the time since it started, like Firecracker's boot timer); a
//! byte written to [`EXIT_STATUS_PORT`] is the guest command's exit status, remembered until
//! the VMM exits; 32-bit writes to [`STAYING_PAGES_PORT`] are pairs (first guest frame,
//! count) of pages init keeps in place, handed to the boot files' sharing
//! ([`crate::vstate::boot_share`]), which checks them.

use std::sync::Arc;

pub use vpod_proto::vmm::port::{
    BOOT_MARK, BOOT_TIMER_PORT, EXIT_STATUS_PORT, PORT_COUNT, STAYING_PAGES_PORT,
};

use crate::devices::BusDevice;
use crate::lifecycle::GuestEvents;

const INIT_OFFSET: u64 = 0;
const STATUS_OFFSET: u64 = (EXIT_STATUS_PORT - BOOT_TIMER_PORT) as u64;
const STAYING_OFFSET: u64 = (STAYING_PAGES_PORT - BOOT_TIMER_PORT) as u64;

pub struct BootPort {
    events: Arc<GuestEvents>,
    /// The first frame of a staying-pages pair whose count has not come yet.
    pending_first: Option<u32>,
}

impl BootPort {
    pub fn new(events: Arc<GuestEvents>) -> Self {
        BootPort {
            events,
            pending_first: None,
        }
    }
}

impl BusDevice for BootPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == STAYING_OFFSET {
            // Only whole 32-bit writes; anything else is not part of the ABI.
            let Ok(word) = <[u8; 4]>::try_from(data) else {
                return;
            };
            let word = u32::from_le_bytes(word);
            match self.pending_first.take() {
                None => self.pending_first = Some(word),
                Some(first) => self
                    .events
                    .record_staying_pages(u64::from(first), u64::from(word)),
            }
            return;
        }
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

    #[test]
    fn staying_pages_come_in_pairs_of_whole_words() {
        let events = Arc::new(GuestEvents::new().expect("eventfd"));
        let mut port = BootPort::new(events.clone());
        port.write(STAYING_OFFSET, &0x1234u32.to_le_bytes());
        port.write(STAYING_OFFSET, &[1, 2]); // not a whole word: ignored
        port.write(STAYING_OFFSET, &8u32.to_le_bytes());
        port.write(STAYING_OFFSET, &0x2000u32.to_le_bytes());
        port.write(STAYING_OFFSET, &0u32.to_le_bytes()); // an empty run
        port.write(STAYING_OFFSET, &u32::MAX.to_le_bytes());
        assert_eq!(events.staying_pages(), [(0x1234, 8)]);
        for i in 0..2 * vpod_proto::vmm::port::MAX_STAYING_RUNS as u32 {
            port.write(STAYING_OFFSET, &i.to_le_bytes());
            port.write(STAYING_OFFSET, &1u32.to_le_bytes());
        }
        assert_eq!(
            events.staying_pages().len(),
            vpod_proto::vmm::port::MAX_STAYING_RUNS
        );
    }
}
