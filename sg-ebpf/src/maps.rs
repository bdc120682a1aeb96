//! The object's maps. Names and sizes come from `sg_common::maps`, so the agent
//! finds and sizes exactly these.

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
};
use sg_common::{
    conntrack::{CtEntry, CtKey, FragEntry, FragKey},
    counters::COUNTERS_LEN,
    events::EventBudget,
    flow::{FAMILY_V4, Flow},
    guard::{MAC_LEARNED, MacEntry, MacKey, MacStore},
    maps as m,
    nacl::NaclTable,
    policy::{
        ADDR_TAG_BITS, AddrKeyV4, AddrKeyV6, AddrValue, PORT_PROTO_BITS, PolicyMaps, PortKey,
        PortValue, Settings, Shortcuts,
    },
};

#[map(name = "SG_SETTINGS")]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Per policy generation (index 0 or 1): see `Shortcuts`.
#[map(name = "SG_SHORTCUTS")]
pub static SHORTCUTS: Array<Shortcuts> = Array::with_max_entries(2, 0);

#[map(name = "SG_ADDR_V4")]
pub static ADDR_V4: LpmTrie<AddrKeyV4, AddrValue> =
    LpmTrie::with_max_entries(m::ADDR_MAX_ENTRIES, 0);

#[map(name = "SG_ADDR_V6")]
pub static ADDR_V6: LpmTrie<AddrKeyV6, AddrValue> =
    LpmTrie::with_max_entries(m::ADDR_MAX_ENTRIES, 0);

#[map(name = "SG_PORTS")]
pub static PORTS: LpmTrie<PortKey, PortValue> = LpmTrie::with_max_entries(m::PORTS_MAX_ENTRIES, 0);

