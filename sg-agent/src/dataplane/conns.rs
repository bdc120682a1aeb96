//! The connection table beyond the programs: expired entries reclaimed (the
//! kernel never evicts, so the allowance comes back only this way), and
//! connections carried over from a table of another capacity or of an
//! earlier sg-agent when the programs change.
//!
//! The table is a preallocated hash whose capacity is the instance's
//! connection allowance. The programs replace an expired entry when its own
//! flow comes back and remove one the rules no longer allow; every other
//! expired entry holds its place until this module reclaims it, as Cilium's
//! agent garbage-collects its connection tables. While no agent runs, the
//! allowance therefore only shrinks: new flows are refused once it is used
//! up (the firewall fails closed) and every tracked flow keeps working.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData, MapError};
use sg_common::{
    conntrack::{self, CtEntry, CtKey},
    flow::FAMILY_V4,
    maps as m,
    policy::Settings,
};

use super::{Dataplane, DataplaneError, error::map_err};

/// Where a connection table of another capacity is kept while its entries
/// are carried over into the new one: a name this build does not use, so
/// it is unpinned with the other foreign pins once the new programs are
/// attached.
pub(super) const RESIZED: &str = "SG_CONNS_RESIZED";

/// `bpf_map_update_elem`'s flag: only a key the map does not hold.
const BPF_NOEXIST: u64 = 1;

/// The connection tables of sg-agent before the allowance (LRU, per family
/// and protocol), whose entries are carried over on an upgrade.
const EARLIER: [&str; 4] = ["SG_CT_TCP4", "SG_CT_OTHER4", "SG_CT_TCP6", "SG_CT_OTHER6"];

/// The connection table before it counted packets and bytes per flow
/// (24-byte entries), carried over on an upgrade.
const UNCOUNTED: &str = "SG_CONNS";

/// The connection table when it was preallocated (the same entries),
/// carried over on an upgrade.
const PREALLOCATED: &str = "SG_CONNS_V2";

/// Whether the pinned map `name` is a connection table whose entries are
/// carried over (rather than lost) when it is unpinned.
pub(super) fn carried_over(name: &str) -> bool {
    name == RESIZED || name == UNCOUNTED || name == PREALLOCATED || EARLIER.contains(&name)
}

/// The entry of [`UNCOUNTED`]: no packet or byte counts.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct UncountedEntry {
    last_seen_ns: u64,
    state: u8,
    flags: u8,
    pad16: u16,
    seq_a: u32,
    seq_b: u32,
    pad32: u32,
}
const _: () = assert!(size_of::<UncountedEntry>() == 24);
// SAFETY: #[repr(C)], no implicit padding, integers only.
unsafe impl aya::Pod for UncountedEntry {}

impl From<UncountedEntry> for CtEntry {
    fn from(e: UncountedEntry) -> Self {
        Self {
            last_seen_ns: e.last_seen_ns,
            state: e.state,
            flags: e.flags,
            seq_a: e.seq_a,
            seq_b: e.seq_b,
            ..Self::default()
        }
    }
}

/// The IPv4 key of the earlier tables: both endpoints, lower first, in the
/// same order as [`CtKey`]'s.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct EarlierKeyV4 {
    addr_a: u32,
    addr_b: u32,
    port_a: u16,
    port_b: u16,
    proto: u8,
    pad8: u8,
    pad16: u16,
}
const _: () = assert!(size_of::<EarlierKeyV4>() == 16);
// SAFETY: #[repr(C)], no implicit padding, integers only.
unsafe impl aya::Pod for EarlierKeyV4 {}

/// The entry of the earlier tables: no sequence numbers yet.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct EarlierEntry {
    last_seen_ns: u64,
    state: u8,
    flags: u8,
    pad16: u16,
    pad32: u32,
}
const _: () = assert!(size_of::<EarlierEntry>() == 16);
// SAFETY: #[repr(C)], no implicit padding, integers only.
unsafe impl aya::Pod for EarlierEntry {}

