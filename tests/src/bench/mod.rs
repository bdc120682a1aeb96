//! `cargo xtask bench`: sg-agent measured against its floor, a peer XDP
//! program, nftables and iptables. A benchmark, never a test: it asserts
//! that each measurement took the path it claims, never a timing.

pub mod e2e;
pub mod kernel;
pub mod memory;
pub mod policies;
pub mod profile;
pub mod reload;
pub mod report;
pub mod stats;
