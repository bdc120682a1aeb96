//! Map names and capacities, shared so the agent sizes and finds exactly the
//! maps the eBPF object declares.
//!
//! A map whose key or value layout changes gets a new name (`..._V2`), so an
//! old object or a tool reading a pinned map never misreads it.

/// Array with one [`crate::policy::Settings`] at index 0.
pub const SETTINGS: &str = "SG_SETTINGS";
/// Array of two [`crate::policy::Shortcuts`], one per policy generation:
/// what that generation's address tries say of the instance's own
/// addresses and of the whole address space, for the new-flow path.
pub const SHORTCUTS: &str = "SG_SHORTCUTS";
/// LPM trie: [`crate::policy::AddrKeyV4`] -> [`crate::policy::AddrValue`].
pub const ADDR_V4: &str = "SG_ADDR_V4";
/// LPM trie: [`crate::policy::AddrKeyV6`] -> [`crate::policy::AddrValue`].
pub const ADDR_V6: &str = "SG_ADDR_V6";
/// LPM trie: [`crate::policy::PortKey`] -> [`crate::policy::PortValue`]:
/// port ranges, whole protocols, all traffic.
pub const PORTS: &str = "SG_PORTS";
/// Hash (not preallocated): [`crate::policy::PortKey`] ->
/// [`crate::policy::PortValue`], single ports.
pub const PORT_EXACT: &str = "SG_PORT_EXACT";
/// Hash (never evicting): [`crate::conntrack::CtKey`] ->
/// [`crate::conntrack::CtEntry`], every tracked flow of the instance, both
/// families and all protocols. Its capacity is the instance's connection
/// allowance (AWS's `max_tracked_connections`): a full table refuses a new
/// flow rather than evict a live one, exactly as AWS's allowance does.
/// (`_V2`: with per-flow packet and byte counts; `_V3`: not preallocated,
/// so an instance's table costs its bucket array and the flows it holds,
/// not its whole allowance: a host of hundreds of instances would otherwise
/// reserve gigabytes for connections that do not exist. A full table
/// refuses a new key all the same: the kernel counts its elements.)
pub const CONNS: &str = "SG_CONNS_V3";
/// LRU hash: [`crate::conntrack::FragKey`] -> [`crate::conntrack::FragEntry`]:
/// datagrams whose first fragment was allowed.
pub const FRAGS: &str = "SG_FRAGS";
/// Per-CPU array of packet counters, indexed by [`crate::counters::index`]
/// (`_V2`: by policy generation too; `_V3`: 32 reasons per block).
pub const COUNTERS: &str = "SG_COUNTERS_V3";
/// Hash of one [`crate::guard::MacEntry`] under key 0: the instance's MAC
/// address, for the host side's layer-2 guard. Written by the agent when
/// the rules file (or libvirt) gives it; otherwise inserted by the programs
/// from the first frame the instance sends (an insert that fails when the
/// key exists, so the first frame wins on every CPU).
pub const MAC: &str = "SG_MAC";
/// Array of one [`crate::guard::MacEntry`]: the MAC address the AWS
/// services answer from (`[vpc] service_mac`, or the host side's own for
/// an instance enforced there), written by the agent; all zeros when none
/// is known, and then nothing is exempt from the rules as an AWS
/// service's.
pub const SERVICE_MAC: &str = "SG_SERVICE_MAC";
/// Hash of [`crate::guard::MacKey`]s: MAC addresses the instance may not be
/// taught by its first frame (the link's host end, every other instance's).
pub const MAC_RESERVED: &str = "SG_MAC_RESERVED";
/// Array of four [`crate::nacl::NaclTable`]s, index `generation * 2 +
/// direction`: the instance's subnet's network ACL, each direction's
/// entries in rule-number order; all zeros (inactive) where no network ACL
/// filters the instance.
pub const NACL: &str = "SG_NACL";
/// How many the agent may reserve per instance.
pub const MAC_RESERVED_MAX_ENTRIES: u32 = 4_096;
/// Ring buffer of [`crate::events::FlowEvent`]s for the agent. Not pinned:
/// events belong to the agent that reads them.
pub const EVENTS: &str = "SG_EVENTS";
/// Its size: 4,096 events, 400 ms of the default bound on a two-CPU host
/// (four times what a 100-ms drain takes out), 256 KiB per instance.
pub const EVENTS_RING_BYTES: u32 = 1 << 18;
/// Per-CPU array of one [`crate::events::EventBudget`]: the bound on the
/// event rate, and what it held back.
pub const EVENT_BUDGET: &str = "SG_EVENT_BUDGET";
/// Read-only globals of the object, set by the agent at load time (the
/// verifier removes the code they switch off, so a feature that is off
/// costs nothing per packet): what the programs observe
/// ([`crate::events`]'s `OBSERVE_*` bits) and the events allowed per CPU
/// and second.
pub const OBSERVE_GLOBAL: &str = "SG_OBSERVE";
pub const EVENTS_PER_CPU_GLOBAL: &str = "SG_EVENTS_PER_CPU";
/// The maps that hold the policy: always refilled from the rules file, so
/// one pinned with another layout is replaced at no loss (all together:
/// the settings say which generation the others hold).
pub const POLICY: [&str; 6] = [SETTINGS, SHORTCUTS, ADDR_V4, ADDR_V6, PORTS, PORT_EXACT];

