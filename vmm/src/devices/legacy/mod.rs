//! The few PC devices a Linux guest without ACPI or PCI needs: COM1, the i8042 controller
//! (only for reset) and the boot-progress ports.

pub mod boot_port;
pub mod i8042;
pub mod serial;

pub use boot_port::BootPort;
pub use i8042::I8042;
pub use serial::{ConsoleSink, SerialDevice};

/// COM1's I/O ports.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
/// The i8042 data port (0x60) up to its command/status port (0x64).
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
/// The boot-progress ports: 0x3f0 "init reached", 0x3f1 the command's status.
pub const BOOT_PORT_BASE: u64 = boot_port::BOOT_TIMER_PORT as u64;
pub const BOOT_PORT_LEN: u64 = boot_port::PORT_COUNT as u64;
