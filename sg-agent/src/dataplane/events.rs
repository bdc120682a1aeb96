//! What the programs report beyond their counters (see
//! `sg_common::events`): the ring of per-packet events, what the per-CPU
//! bound held back, and the per-flow packet and byte counts of the
//! connection table.

use aya::maps::{HashMap, MapData, PerCpuArray};
use sg_common::{
    conntrack::{CtEntry, CtKey},
    events::{
        EVENTS_PER_CPU_DEFAULT, EventBudget, FlowEvent, OBSERVE_DROPS, OBSERVE_FLOW_COUNTS,
        OBSERVE_UNTRACKED,
    },
    maps as m,
};

use super::{Dataplane, DataplaneError, error::map_err};

/// What the programs observe beyond new flows, fixed when the object is
/// loaded (read-only globals: what is off is not in the verified program).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observe {
    /// `sg_common::events::OBSERVE_*` bits.
    pub bits: u32,
    /// Events per CPU and second.
    pub events_per_cpu: u32,
}

impl Default for Observe {
    /// New-flow events only, at the default bound.
    fn default() -> Self {
        Self {
            bits: 0,
            events_per_cpu: EVENTS_PER_CPU_DEFAULT,
        }
    }
}

impl Observe {
    /// Flow logs: per-flow counts, dropped and untracked packets.
    #[must_use]
    pub fn with_flow_logs(self) -> Self {
        Self {
            bits: self.bits | OBSERVE_FLOW_COUNTS | OBSERVE_DROPS | OBSERVE_UNTRACKED,
            ..self
        }
    }

    /// The drop log: dropped packets.
    #[must_use]
    pub fn with_drops(self) -> Self {
        Self {
            bits: self.bits | OBSERVE_DROPS,
            ..self
        }
    }
}

impl Dataplane {
    /// Appends the events the programs sent since the last call.
    pub fn drain_events(&mut self, out: &mut Vec<FlowEvent>) {
        let Some(ring) = &mut self.events else {
            return;
        };
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<FlowEvent>() {
                // SAFETY: the programs write whole `FlowEvent`s (plain
                // integers, any bit pattern valid); the read is unaligned.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<FlowEvent>()) });
            }
        }
    }

    /// Events the programs could not send (over the bound, or the ring was
    /// full), since this object was loaded, summed over CPUs.
    pub fn events_lost(&self) -> Result<u64, DataplaneError> {
        let budget: PerCpuArray<&MapData, EventBudget> =
            PerCpuArray::try_from(self.map(m::EVENT_BUDGET)).map_err(map_err(m::EVENT_BUDGET))?;
        let values = budget.get(&0, 0).map_err(map_err(m::EVENT_BUDGET))?;
        Ok(values.iter().map(|b| b.lost).sum())
    }

    /// Every connection of the connection table, with its packet and byte
    /// counts (a connection's second entry, which only holds its place in
    /// the allowance, left out).
    pub fn connections(&self) -> Result<Vec<(CtKey, CtEntry)>, DataplaneError> {
        let table: HashMap<&MapData, CtKey, CtEntry> =
            HashMap::try_from(self.map(m::CONNS)).map_err(map_err(m::CONNS))?;
        Ok(table
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.kind & sg_common::conntrack::SECOND_ENTRY == 0)
            .collect())
    }
}
