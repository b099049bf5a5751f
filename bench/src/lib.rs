//! Benchmarks that run vpod and its peers interleaved in one run, so that drift on a shared
//! machine hits all of them alike, and report medians and ratios.

pub mod measure;
pub mod report;
pub mod stats;
