//! The guest port ABI: two I/O ports through which the guest's init talks to vpod-vmm
//! without any device driver. One write marks "init reached" (the boot timer, as Firecracker
//! times boot); another carries the guest command's exit status before the guest reboots.

/// A write of [`BOOT_MARK`] here marks the moment init started.
pub const BOOT_TIMER_PORT: u16 = 0x3f0;
/// The value written to [`BOOT_TIMER_PORT`]; other values are ignored.
pub const BOOT_MARK: u8 = 123;
/// One byte written here is the guest command's exit status, kept until the VMM exits (the
/// last write counts) and used as the VMM's exit code.
pub const EXIT_STATUS_PORT: u16 = 0x3f1;
/// How many ports the ABI spans, from [`BOOT_TIMER_PORT`].
pub const PORT_COUNT: u16 = 2;

// The status port lies inside the span the VMM claims.
const _: () =
    assert!(EXIT_STATUS_PORT >= BOOT_TIMER_PORT && EXIT_STATUS_PORT < BOOT_TIMER_PORT + PORT_COUNT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_abi_keeps_its_numbers() {
        // Guests built earlier write these; changing one breaks them.
        assert_eq!(
            (BOOT_TIMER_PORT, BOOT_MARK, EXIT_STATUS_PORT, PORT_COUNT),
            (0x3f0, 123, 0x3f1, 2)
        );
    }
}
