//! x86_64: memory layout, CPUID, MSRs and registers, the MP table and the boot structures.

pub mod boot;
pub mod cpuid;
pub mod kernel;
pub mod kernel_text;
pub mod layout;
pub mod mptable;
pub mod regs;

pub use regs::BootProtocol;
