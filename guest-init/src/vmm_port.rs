//! The two I/O ports through which the guest talks to vpod-vmm without any device driver:
//! one write marks "init reached" (the boot timer, as Firecracker times boot), another
//! carries the command's exit status before the guest reboots.

/// The numbers are the VMM's, from the one definition both sides build with.
pub use vpod_proto::vmm::port::{BOOT_MARK, BOOT_TIMER_PORT, EXIT_STATUS_PORT, PORT_COUNT};

/// Why the ports could not be used.
#[derive(Debug, thiserror::Error)]
pub enum VmmPortError {
    #[error("the kernel refused access to the VMM's I/O ports")]
    Ioperm(#[source] std::io::Error),
}

/// Where init's signals to the VMM go; a recorder stands in for the ports in tests.
pub trait VmmSignals {
    fn init_reached(&mut self);
    fn exit_status(&mut self, status: u8);
}

/// The real ports. Needs CAP_SYS_RAWIO (PID 1 has it) and CONFIG_X86_IOPL_IOPERM.
pub struct IoPorts(());

impl IoPorts {
    pub fn open() -> Result<Self, VmmPortError> {
        // SAFETY: ioperm only changes this process's I/O permission bitmap for two ports
        // the VMM owns; no memory is touched.
        let rc = unsafe {
            libc::ioperm(
                libc::c_ulong::from(BOOT_TIMER_PORT),
                libc::c_ulong::from(PORT_COUNT),
                1,
            )
        };
        if rc != 0 {
            return Err(VmmPortError::Ioperm(std::io::Error::last_os_error()));
        }
        Ok(IoPorts(()))
    }

    fn outb(port: u16, value: u8) {
        // SAFETY: `open` granted access to these ports; `out` writes one byte to an I/O
        // port and has no effect on memory or the stack.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
        }
    }
}

impl VmmSignals for IoPorts {
    fn init_reached(&mut self) {
        Self::outb(BOOT_TIMER_PORT, BOOT_MARK);
    }

    fn exit_status(&mut self, status: u8) {
        Self::outb(EXIT_STATUS_PORT, status);
    }
}

/// When the ports cannot be opened (not PID 1, or a kernel without ioperm), init goes on
/// without telling the VMM: the boot is still correct, only unmeasured.
pub struct NoPorts;

impl VmmSignals for NoPorts {
    fn init_reached(&mut self) {}
    fn exit_status(&mut self, _status: u8) {}
}
