//! Network ACLs as the programs judge them: a subnet's stateless filter,
//! ordered, first match, allow or deny, applied only to traffic that
//! crosses the subnet's boundary (AWS VPC User Guide, "Control subnet
//! traffic with network access control lists").
//!
//! The agent compiles each enforced instance's subnet's network ACL into
//! one [`NaclTable`] per policy generation and direction (at most
//! [`NACL_ENTRIES`] entries, in rule-number order, the `*` rule implicit
//! after the last). The programs judge every packet with [`judge`] (answers
//! of tracked connections included: a network ACL tracks nothing), and a
//! tracked flow caches a pass per direction in its connection entry under
//! the table's [`NaclTable::epoch`], so the tracked path pays one compare,
//! not the walk, until the network ACL changes.

use crate::{
    flow::{Addr, FAMILY_V4, FRAG_LATER, Flow},
    policy::{INGRESS, OwnV4, OwnV6},
};

/// Entries one direction's table holds: AWS's quota of rules per network
/// ACL and direction, raised to its maximum (40).
pub const NACL_ENTRIES: usize = 40;

/// Slots of [`NaclTable::entries`]: [`NACL_ENTRIES`] in use at most, the
/// rest padding, so that the programs may index the array with a masked
/// index (`& (NACL_SLOTS - 1)`) the verifier can bound without a compare.
pub const NACL_SLOTS: usize = 64;
const _: () = assert!(NACL_SLOTS.is_power_of_two() && NACL_SLOTS >= NACL_ENTRIES);

/// [`NaclTable::flags`]: the instance's subnet has a network ACL that
/// filters this direction. Clear: nothing to judge (no network ACL, or the
/// VPC's default allowing everything), the table is not read further.
pub const NACL_ACTIVE: u32 = 1;
/// [`NaclTable::flags`]: `subnet_v4` (`subnet_v6`) holds the subnet's range.
pub const NACL_SUBNET_V4: u32 = 1 << 1;
pub const NACL_SUBNET_V6: u32 = 1 << 2;

/// [`NaclEntry::flags`]: the entry allows (clear: denies).
pub const ENTRY_ALLOW: u8 = 1;
/// [`NaclEntry::flags`]: every protocol (AWS's -1).
pub const ENTRY_ANY_PROTO: u8 = 1 << 1;
/// [`NaclEntry::flags`]: every port (or ICMP type), so it matches a later
/// fragment too.
pub const ENTRY_ANY_PORT: u8 = 1 << 2;

/// One rule of a network ACL: the remote range, protocol and destination
/// port range (`type << 8 | code` for ICMP, as `Flow::policy_port`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NaclEntry {
    /// Network and mask in network byte order (IPv4: the first word).
    pub net: Addr,
    pub mask: Addr,
    pub port_lo: u16,
    pub port_hi: u16,
    pub family: u8,
    pub proto: u8,
    /// `ENTRY_*` bits.
    pub flags: u8,
    pub pad: u8,
}
const _: () = assert!(size_of::<NaclEntry>() == 40);

/// One direction of an instance's subnet's network ACL, for one policy
/// generation: index `generation * 2 + direction` of the programs' array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NaclTable {
    /// `NACL_*` bits.
    pub flags: u32,
    /// Changes whenever what the table says changes (the agent counts
    /// on from the other generation's): a connection entry's cached pass
    /// holds only under the epoch it was taken in. Never 0 once written.
    pub epoch: u32,
    /// Entries of `entries` in use, in rule-number order.
    pub len: u32,
    pub pad: u32,
    /// The subnet's ranges: traffic with an address in them does not cross
    /// the subnet's boundary and is not judged.
    pub subnet_v4: OwnV4,
    pub subnet_v6: OwnV6,
    pub entries: [NaclEntry; NACL_SLOTS],
}
const _: () = assert!(size_of::<NaclTable>() == 56 + 40 * NACL_SLOTS);

impl Default for NaclTable {
    fn default() -> Self {
        Self {
            flags: 0,
            epoch: 0,
            len: 0,
            pad: 0,
            subnet_v4: OwnV4::default(),
            subnet_v6: OwnV6::default(),
            entries: [NaclEntry::default(); NACL_SLOTS],
        }
    }
}