/// What is lost when a pinned map of this name is replaced rather than
/// adopted (another layout, or an earlier version's name).
pub fn lost_with(name: &str) -> &'static str {
    if name.starts_with("SG_CT_") || name.starts_with("SG_CONNS") {
        "its tracked connections (they must be opened again, or be allowed by a rule)"
    } else if name.starts_with("SG_FRAGS") {
        "fragments in flight"
    } else if name.starts_with("SG_COUNTERS") {
        "its packet counts"
    } else if name.starts_with("SG_MAC") {
        "a learned MAC address (learned again from the next frame)"
    } else {
        "nothing (the policy is filled again from the rules file)"
    }
}

/// Upper bound of entries per address trie. LPM tries are never
/// preallocated, so a large bound costs nothing until it is used; it holds
/// two generations of the policy during a reload.
pub const ADDR_MAX_ENTRIES: u32 = 1 << 20;
/// Upper bound of entries in the port trie (two generations).
pub const PORTS_MAX_ENTRIES: u32 = 1 << 20;
/// Upper bound of entries in the port hash (two generations). Created with
/// `BPF_F_NO_PREALLOC`, so its entries cost only what it holds, but its
/// bucket array (16 bytes per entry of capacity) is allocated up front:
/// 2 MiB at this bound. Ten thousand rules over sixteen groups, each on its
/// own port, need about fifty thousand entries per generation. The agent
/// sizes each instance's hash by its policy ([`port_exact_capacity`]), so a
/// host of hundreds of small instances does not pay 2 MiB for each.
pub const PORT_EXACT_MAX_ENTRIES: u32 = 1 << 17;
/// The smallest port hash an instance gets (16 KiB of buckets).
pub const PORT_EXACT_MIN_ENTRIES: u32 = 1 << 10;

