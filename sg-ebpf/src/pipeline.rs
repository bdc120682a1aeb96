//! parse -> neighbour discovery -> fragments -> conntrack -> policy ->
//! record, with one exit where the verdict is counted.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
use aya_log_ebpf::debug;
use sg_common::{
    conntrack::{self, CtEntry, CtKey, FragEntry},
    counters::{
        self, DROP_CONNTRACK_ALLOWANCE, DROP_FRAGMENT, DROP_NO_POLICY, DROP_NO_RULE,
        DROP_SOURCE_DEST_CHECK, PASS_AWS_SERVICE, PASS_FRAGMENT, PASS_NEIGHBOUR_DISCOVERY,
        PASS_RULE, PASS_TRACKED, PASS_UNTRACKED,
    },
    flow::{FAMILY_V6, FRAG_FIRST, FRAG_LATER, Flow, icmp, proto},
    policy::{self, AddrValue, Settings, allowing_class},
};

use crate::{
    context::Packet,
    maps::{CONNS, COUNTERS, FRAGS, KernelPolicy, SCRATCH, SETTINGS, Scratch},
};
use sg_common::parse::{Parsed, parse};

/// Whether the packet passes; counts the reason either way, under the
/// policy generation that judged it.
#[inline(always)]
pub fn judge(ctx: &impl Packet, direction: u8) -> bool {
    let (reason, generation) = match SETTINGS.get(0) {
        Some(settings) if settings.ready != 0 => {
            // Read once: this packet is judged entirely by one policy
            // generation, and counted under it.
            #[expect(
                clippy::cast_possible_truncation,
                reason = "the agent writes only 0 or 1"
            )]
            let generation = settings.generation as u8;
            (reason(ctx, direction, settings, generation), generation)
        }
        _ => (DROP_NO_POLICY, 0),
    };
    if let Some(c) = COUNTERS.get_ptr_mut(counters::index(generation, direction, reason)) {
        // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on a CPU (XDP and TC run in softirq context with preemption off), so nothing else writes it meanwhile.
        unsafe { *c += 1 };
    }
    let passes = counters::passes(reason);
    if !passes {
        // Off unless the agent runs with --ebpf-log: it loads the object
        // with AYA_LOG_LEVEL (a read-only global) at 0 otherwise, and the
        // verifier removes this branch altogether.
        debug!(ctx, "dropped (direction {}, reason {})", direction, reason);
    }
    passes
}

#[inline(always)]
fn reason(ctx: &impl Packet, direction: u8, settings: &Settings, generation: u8) -> u32 {
    // Per-CPU scratch space: two flows and the keys do not fit the 512-byte
    // eBPF stack beside everything else.
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return DROP_NO_POLICY;
    };
    let Scratch {
        flow,
        inner,
        ct_key,
        frag_key,
        // SAFETY: this CPU's scratch slot, valid for the whole run. Programs do not nest on a CPU (XDP and TC run in softirq context with preemption off, and no program of this object interrupts another on its CPU), so this packet has it alone until it returns.
    } = unsafe { &mut *scratch };
    // Not cleared wholesale (a 48-byte clear is a byte loop in eBPF): the
    // parser writes every field that is read for the packet it finds.
    let has_inner = match parse(ctx, flow, inner) {
        Parsed::Verdict(r) => return r,
        Parsed::Ip { has_inner } => has_inner,
    };
    if flow.family == FAMILY_V6
        && flow.proto == proto::ICMPV6
        && flow.frag != FRAG_LATER
        && icmp::is_neighbour_discovery(flow.icmp_type)
    {
        return PASS_NEIGHBOUR_DISCOVERY;
    }
    // A clock of jiffy resolution is plenty for idle timeouts of seconds;
    // jiffies cost less per packet than even the coarse clock.
    let now = if settings.ns_per_tick != 0 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_jiffies64() }.wrapping_mul(settings.ns_per_tick)
    } else {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    };

    if flow.frag == FRAG_LATER {
        frag_key.fill(flow);
        // SAFETY: the entry is read at once; map values are freed only after an RCU grace period, which cannot end while this program runs.
        if let Some(e) = unsafe { FRAGS.get(*frag_key) }
            && now.saturating_sub(e.seen_ns) <= settings.fragment_ns
        {
            return PASS_FRAGMENT;
        }
        return match by_rules(generation, direction, flow) {
            Ok(_) => PASS_RULE,
            Err(DROP_NO_RULE) => DROP_FRAGMENT,
            Err(drop) => drop,
        };
    }

    if has_inner && related_to_tracked(inner, ct_key, now, settings) {
        return PASS_TRACKED;
    }

    let verdict = track(flow, ct_key, now, settings, generation, direction);
    if flow.frag == FRAG_FIRST && counters::passes(verdict) {
        frag_key.fill(flow);
        let _ = FRAGS.insert(*frag_key, FragEntry { seen_ns: now }, 0);
    }
    verdict
}

