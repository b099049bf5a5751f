//! Address-range dispatch for port I/O and MMIO exits.

use std::sync::{Arc, Mutex};

/// A device that answers reads and writes inside its address range.
pub trait BusDevice: Send {
    /// Fills `data` for a read at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write of `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Clone)]
struct BusRange {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("the range {0:#x}+{1:#x} overlaps a device already on the bus")]
    Overlap(u64, u64),
    #[error("the range {0:#x}+{1:#x} is empty or wraps around")]
    BadRange(u64, u64),
}

/// A set of non-overlapping device ranges. Built once, then shared read-only by the vCPUs.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: Vec<BusRange>,
}

impl Bus {
    pub fn new() -> Self {
        Bus::default()
    }

    /// Puts `device` at `base..base+len`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange(base, len))?;
        if self
            .ranges
            .iter()
            .any(|r| base < r.base + r.len && r.base < end)
        {
            return Err(BusError::Overlap(base, len));
        }
        self.ranges.push(BusRange { base, len, device });
        self.ranges.sort_by_key(|r| r.base);
        Ok(())
    }

    fn find(&self, address: u64) -> Option<(&BusRange, u64)> {
        let index = self.ranges.partition_point(|r| r.base <= address);
        let range = self.ranges.get(index.checked_sub(1)?)?;
        let offset = address - range.base;
        (offset < range.len).then_some((range, offset))
    }

    /// Dispatches a read; returns false (leaving `data` alone) when no device is there.
    pub fn read(&self, address: u64, data: &mut [u8]) -> bool {
        match self.find(address) {
            Some((range, offset)) => {
                range
                    .device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device is there.
    pub fn write(&self, address: u64, data: &[u8]) -> bool {
        match self.find(address) {
            Some((range, offset)) => {
                range
                    .device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn accesses_reach_the_device_with_its_offset() {
        let device = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(device.clone(), 0x3f8, 8).expect("free range");
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(
            device.lock().expect("lock").last_write,
            Some((0, vec![b'x']))
        );
        assert!(!bus.read(0x400, &mut data));
        assert!(!bus.read(0x3f7, &mut data));
    }

    #[test]
    fn overlapping_and_empty_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 5)
            .expect("free");
        let other = Arc::new(Mutex::new(Recorder::default()));
        assert_eq!(
            bus.insert(other.clone(), 0x64, 1),
            Err(BusError::Overlap(0x64, 1))
        );
        assert_eq!(
            bus.insert(other.clone(), 0x70, 0),
            Err(BusError::BadRange(0x70, 0))
        );
        assert_eq!(
            bus.insert(other.clone(), u64::MAX, 2),
            Err(BusError::BadRange(u64::MAX, 2))
        );
        bus.insert(other, 0x65, 1).expect("adjacent range is free");
    }
}
