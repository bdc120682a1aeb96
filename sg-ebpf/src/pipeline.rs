//! parse -> neighbour discovery -> fragments -> conntrack -> policy ->
//! record, with one exit where the verdict is counted.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_loop},
};
use sg_common::{
    conntrack::{self, CtEntry, CtKey, FragEntry},
    counters::{
        self, DROP_ARP_SPOOFED, DROP_CONNTRACK_ALLOWANCE, DROP_FRAGMENT, DROP_NETWORK_ACL,
        DROP_NO_POLICY, DROP_NO_RULE, DROP_SOURCE_DEST_CHECK, PASS_AWS_SERVICE, PASS_FRAGMENT,
        PASS_NEIGHBOUR_DISCOVERY, PASS_NOT_IP, PASS_RULE, PASS_TRACKED, PASS_UNTRACKED,
    },
    events::{
        EVENT_DROP, EVENT_NEW_FLOW, EVENT_UNTRACKED, OBSERVE_DROPS, OBSERVE_FLOW_COUNTS,
        OBSERVE_UNTRACKED,
    },
    flow::{FRAG_FIRST, FRAG_LATER, Flow, icmp},
    guard,
    nacl::{self, NACL_ACTIVE, NaclTable},
    policy::{self, AddrValue, Settings, allowing_class},
};

use crate::{
    context::Packet,
    maps::{CONNS, COUNTERS, FRAGS, KernelMac, KernelPolicy, SCRATCH, SETTINGS, Scratch},
    observe,
};
use sg_common::parse::{Next, parse};

/// Whether the packet passes; counts the reason either way, under the
/// policy generation that judged it. `GUARDED`: what the instance sent,
/// seen on the host side of its link, checked at layer 2 first (a program
/// of its own, so the instance side's programs carry none of that code and
/// the verifier walks each pipeline once). `ACL`: the instance's subnet
/// has a network ACL; the programs of an instance without one carry none
/// of its code (its mere presence cost a tracked packet 7-10 ns).
#[inline(always)]
pub fn judge<const GUARDED: bool, const ACL: bool>(ctx: &impl Packet, direction: u8) -> bool {
    let settings = SETTINGS.get(0);
    let (reason, generation) = match settings {
        Some(settings) if settings.ready & policy::READY != 0 => {
            // Read once: this packet is judged entirely by one policy
            // generation, and counted under it.
            #[expect(
                clippy::cast_possible_truncation,
                reason = "the agent writes only 0 or 1"
            )]
            let generation = settings.generation as u8;
            (
                reason::<GUARDED, ACL>(ctx, direction, settings, generation),
                generation,
            )
        }
        _ => (DROP_NO_POLICY, 0),
    };
    if let Some(c) = COUNTERS.get_ptr_mut(counters::index(generation, direction, reason)) {
        // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on a CPU (XDP and TC run in softirq context with preemption off), so nothing else writes it meanwhile.
        unsafe { *c += 1 };
    }
    let passes = counters::passes(reason);
    // Told when the agent runs with flow logs or the drop log, or while
    // someone follows the instance live (`policy::LIVE`). On the host
    // side, a drop that names an address the guest uses is told whatever
    // the settings (the agent warns of one the file does not give).
    if !passes
        && (observe::on(OBSERVE_DROPS)
            || settings.is_some_and(|s| s.ready & policy::LIVE != 0)
            || (GUARDED && direction == policy::EGRESS && counters::names_guest_address(reason)))
    {
        report_drop(ctx, settings, direction, reason, generation);
    }
    passes
}

/// An event for a dropped packet, with what the parser found (the agent
/// shows no addresses for reasons the parser gave before reading them).
#[inline(always)]
fn report_drop(
    ctx: &impl Packet,
    settings: Option<&Settings>,
    direction: u8,
    reason: u32,
    generation: u8,
) {
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return;
    };
    let now = match settings {
        Some(settings) => clock(settings),
        // SAFETY: a helper without arguments.
        None => unsafe { bpf_ktime_get_coarse_ns() },
    };
    // SAFETY: this CPU's scratch slot; this packet has it alone (see `reason`).
    let flow = unsafe { &(*scratch).flow };
    observe::emit(ctx, flow, EVENT_DROP, direction, reason, generation, now);
}

