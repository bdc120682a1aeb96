//! Why a packet passed or was dropped: a stable, numbered ABI. A retired
//! reason keeps its number as a placeholder; new ones are appended.

pub const PASS_TRACKED: u32 = 0;
pub const PASS_RULE: u32 = 1;
/// ARP and other link-layer traffic a security group never sees.
pub const PASS_NOT_IP: u32 = 2;
/// IPv6 router and neighbour discovery.
pub const PASS_NEIGHBOUR_DISCOVERY: u32 = 3;
/// A later fragment of a datagram whose first fragment passed.
pub const PASS_FRAGMENT: u32 = 4;
pub const DROP_NO_RULE: u32 = 5;
/// Truncated header, bad IHL, bad IPv6 payload.
pub const DROP_MALFORMED: u32 = 6;
/// IPv6 extension-header chain longer than the parser walks.
pub const DROP_EXT_CHAIN: u32 = 7;
/// A later fragment with no allowed first fragment.
pub const DROP_FRAGMENT: u32 = 8;
/// Link-layer protocol that could carry IP past the filter (`PPPoE`, MPLS...).
pub const DROP_UNSUPPORTED_L2: u32 = 9;
/// Settings missing: the agent has not published a policy.
pub const DROP_NO_POLICY: u32 = 10;

/// Reasons per direction; the counters array holds two such blocks.
pub const REASONS: u32 = 16;
pub const COUNTERS_LEN: u32 = 2 * REASONS;

pub const NAMES: [&str; 11] = [
    "pass_tracked",
    "pass_rule",
    "pass_not_ip",
    "pass_neighbour_discovery",
    "pass_fragment",
    "drop_no_rule",
    "drop_malformed",
    "drop_ext_chain",
    "drop_fragment",
    "drop_unsupported_l2",
    "drop_no_policy",
];

/// Whether a reason lets the packet through.
#[inline(always)]
pub fn passes(reason: u32) -> bool {
    reason <= PASS_FRAGMENT
}

/// Index into the counters array.
#[inline(always)]
pub fn index(direction: u8, reason: u32) -> u32 {
    u32::from(direction) * REASONS + reason
}
