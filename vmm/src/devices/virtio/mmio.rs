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
    /// The device's backend reads `queue_events` itself (vhost-user).
    external_notifications: bool,
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
        let mut device = device;
        let queues = Self::fresh_queues(device.as_ref())?;
        let queue_events = (0..queues.len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let external_notifications = device
            .set_queue_notifiers(&queue_events)
            .map_err(MmioError::EventFd)?;
        Ok(MmioTransport {
            device,
            memory,
            interrupt,
            queues,
            queue_events,
            external_notifications,
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

    /// Whether the device's backend reads the queue eventfds itself, so that the event loop
    /// must not.
    pub fn external_notifications(&self) -> bool {
        self.external_notifications
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
        let count = self.device.queue_count().min(self.queues.len());
        let queues_valid = self.queues[..count]
            .iter()
            .all(|q| q.ready() && q.is_valid(self.memory.as_ref()));
        // The device gets its own copies; the transport keeps its queues for register reads.
        let copies: Option<Vec<Queue>> = self.queues[..count]
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
        // Only a reset (a write of 0) clears status bits: a driver cannot take back
        // FEATURES_OK or DRIVER_OK to renegotiate under a running device.
        let mut value = (value | self.device_status) & !STATUS_DEVICE_NEEDS_RESET;
        if value & STATUS_FEATURES_OK != 0 && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
            // Legacy drivers are not supported: refuse the feature set.
            value &= !STATUS_FEATURES_OK;
        }
        let was_running = self.device_status & STATUS_DRIVER_OK != 0;
        let needs_reset = self.device_status & STATUS_DEVICE_NEEDS_RESET != 0;
        self.device_status = value | (self.device_status & STATUS_DEVICE_NEEDS_RESET);
        if was_running || value & STATUS_DRIVER_OK == 0 || value & STATUS_FAILED != 0 {
            return;
        }
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        if value & ready == ready && !needs_reset && !self.activated {
            self.activate();
        } else {
            // DRIVER_OK out of order (before FEATURES_OK, or on a device that must be reset
            // first): the device refuses to run until the driver resets it.
            self.device_status |= STATUS_DEVICE_NEEDS_RESET;
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
                // The queue refuses sizes that are 0, not a power of two or above its maximum;
                // a value that does not even fit 16 bits is refused here, not truncated.
                if let (Some(q), Ok(size)) = (self.selected_queue(), u16::try_from(value)) {
                    q.set_size(size);
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
    use crate::devices::virtio::event_handler::VirtioEvents;
    use crate::devices::virtio::{ActivateError, DeviceEvents};
    use crate::event_loop::EventLoop;
    use crate::lifecycle::{GuestEvents, StopReason};
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

    impl DeviceEvents for FakeDevice {
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
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
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
    fn a_queue_notification_reaches_the_device_through_the_event_loop() {
        let (mut t, probe, _) = transport();
        negotiate(&mut t);
        set_up_queue(&mut t);
        write32(&mut t, REG_STATUS, 0xf);
        let notify = t.queue_events()[0].try_clone().expect("clone");
        let events = Arc::new(GuestEvents::new().expect("eventfd"));
        let mut event_loop = EventLoop::without_signals(events.clone());
        let transport = Arc::new(Mutex::new(t));
        event_loop
            .add(Box::new(VirtioEvents::new(transport)))
            .expect("registered");
        // What KVM does when the guest writes the notify register.
        notify.write(1).expect("notify");
        let watcher = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            while probe.lock().expect("lock").processed.is_empty() {
                assert!(started.elapsed().as_secs() < 10, "never processed");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            events.request_stop(StopReason::PowerOff);
            probe
        });
        assert_eq!(event_loop.run(), StopReason::PowerOff);
        let probe = watcher.join().expect("watcher");
        assert_eq!(probe.lock().expect("lock").processed, vec![0]);
        assert_eq!(
            notify.read().ok(),
            None,
            "the loop consumed the notification"
        );
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

    #[test]
    fn queue_sizes_that_are_not_powers_of_two_within_the_maximum_are_refused() {
        let (mut t, _, _) = transport();
        write32(&mut t, REG_QUEUE_NUM, 8);
        assert_eq!(t.queues[0].size(), 8);
        // 0x1_0004 would truncate to 4: refused, not truncated.
        for refused in [0x1_0004, 12, 32, 0, u32::MAX] {
            write32(&mut t, REG_QUEUE_NUM, refused);
            assert_eq!(t.queues[0].size(), 8, "size {refused:#x} was accepted");
        }
    }

    #[test]
    fn driver_ok_before_features_ok_sets_needs_reset_until_reset() {
        let (mut t, probe, _) = transport();
        set_up_queue(&mut t);
        write32(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        write32(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK,
        );
        assert_ne!(read32(&mut t, REG_STATUS) & STATUS_DEVICE_NEEDS_RESET, 0);
        // Completing the sequence afterwards does not start a device that needs a reset.
        negotiate(&mut t);
        write32(&mut t, REG_STATUS, 0xf);
        assert_eq!(probe.lock().expect("lock").activated_with, None);
        // After a reset, a proper sequence works.
        write32(&mut t, REG_STATUS, 0);
        negotiate(&mut t);
        set_up_queue(&mut t);
        write32(&mut t, REG_STATUS, 0xf);
        assert_eq!(probe.lock().expect("lock").activated_with, Some(1));
        assert_eq!(read32(&mut t, REG_STATUS), 0xf);
    }

    #[test]
    fn status_bits_stay_set_until_reset_so_features_stay_frozen() {
        let (mut t, probe, _) = transport();
        negotiate(&mut t);
        set_up_queue(&mut t);
        write32(&mut t, REG_STATUS, 0xf);
        write32(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(read32(&mut t, REG_STATUS), 0xf);
        write32(&mut t, REG_DRIVER_FEATURES, 0);
        assert_eq!(
            probe.lock().expect("lock").acked,
            VIRTIO_F_VERSION_1 | 0b101
        );
    }

    #[test]
    fn queue_notify_before_activation_processes_nothing() {
        let (mut t, probe, _) = transport();
        set_up_queue(&mut t);
        write32(&mut t, REG_QUEUE_NOTIFY, 0);
        t.process_queue(0);
        assert!(probe.lock().expect("lock").processed.is_empty());
    }

    /// Property tests: a hostile driver poking the register window of a real block device.
    mod hostile {
        use super::*;
        use crate::config::{DiskConfig, DiskSource};
        use crate::devices::virtio::block::BlockDevice;
        use proptest::prelude::*;
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU64, Ordering};
        use vm_memory::Bytes;

        const DISK_FILE_LEN: usize = 8 * 512 + 100;

        #[derive(Debug, Clone)]
        enum Op {
            Read(u64, usize),
            Write(u64, usize, u64),
            /// The event loop runs a queue, as after an ioeventfd.
            Process(usize),
            /// A complete driver set-up with the given queue size and addresses.
            SetUp(u32, u64, u64, u64),
        }

        struct TempDisk(PathBuf);

        impl Drop for TempDisk {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }

        fn value() -> impl Strategy<Value = u64> {
            prop_oneof![
                0..0x100u64,
                (0..0x1800u64).prop_map(|x| x * 0x10),
                any::<u64>(),
            ]
        }

        fn op() -> impl Strategy<Value = Op> {
            let offset = prop_oneof![
                0..0x200u64,
                (0..0x30u64).prop_map(|r| r * 4),
                0x100..0x118u64,
            ];
            let size = prop::sample::select(vec![1usize, 2, 4, 8]);
            let address = (0..0x1800u64).prop_map(|x| x * 0x10);
            prop_oneof![
                3 => (offset.clone(), size.clone()).prop_map(|(o, s)| Op::Read(o, s)),
                6 => (offset, size, value()).prop_map(|(o, s, v)| Op::Write(o, s, v)),
                2 => (0..2usize).prop_map(Op::Process),
                1 => (
                    prop::sample::select(vec![0u32, 1, 3, 4, 16, 128, 256, 512]),
                    address.clone(),
                    address.clone(),
                    address,
                )
                    .prop_map(|(n, d, a, u)| Op::SetUp(n, d, a, u)),
            ]
        }

        fn write(t: &mut MmioTransport, offset: u64, value: u64, size: usize) {
            t.write(offset, &value.to_le_bytes()[..size]);
        }

        fn set_up(t: &mut MmioTransport, size: u32, desc: u64, avail: u64, used: u64) {
            write(t, REG_STATUS, 0, 4);
            write(
                t,
                REG_STATUS,
                u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER),
                4,
            );
            write(t, REG_DRIVER_FEATURES_SEL, 1, 4);
            write(t, REG_DRIVER_FEATURES, 1, 4);
            write(t, REG_DRIVER_FEATURES_SEL, 0, 4);
            write(t, REG_DRIVER_FEATURES, 0xffff_ffff, 4);
            write(t, REG_STATUS, 0xb, 4);
            write(t, REG_QUEUE_SEL, 0, 4);
            write(t, REG_QUEUE_NUM, u64::from(size), 4);
            write(t, REG_QUEUE_DESC_LOW, desc, 4);
            write(t, REG_QUEUE_DRIVER_LOW, avail, 4);
            write(t, REG_QUEUE_DEVICE_LOW, used, 4);
            write(t, REG_QUEUE_READY, 1, 4);
            write(t, REG_STATUS, 0xf, 4);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn random_mmio_accesses_never_panic_the_transport_or_grow_the_disk(
                ops in prop::collection::vec(op(), 1..48),
                seed in any::<u64>(),
            ) {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let disk = TempDisk(std::env::temp_dir().join(format!(
                    "vpod-mmio-prop-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                )));
                let contents: Vec<u8> = (0..DISK_FILE_LEN).map(|i| (i % 251) as u8).collect();
                std::fs::write(&disk.0, &contents).expect("temp disk");
                let device = BlockDevice::open(&DiskConfig {
                    source: DiskSource::Path(disk.0.clone()),
                    read_only: false,
                    serial: b"prop".to_vec(),
                })
                .expect("block device");

                // Guest RAM around a hole, full of garbage the handler may take for rings.
                let memory = GuestMemoryMmap::<()>::from_ranges(&[
                    (GuestAddress(0), 0x8000),
                    (GuestAddress(0x1_0000), 0x8000),
                ])
                .expect("memory");
                let mut state = seed | 1;
                let garbage: Vec<u8> = (0..0x8000)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                memory.write_slice(&garbage, GuestAddress(0)).expect("fill");
                memory.write_slice(&garbage, GuestAddress(0x1_0000)).expect("fill");

                let interrupt = Arc::new(MmioInterrupt::new(
                    EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
                ));
                let mut t = MmioTransport::new(Box::new(device), Arc::new(memory), interrupt)
                    .expect("transport");
                for op in ops {
                    match op {
                        Op::Read(offset, size) => {
                            let mut data = [0u8; 8];
                            t.read(offset, &mut data[..size]);
                        }
                        Op::Write(offset, size, value) => write(&mut t, offset, value, size),
                        Op::Process(queue) => t.process_queue(queue),
                        Op::SetUp(size, desc, avail, used) => {
                            set_up(&mut t, size, desc, avail, used)
                        }
                    }
                    // The status never claims a running device that is not, and back.
                    let status = read32(&mut t, REG_STATUS);
                    prop_assert!(!t.activated || status & STATUS_DRIVER_OK != 0);
                }
                drop(t);
                let after = std::fs::read(&disk.0).expect("read disk");
                prop_assert_eq!(after.len(), DISK_FILE_LEN);
                prop_assert!(after[8 * 512..] == contents[8 * 512..]);
            }
        }
    }
}