/// The programs' clock: jiffies x tick length when the agent gave the tick
/// (a clock of jiffy resolution is plenty for idle timeouts of seconds, and
/// jiffies cost less per packet than even the coarse clock).
#[inline(always)]
fn clock(settings: &Settings) -> u64 {
    if settings.ns_per_tick != 0 {
        // SAFETY: a helper without arguments.
        unsafe { bpf_jiffies64() }.wrapping_mul(settings.ns_per_tick)
    } else {
        // SAFETY: a helper without arguments.
        unsafe { bpf_ktime_get_coarse_ns() }
    }
}

#[inline(always)]
fn reason<const GUARDED: bool, const ACL: bool>(
    ctx: &impl Packet,
    direction: u8,
    settings: &Settings,
    generation: u8,
) -> u32 {
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
    let parsed = parse::<GUARDED>(ctx, flow, inner);
    // On the host side of the instance's link, what the instance sends is
    // checked at layer 2 first: its MAC address, VLAN tags, ARP (see
    // guard), on what the parser found.
    if GUARDED
        && let Some(r) = guard::outbound_frame(ctx, &parsed, &KernelPolicy, generation, &KernelMac)
    {
        if r == DROP_ARP_SPOOFED
            && let Next::Arp { off } = parsed.next
        {
            guard::arp_claim(ctx, off, flow);
        }
        return r;
    }
    let (has_inner, l4_off, l3_end) = match parsed.next {
        Next::Verdict(r) => return r,
        Next::Arp { .. } => return PASS_NOT_IP,
        Next::Ip {
            has_inner,
            l4_off,
            l3_end,
        } => (has_inner, l4_off, l3_end),
    };
    // The guest's MAC address, where its link-local addresses must be the
    // ones it gives: the frame's, which the guard just found to be its.
    let guest_mac = if GUARDED { Some(parsed.src_mac) } else { None };
    // Multicast listener messages on the link (a host's tap sends its own
    // reports as it comes up): plumbing no security group sees, counted
    // with neighbour discovery. They claim no address, so the host side
    // lets the guest's through too.
    if flow.is_link_listener_message() {
        return PASS_NEIGHBOUR_DISCOVERY;
    }
    if flow.is_neighbour_discovery() {
        if GUARDED {
            return guard::outbound_nd(
                ctx,
                l4_off,
                l3_end,
                flow,
                &KernelPolicy,
                generation,
                &KernelMac,
            );
        }
        return PASS_NEIGHBOUR_DISCOVERY;
    }
    let now = clock(settings);

    if flow.frag == FRAG_LATER {
        frag_key.fill(flow);
        // SAFETY: the entry is read at once; map values are freed only after an RCU grace period, which cannot end while this program runs.
        if let Some(e) = unsafe { FRAGS.get(*frag_key) }
            && now.saturating_sub(e.seen_ns) <= settings.fragment_ns
        {
            return PASS_FRAGMENT;
        }
        let by_group = match by_rules(generation, direction, flow, guest_mac) {
            Ok(_) => PASS_RULE,
            Err(DROP_NO_RULE) => DROP_FRAGMENT,
            Err(drop) => drop,
        };
        return with_acl(
            AclRef::of::<ACL>(settings, generation, direction),
            direction,
            flow,
            by_group,
        );
    }

    // An error the instance's own end sends or receives (not one sent as
    // a neighbour, quoting a flow of the sender's).
    if has_inner
        && policy::own_address(&KernelPolicy, generation, direction, flow, guest_mac)
        && related_to_tracked(flow, inner, ct_key, now, settings)
    {
        // A network ACL tracks nothing: the error is a packet of its own.
        return with_acl(
            AclRef::of::<ACL>(settings, generation, direction),
            direction,
            flow,
            PASS_TRACKED,
        );
    }
    // Any other ICMP error is no flow of its own: the rules decide, and it
    // opens no entry (that would let the other way's errors and queries
    // ride on it).
    if flow.proto_is_icmp() && icmp::is_error(flow.family, flow.icmp_type) {
        let by_group = match by_rules(generation, direction, flow, guest_mac) {
            Ok(_) => PASS_RULE,
            Err(drop) => drop,
        };
        return with_acl(
            AclRef::of::<ACL>(settings, generation, direction),
            direction,
            flow,
            by_group,
        );
    }

    let verdict = track::<ACL>(
        ctx, flow, ct_key, now, settings, generation, direction, guest_mac,
    );
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
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "`*key` would copy the 40-byte key onto the 512-byte eBPF stack; the key stays mutable for a second entry"
)]
#[expect(
    clippy::too_many_lines,
    reason = "the connection table's path of every packet, read top to bottom; the network ACL's checks joined it"
)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined into the pipeline: a struct of them would cost stack the verifier counts"
)]
fn track<const ACL: bool>(
    ctx: &impl Packet,
    flow: &Flow,
    key: &mut CtKey,
    now: u64,
    settings: &Settings,
    generation: u8,
    direction: u8,
    guest_mac: Option<[u8; 6]>,
) -> u32 {
    let from_a = conntrack::fill_key(flow, key);
    let expired = match CONNS.get_ptr_mut(&*key) {
        Some(entry) => {
            // SAFETY: `entry` points at a live value of the table: values are freed only after an RCU grace period, which cannot end while this program runs. Another CPU may update the same flow meanwhile; the race costs at most one state update, never memory safety.
            let mut old = unsafe { *entry };
            if conntrack::is_live(&old, flow.proto, now, settings) && conntrack::admits(&old, flow)
            {
                // The subnet's network ACL judges every packet, answers
                // included; the flow keeps its pass per direction under
                // the tables' epoch, so only the first packet of each way
                // after a change walks the entries. A denied packet moves
                // nothing. The epoch comes with the settings: an instance
                // without a network ACL never reads its table.
                let acl = AclRef::of::<ACL>(settings, generation, direction);
                if acl.epoch != 0 && !nacl::cached_pass(old.nacl, acl.epoch, direction) {
                    if acl_denies(acl, direction, flow) {
                        return DROP_NETWORK_ACL;
                    }
                    old.nacl = nacl::with_pass(old.nacl, acl.epoch, direction);
                    // SAFETY: as above; one store into the live value.
                    unsafe { (*entry).nacl = old.nacl };
                }
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
                // Flow logs only: the verifier removes this otherwise.
                if observe::on(OBSERVE_FLOW_COUNTS) {
                    count(ctx, entry, from_a);
                }
                return PASS_TRACKED;
            }
            true
        }
        None => false,
    };
    // AWS's services (DHCP, DNS, metadata, time, the subnet's router...)
    // never meet the security group: no rules, no entry, no allowance;
    // but only what comes from (goes to) where they are, as on EC2, where
    // only the Nitro host answers at their addresses: the rest is judged
    // by the rules. The frame's MAC addresses are read first, so most
    // frames cost no address lookup here. The instance must still be the
    // local end (the source/destination check).
    if let Some(services) = crate::maps::service_mac()
        && let place = guard::service_place(ctx, direction, services)
        && place != guard::PLACE_NONE
        && guard::exempt_here(
            policy::aws_service(&KernelPolicy, generation, direction, flow),
            place,
        )
    {
        if policy::service_own_address(&KernelPolicy, generation, direction, flow, guest_mac) {
            return PASS_AWS_SERVICE;
        }
        return DROP_SOURCE_DEST_CHECK;
    }
    let remote = match by_rules(generation, direction, flow, guest_mac) {
        Ok(remote) => remote,
        Err(drop) => {
            // An expired entry the rules no longer stand behind gives its
            // place in the allowance back at once.
            if expired {
                let _ = CONNS.remove(&*key);
            }
            // Inbound the network ACL judges before the security group:
            // its deny is the reason.
            return with_acl(
                AclRef::of::<ACL>(settings, generation, direction),
                direction,
                flow,
                drop,
            );
        }
    };
    // Allowed by the group: the network ACL still judges (outbound it
    // comes after the group, inbound before; either way both must pass).
    let acl = AclRef::of::<ACL>(settings, generation, direction);
    if acl.epoch != 0 && acl_denies(acl, direction, flow) {
        if expired {
            let _ = CONNS.remove(&*key);
        }
        return DROP_NETWORK_ACL;
    }
    // AWS tracks no flow that a whole-space rule allows with every port
    // open the other way: judged by the rules, packet by packet.
    if policy::untracked(&KernelPolicy, generation, direction, flow, remote) {
        if expired {
            let _ = CONNS.remove(&*key);
        }
        if observe::on(OBSERVE_UNTRACKED) || settings.ready & policy::LIVE != 0 {
            observe::emit(
                ctx,
                flow,
                EVENT_UNTRACKED,
                direction,
                PASS_UNTRACKED,
                generation,
                now,
            );
        }
        return PASS_UNTRACKED;
    }
    if !conntrack::opens_entry(flow, direction == policy::INGRESS) {
        return PASS_RULE;
    }
    let mut entry: CtEntry = conntrack::open(flow, from_a, now);
    // It passed the network ACL just now (or none filters it).
    if acl.epoch != 0 {
        entry.nacl = nacl::with_pass(0, acl.epoch, direction);
    }
    // Through a Network Load Balancer: its idle timeouts, not the instance's.
    entry.idle_s = policy::service_idle_s(remote, flow.proto);
    if observe::on(OBSERVE_FLOW_COUNTS) {
        let len = u64::from(ctx.wire_len());
        if from_a {
            (entry.packets_a, entry.bytes_a) = (1, len);
        } else {
            (entry.packets_b, entry.bytes_b) = (1, len);
        }
    }
    // The hash refuses a new key when full (an expired entry of the same
    // flow is replaced in place): the allowance is used up, and no live
    // flow is evicted to make room. While a smaller allowance waits for
    // the table to drain, every new flow is refused the same way.
    if settings.ready & policy::REFUSING_NEW_FLOWS != 0 || CONNS.insert(&*key, entry, 0).is_err() {
        return DROP_CONNTRACK_ALLOWANCE;
    }
    // Through a DynamoDB gateway endpoint a connection takes two entries of
    // the allowance, as on AWS: the second is the same key with
    // SECOND_ENTRY in its kind, which no packet's key has; the agent
    // reclaims it with the first. Without room for it, the connection is
    // refused as a whole.
    if remote.flags & policy::CLASS_TWO_ENTRIES != 0 {
        key.kind |= conntrack::SECOND_ENTRY;
        let second = CONNS.insert(&*key, entry, 0);
        key.kind &= !conntrack::SECOND_ENTRY;
        if second.is_err() {
            let _ = CONNS.remove(&*key);
            return DROP_CONNTRACK_ALLOWANCE;
        }
    }
    // Always: the agent attributes each new flow to the rules that allowed
    // it (bounded per CPU, so a burst of new flows cannot cost more).
    observe::emit(
        ctx,
        flow,
        EVENT_NEW_FLOW,
        direction,
        PASS_RULE,
        generation,
        now,
    );
    PASS_RULE
}

