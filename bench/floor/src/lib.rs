//! Library half of the floor crate, so it can be a build dependency of the
//! bench (cargo then rebuilds the floor when its source changes).
#![no_std]
