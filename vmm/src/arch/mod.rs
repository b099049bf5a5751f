//! Architecture-specific parts of the VM: memory layout, boot protocols, vCPU set-up.
//!
//! Only x86_64 exists today; everything that knows about a particular architecture lives
//! below this module so the rest of the VMM stays portable.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
