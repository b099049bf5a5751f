//! The tap behind a virtio-net device: opened by name through `/dev/net/tun`, or adopted
//! from a descriptor the launcher opened (perhaps inside another network namespace), in
//! both cases as `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` with a 12-byte `virtio_net_hdr_v1`,
//! non-blocking. Its offloads follow what the guest's driver accepted.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::handler::NetBackend;
use super::{
    NET_HDR_LEN, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};

/// Errors opening or setting up a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot attach to tap {0}")]
    Attach(String, #[source] io::Error),
    #[error("cannot use inherited descriptor {0} as a tap")]
    Inherited(RawFd, #[source] io::Error),
    #[error("descriptor {0} is not a tap opened with IFF_TAP, IFF_NO_PI and IFF_VNET_HDR")]
    NotAVnetTap(RawFd),
    #[error("cannot set the tap's virtio-net header size")]
    HeaderSize(#[source] io::Error),
    #[error("cannot make the tap non-blocking")]
    NonBlocking(#[source] io::Error),
    #[error("cannot set the tap's offloads")]
    Offload(#[source] io::Error),
}

const TAP_FLAGS: libc::c_short = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;

/// `struct ifreq` as the tun ioctls use it: the name, then the flags in the union.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

impl InterfaceRequest {
    fn new() -> Self {
        InterfaceRequest {
            name: [0; libc::IFNAMSIZ],
            flags: 0,
            _rest: [0; 22],
        }
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(0);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

/// A tap ready for a virtio-net device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// Runs ioctl `request` with a pointer to `arg`.
fn ioctl_with<T>(fd: BorrowedFd<'_>, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: every request passed here reads or writes exactly one `T` (an ifreq for the
    // TUN*IFF requests, a c_int for TUNSETVNETHDRSZ) through the pointer, which is valid and
    // exclusive for the call; the result is checked.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Tap {
    /// Opens (creating it if needed, which takes CAP_NET_ADMIN) the tap `name` in this
    /// process's network namespace.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let fd = OwnedFd::from(file);
        let mut request = InterfaceRequest::new();
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        request.flags = TAP_FLAGS;
        ioctl_with(fd.as_fd(), libc::TUNSETIFF, &mut request)
            .map_err(|e| TapError::Attach(name.to_string(), e))?;
        Self::configure(fd, request.name())
    }

    /// Adopts a copy of descriptor `fd`, inherited from the launcher; the original stays
    /// open.
    pub fn from_inherited(fd: RawFd) -> Result<Self, TapError> {
        // SAFETY: F_DUPFD_CLOEXEC touches no memory; a descriptor that is not open makes it
        // fail, which is checked.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if copy < 0 {
            return Err(TapError::Inherited(fd, io::Error::last_os_error()));
        }
        // SAFETY: `copy` is a fresh descriptor that nothing else owns.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        let mut request = InterfaceRequest::new();
        ioctl_with(copy.as_fd(), libc::TUNGETIFF, &mut request)
            .map_err(|e| TapError::Inherited(fd, e))?;
        if request.flags & TAP_FLAGS != TAP_FLAGS || request.flags & libc::IFF_TUN as i16 != 0 {
            return Err(TapError::NotAVnetTap(fd));
        }
        Self::configure(copy, request.name())
    }

    fn configure(fd: OwnedFd, name: String) -> Result<Self, TapError> {
        let mut size = NET_HDR_LEN as libc::c_int;
        ioctl_with(fd.as_fd(), libc::TUNSETVNETHDRSZ, &mut size).map_err(TapError::HeaderSize)?;
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| TapError::NonBlocking(e.into()))?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)
            .map_err(|e| TapError::NonBlocking(e.into()))?;
        let tap = Tap { fd, name };
        // No offloads until the guest's driver says what it takes.
        tap.set_offloads(0)?;
        Ok(tap)
    }

    /// The interface's name (in the namespace it was created in).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the offloads the guest accepts on receive (`features` are the driver's acked
    /// virtio-net features): checksum, TSO and UFO frames reach the guest only if it takes
    /// them. A kernel without UFO on taps gets the rest. Returns the `TUN_F_*` flags set.
    pub fn set_offloads(&self, features: u64) -> Result<libc::c_uint, TapError> {
        let mut flags: libc::c_uint = 0;
        if features & VIRTIO_NET_F_GUEST_CSUM != 0 {
            flags |= libc::TUN_F_CSUM;
            if features & VIRTIO_NET_F_GUEST_TSO4 != 0 {
                flags |= libc::TUN_F_TSO4;
            }
            if features & VIRTIO_NET_F_GUEST_TSO6 != 0 {
                flags |= libc::TUN_F_TSO6;
            }
            if features & VIRTIO_NET_F_GUEST_UFO != 0 {
                flags |= libc::TUN_F_UFO;
            }
        }
        match self.set_offload_flags(flags) {
            Err(_) if flags & libc::TUN_F_UFO != 0 => {
                let without_ufo = flags & !libc::TUN_F_UFO;
                self.set_offload_flags(without_ufo)
                    .map(|()| without_ufo)
                    .map_err(TapError::Offload)
            }
            result => result.map(|()| flags).map_err(TapError::Offload),
        }
    }

    fn set_offload_flags(&self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its flags by value and touches no memory; the result is
        // checked.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(&self.fd, buf)?)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        // A tap takes a frame whole or not at all.
        rustix::io::write(&self.fd, frame)?;
        Ok(())
    }
}
