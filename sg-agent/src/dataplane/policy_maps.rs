//! The kernel's policy maps as a [`PolicyStore`]: applies the inserts,
//! deletes and flips that [`crate::policy::encode`] computes.

use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use sg_common::{
    maps as m,
    nacl::NaclTable,
    policy::{PortValue, Settings, Shortcuts},
};

use super::{DataplaneError, error::map_err};
use crate::policy::encode::{KernelEntries, PolicyStore};

/// How long a swap waits between flipping the generation and deleting the
/// old one. XDP and TC programs run to completion within microseconds under
/// RCU; a packet that read the old generation has long finished by then.
pub const GRACE: Duration = Duration::from_millis(10);

pub(super) struct KernelPolicyMaps<'a> {
    ebpf: &'a mut Ebpf,
}

impl<'a> KernelPolicyMaps<'a> {
    pub(super) fn new(ebpf: &'a mut Ebpf) -> Self {
        Self { ebpf }
    }

    fn each(&mut self, e: &KernelEntries, op: Op) -> Result<(), DataplaneError> {
        apply_to_trie(self.ebpf, m::ADDR_V4, &e.v4, op)?;
        apply_to_trie(self.ebpf, m::ADDR_V6, &e.v6, op)?;
        apply_to_trie(self.ebpf, m::PORTS, &e.ports, op)?;
        apply_to_hash(self.ebpf, m::PORT_EXACT, &e.port_exact, op)
    }
}

impl PolicyStore for KernelPolicyMaps<'_> {
    type Error = DataplaneError;

    fn insert(&mut self, entries: &KernelEntries) -> Result<(), DataplaneError> {
        self.each(entries, Op::Insert)
    }

    fn delete(&mut self, entries: &KernelEntries) -> Result<(), DataplaneError> {
        self.each(entries, Op::Delete)
    }

    fn set_shortcuts(
        &mut self,
        generation: u8,
        shortcuts: &Shortcuts,
    ) -> Result<(), DataplaneError> {
        write_shortcuts(self.ebpf, generation, shortcuts)
    }

    fn set_nacl(&mut self, generation: u8, tables: &[NaclTable; 2]) -> Result<(), DataplaneError> {
        let mut array: Array<&mut MapData, NaclTable> =
            Array::try_from(policy_map(self.ebpf, m::NACL)).map_err(map_err(m::NACL))?;
        for (direction, table) in (0u32..).zip(tables) {
            array
                .set(u32::from(generation & 1) * 2 + direction, *table, 0)
                .map_err(map_err(m::NACL))?;
        }
        Ok(())
    }

    fn set_settings(&mut self, settings: Settings) -> Result<(), DataplaneError> {
        let mut array: Array<&mut MapData, Settings> =
            Array::try_from(policy_map(self.ebpf, m::SETTINGS)).map_err(map_err(m::SETTINGS))?;
        array.set(0, settings, 0).map_err(map_err(m::SETTINGS))
    }

    fn grace(&mut self) {
        std::thread::sleep(GRACE);
    }
}

/// The highest epoch of the network ACL tables an earlier agent wrote.
pub(super) fn nacl_epoch(ebpf: &Ebpf) -> Result<u32, DataplaneError> {
    let map = ebpf
        .map(m::NACL)
        .unwrap_or_else(|| panic!("the object defines map {}", m::NACL));
    let array: Array<&MapData, NaclTable> = Array::try_from(map).map_err(map_err(m::NACL))?;
    let mut epoch = 0;
    for i in 0..4 {
        epoch = epoch.max(array.get(&i, 0).map_err(map_err(m::NACL))?.epoch);
    }
    Ok(epoch)
}

/// Writes one generation's slot of the shortcuts array.
pub(super) fn write_shortcuts(
    ebpf: &mut Ebpf,
    generation: u8,
    shortcuts: &Shortcuts,
) -> Result<(), DataplaneError> {
    let mut array: Array<&mut MapData, Shortcuts> =
        Array::try_from(policy_map(ebpf, m::SHORTCUTS)).map_err(map_err(m::SHORTCUTS))?;
    array
        .set(u32::from(generation), *shortcuts, 0)
        .map_err(map_err(m::SHORTCUTS))
}