/// What a network ACL says of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not judged: no network ACL filters this direction, or the packet
    /// does not cross the subnet's boundary (its remote end is in the
    /// subnet, or link-local).
    NotApplied,
    /// Allowed by the entry at this index.
    Allow(u8),
    /// Denied by the entry at this index, or by the `*` rule
    /// ([`STAR`]).
    Deny(u8),
}

/// The index [`Verdict::Deny`] gives for the `*` rule (no entry matched).
#[expect(clippy::cast_possible_truncation, reason = "40 fits a byte")]
pub const STAR: u8 = NACL_ENTRIES as u8;

impl Verdict {
    #[inline(always)]
    pub fn denies(self) -> bool {
        matches!(self, Self::Deny(_))
    }
}

/// The remote end of `flow` for an instance judging it in `direction`.
#[inline(always)]
fn remote(direction: u8, flow: &Flow) -> &Addr {
    if direction == INGRESS {
        &flow.src
    } else {
        &flow.dst
    }
}

#[inline(always)]
fn in_v6(addr: &Addr, net: &Addr, mask: &Addr) -> bool {
    addr[0] & mask[0] == net[0]
        && addr[1] & mask[1] == net[1]
        && addr[2] & mask[2] == net[2]
        && addr[3] & mask[3] == net[3]
}

/// Whether `addr` (network byte order) is link-local: `169.254.0.0/16` or
/// `fe80::/10`. Security groups never filter what AWS's link-local services
/// answer, nor do network ACLs; and link-local traffic never leaves the
/// subnet.
#[inline(always)]
fn link_local(family: u8, addr: &Addr) -> bool {
    let first = u32::from_be(addr[0]);
    if family == FAMILY_V4 {
        first >> 16 == 0xa9fe || first == u32::MAX
    } else {
        first >> 22 == 0x3fa
    }
}

/// Whether the packet crosses the subnet's boundary: its remote end is
/// neither in the subnet nor link-local (nor IPv4's limited broadcast).
#[inline(always)]
pub fn crosses(table: &NaclTable, direction: u8, flow: &Flow) -> bool {
    let addr = remote(direction, flow);
    if link_local(flow.family, addr) {
        return false;
    }
    if flow.family == FAMILY_V4 {
        !(table.flags & NACL_SUBNET_V4 != 0
            && addr[0] & table.subnet_v4.mask == table.subnet_v4.net)
    } else {
        !(table.flags & NACL_SUBNET_V6 != 0
            && in_v6(addr, &table.subnet_v6.net, &table.subnet_v6.mask))
    }
}

/// Whether `entry` covers `flow`'s remote end, protocol and port.
#[inline(always)]
pub fn matches(entry: &NaclEntry, direction: u8, flow: &Flow) -> bool {
    if entry.family != flow.family {
        return false;
    }
    if entry.flags & ENTRY_ANY_PROTO == 0 && entry.proto != flow.proto {
        return false;
    }
    if entry.flags & ENTRY_ANY_PORT == 0 {
        // A later fragment carries no port: only an entry for every port
        // can say anything of it.
        if flow.frag == FRAG_LATER {
            return false;
        }
        let port = flow.policy_port();
        if port < entry.port_lo || port > entry.port_hi {
            return false;
        }
    }
    let addr = remote(direction, flow);
    if flow.family == FAMILY_V4 {
        addr[0] & entry.mask[0] == entry.net[0]
    } else {
        in_v6(addr, &entry.net, &entry.mask)
    }
}

/// The network ACL's verdict on `flow` in `direction`: the first entry
/// that matches decides; none: the `*` rule denies.
#[inline(always)]
pub fn judge(table: &NaclTable, direction: u8, flow: &Flow) -> Verdict {
    if table.flags & NACL_ACTIVE == 0 || !crosses(table, direction, flow) {
        return Verdict::NotApplied;
    }
    let len = table.len as usize;
    let mut i = 0;
    // A counted loop with a constant bound, which the verifier walks once.
    while i < NACL_ENTRIES {
        if i >= len {
            break;
        }
        let entry = &table.entries[i];
        if matches(entry, direction, flow) {
            #[expect(clippy::cast_possible_truncation, reason = "i < 40")]
            let at = i as u8;
            return if entry.flags & ENTRY_ALLOW != 0 {
                Verdict::Allow(at)
            } else {
                Verdict::Deny(at)
            };
        }
        i += 1;
    }
    Verdict::Deny(STAR)
}

