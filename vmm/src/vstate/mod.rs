//! KVM-facing state: the VM's memory and its vCPU threads.

pub mod boot_share;
pub mod file_pages;
pub mod memory;
pub mod vcpu;
