//! The programs' per-reason packet counters, read from the per-CPU array.

use aya::maps::{MapData, PerCpuArray};
use sg_common::{counters, maps as m, policy};

use super::{Dataplane, DataplaneError, error::map_err};

/// Packets by reason in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReasonCounts {
    /// (reason name, packets), one per reason code, in code order.
    pub by_reason: Vec<(&'static str, u64)>,
}

impl ReasonCounts {
    /// Packets counted under `name` (e.g. `"drop_no_rule"`).
    pub fn get(&self, name: &str) -> u64 {
        self.by_reason
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    }

    pub fn passed(&self) -> u64 {
        self.sum(true)
    }

    pub fn dropped(&self) -> u64 {
        self.sum(false)
    }

    fn sum(&self, passing: bool) -> u64 {
        self.by_reason
            .iter()
            .zip(0u32..)
            .filter(|(_, code)| counters::passes(*code) == passing)
            .map(|((_, v), _)| v)
            .sum()
    }
}

/// Both directions' counters of one instance, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ingress: ReasonCounts,
    pub egress: ReasonCounts,
}

impl Counters {
    fn add(&mut self, other: &Self) {
        for (mine, theirs) in [
            (&mut self.ingress, &other.ingress),
            (&mut self.egress, &other.egress),
        ] {
            if mine.by_reason.is_empty() {
                mine.by_reason.clone_from(&theirs.by_reason);
            } else {
                for ((_, v), (_, w)) in mine.by_reason.iter_mut().zip(&theirs.by_reason) {
                    *v += w;
                }
            }
        }
    }
}

impl Dataplane {
    /// Packets by direction and reason since the maps were created, over
    /// both policy generations.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let [a, b] = self.counters_by_generation()?;
        let mut sum = a;
        sum.add(&b);
        Ok(sum)
    }

    /// Packets by direction and reason, apart for each policy generation
    /// (index 0 and 1: the generation bit the settings flip on a reload),
    /// so a reload can be checked packet by packet.
    pub fn counters_by_generation(&self) -> Result<[Counters; 2], DataplaneError> {
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(m::COUNTERS)).map_err(map_err(m::COUNTERS))?;
        let read = |generation: u8, direction: u8| -> Result<ReasonCounts, DataplaneError> {
            let mut by_reason = Vec::with_capacity(counters::NAMES.len());
            for (reason, name) in (0u32..).zip(counters::NAMES) {
                let values = array
                    .get(&counters::index(generation, direction, reason), 0)
                    .map_err(map_err(m::COUNTERS))?;
                by_reason.push((name, values.iter().sum()));
            }
            Ok(ReasonCounts { by_reason })
        };
        let both = |generation| -> Result<Counters, DataplaneError> {
            Ok(Counters {
                ingress: read(generation, policy::INGRESS)?,
                egress: read(generation, policy::EGRESS)?,
            })
        };
        Ok([both(0)?, both(1)?])
    }
}
