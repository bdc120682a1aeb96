//! The policy maps in memory, with the kernel's longest-prefix-match
//! semantics, so [`sg_common::policy::classify`] runs on the host unchanged
//! and the production reload path ([`super::encode::publish`]) can be
//! driven against it.

use std::collections::HashMap;

use sg_common::flow::addr_octets;
use sg_common::policy::{
    ADDR_TAG_BITS, AddrKeyV4, AddrKeyV6, AddrValue, PolicyMaps, PortKey, PortValue, Settings,
    Shortcuts,
};

use super::encode::{KernelEntries, PolicyStore, TooLarge};

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

    fn remove(&mut self, prefix_len: u32, key: &[u8]) {
        self.entries.remove(&(prefix_len, masked(key, prefix_len)));
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

/// The three policy tries, the port hash and the settings.
#[derive(Debug, Default)]
pub struct SoftMaps {
    v4: Trie<AddrValue>,
    v6: Trie<AddrValue>,
    ports: Trie<PortValue>,
    port_exact: HashMap<PortKey, PortValue>,
    settings: Settings,
    shortcuts: [Shortcuts; 2],
    /// Network ACL tables by generation, inbound and outbound.
    nacl: [[sg_common::nacl::NaclTable; 2]; 2],
    /// Every entry as written, so the maps can be read back whole as the
    /// agent reads pinned maps after a restart.
    written: Written,
}

#[derive(Debug, Default)]
struct Written {
    v4: HashMap<(u32, AddrKeyV4), AddrValue>,
    v6: HashMap<(u32, AddrKeyV6), AddrValue>,
    ports: HashMap<(u32, PortKey), PortValue>,
}

impl SoftMaps {
    /// The settings last written (generation in force, timeouts).
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// The network ACL table of `generation` and `direction`, as written.
    pub fn nacl(&self, generation: u8, direction: u8) -> &sg_common::nacl::NaclTable {
        &self.nacl[usize::from(generation & 1)][usize::from(direction & 1)]
    }

    /// Address entries whose key is tagged with `generation`.
    pub fn address_entries_of(&self, generation: u8) -> usize {
        let tagged = |(_, key): &&(u32, Vec<u8>)| key[0] == generation;
        self.v4.entries.keys().filter(tagged).count()
            + self.v6.entries.keys().filter(tagged).count()
    }

    /// Entries in the port trie and the port hash.
    pub fn port_entries(&self) -> usize {
        self.ports.entries.len() + self.port_exact.len()
    }

    pub fn insert(&mut self, e: &KernelEntries) {
        for (len, k, v) in &e.v4 {
            self.v4.insert(*len, &v4_bytes(*k), *v);
            self.written.v4.insert((*len, *k), *v);
        }
        for (len, k, v) in &e.v6 {
            self.v6.insert(*len, &v6_bytes(k), *v);
            self.written.v6.insert((*len, *k), *v);
        }
        for (len, k, v) in &e.ports {
            self.ports.insert(*len, &port_bytes(*k), *v);
            self.written.ports.insert((*len, *k), *v);
        }
        self.port_exact.extend(e.port_exact.iter().copied());
    }

    /// Every entry the maps hold, as the agent reads pinned maps back.
    pub fn entries(&self) -> KernelEntries {
        KernelEntries {
            v4: self
                .written
                .v4
                .iter()
                .map(|(&(l, k), &v)| (l, k, v))
                .collect(),
            v6: self
                .written
                .v6
                .iter()
                .map(|(&(l, k), &v)| (l, k, v))
                .collect(),
            ports: self
                .written
                .ports
                .iter()
                .map(|(&(l, k), &v)| (l, k, v))
                .collect(),
            port_exact: self.port_exact.iter().map(|(&k, &v)| (k, v)).collect(),
        }
    }

    pub fn delete(&mut self, e: &KernelEntries) {
        for (len, k, _) in &e.v4 {
            self.v4.remove(*len, &v4_bytes(*k));
            self.written.v4.remove(&(*len, *k));
        }
        for (len, k, _) in &e.v6 {
            self.v6.remove(*len, &v6_bytes(k));
            self.written.v6.remove(&(*len, *k));
        }
        for (len, k, _) in &e.ports {
            self.ports.remove(*len, &port_bytes(*k));
            self.written.ports.remove(&(*len, *k));
        }
        for (k, _) in &e.port_exact {
            self.port_exact.remove(k);
        }
    }
}

impl PolicyStore for SoftMaps {
    type Error = TooLarge;
    fn insert(&mut self, entries: &KernelEntries) -> Result<(), TooLarge> {
        SoftMaps::insert(self, entries);
        Ok(())
    }
    fn delete(&mut self, entries: &KernelEntries) -> Result<(), TooLarge> {
        SoftMaps::delete(self, entries);
        Ok(())
    }
    fn set_shortcuts(&mut self, generation: u8, shortcuts: &Shortcuts) -> Result<(), TooLarge> {
        self.shortcuts[usize::from(generation & 1)] = *shortcuts;
        Ok(())
    }
    fn set_nacl(
        &mut self,
        generation: u8,
        tables: &[sg_common::nacl::NaclTable; 2],
    ) -> Result<(), TooLarge> {
        self.nacl[usize::from(generation & 1)] = *tables;
        Ok(())
    }
    fn set_settings(&mut self, settings: Settings) -> Result<(), TooLarge> {
        self.settings = settings;
        Ok(())
    }
}

impl PolicyMaps for SoftMaps {
    fn addr_v4(&self, key: &AddrKeyV4) -> Option<AddrValue> {
        self.v4.longest_match(&v4_bytes(*key))
    }
    fn addr_v6(&self, key: &AddrKeyV6) -> Option<AddrValue> {
        self.v6.longest_match(&v6_bytes(key))
    }
    fn whole_space(&self, family: u8, tag: [u8; 4]) -> Option<AddrValue> {
        let (trie, zeros) = if family == sg_common::flow::FAMILY_V4 {
            (&self.v4, 4)
        } else {
            (&self.v6, 16)
        };
        let key = [&tag[..], &vec![0u8; zeros]].concat();
        trie.entries
            .get(&(ADDR_TAG_BITS, masked(&key, ADDR_TAG_BITS)))
            .copied()
    }
    fn port_exact(&self, key: &PortKey) -> Option<PortValue> {
        self.port_exact.get(key).copied()
    }
    fn ports(&self, key: &PortKey) -> Option<PortValue> {
        self.ports.longest_match(&port_bytes(*key))
    }
    fn shortcuts(&self, generation: u8) -> Option<&Shortcuts> {
        self.shortcuts.get(usize::from(generation))
    }
}
