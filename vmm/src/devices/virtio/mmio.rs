//! The virtio-mmio transport, version 2 (virtio 1.x, "modern") register layout.
//!
//! The guest finds each device through a `virtio_mmio.device=<size>@<addr>:<irq>` entry on
//! the kernel command line. Queue notifications normally reach the VMM as ioeventfds (the
//! transport then never sees the register write); the interrupt is an irqfd on a legacy
//! IOAPIC pin, with the reason kept in the interrupt status register.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::devices::BusDevice;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4456_5056; // "VPVD"

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

/// Offset of the queue-notify register, where the ioeventfds sit.
pub const QUEUE_NOTIFY_OFFSET: u64 = REG_QUEUE_NOTIFY;
/// Size of one device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// Interrupt status bits.
const INT_USED_RING: u32 = 1;
const INT_CONFIG_CHANGED: u32 = 2;

/// The MMIO transport's interrupt: a status word the driver reads and acknowledges, and an
/// irqfd that raises the device's IOAPIC pin.
pub struct MmioInterrupt {
    status: AtomicU32,
    irq: EventFd,
}

impl MmioInterrupt {
    pub fn new(irq: EventFd) -> Self {
        MmioInterrupt {
            status: AtomicU32::new(0),
            irq,
        }
    }

    fn raise(&self, reason: u32) -> io::Result<()> {
        self.status.fetch_or(reason, Ordering::SeqCst);
        self.irq.write(1)
    }

    fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> io::Result<()> {
        self.raise(INT_USED_RING)
    }

    fn signal_config_changed(&self) -> io::Result<()> {
        self.raise(INT_CONFIG_CHANGED)
    }
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    memory: Arc<GuestMemoryMmap>,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    /// One per queue; a write to the notify register that bypassed the ioeventfd lands here.
    queue_events: Vec<EventFd>,
    device_status: u32,
    features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    config_generation: u32,
    activated: bool,
}

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("cannot create queue {0}")]
    Queue(usize, #[source] virtio_queue::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
}

