//! Why a packet passed or was dropped: a stable, numbered ABI.
//!
//! A reason keeps its number for ever: a new one takes [`CODES`] (and
//! [`CODES`] grows), a retired one stays in [`NAMES`] as a `retired_N`
//! placeholder (as Cilium keeps its drop codes). Whether a reason passes is
//! written down per code in [`PASS_MASK`], never inferred from the order
//! of the numbers.

pub const PASS_TRACKED: u32 = 0;
pub const PASS_RULE: u32 = 1;
/// ARP and other link-layer traffic a security group never sees.
pub const PASS_NOT_IP: u32 = 2;
/// IPv6 router and neighbour discovery, and multicast listener messages on
/// the link.
pub const PASS_NEIGHBOUR_DISCOVERY: u32 = 3;
/// A later fragment of a datagram whose first fragment passed.
pub const PASS_FRAGMENT: u32 = 4;
pub const DROP_NO_RULE: u32 = 5;
/// Truncated Ethernet, VLAN, IP or transport header, or an IPv4 header
/// whose IHL is below 5 or whose version is not 4.
pub const DROP_MALFORMED: u32 = 6;
/// IPv6 extension-header chain longer than the parser walks.
pub const DROP_EXT_CHAIN: u32 = 7;
/// A later fragment with no allowed first fragment.
pub const DROP_FRAGMENT: u32 = 8;
/// Link-layer protocol that could carry IP past the filter (`PPPoE`, MPLS...).
pub const DROP_UNSUPPORTED_L2: u32 = 9;
/// Settings missing: the agent has not published a policy.
pub const DROP_NO_POLICY: u32 = 10;
/// A TCP or UDP packet of an untracked flow (AWS: allowed by a rule for
/// the whole address space, with every port open the other way), passed
/// by the rules with no connection-table entry.
pub const PASS_UNTRACKED: u32 = 11;
/// AWS's source/destination check: a new flow the rules allow whose local
/// end (the destination inbound, the source outbound) is not one of the
/// instance's addresses. (One the rules refuse counts as `drop_no_rule`.)
pub const DROP_SOURCE_DEST_CHECK: u32 = 12;

/// AWS's `conntrack_allowance_exceeded`: a packet that would open a new
/// tracked flow while the instance's connection table holds its allowance.
/// Established flows are never evicted to make room.
pub const DROP_CONNTRACK_ALLOWANCE: u32 = 13;

/// Traffic with an AWS service security groups never filter: DHCP,
/// `DHCPv6`, Amazon DNS, instance metadata, Amazon Time Sync (see
/// `policy::aws_service`). Passed without rules or connection-table entry.
pub const PASS_AWS_SERVICE: u32 = 14;

/// The host side of an instance's link (`host_interface`): a frame the
/// instance sent from a source MAC address that is not its own (libvirt's
/// `no-mac-spoofing`).
pub const DROP_MAC_SPOOFED: u32 = 15;
/// The host side: an ARP packet the instance sent for an address that is
/// not its own, or with a sender MAC address that is not its own (a
/// gratuitous ARP or reply claiming a neighbour's address), or not an
/// Ethernet/IPv4 ARP packet at all (libvirt's `no-arp-spoofing`).
pub const DROP_ARP_SPOOFED: u32 = 16;
/// The host side: a neighbour-discovery message the instance sent that
/// claims an address or a link-layer address not its own, or that only a
/// router sends (router advertisement, redirect).
pub const DROP_ND_SPOOFED: u32 = 17;
/// The instance's subnet's network ACL denied the packet (an entry that
/// denies, or the `*` rule): inbound before the security group, outbound
/// after it, every packet (network ACLs track nothing).
pub const DROP_NETWORK_ACL: u32 = 18;

/// One past the highest code in use: the number of the next new reason.
pub const CODES: u32 = 19;

/// Room for reasons per direction (`passes` reads a 32-bit mask).
pub const REASONS: u32 = 32;
/// The counters array holds a block of reasons per policy generation and
/// direction: a packet is counted under the generation that judged it, so
/// a reload can be checked packet by packet (every packet judged by the
/// old policy or the new, never a mix), not by sampling.
pub const COUNTERS_LEN: u32 = 2 * 2 * REASONS;
const _: () = assert!(CODES <= REASONS);