#[derive(Clone, Copy)]
enum Op {
    Insert,
    Delete,
}

fn policy_map<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut aya::maps::Map {
    ebpf.map_mut(name)
        .unwrap_or_else(|| panic!("the object defines map {name}"))
}

/// Inserts or deletes `entries` (prefix length, key, value) in one trie.
fn apply_to_trie<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(u32, K, V)],
    op: Op,
) -> Result<(), DataplaneError> {
    let mut trie: LpmTrie<&mut MapData, K, V> =
        LpmTrie::try_from(policy_map(ebpf, name)).map_err(map_err(name))?;
    for (len, key, value) in entries {
        let key = Key::new(*len, *key);
        applied(
            name,
            op,
            match op {
                Op::Insert => trie.insert(&key, value, 0),
                Op::Delete => trie.remove(&key),
            },
        )?;
    }
    Ok(())
}

fn apply_to_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(K, V)],
    op: Op,
) -> Result<(), DataplaneError> {
    let mut hash: HashMap<&mut MapData, K, V> =
        HashMap::try_from(policy_map(ebpf, name)).map_err(map_err(name))?;
    for (key, value) in entries {
        applied(
            name,
            op,
            match op {
                Op::Insert => hash.insert(key, value, 0),
                Op::Delete => hash.remove(key),
            },
        )?;
    }
    Ok(())
}

/// One entry written or deleted; deleting one already absent is fine.
fn applied(name: &'static str, op: Op, result: Result<(), MapError>) -> Result<(), DataplaneError> {
    match result {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e))
            if matches!(op, Op::Delete) && e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(map_err(name)(e)),
    }
}

/// Everything the policy maps hold: the settings (if a policy was
/// published) and every entry, as a restarted agent finds pinned maps.
pub(super) fn read_all(ebpf: &Ebpf) -> Result<(Option<Settings>, KernelEntries), DataplaneError> {
    let map = |name| {
        ebpf.map(name)
            .unwrap_or_else(|| panic!("the object defines map {name}"))
    };
    let settings: Array<&MapData, Settings> =
        Array::try_from(map(m::SETTINGS)).map_err(map_err(m::SETTINGS))?;
    let settings = settings
        .get(&0, 0)
        .ok()
        .filter(|s| s.ready & sg_common::policy::READY != 0);
    let mut found = KernelEntries {
        v4: read_trie(map(m::ADDR_V4), m::ADDR_V4)?,
        v6: read_trie(map(m::ADDR_V6), m::ADDR_V6)?,
        ports: read_trie(map(m::PORTS), m::PORTS)?,
        port_exact: Vec::new(),
    };
    let hash: HashMap<&MapData, _, PortValue> =
        HashMap::try_from(map(m::PORT_EXACT)).map_err(map_err(m::PORT_EXACT))?;
    for entry in &hash {
        found
            .port_exact
            .push(entry.map_err(map_err(m::PORT_EXACT))?);
    }
    Ok((settings, found))
}

fn read_trie<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::Map,
    name: &'static str,
) -> Result<Vec<(u32, K, V)>, DataplaneError> {
    let trie: LpmTrie<&MapData, K, V> = LpmTrie::try_from(map).map_err(map_err(name))?;
    trie.iter()
        .map(|e| {
            let (key, value) = e.map_err(map_err(name))?;
            Ok((key.prefix_len(), key.data(), value))
        })
        .collect()
}

/// The kernel's tick (one jiffy) in nanoseconds: the resolution of the
/// coarse clocks, which is `TICK_NSEC`. 0 (unknown) makes the programs fall
/// back to the coarse clock.
pub(super) fn tick_ns() -> u64 {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `res` is a valid, writable timespec.
    let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) } == 0;
    let ns = u64::try_from(res.tv_sec).unwrap_or(0) * 1_000_000_000
        + u64::try_from(res.tv_nsec).unwrap_or(0);
    if ok { ns } else { 0 }
}