impl MmioTransport {
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: Arc<GuestMemoryMmap>,
        interrupt: Arc<MmioInterrupt>,
    ) -> Result<Self, MmioError> {
        let queues = Self::fresh_queues(device.as_ref())?;
        let queue_events = (0..queues.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            memory,
            interrupt,
            queues,
            queue_events,
            device_status: 0,
            features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            config_generation: 0,
            activated: false,
        })
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Result<Vec<Queue>, MmioError> {
        device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(i, &size)| Queue::new(size).map_err(|e| MmioError::Queue(i, e)))
            .collect()
    }

    /// The eventfds the guest's queue notifications arrive on, in queue order.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Processes queue `index` after its eventfd fired.
    pub fn process_queue(&mut self, index: usize) {
        if self.activated {
            self.device.process_queue(index);
        }
    }

    /// The device, for operations beyond the transport (e.g. swapping a disk).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// Tells the driver the configuration space changed.
    pub fn notify_config_changed(&mut self) -> io::Result<()> {
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal_config_changed()
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.activated || self.device_status & STATUS_DRIVER_OK != 0 {
            return None; // queue set-up is frozen once the driver is running
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
        }
        self.activated = false;
        self.device_status = 0;
        self.acked_features = 0;
        self.features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        for queue in self.queues.iter_mut() {
            queue.reset();
        }
        self.interrupt.acknowledge(u32::MAX);
    }

    fn activate(&mut self) {
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        let queues_valid = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(self.memory.as_ref()));
        // The device gets its own copies; the transport keeps its queues for register reads.
        let copies: Option<Vec<Queue>> = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()).ok())
            .collect();
        let result = match copies {
            Some(queues) if queues_valid => self
                .device
                .activate(self.memory.clone(), interrupt, queues)
                .is_ok(),
            _ => false,
        };
        if result {
            self.activated = true;
        } else {
            self.device_status |= STATUS_DEVICE_NEEDS_RESET;
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value & !STATUS_DEVICE_NEEDS_RESET;
        if value & STATUS_FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            // Legacy drivers are not supported: refuse the feature set.
            value &= !STATUS_FEATURES_OK;
        }
        let was_running = self.device_status & STATUS_DRIVER_OK != 0;
        self.device_status = value | (self.device_status & STATUS_DEVICE_NEEDS_RESET);
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if !was_running && value & ready == ready && value & STATUS_FAILED == 0 && !self.activated {
            self.activate();
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.features_select {
                0 => self.device.avail_features() as u32,
                1 => (self.device.avail_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.device_status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_DRIVER_FEATURES => {
                if self.device_status & STATUS_FEATURES_OK != 0 {
                    return;
                }
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                let offered = self.device.avail_features();
                self.acked_features =
                    (self.acked_features & !mask) | ((u64::from(value) << shift) & offered);
                self.device.set_acked_features(self.acked_features);
            }
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(Some(value), None);
                }
            }
            REG_QUEUE_DESC_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_desc_table_address(None, Some(value));
                }
            }
            REG_QUEUE_DRIVER_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(Some(value), None);
                }
            }
            REG_QUEUE_DRIVER_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_avail_ring_address(None, Some(value));
                }
            }
            REG_QUEUE_DEVICE_LOW => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(Some(value), None);
                }
            }
            REG_QUEUE_DEVICE_HIGH => {
                if let Some(q) = self.selected_queue() {
                    q.set_used_ring_address(None, Some(value));
                }
            }
            REG_QUEUE_NOTIFY => {
                if let Some(event) = self.queue_events.get(value as usize) {
                    let _ = event.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.set_status(value),
            _ => {}
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            self.device.read_config(offset - REG_CONFIG, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            self.device.write_config(offset - REG_CONFIG, data);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, QueueEvents};
    use std::sync::Mutex;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Probe {
        acked: u64,
        activated_with: Option<usize>,
        processed: Vec<usize>,
        resets: usize,
    }

    struct FakeDevice(Arc<Mutex<Probe>>);

    impl QueueEvents for FakeDevice {
        fn process_queue(&mut self, queue: usize) {
            self.0.lock().expect("lock").processed.push(queue);
        }
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn set_acked_features(&mut self, features: u64) {
            self.0.lock().expect("lock").acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _memory: Arc<GuestMemoryMmap>,
            _interrupt: Arc<dyn VirtioInterrupt>,
            queues: Vec<Queue>,
        ) -> Result<(), ActivateError> {
            self.0.lock().expect("lock").activated_with = Some(queues.len());
            Ok(())
        }
        fn reset(&mut self) {
            self.0.lock().expect("lock").resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Probe>>, Arc<MmioInterrupt>) {
        let probe = Arc::new(Mutex::new(Probe::default()));
        let memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory"),
        );
        let interrupt = Arc::new(MmioInterrupt::new(EventFd::new(0).expect("eventfd")));
        let t = MmioTransport::new(
            Box::new(FakeDevice(probe.clone())),
            memory,
            interrupt.clone(),
        )
        .expect("transport");
        (t, probe, interrupt)
    }

    fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn set_up_queue(t: &mut MmioTransport) {
        write32(t, REG_QUEUE_SEL, 0);
        write32(t, REG_QUEUE_NUM, 16);
        write32(t, REG_QUEUE_DESC_LOW, 0x1000);
        write32(t, REG_QUEUE_DRIVER_LOW, 0x2000);
        write32(t, REG_QUEUE_DEVICE_LOW, 0x3000);
        write32(t, REG_QUEUE_READY, 1);
    }

    fn negotiate(t: &mut MmioTransport) {
        write32(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write32(t, REG_DRIVER_FEATURES_SEL, 1);
        write32(t, REG_DRIVER_FEATURES, 1);
        write32(t, REG_DRIVER_FEATURES_SEL, 0);
        write32(t, REG_DRIVER_FEATURES, 0xffff_ffff);
        write32(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    #[test]
    fn identification_registers() {
        let (mut t, _, _) = transport();
        assert_eq!(read32(&mut t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!(read32(&mut t, REG_VERSION), 2);
        assert_eq!(read32(&mut t, REG_DEVICE_ID), 42);
        write32(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read32(&mut t, REG_DEVICE_FEATURES), 1);
        assert_eq!(read32(&mut t, REG_QUEUE_NUM_MAX), 16);
        write32(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(read32(&mut t, REG_QUEUE_NUM_MAX), 0);
        let mut byte = [0u8; 1];
        t.read(0x100 + 3, &mut byte);
        assert_eq!(byte, [3]);
    }

    #[test]
    fn driver_ok_activates_with_negotiated_features() {
        let (mut t, probe, _) = transport();
        negotiate(&mut t);
        set_up_queue(&mut t);
        assert_eq!(
            probe.lock().expect("lock").acked,
            VIRTIO_F_VERSION_1 | 0b101
        );
        write32(&mut t, REG_STATUS, 0xf);
        assert_eq!(probe.lock().expect("lock").activated_with, Some(1));
        t.process_queue(0);
        assert_eq!(probe.lock().expect("lock").processed, vec![0]);
        write32(&mut t, REG_STATUS, 0);
        assert_eq!(probe.lock().expect("lock").resets, 1);
        assert_eq!(read32(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn invalid_queue_sets_needs_reset_instead_of_activating() {
        let (mut t, probe, _) = transport();
        negotiate(&mut t);
        write32(&mut t, REG_QUEUE_NUM, 16);
        write32(&mut t, REG_QUEUE_DESC_LOW, 0x1000);
        write32(&mut t, REG_QUEUE_DESC_HIGH, 0xffff_ffff); // outside guest memory
        write32(&mut t, REG_QUEUE_READY, 1);
        write32(&mut t, REG_STATUS, 0xf);
        assert_eq!(probe.lock().expect("lock").activated_with, None);
        assert_ne!(read32(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        t.process_queue(0);
        assert!(probe.lock().expect("lock").processed.is_empty());
    }

    #[test]
    fn legacy_driver_is_refused_features_ok() {
        let (mut t, _, _) = transport();
        write32(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write32(&mut t, REG_DRIVER_FEATURES, 0b1);
        write32(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(read32(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn interrupt_status_is_set_by_signals_and_cleared_by_ack() {
        let (mut t, _, interrupt) = transport();
        interrupt.signal_used_queue(0).expect("signal");
        t.notify_config_changed().expect("signal");
        assert_eq!(read32(&mut t, REG_INTERRUPT_STATUS), 3);
        assert_eq!(read32(&mut t, REG_CONFIG_GENERATION), 1);
        write32(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(read32(&mut t, REG_INTERRUPT_STATUS), 2);
    }

    #[test]
    fn notify_register_write_fires_the_queue_eventfd() {
        let (mut t, _, _) = transport();
        write32(&mut t, REG_QUEUE_NOTIFY, 0);
        assert_eq!(t.queue_events()[0].read().expect("fired"), 1);
        write32(&mut t, REG_QUEUE_NOTIFY, 99); // no such queue: ignored
    }

    #[test]
    fn odd_sized_register_accesses_are_ignored() {
        let (mut t, _, _) = transport();
        let mut two = [0xffu8; 2];
        t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        t.write(REG_STATUS, &[1, 0]);
        assert_eq!(read32(&mut t, REG_STATUS), 0);
    }
}
