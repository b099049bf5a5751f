//! stub
pub mod config;
pub mod exec;
pub mod netns;
pub mod result;
mod rtnl;
