//! KVM-facing state: the VM's memory and its vCPU threads.

pub mod memory;
pub mod text_share;
pub mod vcpu;
