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

impl Dataplane {
    /// Packets by direction and reason since the object was loaded.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let array: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(m::COUNTERS)).map_err(map_err(m::COUNTERS))?;
        let read = |direction: u8| -> Result<ReasonCounts, DataplaneError> {
            let mut by_reason = Vec::with_capacity(counters::NAMES.len());
            for (reason, name) in (0u32..).zip(counters::NAMES) {
                let values = array
                    .get(&counters::index(direction, reason), 0)
                    .map_err(map_err(m::COUNTERS))?;
                by_reason.push((name, values.iter().sum()));
            }
            Ok(ReasonCounts { by_reason })
        };
        Ok(Counters {
            ingress: read(policy::INGRESS)?,
            egress: read(policy::EGRESS)?,
        })
    }
}