impl From<EarlierEntry> for CtEntry {
    fn from(e: EarlierEntry) -> Self {
        // Flags of the earlier layout are a subset of this one's; no
        // sequence number is known until the flow's next segments.
        Self {
            last_seen_ns: e.last_seen_ns,
            state: e.state,
            flags: e.flags & !(conntrack::FLAG_SEQ_A | conntrack::FLAG_SEQ_B),
            ..Self::default()
        }
    }
}

impl From<EarlierKeyV4> for CtKey {
    fn from(k: EarlierKeyV4) -> Self {
        Self {
            addr_a: [k.addr_a, 0, 0, 0],
            addr_b: [k.addr_b, 0, 0, 0],
            port_a: k.port_a,
            port_b: k.port_b,
            proto: k.proto,
            family: FAMILY_V4,
            kind: 0,
        }
    }
}

/// The programs' clock, as userspace can read it, never ahead of it. With
/// `ns_per_tick` set the programs tell time as jiffies x tick length;
/// times(2) returns jiffies in `USER_HZ` units (rounded down), the same
/// clock. Without it they read `CLOCK_MONOTONIC_COARSE`.
pub fn program_clock_ns(settings: &Settings) -> u64 {
    if settings.ns_per_tick == 0 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
        return u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec).unwrap_or(0);
    }
    let mut tms = libc::tms {
        tms_utime: 0,
        tms_stime: 0,
        tms_cutime: 0,
        tms_cstime: 0,
    };
    // SAFETY: `tms` is a valid, writable struct tms.
    let ticks = unsafe { libc::times(&raw mut tms) };
    // SAFETY: sysconf has no preconditions.
    let user_hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let user_hz = u64::try_from(user_hz).unwrap_or(100).max(1);
    // times(2) may return a "negative" clock_t on 32-bit systems only.
    #[expect(clippy::cast_sign_loss, reason = "a 64-bit clock_t is never negative")]
    let ticks = ticks as u64;
    ticks * (1_000_000_000 / user_hz)
}

/// The programs' clock now, as [`program_clock_ns`] reads it with the
/// tick the data plane publishes.
pub fn program_now() -> u64 {
    program_clock_ns(&Settings {
        ns_per_tick: super::policy_maps::tick_ns(),
        ..Settings::default()
    })
}

/// What one reclaiming pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Entries the table holds after the pass.
    pub live: usize,
    /// Expired entries removed.
    pub removed: usize,
    /// Their last values (flow logs take their last counts).
    pub gone: Vec<(CtKey, CtEntry)>,
}

