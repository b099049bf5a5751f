//! What the control socket can do to a VM: the domain functions behind each request, each
//! answering with its typed reply from [`vpod_proto::vmm`].

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vpod_proto::vmm::{
    AttachDisk, AttachDiskReply, BalloonReply, BlockStats, BootTimeReply, DetachDiskReply,
    DiskSource, MetricsReply, NetStats, Reply, Request, StateReply, StopReply, VmState, VsockStats,
};

use crate::config::{self, DiskConfig, DISK_SERIAL_LEN};
use crate::devices::virtio::balloon::handler::{BalloonDropReason, BalloonMetrics};
use crate::devices::virtio::balloon::{BalloonDevice, BALLOON_PAGE_SIZE};
use crate::devices::virtio::block::{BlockDevice, BlockError};
use crate::devices::virtio::net::{NetDropReason, NetMetrics};
use crate::devices::virtio::vsock::metrics::DropReason;
use crate::devices::virtio::vsock::VsockMetrics;
use crate::devices::virtio::MmioTransport;
use crate::lifecycle::{since_process_start, GuestEvents, StopReason};

/// Errors of control requests; each message goes back to the client as it is.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("there is no disk slot {0} (the VM has {1})")]
    NoSuchSlot(u32, usize),
    #[error("no attached slot has the serial {0:?}")]
    NoSuchSerial(String),
    #[error("every disk slot is in use")]
    NoFreeSlot,
    #[error("detach_disk needs a slot or a serial")]
    NoSlotNamed,
    #[error("the serial is longer than {DISK_SERIAL_LEN} bytes")]
    SerialTooLong,
    #[error("no descriptor {0} was passed on this connection ({1} unused)")]
    NoSuchDescriptor(u32, usize),
    #[error("slot {0}: {1}")]
    Slot(u32, String),
    #[error("the VM has no balloon (start it with --balloon)")]
    NoBalloon,
    #[error("a balloon target of {0} MiB is more than the VM's {1} MiB")]
    BalloonTooLarge(u64, u64),
}

/// Descriptors a client passed over the control socket (SCM_RIGHTS) that no request has used
/// yet, oldest first; closed with the connection.
#[derive(Debug, Default)]
pub struct PassedFds(VecDeque<OwnedFd>);

impl PassedFds {
    /// Most descriptors a connection may hold unused; more are closed on arrival.
    pub const MAX: usize = 8;

    pub fn push(&mut self, fd: OwnedFd) {
        if self.0.len() < Self::MAX {
            self.0.push_back(fd);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes the `index`-th unused descriptor.
    fn take(&mut self, index: u32) -> Result<OwnedFd, ApiError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.0.remove(i))
            .ok_or(ApiError::NoSuchDescriptor(index, self.0.len()))
    }
}

/// What an attach puts in a slot.
enum Image {
    Path(PathBuf),
    Passed(OwnedFd),
}

/// A block device the control socket can see: its transport (for config-change interrupts).
pub struct BlockHandle {
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The slot index for `--disk-slots` devices; `None` for `--disk` ones.
    pub slot: Option<u32>,
}

/// The VM as the control socket sees it.
pub struct VmControl {
    pub events: Arc<GuestEvents>,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub blocks: Vec<BlockHandle>,
    /// The balloon's transport, when the VM has one.
    pub balloon: Option<Arc<Mutex<MmioTransport>>>,
    pub vsock: Option<Arc<VsockMetrics>>,
    pub nets: Vec<Arc<NetMetrics>>,
    /// When a graceful stop turns forced.
    pub stop_deadline: Option<Instant>,
}

fn with_block<T>(handle: &BlockHandle, f: impl FnOnce(&mut BlockDevice) -> T) -> Option<(T, bool)> {
    let mut transport = handle.transport.lock().unwrap_or_else(|e| e.into_inner());
    let device = transport
        .device_mut()
        .as_any_mut()
        .downcast_mut::<BlockDevice>()?;
    let before = device.status();
    let result = f(device);
    let changed = device.status() != before;
    if changed {
        // The interrupt only hurries the driver; a lost one is seen at its next config read.
        let _ = transport.notify_config_changed();
    }
    Some((result, changed))
}

