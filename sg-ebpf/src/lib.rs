//! Library half of the eBPF crate, so it can be a build dependency of sg-agent.
#![no_std]
