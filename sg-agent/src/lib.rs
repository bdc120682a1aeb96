//! sg-agent: AWS EC2 security groups on any Linux host.
//!
//! The pipeline, one module per step: [`config`] (the rules file, parsed and
//! validated) -> [`policy`] (each instance's effective rules, compiled to
//! flat tables and encoded as map changes) -> [`dataplane`] (eBPF objects,
//! maps, attachments) -> [`agent`] (start, reload, stop), with [`source`]
//! telling it when the rules changed, and [`observe`] telling the user what
//! it does (status, rule hits, flow logs, metrics). [`cli`] holds the command line, one
//! file per verb; [`ec2`] is EC2's API beside it, which changes the rules
//! file and never the data plane. `policy::reference` is the plain-Rust oracle every fast
//! path is tested against.

#[cfg(feature = "daemon")]
pub mod agent;
#[cfg(feature = "daemon")]
pub mod cli;
pub mod config;
pub mod dataplane;
#[cfg(feature = "api")]
pub mod ec2;
pub mod errors;
pub mod import;
pub mod libvirt;
pub mod observe;
pub mod policy;
#[cfg(feature = "daemon")]
pub mod source;
