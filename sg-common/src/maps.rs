//! Map names and capacities, shared so the agent sizes and finds exactly the
//! maps the eBPF object declares.
//!
//! A map whose key or value layout changes gets a new name (`..._V2`), so an
//! old object or a tool reading a pinned map never misreads it.

/// Array with one [`crate::policy::Settings`] at index 0.
pub const SETTINGS: &str = "SG_SETTINGS";
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
/// LRU hash: [`crate::conntrack::CtKeyV4`] -> [`crate::conntrack::CtEntry`],
/// IPv4 TCP flows.
pub const CT_TCP4: &str = "SG_CT_TCP4";
/// LRU hash: [`crate::conntrack::CtKeyV4`] -> [`crate::conntrack::CtEntry`],
/// IPv4 flows of every other protocol, kept apart so a UDP flood cannot
/// evict TCP flows.
pub const CT_OTHER4: &str = "SG_CT_OTHER4";
/// LRU hash: [`crate::conntrack::CtKey`] -> [`crate::conntrack::CtEntry`],
/// IPv6 TCP flows.
pub const CT_TCP6: &str = "SG_CT_TCP6";
/// LRU hash: [`crate::conntrack::CtKey`] -> [`crate::conntrack::CtEntry`],
/// IPv6 flows of every other protocol.
pub const CT_OTHER6: &str = "SG_CT_OTHER6";
/// LRU hash: [`crate::conntrack::FragKey`] -> [`crate::conntrack::FragEntry`]:
/// datagrams whose first fragment was allowed.
pub const FRAGS: &str = "SG_FRAGS";
/// Per-CPU array of packet counters, indexed by [`crate::counters::index`].
pub const COUNTERS: &str = "SG_COUNTERS";

/// Upper bound of entries per address trie. LPM tries are never
/// preallocated, so a large bound costs nothing until it is used; it holds
/// two generations of the policy during a reload.
pub const ADDR_MAX_ENTRIES: u32 = 1 << 20;
/// Upper bound of entries in the port trie (two generations).
pub const PORTS_MAX_ENTRIES: u32 = 1 << 20;
/// Upper bound of entries in the port hash (two generations). Created with
/// `BPF_F_NO_PREALLOC`, so its entries cost only what it holds, but its
/// bucket array (16 bytes per entry of capacity) is allocated up front:
/// 2 MiB here. Ten thousand rules over sixteen groups, each on its own port,
/// need about fifty thousand entries per generation.
pub const PORT_EXACT_MAX_ENTRIES: u32 = 1 << 17;
/// Capacity of each TCP connection table, IPv4 and IPv6 (preallocated LRU).
pub const CT_TCP_MAX_ENTRIES: u32 = 65_536;
/// Capacity of each connection table for every other protocol.
pub const CT_OTHER_MAX_ENTRIES: u32 = 65_536;
/// Capacity of the fragment table.
pub const FRAGS_MAX_ENTRIES: u32 = 8_192;
