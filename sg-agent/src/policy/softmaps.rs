//! The policy maps in memory, with the kernel's longest-prefix-match
//! semantics, so [`sg_common::policy::classify`] runs on the host unchanged.

use std::collections::HashMap;

use sg_common::flow::addr_octets;
use sg_common::policy::{AddrKeyV4, AddrKeyV6, AddrValue, PolicyMaps, PortKey, PortValue};

use crate::compile::KernelEntries;

/// One LPM trie: entries by (prefix length, masked key bytes).
#[derive(Debug, Default)]
struct Trie<V> {
    entries: HashMap<(u32, Vec<u8>), V>,
}

fn masked(bytes: &[u8], bits: u32) -> Vec<u8> {
    bytes
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            let start = u32::try_from(i).expect("short key") * 8;
            if bits >= start + 8 {
                b
            } else if bits <= start {
                0
            } else {
                b & (0xffu8 << (8 - (bits - start)))
            }
        })
        .collect()
}

impl<V: Copy> Trie<V> {
    fn insert(&mut self, prefix_len: u32, key: &[u8], value: V) {
        self.entries
            .insert((prefix_len, masked(key, prefix_len)), value);
    }

    fn longest_match(&self, key: &[u8]) -> Option<V> {
        let max = u32::try_from(key.len()).expect("short key") * 8;
        (0..=max)
            .rev()
            .find_map(|len| self.entries.get(&(len, masked(key, len))).copied())
    }
}

fn v4_bytes(k: AddrKeyV4) -> Vec<u8> {
    [&k.tag[..], &k.addr.to_ne_bytes()[..]].concat()
}
fn v6_bytes(k: &AddrKeyV6) -> Vec<u8> {
    [&k.tag[..], &addr_octets(&k.addr)[..]].concat()
}
fn port_bytes(k: PortKey) -> Vec<u8> {
    [&k.class[..], &[k.proto, k.reserved], &k.port[..]].concat()
}

/// The three policy tries and the port hash.
#[derive(Debug, Default)]
pub struct SoftMaps {
    v4: Trie<AddrValue>,
    v6: Trie<AddrValue>,
    ports: Trie<PortValue>,
    port_exact: HashMap<PortKey, PortValue>,
}

impl SoftMaps {
    pub fn insert(&mut self, e: &KernelEntries) {
        for (len, k, v) in &e.v4 {
            self.v4.insert(*len, &v4_bytes(*k), *v);
        }
        for (len, k, v) in &e.v6 {
            self.v6.insert(*len, &v6_bytes(k), *v);
        }
        for (len, k, v) in &e.ports {
            self.ports.insert(*len, &port_bytes(*k), *v);
        }
        self.port_exact.extend(e.port_exact.iter().copied());
    }
}

impl PolicyMaps for SoftMaps {
    fn addr_v4(&self, key: &AddrKeyV4) -> Option<AddrValue> {
        self.v4.longest_match(&v4_bytes(*key))
    }
    fn addr_v6(&self, key: &AddrKeyV6) -> Option<AddrValue> {
        self.v6.longest_match(&v6_bytes(key))
    }
    fn port_exact(&self, key: &PortKey) -> Option<PortValue> {
        self.port_exact.get(key).copied()
    }
    fn ports(&self, key: &PortKey) -> Option<PortValue> {
        self.ports.longest_match(&port_bytes(*key))
    }
}
