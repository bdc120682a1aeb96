//! Events for the agent (see `sg_common::events`): switched by read-only
//! globals the agent sets at load time, so the verifier removes whatever is
//! off, and bounded per CPU so a flood cannot make the ring the bottleneck.

use sg_common::{
    events::{self, FlowEvent},
    flow::Flow,
};

use crate::{
    context::Packet,
    maps::{EVENT_BUDGET, EVENTS},
};

/// `sg_common::events::OBSERVE_*` bits; 0 unless the agent sets them.
#[unsafe(no_mangle)]
static SG_OBSERVE: u32 = 0;

/// Events per CPU and second; 0 unless the agent sets it.
#[unsafe(no_mangle)]
static SG_EVENTS_PER_CPU: u32 = 0;

/// Whether the agent switched `bit` on. A volatile read of the global, so
/// the compiler keeps the load and the verifier, which knows the frozen
/// value, prunes the branch.
#[inline(always)]
pub fn on(bit: u32) -> bool {
    // SAFETY: a plain read of a global the programs never write.
    unsafe { core::ptr::read_volatile(&raw const SG_OBSERVE) & bit != 0 }
}

/// Sends one event for `flow` if the bound allows; counts it as lost if
/// not, or if the ring is full.
#[inline(always)]
pub fn emit(
    ctx: &impl Packet,
    flow: &Flow,
    kind: u8,
    direction: u8,
    reason: u32,
    generation: u8,
    now: u64,
) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not nest on a CPU.
    let budget = unsafe { &mut *budget };
    // SAFETY: a plain read of a global the programs never write.
    let per_cpu = unsafe { core::ptr::read_volatile(&raw const SG_EVENTS_PER_CPU) };
    if !events::spend(budget, now, per_cpu) {
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<FlowEvent>(0) else {
        budget.lost += 1;
        return;
    };
    let mut event = FlowEvent::of(flow, kind, direction, reason, generation);
    event.time_ns = now;
    event.len = ctx.wire_len();
    slot.write(event);
    slot.submit(0);
}