impl Dataplane {
    /// Removes the connection table's expired entries, judged by `settings`
    /// (the timeouts in force) at the programs' clock: their places in the
    /// allowance are free again.
    ///
    /// An entry is read twice before it is removed, the second time just
    /// before: a flow that came back meanwhile has been refreshed and stays.
    /// (A packet in the microseconds between the second read and the removal
    /// would lose a flow that had idled past its timeout anyway; its next
    /// packet is judged by the rules, as a new flow.)
    pub fn reclaim_expired(&mut self, settings: &Settings) -> Result<Reclaimed, DataplaneError> {
        let settings = Settings {
            ns_per_tick: super::policy_maps::tick_ns(),
            ..*settings
        };
        let map = self.ebpf.map_mut(m::CONNS).ok_or(DataplaneError::Map {
            name: m::CONNS,
            source: MapError::InvalidName {
                name: m::CONNS.to_owned(),
            },
        })?;
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(map).map_err(map_err(m::CONNS))?;
        // Read once per pass: an entry judged by a clock a little behind the
        // programs' only lives a little longer.
        let now = program_clock_ns(&settings);
        // A connection's second entry (a DynamoDB gateway endpoint's) lives
        // exactly as long as its first, the one packets refresh.
        let expired = |table: &HashMap<&mut MapData, CtKey, CtEntry>, key: &CtKey, e: &CtEntry| {
            if key.kind & conntrack::SECOND_ENTRY != 0 {
                let first = CtKey {
                    kind: key.kind & !conntrack::SECOND_ENTRY,
                    ..*key
                };
                return table
                    .get(&first, 0)
                    .map_or(true, |e| !conntrack::is_live(&e, key.proto, now, &settings));
            }
            !conntrack::is_live(e, key.proto, now, &settings)
        };
        let mut found = Vec::new();
        let mut live = 0;
        for item in &table {
            let Ok((key, entry)) = item else { continue };
            if expired(&table, &key, &entry) {
                found.push(key);
            } else {
                live += 1;
            }
        }
        let mut removed = 0;
        let mut gone = Vec::new();
        for key in found {
            match table.get(&key, 0) {
                Ok(entry) if expired(&table, &key, &entry) => {
                    if table.remove(&key).is_ok() {
                        removed += 1;
                        if key.kind & conntrack::SECOND_ENTRY == 0 {
                            gone.push((key, entry));
                        }
                    }
                }
                Ok(_) => live += 1,
                Err(_) => {}
            }
        }
        Ok(Reclaimed {
            live,
            removed,
            gone,
        })
    }

    /// New flows the allowance has refused since the counters were created
    /// (both directions, both policy generations).
    pub fn allowance_refusals(&self) -> u64 {
        use sg_common::counters::{DROP_CONNTRACK_ALLOWANCE, index};
        let Some(map) = self.ebpf.map(m::COUNTERS) else {
            return 0;
        };
        let Ok(counters) = aya::maps::PerCpuArray::<&MapData, u64>::try_from(map) else {
            return 0;
        };
        let mut sum = 0u64;
        for generation in 0..2 {
            for direction in 0..2 {
                let i = index(generation, direction, DROP_CONNTRACK_ALLOWANCE);
                if let Ok(per_cpu) = counters.get(&i, 0) {
                    sum = per_cpu.iter().fold(sum, |s, v| s.wrapping_add(*v));
                }
            }
        }
        sum
    }

    /// Entries in the connection table now.
    pub fn tracked_connections(&self) -> usize {
        self.ebpf
            .map(m::CONNS)
            .and_then(|map| HashMap::<&MapData, CtKey, CtEntry>::try_from(map).ok())
            .map_or(0, |t| t.keys().flatten().count())
    }

    /// Copies the connections of the tables being replaced (one of another
    /// capacity, an earlier sg-agent's) into this object's table. Run once
    /// the object is loaded and again once its programs are attached, so
    /// flows the old programs opened in between are kept too.
    pub(super) fn carry_over_connections(&mut self) -> Result<(), DataplaneError> {
        let Some(pins) = self.pins.clone() else {
            return Ok(());
        };
        let sources: Vec<(&str, PathBuf)> = [RESIZED, PREALLOCATED, UNCOUNTED]
            .into_iter()
            .chain(EARLIER)
            .map(|name| (name, pins.map(name)))
            .filter(|(_, path)| path.exists())
            .collect();
        if sources.is_empty() {
            return Ok(());
        }
        let map = self.ebpf.map_mut(m::CONNS).expect("the object defines it");
        let mut table: HashMap<&mut MapData, CtKey, CtEntry> =
            HashMap::try_from(map).map_err(map_err(m::CONNS))?;
        for (name, path) in sources {
            let (copied, refused) = match copy_from(&path, &mut table) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("{}: cannot read its connections: {e}", path.display());
                    continue;
                }
            };
            if refused > 0 {
                log::warn!(
                    "{}: {refused} tracked connections do not fit the new allowance and are \
                     no longer tracked (their next packets are judged by the rules)",
                    path.display()
                );
            }
            log::debug!(
                "{}: {copied} tracked connections carried over from {name}",
                path.display()
            );
        }
        Ok(())
    }
}

