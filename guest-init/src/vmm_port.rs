//! The I/O ports through which the guest talks to vpod-vmm without any device driver: one
//! write marks "init reached" (the boot timer, as Firecracker times boot), another carries
//! the command's exit status before the guest reboots, a third the guest pages that hold
//! init's binary and stay in place.

/// The numbers are the VMM's, from the one definition both sides build with.
pub use vpod_proto::vmm::port::{
    BOOT_MARK, BOOT_TIMER_PORT, EXIT_STATUS_PORT, MAX_STAYING_RUNS, PORT_COUNT, STAYING_PAGES_PORT,
};

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
    /// Runs (first guest frame, count) of pages that stay in place; runs that do not fit
    /// the ABI's 32-bit words, and those past [`MAX_STAYING_RUNS`], are left out.
    fn staying_pages(&mut self, runs: &[(u64, u64)]);
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

    fn outl(port: u16, value: u32) {
        // SAFETY: `open` granted access to these ports; `out` writes four bytes to an I/O
        // port and has no effect on memory or the stack.
        unsafe {
            std::arch::asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags));
        }
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

    fn staying_pages(&mut self, runs: &[(u64, u64)]) {
        for (first, count) in staying_words(runs) {
            Self::outl(STAYING_PAGES_PORT, first);
            Self::outl(STAYING_PAGES_PORT, count);
        }
    }
}

/// The pairs of 32-bit words [`VmmSignals::staying_pages`] writes for `runs`.
pub fn staying_words(runs: &[(u64, u64)]) -> Vec<(u32, u32)> {
    runs.iter()
        .filter_map(|&(first, count)| {
            Some((u32::try_from(first).ok()?, u32::try_from(count).ok()?))
        })
        .filter(|&(_, count)| count > 0)
        .take(MAX_STAYING_RUNS)
        .collect()
}

/// When the ports cannot be opened (not PID 1, or a kernel without ioperm), init goes on
/// without telling the VMM: the boot is still correct, only unmeasured.
pub struct NoPorts;

impl VmmSignals for NoPorts {
    fn init_reached(&mut self) {}
    fn exit_status(&mut self, _status: u8) {}
    fn staying_pages(&mut self, _runs: &[(u64, u64)]) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_that_do_not_fit_a_word_are_left_out() {
        let runs = [
            (5, 3),
            (1 << 32, 1),
            (7, 0),
            (9, 1 << 32),
            (u64::from(u32::MAX), 2),
        ];
        assert_eq!(staying_words(&runs), [(5, 3), (u32::MAX, 2)]);
        let many: Vec<(u64, u64)> = (0..MAX_STAYING_RUNS as u64 + 10).map(|i| (i, 1)).collect();
        assert_eq!(staying_words(&many).len(), MAX_STAYING_RUNS);
    }
}
