//! The guest port ABI: I/O ports through which the guest's init talks to vpod-vmm without
//! any device driver. One write marks "init reached" (the boot timer, as Firecracker times
//! boot); another carries the guest command's exit status before the guest reboots; a third
//! takes the guest pages that hold the files init unpacked from its initrd and that stay
//! where they are (see [`STAYING_PAGES_PORT`]).

/// A write of [`BOOT_MARK`] here marks the moment init started.
pub const BOOT_TIMER_PORT: u16 = 0x3f0;
/// The value written to [`BOOT_TIMER_PORT`]; other values are ignored.
pub const BOOT_MARK: u8 = 123;
/// One byte written here is the guest command's exit status, kept until the VMM exits (the
/// last write counts) and used as the VMM's exit code.
pub const EXIT_STATUS_PORT: u16 = 0x3f1;
/// 32-bit writes here (`out dx, eax`) are pairs: a guest page frame number, then a count of
/// frames from it, of pages that hold the files init unpacked from its initrd, locked in
/// memory, so never freed, moved or handed to a device while the VM lives. The VMM may then
/// map the initrd file over those pages even where a vhost-user backend maps guest RAM too
/// (`VmConfig.initrd_pages_stay`); it checks each page's bytes against the file first, and
/// keeps at most [`MAX_STAYING_RUNS`] pairs.
pub const STAYING_PAGES_PORT: u16 = 0x3f4;
/// The most pairs the VMM keeps from [`STAYING_PAGES_PORT`].
pub const MAX_STAYING_RUNS: usize = 4096;
/// How many ports the ABI spans, from [`BOOT_TIMER_PORT`].
pub const PORT_COUNT: u16 = 8;

// The status and page ports lie inside the span the VMM claims.
const _: () =
    assert!(EXIT_STATUS_PORT >= BOOT_TIMER_PORT && EXIT_STATUS_PORT < BOOT_TIMER_PORT + PORT_COUNT);
const _: () = assert!(
    STAYING_PAGES_PORT.is_multiple_of(4) && STAYING_PAGES_PORT + 4 <= BOOT_TIMER_PORT + PORT_COUNT
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_abi_keeps_its_numbers() {
        // Guests built earlier write these; changing one breaks them.
        assert_eq!(
            (BOOT_TIMER_PORT, BOOT_MARK, EXIT_STATUS_PORT),
            (0x3f0, 123, 0x3f1)
        );
        assert_eq!((STAYING_PAGES_PORT, PORT_COUNT), (0x3f4, 8));
    }
}
