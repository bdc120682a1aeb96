//! sg-agent: AWS EC2 security groups on any Linux host.
//!
//! The pipeline, one module per step: [`config`] (the rules file, parsed and
//! validated) -> [`resolve`] (each instance's effective rules) ->
//! [`compile`] (the flat tables the data plane reads) -> `loader` (eBPF
//! objects, maps, attachments) -> `agent` (watch and reload).
//! [`reference`] is the plain-Rust oracle every fast path is tested against.

pub mod agent;
pub mod check;
pub mod cli;
pub mod compile;
pub mod config;
pub mod dataplane;
pub mod netns;
pub mod reference;
pub mod resolve;
pub mod softmaps;
pub mod summary;