/// Single ports: one exact lookup however many there are.
#[map(name = "SG_PORT_EXACT")]
pub static PORT_EXACT: HashMap<PortKey, PortValue> =
    HashMap::with_max_entries(m::PORT_EXACT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Every tracked flow. Never evicting: a full table refuses a new flow (the
/// connection allowance) and keeps every live one. Not preallocated: its
/// memory follows the flows it holds. The agent sizes it per instance
/// (`max_tracked_connections`) and reclaims expired entries; the capacity
/// here is only the default.
#[map(name = "SG_CONNS_V3")]
pub static CONNS: HashMap<CtKey, CtEntry> =
    HashMap::with_max_entries(m::CONNS_DEFAULT_ENTRIES, BPF_F_NO_PREALLOC);

#[map(name = "SG_FRAGS")]
pub static FRAGS: LruHashMap<FragKey, FragEntry> =
    LruHashMap::with_max_entries(m::FRAGS_MAX_ENTRIES, 0);

#[map(name = "SG_COUNTERS_V3")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// The instance's MAC address (host side only): one entry, key 0.
#[map(name = "SG_MAC")]
pub static MAC: HashMap<u32, MacEntry> = HashMap::with_max_entries(1, 0);

/// MAC addresses the instance may not be taught by its first frame: the
/// host's and every other instance's (the agent keeps them).
#[map(name = "SG_MAC_RESERVED")]
pub static MAC_RESERVED: HashMap<MacKey, u8> =
    HashMap::with_max_entries(m::MAC_RESERVED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// The MAC address the AWS services answer from: index 0, all zeros when
/// none is known.
#[map(name = "SG_SERVICE_MAC")]
pub static SERVICE_MAC: Array<MacEntry> = Array::with_max_entries(1, 0);

/// The services' MAC address, if the agent gave one.
#[inline(always)]
pub fn service_mac() -> Option<[u8; 6]> {
    let e = SERVICE_MAC.get(0)?;
    (e.mac != [0; 6]).then_some(e.mac)
}

/// The instance's subnet's network ACL, per generation and direction.
#[map(name = "SG_NACL")]
pub static NACL: Array<NaclTable> = Array::with_max_entries(4, 0);

/// The network ACL that judges `direction`'s packets under `generation`.
#[inline(always)]
pub fn nacl(generation: u8, direction: u8) -> Option<&'static NaclTable> {
    NACL.get(u32::from(generation & 1) * 2 + u32::from(direction & 1))
}

#[map(name = "SG_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(m::EVENTS_RING_BYTES, 0);

#[map(name = "SG_EVENT_BUDGET")]
pub static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

/// Working space of one packet, one per CPU (the eBPF stack is 512 bytes).
pub struct Scratch {
    pub flow: Flow,
    pub inner: Flow,
    pub ct_key: CtKey,
    pub frag_key: FragKey,
}

#[map(name = "SG_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The policy tries, as `sg_common::policy::classify` reads them.
pub struct KernelPolicy;

impl PolicyMaps for KernelPolicy {
    #[inline(always)]
    fn addr_v4(&self, key: &AddrKeyV4) -> Option<AddrValue> {
        ADDR_V4.get(Key::new(ADDR_TAG_BITS + 32, *key)).copied()
    }
    #[inline(always)]
    fn addr_v6(&self, key: &AddrKeyV6) -> Option<AddrValue> {
        ADDR_V6.get(Key::new(ADDR_TAG_BITS + 128, *key)).copied()
    }
    #[inline(always)]
    fn whole_space(&self, family: u8, tag: [u8; 4]) -> Option<AddrValue> {
        // A match no longer than the tag: only a /0 entry has one.
        if family == FAMILY_V4 {
            ADDR_V4
                .get(Key::new(ADDR_TAG_BITS, AddrKeyV4 { tag, addr: 0 }))
                .copied()
        } else {
            // A constant [0; 4] would be a 16-byte memset, which the BPF
            // backend emits as a call to a byte loop.
            let z = core::hint::black_box(0u32);
            ADDR_V6
                .get(Key::new(
                    ADDR_TAG_BITS,
                    AddrKeyV6 {
                        tag,
                        addr: [z, z, z, z],
                    },
                ))
                .copied()
        }
    }
    #[inline(always)]
    fn port_exact(&self, key: &PortKey) -> Option<PortValue> {
        // SAFETY: the value is copied out at once. Port entries are deleted only after the grace period that follows a generation flip, so no lookup in flight meets a freed one.
        unsafe { PORT_EXACT.get(key) }.copied()
    }
    #[inline(always)]
    fn ports(&self, key: &PortKey) -> Option<PortValue> {
        PORTS.get(Key::new(PORT_PROTO_BITS + 16, *key)).copied()
    }
    #[inline(always)]
    fn shortcuts(&self, generation: u8) -> Option<&Shortcuts> {
        SHORTCUTS.get(u32::from(generation))
    }
}

/// The instance's MAC address as `sg_common::guard` reads it.
pub struct KernelMac;

impl MacStore for KernelMac {
    #[inline(always)]
    fn known(&self) -> Option<[u8; 6]> {
        // The key lives on the stack: a promoted `&0` is a constant global
        // of value 0, which LLVM may merge with a read-only global the
        // loader overrides (SG_EVENTS_PER_CPU was), and the lookup would
        // then ask for another key.
        let key: u32 = 0;
        // SAFETY: the value is copied out at once; map values are freed only after an RCU grace period, which cannot end while this program runs.
        unsafe { MAC.get(key) }.map(|e| e.mac)
    }

    #[inline(always)]
    fn learn(&self, mac: [u8; 6]) -> Option<[u8; 6]> {
        let key: u32 = 0;
        // Fails if another CPU learned first: then its MAC is the one.
        let learned = MacEntry {
            mac,
            learned: MAC_LEARNED,
            pad: 0,
        };
        let _ = MAC.insert(key, learned, u64::from(BPF_NOEXIST));
        self.known()
    }

    #[inline(always)]
    fn reserved(&self, mac: [u8; 6]) -> bool {
        if service_mac() == Some(mac) {
            return true;
        }
        let key = MacKey { mac, pad: [0; 2] };
        // SAFETY: only whether it is there is read.
        unsafe { MAC_RESERVED.get(key) }.is_some()
    }
}