/// Bits of a connection entry's `nacl` cache (`CtEntry::nacl`): the low
/// two say the flow passed the inbound (outbound) network ACL, the rest
/// are the epoch of the tables that said so.
pub const CACHE_PASS_IN: u16 = 1;
pub const CACHE_PASS_OUT: u16 = 1 << 1;
const CACHE_EPOCH_SHIFT: u32 = 2;

/// The cache value's epoch part for `epoch` (its low 14 bits, never 0).
#[inline(always)]
pub fn cache_epoch(epoch: u32) -> u16 {
    let e = u16::try_from(epoch & 0x3fff).unwrap_or(1);
    (if e == 0 { 1 } else { e }) << CACHE_EPOCH_SHIFT
}

/// The pass bit of `direction`.
#[inline(always)]
pub fn cache_bit(direction: u8) -> u16 {
    if direction == INGRESS {
        CACHE_PASS_IN
    } else {
        CACHE_PASS_OUT
    }
}

/// Whether `cache` says the flow passed `direction`'s network ACL under
/// `epoch`.
#[inline(always)]
pub fn cached_pass(cache: u16, epoch: u32, direction: u8) -> bool {
    cache & !(CACHE_PASS_IN | CACHE_PASS_OUT) == cache_epoch(epoch)
        && cache & cache_bit(direction) != 0
}