/// One more packet and its bytes on a tracked flow's entry, with atomic
/// adds: both directions of a flow may be counted on two CPUs at once.
#[inline(always)]
fn count(ctx: &impl Packet, entry: *mut CtEntry, from_a: bool) {
    let len = u64::from(ctx.wire_len());
    // SAFETY: `entry` points at a live value of the table (see `track`);
    // the fields are naturally aligned (u32s at 20 and 24, u64s at 32, 40).
    unsafe {
        if from_a {
            atomic_add_u32(&raw mut (*entry).packets_a, 1);
            atomic_add_u64(&raw mut (*entry).bytes_a, len);
        } else {
            atomic_add_u32(&raw mut (*entry).packets_b, 1);
            atomic_add_u64(&raw mut (*entry).bytes_b, len);
        }
    }
}

/// `*p += v` as one BPF atomic instruction (`core::sync::atomic` has no
/// atomics for the BPF target).
///
/// # Safety
/// `p` is a valid, aligned pointer into a map value.
#[inline(always)]
unsafe fn atomic_add_u32(p: *mut u32, v: u32) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!(
            "lock *(u32 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) u64::from(v),
            options(nostack),
        );
    }
}

/// As [`atomic_add_u32`], 64 bits.
///
/// # Safety
/// As for [`atomic_add_u32`].
#[inline(always)]
unsafe fn atomic_add_u64(p: *mut u64, v: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({p} + 0) += {v}",
            p = in(reg) p,
            v = in(reg) v,
            options(nostack),
        );
    }
}