/// The connection table's verdict, or the rules' for a flow it does not
/// hold: a tracked flow passes and its entry advances; a new flow the rules
/// allow gets an entry if the allowance has room, and is dropped if not.
#[inline(always)]
fn track(
    flow: &Flow,
    key: &mut CtKey,
    now: u64,
    settings: &Settings,
    generation: u8,
    direction: u8,
) -> u32 {
    let from_a = conntrack::fill_key(flow, key);
    let key = &*key;
    let expired = match CONNS.get_ptr_mut(key) {
        Some(entry) => {
            // SAFETY: `entry` points at a live value of the table: values are freed only after an RCU grace period, which cannot end while this program runs. Another CPU may update the same flow meanwhile; the race costs at most one state update, never memory safety.
            let old = unsafe { *entry };
            if conntrack::is_live(&old, flow.proto, now, settings) && conntrack::admits(&old, flow)
            {
                let next = conntrack::advance(&old, flow, from_a, now);
                if conntrack::needs_write(&old, &next) {
                    // SAFETY: as above.
                    unsafe { *entry = next };
                } else if next.seq_a != old.seq_a || next.seq_b != old.seq_b {
                    // SAFETY: as above; two stores into the live value.
                    unsafe {
                        (*entry).seq_a = next.seq_a;
                        (*entry).seq_b = next.seq_b;
                    }
                }
                return PASS_TRACKED;
            }
            true
        }
        None => false,
    };
    // AWS's services (DHCP, DNS, metadata, time) never meet the security
    // group: no rules, no entry, no allowance. The instance must still be
    // the local end (the source/destination check).
    if policy::aws_service(&KernelPolicy, generation, direction, flow) {
        if policy::own_address(&KernelPolicy, generation, direction, flow) {
            return PASS_AWS_SERVICE;
        }
        return DROP_SOURCE_DEST_CHECK;
    }
    let remote = match by_rules(generation, direction, flow) {
        Ok(remote) => remote,
        Err(drop) => {
            // An expired entry the rules no longer stand behind gives its
            // place in the allowance back at once.
            if expired {
                let _ = CONNS.remove(key);
            }
            return drop;
        }
    };
    // AWS tracks no flow that a whole-space rule allows with every port
    // open the other way: judged by the rules, packet by packet.
    if policy::untracked(&KernelPolicy, generation, direction, flow, remote) {
        if expired {
            let _ = CONNS.remove(key);
        }
        return PASS_UNTRACKED;
    }
    if !conntrack::opens_entry(flow, direction == policy::INGRESS) {
        return PASS_RULE;
    }
    let entry: CtEntry = conntrack::open(flow, from_a, now);
    // A preallocated hash refuses a new key when full (an expired entry of
    // the same flow is replaced in place): the allowance is used up, and
    // no live flow is evicted to make room.
    if CONNS.insert(key, entry, 0).is_err() {
        return DROP_CONNTRACK_ALLOWANCE;
    }
    PASS_RULE
}

/// A packet no connection-table entry admits, judged as AWS judges a new
/// flow: the rules, then the source/destination check. In that order a
/// packet the rules refuse (a flood) costs no lookup of the instance's own
/// addresses; it would be dropped either way, and is counted as refused by
/// the rules. Gives the remote end's address class when both allow it, the
/// drop reason otherwise.
#[inline(always)]
fn by_rules(generation: u8, direction: u8, flow: &Flow) -> Result<AddrValue, u32> {
    let remote = allowing_class(&KernelPolicy, generation, direction, flow).ok_or(DROP_NO_RULE)?;
    if !policy::own_address(&KernelPolicy, generation, direction, flow) {
        return Err(DROP_SOURCE_DEST_CHECK);
    }
    Ok(remote)
}

/// An ICMP error passes when the packet it quotes belongs to a tracked flow
/// (path MTU discovery, unreachable ports, traceroute).
#[inline(always)]
fn related_to_tracked(inner: &Flow, key: &mut CtKey, now: u64, settings: &Settings) -> bool {
    conntrack::fill_key(inner, key);
    // SAFETY: the entry is read at once; map values are freed only after an RCU grace period, which cannot end while this program runs.
    match unsafe { CONNS.get(key) } {
        Some(e) => conntrack::is_live(e, inner.proto, now, settings),
        None => false,
    }
}