impl VmControl {
    /// Runs one request, which may use descriptors its connection passed; the reply or the
    /// error sentence.
    pub fn handle(&mut self, request: Request, fds: &mut PassedFds) -> Result<Reply, ApiError> {
        Ok(match request {
            Request::State => Reply::State(self.state()),
            Request::BootTime => Reply::BootTime(BootTimeReply {
                init_ms: self.events.init_reached().map(|d| d.as_secs_f64() * 1000.0),
            }),
            Request::Metrics => Reply::Metrics(self.metrics()),
            Request::AttachDisk(attach) => Reply::AttachDisk(self.attach_disk(attach, fds)?),
            Request::DetachDisk { slot, serial } => {
                Reply::DetachDisk(self.detach_disk(slot, serial)?)
            }
            Request::Balloon => Reply::Balloon(self.balloon(None)?),
            Request::SetBalloon { target_mib } => Reply::Balloon(self.balloon(Some(target_mib))?),
            Request::Stop { timeout_ms } => {
                Reply::Stop(self.stop(Duration::from_millis(timeout_ms)))
            }
        })
    }

    fn stopping(&self) -> bool {
        self.stop_deadline.is_some() || self.events.stop_reason().is_some()
    }

    fn state(&self) -> StateReply {
        StateReply {
            state: if self.stopping() {
                VmState::Stopping
            } else {
                VmState::Running
            },
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            uptime_ms: since_process_start().as_millis() as u64,
        }
    }

    fn metrics(&self) -> MetricsReply {
        let vsock = self.vsock.as_ref().map(|m| {
            let get = VsockMetrics::get;
            VsockStats {
                host_connections: get(&m.host_connections),
                guest_connections: get(&m.guest_connections),
                connections_active: get(&m.connections_active),
                connect_timeouts: get(&m.connect_timeouts),
                connect_refused: get(&m.connect_refused),
                bytes_to_guest: get(&m.bytes_to_guest),
                bytes_to_host: get(&m.bytes_to_host),
                packets_from_guest: get(&m.packets_from_guest),
                packets_to_guest: get(&m.packets_to_guest),
                dropped_total: m.dropped_total(),
                dropped: DropReason::ALL
                    .iter()
                    .map(|&r| (r.name().to_string(), m.dropped(r)))
                    .collect(),
            }
        });
        let block = self
            .blocks
            .iter()
            .enumerate()
            .filter_map(|(index, handle)| {
                let (status, _) = with_block(handle, |d| d.status())?;
                let [requests, read_bytes, write_bytes, errors] = status.metrics;
                Some(BlockStats {
                    index: index as u32,
                    slot: handle.slot,
                    attached: status.attached,
                    serial: status.serial,
                    read_only: status.read_only,
                    capacity_bytes: status.capacity_bytes,
                    requests,
                    read_bytes,
                    write_bytes,
                    errors,
                })
            })
            .collect();
        let net = self
            .nets
            .iter()
            .enumerate()
            .map(|(index, m)| {
                let get = NetMetrics::get;
                NetStats {
                    index: index as u32,
                    tx_frames: get(&m.tx_frames),
                    tx_bytes: get(&m.tx_bytes),
                    rx_frames: get(&m.rx_frames),
                    rx_bytes: get(&m.rx_bytes),
                    rx_no_buffers: get(&m.rx_no_buffers),
                    dropped_total: m.dropped_total(),
                    dropped: NetDropReason::ALL
                        .iter()
                        .map(|&r| (r.name().to_string(), m.dropped(r)))
                        .collect(),
                }
            })
            .collect();
        MetricsReply { vsock, block, net }
    }

    fn slots(&self) -> impl Iterator<Item = (u32, &BlockHandle)> {
        self.blocks
            .iter()
            .filter_map(|h| h.slot.map(|slot| (slot, h)))
    }

    fn slot(&self, slot: u32) -> Result<&BlockHandle, ApiError> {
        self.slots()
            .find(|(s, _)| *s == slot)
            .map(|(_, h)| h)
            .ok_or(ApiError::NoSuchSlot(slot, self.slots().count()))
    }

    fn attach_disk(
        &mut self,
        attach: AttachDisk,
        fds: &mut PassedFds,
    ) -> Result<AttachDiskReply, ApiError> {
        let AttachDisk {
            slot,
            source,
            read_only,
            serial,
        } = attach;
        if serial.len() > DISK_SERIAL_LEN {
            return Err(ApiError::SerialTooLong);
        }
        // A passed descriptor is used up (closed on failure) whether or not the rest works.
        let image = match source {
            DiskSource::Path(path) => Image::Path(path),
            DiskSource::Fd(index) => Image::Passed(fds.take(index)?),
        };
        let slot = match slot {
            Some(slot) => slot,
            None => self
                .slots()
                .find(|(_, h)| {
                    with_block(h, |d| !d.status().attached).is_some_and(|(free, _)| free)
                })
                .map(|(slot, _)| slot)
                .ok_or(ApiError::NoFreeSlot)?,
        };
        let handle = self.slot(slot)?;
        let attach = |device: &mut BlockDevice| match image {
            Image::Path(path) => device.attach(&DiskConfig {
                source: config::DiskSource::Path(path),
                read_only,
                serial: serial.into_bytes(),
            }),
            Image::Passed(fd) => BlockDevice::open_descriptor(fd, read_only)
                .and_then(|file| device.attach_image(file, read_only, serial.as_bytes())),
        };
        let (result, _) = with_block(handle, |d| attach(d).map(|()| d.status()))
            .ok_or(ApiError::NoSuchSlot(slot, 0))?;
        let status = result.map_err(|e| slot_error(slot, e))?;
        Ok(AttachDiskReply {
            ok: true,
            slot,
            capacity_bytes: status.capacity_bytes,
            serial: status.serial,
            read_only: status.read_only,
        })
    }