/// Whether the subnet's network ACL denies `flow`: its entries walked in
/// order by `bpf_loop`, whose callback the verifier checks once, not once
/// per entry and per path that reaches the walk (an unrolled walk of 40
/// entries on every path of the pipeline is past its limit).
#[inline(always)]
fn acl_denies(acl: AclRef, direction: u8, flow: &Flow) -> bool {
    let Some(table) = crate::maps::nacl(acl.generation, direction) else {
        return false;
    };
    if table.flags & NACL_ACTIVE == 0 || !nacl::crosses(table, direction, flow) {
        return false;
    }
    let mut walk = AclWalk {
        table,
        flow,
        direction: u64::from(direction),
        // The `*` rule's, unless an entry matches.
        denied: 1,
    };
    // SAFETY: `acl_step` is a callback of bpf_loop's signature; `walk`
    // outlives the call, which runs the callback synchronously.
    unsafe {
        bpf_loop(
            table.len.min(NACL_ENTRIES_U32).div_ceil(ACL_STEP_U32),
            acl_step as *mut c_void,
            (&raw mut walk).cast(),
            0,
        );
    }
    walk.denied != 0
}

#[expect(clippy::cast_possible_truncation, reason = "40")]
const NACL_ENTRIES_U32: u32 = nacl::NACL_ENTRIES as u32;

