//! The virtio-balloon device: features, the configuration space (the runtime's target and
//! the driver's actual size), activation, and what the control socket reads and sets.

use std::sync::Arc;
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::handler::{BalloonMetrics, BalloonQueueHandler, GuestRelease, QueueLayout};
use super::{
    BALLOON_PAGE_SIZE, STAT_NAMES, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::config::BalloonConfig;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, QUEUE_MAX_SIZE, TYPE_BALLOON,
    VIRTIO_F_VERSION_1,
};

/// Inflate, deflate, stats, free page reporting: the most queues a driver sets up.
const QUEUE_SIZES: [u16; 4] = [QUEUE_MAX_SIZE; 4];
/// num_pages, actual, free_page_hint_cmd_id, poison_val (all le32).
const CONFIG_LEN: usize = 16;
const ACTUAL_OFFSET: usize = 4;

pub(super) type ActiveHandler = BalloonQueueHandler<Arc<dyn VirtioInterrupt>, GuestRelease>;

pub struct BalloonDevice {
    avail_features: u64,
    acked_features: u64,
    /// The target the runtime set, in 4 KiB pages.
    num_pages: u32,
    /// What the driver says the balloon holds, in 4 KiB pages.
    actual: u32,
    pub(super) handler: Option<ActiveHandler>,
    pub(super) memory: Option<Arc<GuestMemoryMmap>>,
    metrics: Arc<BalloonMetrics>,
}

/// What the balloon reports about itself to the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalloonStatus {
    pub target_pages: u32,
    pub actual_pages: u32,
    pub free_page_reporting: bool,
    /// Whether the driver is running (the device is active).
    pub active: bool,
    /// The guest's last stats, by name, and how old they are.
    pub stats: Vec<(&'static str, u64)>,
    pub stats_age: Option<Duration>,
}

impl BalloonDevice {
    pub fn new(config: &BalloonConfig) -> Self {
        let mut avail_features = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ;
        if config.deflate_on_oom {
            avail_features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if config.free_page_reporting {
            avail_features |= VIRTIO_BALLOON_F_REPORTING;
        }
        BalloonDevice {
            avail_features,
            acked_features: 0,
            num_pages: 0,
            actual: 0,
            handler: None,
            memory: None,
            metrics: Arc::default(),
        }
    }

    pub fn metrics(&self) -> &Arc<BalloonMetrics> {
        &self.metrics
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..4].copy_from_slice(&self.num_pages.to_le_bytes());
        config[ACTUAL_OFFSET..ACTUAL_OFFSET + 4].copy_from_slice(&self.actual.to_le_bytes());
        config
    }

    /// Sets the target to `bytes` (rounded down to whole pages, at most what fits the
    /// 32-bit page count). Returns whether it changed; the caller then tells the driver.
    pub fn set_target_bytes(&mut self, bytes: u64) -> bool {
        let pages = u32::try_from(bytes / BALLOON_PAGE_SIZE).unwrap_or(u32::MAX);
        let changed = pages != self.num_pages;
        self.num_pages = pages;
        changed
    }

    /// Asks the driver for fresh stats (it refills the buffer the device holds). The
    /// figures arrive a moment later; the status keeps the last ones until then.
    pub fn request_stats(&mut self) -> bool {
        match (self.handler.as_mut(), self.memory.as_ref()) {
            (Some(handler), Some(memory)) => handler.request_stats(memory),
            _ => false,
        }
    }

    pub fn status(&self) -> BalloonStatus {
        let (stats, stats_age) = match &self.handler {
            Some(handler) => (
                STAT_NAMES
                    .iter()
                    .zip(handler.stats.values.iter())
                    .filter_map(|(&name, value)| Some((name, (*value)?)))
                    .collect(),
                handler.stats.at.map(|at| at.elapsed()),
            ),
            None => (Vec::new(), None),
        };
        BalloonStatus {
            target_pages: self.num_pages,
            actual_pages: self.actual,
            free_page_reporting: self.acked_features & VIRTIO_BALLOON_F_REPORTING != 0,
            active: self.handler.is_some(),
            stats,
            stats_age,
        }
    }
}

impl VirtioDevice for BalloonDevice {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_count(&self) -> usize {
        QueueLayout::for_features(self.acked_features).count
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` is the driver's to write; a write that is not exactly it is ignored.
        if offset == ACTUAL_OFFSET as u64 && data.len() == 4 {
            self.actual = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        }
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if self.handler.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let layout = QueueLayout::for_features(self.acked_features);
        let count = queues.len();
        let mut handler = BalloonQueueHandler::new(queues, layout, interrupt, GuestRelease)
            .ok_or(ActivateError::QueueCount(count, layout.count))?;
        handler.metrics = self.metrics.clone();
        // Linux primes the stats queue with its first buffer and kicks it while probing,
        // before DRIVER_OK, when the notification finds no active device: take it now.
        if let Some(stats) = layout.stats {
            handler.process_queue(&memory, stats);
        }
        self.handler = Some(handler);
        self.memory = Some(memory);
        Ok(())
    }

    fn reset(&mut self) {
        self.handler = None;
        self.memory = None;
        self.acked_features = 0;
        // The driver starts again from an empty balloon.
        self.actual = 0;
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
