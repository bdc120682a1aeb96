//! Rules to kernel encoding, pure: no kernel here.
//!
//! [`resolve`] (each instance's effective rules) -> [`compile`] (flat,
//! generation-free tables) -> [`encode`] (the exact map inserts and deletes
//! that swap one policy for another). [`reference`] is the plain-Rust oracle
//! every fast path is tested against; [`softmaps`] holds the maps in memory
//! with the kernel's semantics, so the production reload path runs on the
//! host in tests. [`report`] and [`summary`] describe a policy to people.

pub mod compile;
pub mod encode;
pub mod reference;
pub mod report;
pub mod resolve;
pub mod softmaps;
pub mod summary;