/// The port hash's capacity for a policy of `single_ports` entries: room
/// for two generations of it, as a reload holds both for a moment, and
/// for its growth by a quarter before a reload must make a larger hash;
/// a power of two (the kernel's bucket count is one anyway).
pub fn port_exact_capacity(single_ports: usize) -> u32 {
    let want = single_ports
        .saturating_mul(2)
        .saturating_add(single_ports / 2);
    let want = u32::try_from(want).unwrap_or(u32::MAX);
    want.checked_next_power_of_two()
        .unwrap_or(PORT_EXACT_MAX_ENTRIES)
        .clamp(PORT_EXACT_MIN_ENTRIES, PORT_EXACT_MAX_ENTRIES)
}
/// The connection allowance (and so the connection table's capacity) of
/// an instance whose rules file does not set `max_tracked_connections`.
/// AWS does not publish its allowances (they grow with the instance size);
/// 65,536 is what a small Linux host's own conntrack defaults to, and
/// costs about 8 MiB of preallocated kernel memory per instance.
pub const CONNS_DEFAULT_ENTRIES: u32 = 65_536;
/// The smallest and largest allowance the rules file may set. The upper
/// bound keeps one instance's preallocated table near half a GiB.
pub const CONNS_MIN_ENTRIES: u32 = 16;
pub const CONNS_MAX_ENTRIES: u32 = 1 << 22;
/// Capacity of the fragment table: datagrams whose first fragment passed,
/// kept for 30 s (an LRU hash, preallocated: about 110 bytes each, per
/// instance). 2,048 datagrams in flight per instance; beyond that the
/// oldest is forgotten and its later fragments are judged by the rules.
pub const FRAGS_MAX_ENTRIES: u32 = 2_048;

/// What the kernel knows of a map's layout: enough to refuse a pinned map
/// of another layout before a program misreads it. The connection table's
/// capacity is set per instance, so its `max_entries` here is only the
/// object's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub name: &'static str,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn size<T>() -> u32 {
    // Every map type here is far below 4 GiB.
    #[expect(clippy::cast_possible_truncation, reason = "map types are small")]
    let n = core::mem::size_of::<T>() as u32;
    n
}

/// An LPM trie's key: a 4-byte prefix length, then the data.
const fn lpm<T>() -> u32 {
    4 + size::<T>()
}

/// The maps that outlive the agent (pinned per instance): policy, settings,
/// connection and fragment tables, counters. The per-packet scratch space
/// and the event ring belong to one process and are not pinned.
pub const PINNED: [Layout; 13] = {
    use crate::{
        conntrack::{CtEntry, CtKey, FragEntry, FragKey},
        guard::{MacEntry, MacKey},
        nacl::NaclTable,
        policy::{AddrKeyV4, AddrKeyV6, AddrValue, PortKey, PortValue, Settings, Shortcuts},
    };
    const fn l(name: &'static str, key_size: u32, value_size: u32, max_entries: u32) -> Layout {
        Layout {
            name,
            key_size,
            value_size,
            max_entries,
        }
    }
    [
        l(SETTINGS, 4, size::<Settings>(), 1),
        l(SHORTCUTS, 4, size::<Shortcuts>(), 2),
        l(
            ADDR_V4,
            lpm::<AddrKeyV4>(),
            size::<AddrValue>(),
            ADDR_MAX_ENTRIES,
        ),
        l(
            ADDR_V6,
            lpm::<AddrKeyV6>(),
            size::<AddrValue>(),
            ADDR_MAX_ENTRIES,
        ),
        l(
            PORTS,
            lpm::<PortKey>(),
            size::<PortValue>(),
            PORTS_MAX_ENTRIES,
        ),
        l(
            PORT_EXACT,
            size::<PortKey>(),
            size::<PortValue>(),
            PORT_EXACT_MAX_ENTRIES,
        ),
        l(
            CONNS,
            size::<CtKey>(),
            size::<CtEntry>(),
            CONNS_DEFAULT_ENTRIES,
        ),
        l(
            FRAGS,
            size::<FragKey>(),
            size::<FragEntry>(),
            FRAGS_MAX_ENTRIES,
        ),
        l(COUNTERS, 4, 8, crate::counters::COUNTERS_LEN),
        l(MAC, 4, size::<MacEntry>(), 1),
        l(SERVICE_MAC, 4, size::<MacEntry>(), 1),
        l(MAC_RESERVED, size::<MacKey>(), 1, MAC_RESERVED_MAX_ENTRIES),
        l(NACL, 4, size::<NaclTable>(), 4),
    ]
};