/// `cache` with `direction`'s pass recorded under `epoch` (a pass of
/// another epoch is forgotten).
#[inline(always)]
pub fn with_pass(cache: u16, epoch: u32, direction: u8) -> u16 {
    let e = cache_epoch(epoch);
    let kept = if cache & !(CACHE_PASS_IN | CACHE_PASS_OUT) == e {
        cache & (CACHE_PASS_IN | CACHE_PASS_OUT)
    } else {
        0
    };
    e | kept | cache_bit(direction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flow::{FAMILY_V6, proto},
        policy::EGRESS,
    };

    fn v4(a: [u8; 4]) -> Addr {
        [u32::from_ne_bytes(a), 0, 0, 0]
    }

    fn entry(
        net: [u8; 4],
        len: u32,
        proto: Option<u8>,
        ports: Option<(u16, u16)>,
        allow: bool,
    ) -> NaclEntry {
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let mask = mask.to_be();
        let mut flags = if allow { ENTRY_ALLOW } else { 0 };
        if proto.is_none() {
            flags |= ENTRY_ANY_PROTO;
        }
        if ports.is_none() {
            flags |= ENTRY_ANY_PORT;
        }
        let (port_lo, port_hi) = ports.unwrap_or((0, u16::MAX));
        NaclEntry {
            net: [u32::from_ne_bytes(net) & mask, 0, 0, 0],
            mask: [mask, 0, 0, 0],
            port_lo,
            port_hi,
            family: FAMILY_V4,
            proto: proto.unwrap_or(0),
            flags,
            pad: 0,
        }
    }

    fn table(entries: &[NaclEntry]) -> NaclTable {
        let mut t = NaclTable {
            flags: NACL_ACTIVE | NACL_SUBNET_V4,
            epoch: 7,
            len: u32::try_from(entries.len()).unwrap(),
            subnet_v4: OwnV4 {
                net: u32::from_ne_bytes([10, 0, 1, 0]),
                mask: (u32::MAX << 8).to_be(),
            },
            ..NaclTable::default()
        };
        t.entries[..entries.len()].copy_from_slice(entries);
        t
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], dport: u16) -> Flow {
        Flow {
            src: v4(src),
            dst: v4(dst),
            sport: 40000,
            dport,
            family: FAMILY_V4,
            proto: proto::TCP,
            ..Flow::default()
        }
    }

    #[test]
    fn the_first_match_decides_and_the_star_rule_denies_the_rest() {
        // Rule 90 denies 203.0.113.0/24 on 443, rule 100 allows all on 443:
        // the deny comes first.
        let t = table(&[
            entry(
                [203, 0, 113, 0],
                24,
                Some(proto::TCP),
                Some((443, 443)),
                false,
            ),
            entry([0, 0, 0, 0], 0, Some(proto::TCP), Some((443, 443)), true),
        ]);
        let from = |src, port| judge(&t, INGRESS, &tcp(src, [10, 0, 1, 5], port));
        assert_eq!(from([203, 0, 113, 9], 443), Verdict::Deny(0));
        assert_eq!(from([198, 51, 100, 9], 443), Verdict::Allow(1));
        assert_eq!(from([198, 51, 100, 9], 80), Verdict::Deny(STAR));
        // The same subnet is not judged; nor is link-local.
        assert_eq!(from([10, 0, 1, 9], 80), Verdict::NotApplied);
        assert_eq!(from([169, 254, 169, 254], 80), Verdict::NotApplied);
    }

    #[test]
    fn a_network_acl_without_rules_denies_everything_across_the_boundary() {
        let t = table(&[]);
        let out = tcp([10, 0, 1, 5], [10, 0, 2, 5], 5432);
        assert_eq!(judge(&t, EGRESS, &out), Verdict::Deny(STAR));
        let inactive = NaclTable::default();
        assert_eq!(judge(&inactive, EGRESS, &out), Verdict::NotApplied);
    }

    #[test]
    fn answers_are_judged_on_their_own_port_the_ephemeral_trap() {
        // Inbound 80 allowed, outbound only 80: the answer to a client's
        // ephemeral port is denied.
        let t = table(&[entry(
            [0, 0, 0, 0],
            0,
            Some(proto::TCP),
            Some((80, 80)),
            true,
        )]);
        let mut answer = tcp([10, 0, 1, 5], [198, 51, 100, 7], 51000);
        answer.sport = 80;
        assert_eq!(judge(&t, EGRESS, &answer), Verdict::Deny(STAR));
        let t = table(&[entry(
            [0, 0, 0, 0],
            0,
            Some(proto::TCP),
            Some((1024, 65535)),
            true,
        )]);
        assert_eq!(judge(&t, EGRESS, &answer), Verdict::Allow(0));
    }

    #[test]
    fn a_later_fragment_matches_only_entries_for_every_port() {
        let t = table(&[
            entry([0, 0, 0, 0], 0, Some(proto::TCP), Some((80, 80)), true),
            entry([0, 0, 0, 0], 0, None, None, false),
        ]);
        let mut f = tcp([198, 51, 100, 7], [10, 0, 1, 5], 80);
        f.frag = FRAG_LATER;
        assert_eq!(judge(&t, INGRESS, &f), Verdict::Deny(1));
    }

    #[test]
    fn ipv6_is_judged_by_ipv6_entries_only() {
        let t = table(&[entry([0, 0, 0, 0], 0, None, None, true)]);
        let f = Flow {
            src: [0x2001_0db8_u32.to_be(), 0, 0, 1u32.to_be()],
            dst: [0x2001_0db8_u32.to_be(), 1u32.to_be(), 0, 1u32.to_be()],
            family: FAMILY_V6,
            proto: proto::UDP,
            dport: 53,
            ..Flow::default()
        };
        assert_eq!(judge(&t, INGRESS, &f), Verdict::Deny(STAR));
    }

    #[test]
    fn a_cached_pass_holds_only_in_its_epoch_and_direction() {
        let c = with_pass(0, 5, INGRESS);
        assert!(cached_pass(c, 5, INGRESS));
        assert!(!cached_pass(c, 5, EGRESS));
        assert!(!cached_pass(c, 6, INGRESS));
        let c = with_pass(c, 5, EGRESS);
        assert!(cached_pass(c, 5, INGRESS) && cached_pass(c, 5, EGRESS));
        // A new epoch forgets the other direction's pass.
        let c = with_pass(c, 6, EGRESS);
        assert!(cached_pass(c, 6, EGRESS) && !cached_pass(c, 6, INGRESS));
        // Epoch 0 never matches an empty cache.
        assert!(!cached_pass(0, 0, INGRESS));
        assert!(!cached_pass(0, 0x4000, INGRESS));
    }
}