/// Each code's name, by code (the names the counters are reported under).
pub const NAMES: [&str; CODES as usize] = [
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
    "pass_untracked",
    "drop_source_dest_check",
    "drop_conntrack_allowance_exceeded",
    "pass_aws_service",
    "drop_mac_spoofed",
    "drop_arp_spoofed",
    "drop_nd_spoofed",
    "drop_network_acl",
];

/// Each code in words, by code: what the drop log and flow logs say.
pub const WORDS: [&str; CODES as usize] = [
    "tracked connection",
    "allowed by a rule",
    "not IP (ARP)",
    "IPv6 neighbour or multicast listener discovery",
    "later fragment of an allowed datagram",
    "no rule allows it",
    "malformed or truncated header",
    "IPv6 extension-header chain too long",
    "later fragment without an allowed first fragment",
    "link-layer protocol that could hide IP (stacked VLAN, PPPoE, MPLS...)",
    "no policy published yet",
    "allowed by a rule (untracked flow)",
    "not the instance's own address (source/destination check)",
    "connection allowance exceeded",
    "AWS service (DHCP, DNS, metadata, time)",
    "source MAC address not the instance's (host side)",
    "ARP for an address or MAC address not the instance's (host side)",
    "neighbour discovery for an address or MAC address not the instance's, or a router's message (host side)",
    "denied by the subnet's network ACL",
];

/// Whether the parser had read the packet's addresses and ports when it
/// gave `reason`: a drop for a malformed or foreign frame has none to show.
pub fn has_addresses(reason: u32) -> bool {
    !matches!(
        reason,
        DROP_MALFORMED
            | DROP_UNSUPPORTED_L2
            | DROP_NO_POLICY
            | PASS_NOT_IP
            | DROP_MAC_SPOOFED
            | DROP_ARP_SPOOFED
    )
}

/// Reasons for which the host side tells the agent the source address of
/// what the guest sent, flow logs or not (a cold path: drops only): an
/// address the guest uses (in its ARP, its neighbour discovery, its IP
/// packets) that its instance's `addresses` may not list, which the agent
/// warns of by name.
#[inline(always)]
pub fn names_guest_address(reason: u32) -> bool {
    matches!(
        reason,
        DROP_ARP_SPOOFED | DROP_ND_SPOOFED | DROP_SOURCE_DEST_CHECK
    )
}

/// Bit `code` set: that reason lets the packet through; clear: it drops it.
pub const PASS_MASK: u32 = 1 << PASS_TRACKED
    | 1 << PASS_RULE
    | 1 << PASS_NOT_IP
    | 1 << PASS_NEIGHBOUR_DISCOVERY
    | 1 << PASS_FRAGMENT
    | 1 << PASS_UNTRACKED
    | 1 << PASS_AWS_SERVICE;
// Every passing code is a code in use.
const _: () = assert!(PASS_MASK >> CODES == 0);
// Names and kinds agree: `pass_*` exactly for the codes in the mask.
const _: () = {
    let mut code = 0;
    while code < CODES as usize {
        let name = NAMES[code].as_bytes();
        let named_pass = name.len() > 5
            && name[0] == b'p'
            && name[1] == b'a'
            && name[2] == b's'
            && name[3] == b's'
            && name[4] == b'_';
        assert!(named_pass == (PASS_MASK >> code & 1 == 1));
        code += 1;
    }
};

/// Whether a reason lets the packet through.
#[inline(always)]
pub fn passes(reason: u32) -> bool {
    PASS_MASK >> (reason & 31) & 1 != 0
}

/// Index into the counters array. Packets dropped before a generation is
/// known (no policy published yet) count under generation 0.
#[inline(always)]
pub fn index(generation: u8, direction: u8, reason: u32) -> u32 {
    (u32::from(generation & 1) * 2 + u32::from(direction & 1)) * REASONS + reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_and_drop_are_read_from_the_mask() {
        let passing: [u32; 7] = [
            PASS_TRACKED,
            PASS_RULE,
            PASS_NOT_IP,
            PASS_NEIGHBOUR_DISCOVERY,
            PASS_FRAGMENT,
            PASS_UNTRACKED,
            PASS_AWS_SERVICE,
        ];
        for code in 0..REASONS {
            assert_eq!(passes(code), passing.contains(&code), "code {code}");
        }
    }
}