    fn detach_disk(
        &mut self,
        slot: Option<u32>,
        serial: Option<String>,
    ) -> Result<DetachDiskReply, ApiError> {
        let slot = match (slot, serial) {
            (Some(slot), _) => slot,
            (None, Some(serial)) => self
                .slots()
                .find(|(_, h)| {
                    with_block(h, |d| {
                        let status = d.status();
                        status.attached && status.serial == serial
                    })
                    .is_some_and(|(found, _)| found)
                })
                .map(|(slot, _)| slot)
                .ok_or(ApiError::NoSuchSerial(serial))?,
            (None, None) => return Err(ApiError::NoSlotNamed),
        };
        let handle = self.slot(slot)?;
        let (result, _) =
            with_block(handle, |d| d.detach()).ok_or(ApiError::NoSuchSlot(slot, 0))?;
        result.map_err(|e| slot_error(slot, e))?;
        Ok(DetachDiskReply { ok: true, slot })
    }

    /// The balloon's reply, after setting its target when `target_mib` is given (which tells
    /// the driver) or else asking the guest for fresh stats.
    fn balloon(&mut self, target_mib: Option<u64>) -> Result<BalloonReply, ApiError> {
        let transport = self.balloon.as_ref().ok_or(ApiError::NoBalloon)?;
        if let Some(target) = target_mib.filter(|&t| t > self.memory_mib) {
            return Err(ApiError::BalloonTooLarge(target, self.memory_mib));
        }
        let mut transport = transport.lock().unwrap_or_else(|e| e.into_inner());
        let device = transport
            .device_mut()
            .as_any_mut()
            .downcast_mut::<BalloonDevice>()
            .ok_or(ApiError::NoBalloon)?;
        let changed = match target_mib {
            Some(target) => device.set_target_bytes(target << 20),
            None => {
                device.request_stats();
                false
            }
        };
        let status = device.status();
        let metrics = device.metrics().clone();
        if changed {
            // The interrupt only hurries the driver; a lost one is seen at its next config read.
            let _ = transport.notify_config_changed();
        }
        let get = BalloonMetrics::get;
        let mib = |pages: u32| (u64::from(pages) * BALLOON_PAGE_SIZE) >> 20;
        Ok(BalloonReply {
            target_mib: mib(status.target_pages),
            actual_mib: mib(status.actual_pages),
            active: status.active,
            free_page_reporting: status.free_page_reporting,
            reported_ranges: get(&metrics.reported_ranges),
            reported_bytes: get(&metrics.reported_bytes),
            inflated_pages: get(&metrics.inflated_pages),
            deflated_pages: get(&metrics.deflated_pages),
            stats: status
                .stats
                .iter()
                .map(|&(name, value)| (name.to_string(), value))
                .collect(),
            stats_age_ms: status.stats_age.map(|age| age.as_millis() as u64),
            dropped_total: metrics.dropped_total(),
            dropped: BalloonDropReason::ALL
                .iter()
                .map(|&r| (r.name().to_string(), metrics.dropped(r)))
                .collect(),
        })
    }

    /// Stops the VM: at once with a zero timeout, else when the guest ends by itself or the
    /// timeout passes, whichever comes first.
    fn stop(&mut self, timeout: Duration) -> StopReply {
        if timeout.is_zero() {
            self.force_stop();
        } else if self.stop_deadline.is_none() {
            self.stop_deadline = Some(Instant::now() + timeout);
        }
        StopReply {
            ok: true,
            state: VmState::Stopping,
        }
    }

    fn force_stop(&mut self) {
        self.events.request_stop(StopReason::Signal(libc::SIGTERM));
    }

    /// Forces a graceful stop whose time is up; the deadline is then spent.
    pub fn expire(&mut self, now: Instant) {
        if self.stop_deadline.is_some_and(|d| d <= now) {
            self.stop_deadline = None;
            self.force_stop();
        }
    }
}

fn slot_error(slot: u32, error: BlockError) -> ApiError {
    let mut message = error.to_string();
    if let Some(source) = std::error::Error::source(&error) {
        message = format!("{message}: {source}");
    }
    ApiError::Slot(slot, message)
}
