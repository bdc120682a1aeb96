//! What the programs tell the agent about single packets, through a ring
//! buffer: a new tracked flow (always: the agent attributes it to the rules
//! that allowed it), and with flow logs or the drop log on, each dropped
//! packet and each packet of an untracked flow. The agent aggregates them
//! into flow-log records and log lines; the kernel never formats anything.
//!
//! The rate is bounded per CPU ([`EventBudget`]): under a flood the ring
//! does not become the bottleneck, and what the bound held back is counted,
//! so flow logs can say `SKIPDATA` for the interval as AWS's do.

use crate::flow::{Addr, Flow};

/// A tracked flow the rules just allowed (its connection-table entry was
/// created with this packet).
pub const EVENT_NEW_FLOW: u8 = 1;
/// A packet of an untracked flow, allowed by the rules (flow logs only).
pub const EVENT_UNTRACKED: u8 = 2;
/// A dropped packet (flow logs or the drop log only).
pub const EVENT_DROP: u8 = 3;

/// `SG_OBSERVE` bit: count packets and bytes per tracked flow (flow logs).
pub const OBSERVE_FLOW_COUNTS: u32 = 1;
/// `SG_OBSERVE` bit: an event per dropped packet (flow logs, drop log).
pub const OBSERVE_DROPS: u32 = 2;
/// `SG_OBSERVE` bit: an event per packet of an untracked flow (flow logs).
pub const OBSERVE_UNTRACKED: u32 = 4;
/// Events per CPU and second unless the agent says otherwise.
pub const EVENTS_PER_CPU_DEFAULT: u32 = 5_000;

/// One packet, as the agent needs it: the parsed addresses and ports, the
/// verdict's reason, the policy generation that judged it, its length.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub src: Addr,
    pub dst: Addr,
    /// The programs' clock (see `Settings::ns_per_tick`).
    pub time_ns: u64,
    /// Bytes on the wire (the whole frame, all fragments of a multi-buffer
    /// XDP frame).
    pub len: u32,
    pub sport: u16,
    pub dport: u16,
    pub kind: u8,
    /// `policy::INGRESS` or `policy::EGRESS`.
    pub direction: u8,
    /// The counter reason (`counters`).
    pub reason: u8,
    pub generation: u8,
    pub family: u8,
    pub proto: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Non-zero for a later fragment (no ports).
    pub later_fragment: u8,
    pub ipv6_ah: u8,
    pub pad16: u16,
    pub pad32: u32,
}
const _: () = assert!(size_of::<FlowEvent>() == 64);

impl FlowEvent {
    /// The event for `flow`, judged for `reason`.
    #[inline(always)]
    pub fn of(flow: &Flow, kind: u8, direction: u8, reason: u32, generation: u8) -> Self {
        #[expect(
            clippy::cast_possible_truncation,
            reason = "reasons are below counters::REASONS (32)"
        )]
        let reason = reason as u8;
        Self {
            src: flow.src,
            dst: flow.dst,
            time_ns: 0,
            len: 0,
            sport: flow.sport,
            dport: flow.dport,
            kind,
            direction,
            reason,
            generation,
            family: flow.family,
            proto: flow.proto,
            icmp_type: flow.icmp_type,
            icmp_code: flow.icmp_code,
            later_fragment: u8::from(flow.frag == crate::flow::FRAG_LATER),
            ipv6_ah: flow.ipv6_ah,
            pad16: 0,
            pad32: 0,
        }
    }
}

/// Per CPU: how many events this second's window has used, and how many
/// the bound (or a full ring) held back since the object was loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub used: u32,
    pub pad: u32,
    /// Events not delivered: over the bound, or the ring was full.
    pub lost: u64,
}

/// The window the per-CPU bound counts over.
pub const BUDGET_WINDOW_NS: u64 = 1_000_000_000;

/// Whether one more event may be sent now, `per_window` being the bound
/// per CPU and second; an event held back is counted in `lost`.
#[inline(always)]
pub fn spend(budget: &mut EventBudget, now_ns: u64, per_window: u32) -> bool {
    if now_ns.wrapping_sub(budget.window_start_ns) >= BUDGET_WINDOW_NS {
        budget.window_start_ns = now_ns;
        budget.used = 0;
    }
    if budget.used >= per_window {
        budget.lost += 1;
        return false;
    }
    budget.used += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_holds_per_window_and_counts_what_it_holds_back() {
        let mut b = EventBudget::default();
        let t0 = 5 * BUDGET_WINDOW_NS;
        let sent = (0..25).filter(|_| spend(&mut b, t0, 10)).count();
        assert_eq!((sent, b.lost), (10, 15));
        // Later in the same window: still held back.
        assert!(!spend(&mut b, t0 + BUDGET_WINDOW_NS - 1, 10));
        assert_eq!(b.lost, 16);
        // A new window: ten more.
        let sent = (0..12)
            .filter(|_| spend(&mut b, t0 + BUDGET_WINDOW_NS, 10))
            .count();
        assert_eq!((sent, b.lost), (10, 18));
    }
}
