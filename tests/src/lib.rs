//! Test support: crafted frames, network-namespace topologies, traffic
//! probes, real QEMU VMs. Used by the privileged tests under tests/tests and by the demo.

pub mod agent;
pub mod attached;
pub mod aws;
pub mod chaos;
pub mod contained;
pub mod etcd;
pub mod frames;
pub mod guest;
pub mod kernel;
pub mod lab;
pub mod libvirt;
pub mod package;
pub mod probe;
pub mod seed;
pub mod vm;
