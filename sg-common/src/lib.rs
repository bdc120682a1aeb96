//! The contract between sg-agent's kernel and user sides.
//!
//! Everything the eBPF programs read from a map is laid out here as
//! `#[repr(C)]` plain data with explicit padding, and the decisions the kernel
//! takes on those maps (policy classification, connection-tracking state
//! transitions) are written here as pure functions. The eBPF programs call
//! them through thin map adapters; the agent's tests call the very same code
//! through in-memory adapters and compare it with the reference evaluator.
#![no_std]
#![expect(
    clippy::inline_always,
    reason = "the kernel side calls these from eBPF programs, where the verifier needs them inlined"
)]

#[cfg(test)]
extern crate std;

pub mod conntrack;
pub mod counters;
pub mod events;
pub mod flow;
pub mod guard;
pub mod maps;
pub mod nacl;
pub mod parse;
pub mod policy;
#[cfg(not(target_arch = "bpf"))]
pub mod wire_reference;

#[cfg(feature = "user")]
mod pod;
