//! The benchmark floor: an XDP program that passes everything, built by
//! build.rs from `bench/floor`.

/// The floor object.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sg-floor"));
pub const PROGRAM: &str = "sg_floor";