/// Inserts every entry of the pinned table at `path` that `into` does not
/// hold yet: (copied, refused for want of room).
fn copy_from(
    path: &Path,
    into: &mut HashMap<&mut MapData, CtKey, CtEntry>,
) -> Result<(usize, usize), MapError> {
    let data = MapData::from_pin(path)?;
    let layout = data.info()?;
    let (key_size, value_size) = (layout.key_size(), layout.value_size());
    let map = Map::from_map_data(data)?;
    let entries: Vec<(CtKey, CtEntry)> = match (key_size, value_size) {
        (16, 16) => HashMap::<_, EarlierKeyV4, EarlierEntry>::try_from(&map)?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (CtKey::from(k), CtEntry::from(v)))
            .collect(),
        (40, 16) => HashMap::<_, CtKey, EarlierEntry>::try_from(&map)?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, CtEntry::from(v)))
            .collect(),
        (40, 24) => HashMap::<_, CtKey, UncountedEntry>::try_from(&map)?
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| (k, CtEntry::from(v)))
            .collect(),
        _ => HashMap::<_, CtKey, CtEntry>::try_from(&map)?
            .iter()
            .filter_map(Result::ok)
            .collect(),
    };
    let (mut copied, mut refused) = (0, 0);
    for (key, entry) in entries {
        // BPF_NOEXIST: an entry the new programs made meanwhile is newer.
        match into.insert(key, entry, BPF_NOEXIST) {
            Ok(()) => copied += 1,
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(_) => refused += 1,
        }
    }
    Ok((copied, refused))
}

/// Before the object is loaded: the capacity its connection table is
/// loaded with. `wanted`, as a rule: a pinned table of another capacity is
/// moved aside to [`RESIZED`], so the loader creates one of the new
/// capacity and [`Dataplane::carry_over_connections`] fills it. If one is
/// aside already (a resize prepared but never attached), that one holds the
/// connections and the pinned table is an unused leftover: it goes.
///
/// But a pinned table larger than `wanted` that holds more connections
/// than `wanted` is kept as it is, and its capacity returned: made smaller
/// now it could not take them all, and an established connection is never
/// evicted to shrink the allowance. The agent refuses new flows until the
/// table drains to `wanted`, then resizes.
pub(super) fn capacity_for(pins: &super::InstancePins, wanted: u32) -> Result<u32, DataplaneError> {
    let path = pins.map(m::CONNS);
    if !path.exists() {
        return Ok(wanted);
    }
    let info = aya::maps::MapInfo::from_pin(&path).map_err(map_err(m::CONNS))?;
    let capacity = info.max_entries();
    if capacity == wanted {
        return Ok(wanted);
    }
    let aside = pins.map(RESIZED);
    if capacity > wanted && !aside.exists() {
        let held = pinned_entries(&path)?;
        if held > u64::from(wanted) {
            log::info!(
                "{}: {held} connections tracked, more than the new allowance of {wanted}: the \
                 table keeps its capacity of {capacity}, new flows are refused until it drains",
                path.display()
            );
            return Ok(capacity);
        }
    }
    let result = if aside.exists() {
        std::fs::remove_file(&path)
    } else {
        log::info!(
            "{}: the connection allowance changes from {capacity} to {wanted}: a new table, its \
             connections carried over",
            path.display(),
        );
        std::fs::rename(&path, &aside)
    };
    result.map_err(|source| DataplaneError::Pin(super::pins::PinError::Io { path, source }))?;
    Ok(wanted)
}

/// How many entries the pinned connection table at `path` holds.
fn pinned_entries(path: &Path) -> Result<u64, DataplaneError> {
    let data = MapData::from_pin(path).map_err(map_err(m::CONNS))?;
    let table: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(Map::HashMap(data)).map_err(map_err(m::CONNS))?;
    Ok(table.keys().flatten().count() as u64)
}