/// Entries one call of [`acl_step`] judges. Each call through `bpf_loop`
/// costs a call; measured side by side on a 20-entry walk (a dropped
/// packet, BENCHMARKS.md): 1 entry per call added 222 ns, 2 added 120, 4
/// added 84. The verifier checks the callback's unrolled entries on every
/// path that reaches the walk: an object took about 0.7 s to load with 1,
/// 0.76 s with 2, 0.92 s with 4 and 6 s with 8.
const ACL_STEP: usize = 4;
#[expect(clippy::cast_possible_truncation, reason = "small")]
const ACL_STEP_U32: u32 = ACL_STEP as u32;

/// Which network ACL table judges a packet: its epoch (0: none) and the
/// policy generation.
#[derive(Clone, Copy)]
struct AclRef {
    epoch: u32,
    generation: u8,
}

impl AclRef {
    /// The network ACL judging `direction` under `generation`: its epoch
    /// as the settings give it; none in a program built without network
    /// ACLs (`ACL` false: the compiler then drops the walk).
    #[inline(always)]
    fn of<const ACL: bool>(settings: &Settings, generation: u8, direction: u8) -> Self {
        Self {
            epoch: if ACL {
                settings.nacl[usize::from(direction & 1)]
            } else {
                0
            },
            generation,
        }
    }
}

/// What [`acl_step`] reads and writes.
#[repr(C)]
struct AclWalk {
    table: *const NaclTable,
    flow: *const Flow,
    direction: u64,
    denied: u64,
}

/// [`ACL_STEP`] entries of the walk, from `index * ACL_STEP`: stops
/// (returns 1) at the first that matches, with its action.
extern "C" fn acl_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes the `AclWalk` `acl_denies` gave it, whose
    // pointers are to live map values (the table, the per-CPU scratch).
    let walk = unsafe { &mut *ctx.cast::<AclWalk>() };
    // SAFETY: as above: the table and the flow outlive the walk.
    let (table, flow) = unsafe { (&*walk.table, &*walk.flow) };
    #[expect(clippy::cast_possible_truncation, reason = "0 or 1")]
    let direction = walk.direction as u8;
    // Masked, so the verifier bounds every entry's address without a
    // compare (the table has NACL_SLOTS slots; bpf_loop never passes an
    // index past NACL_ENTRIES / ACL_STEP).
    #[expect(clippy::cast_possible_truncation, reason = "masked")]
    let first = (index as usize) & (nacl::NACL_SLOTS / ACL_STEP - 1);
    let len = table.len as usize;
    for k in 0..ACL_STEP {
        let i = first * ACL_STEP + k;
        if i >= len {
            return 1;
        }
        let Some(entry) = table.entries.get(i & (nacl::NACL_SLOTS - 1)) else {
            return 1;
        };
        if nacl::matches(entry, direction, flow) {
            walk.denied = u64::from(entry.flags & nacl::ENTRY_ALLOW == 0);
            return 1;
        }
    }
    0
}

/// The verdict where the security group's is `by_group` and the subnet's
/// network ACL (if one filters) judges too: inbound the network ACL comes
/// first (its deny is the reason), outbound after the group (a packet the
/// group refuses is the group's drop).
#[inline(always)]
fn with_acl(acl: AclRef, direction: u8, flow: &Flow, by_group: u32) -> u32 {
    if direction == policy::EGRESS && !counters::passes(by_group) {
        return by_group;
    }
    if acl.epoch != 0 && acl_denies(acl, direction, flow) {
        DROP_NETWORK_ACL
    } else {
        by_group
    }
}

/// A packet no connection-table entry admits, judged as AWS judges a new
/// flow: the rules, then the source/destination check. In that order a
/// packet the rules refuse (a flood) costs no lookup of the instance's own
/// addresses; it would be dropped either way, and is counted as refused by
/// the rules. Gives the remote end's address class when both allow it, the
/// drop reason otherwise.
#[inline(always)]
fn by_rules(
    generation: u8,
    direction: u8,
    flow: &Flow,
    guest_mac: Option<[u8; 6]>,
) -> Result<AddrValue, u32> {
    let remote = allowing_class(&KernelPolicy, generation, direction, flow).ok_or(DROP_NO_RULE)?;
    if !policy::own_address(&KernelPolicy, generation, direction, flow, guest_mac) {
        return Err(DROP_SOURCE_DEST_CHECK);
    }
    Ok(remote)
}

/// An ICMP error passes when the packet it quotes belongs to a tracked flow
/// (path MTU discovery, unreachable ports, traceroute) and was sent by the
/// error's receiver: an error goes back to the source of what caused it.
#[inline(always)]
fn related_to_tracked(
    error: &Flow,
    inner: &Flow,
    key: &mut CtKey,
    now: u64,
    settings: &Settings,
) -> bool {
    if !conntrack::quotes_its_receiver(error, inner) {
        return false;
    }
    conntrack::fill_key(inner, key);
    // SAFETY: the entry is read at once; map values are freed only after an RCU grace period, which cannot end while this program runs.
    match unsafe { CONNS.get(key) } {
        Some(e) => conntrack::is_live(e, inner.proto, now, settings),
        None => false,
    }
}
