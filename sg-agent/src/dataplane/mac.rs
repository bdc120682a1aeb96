//! The instance's MAC address, which the host side's layer-2 guard checks
//! (`sg_common::guard`): written here when the rules file or libvirt gives
//! it, learned by the programs from the instance's first frame otherwise.

use std::collections::BTreeSet;

use aya::maps::{HashMap, MapData, MapError};
use sg_common::{
    guard::{MAC_CONFIGURED, MAC_LEARNED, MacEntry, MacKey},
    maps as m,
};

use super::{Dataplane, DataplaneError, error::map_err};

/// The MAC address the guard checks, and how it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownMac {
    pub mac: [u8; 6],
    /// Taken from the instance's first frame, not given.
    pub learned: bool,
}

/// The MAC addresses an instance's programs check: its own (host side),
/// and the one the AWS services answer from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Macs {
    pub instance: Option<[u8; 6]>,
    pub services: Option<[u8; 6]>,
}

impl Dataplane {
    /// [`Dataplane::set_mac`] and [`Dataplane::set_service_mac`].
    pub fn set_macs(&mut self, macs: Macs) -> Result<(), DataplaneError> {
        self.set_mac(macs.instance)?;
        self.set_service_mac(macs.services)
    }

    /// Where the AWS services answer from: traffic with their addresses
    /// is exempt from the rules only from and to this MAC address.
    /// `None`: nowhere, and such traffic is judged by the rules.
    pub fn set_service_mac(&mut self, mac: Option<[u8; 6]>) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut(m::SERVICE_MAC)
            .unwrap_or_else(|| panic!("the object defines map {}", m::SERVICE_MAC));
        let mut array: aya::maps::Array<&mut MapData, MacEntry> =
            aya::maps::Array::try_from(map).map_err(map_err(m::SERVICE_MAC))?;
        let entry = MacEntry {
            mac: mac.unwrap_or([0; 6]),
            learned: MAC_CONFIGURED,
            pad: 0,
        };
        if array.get(&0, 0).ok() != Some(entry) {
            array.set(0, entry, 0).map_err(map_err(m::SERVICE_MAC))?;
        }
        Ok(())
    }

    /// The services' MAC address the programs check, if any.
    pub fn service_mac(&self) -> Result<Option<[u8; 6]>, DataplaneError> {
        let array: aya::maps::Array<&MapData, MacEntry> =
            aya::maps::Array::try_from(self.map(m::SERVICE_MAC))
                .map_err(map_err(m::SERVICE_MAC))?;
        let e = array.get(&0, 0).map_err(map_err(m::SERVICE_MAC))?;
        Ok((e.mac != [0; 6]).then_some(e.mac))
    }

    fn mac_map(&self) -> Result<HashMap<&MapData, u32, MacEntry>, DataplaneError> {
        HashMap::try_from(self.map(m::MAC)).map_err(map_err(m::MAC))
    }

    fn mac_map_mut(&mut self) -> Result<HashMap<&mut MapData, u32, MacEntry>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut(m::MAC)
            .unwrap_or_else(|| panic!("the object defines map {}", m::MAC));
        HashMap::try_from(map).map_err(map_err(m::MAC))
    }

    /// The MAC address the host side checks, if one is known.
    pub fn mac(&self) -> Result<Option<KnownMac>, DataplaneError> {
        match self.mac_map()?.get(&0, 0) {
            Ok(e) => Ok(Some(KnownMac {
                mac: e.mac,
                learned: e.learned == MAC_LEARNED,
            })),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(m::MAC)(e)),
        }
    }

    /// Makes `mac` the instance's (the rules file's or libvirt's). `None`:
    /// a MAC address given before is forgotten, so the next frame teaches
    /// it; a learned one stays.
    pub fn set_mac(&mut self, mac: Option<[u8; 6]>) -> Result<(), DataplaneError> {
        let known = self.mac()?;
        match mac {
            Some(mac) => {
                let entry = MacEntry {
                    mac,
                    learned: MAC_CONFIGURED,
                    pad: 0,
                };
                if known
                    != Some(KnownMac {
                        mac,
                        learned: false,
                    })
                {
                    self.mac_map_mut()?
                        .insert(0, entry, 0)
                        .map_err(map_err(m::MAC))?;
                }
            }
            None if known.is_some_and(|k| !k.learned) => self.remove_mac()?,
            None => {}
        }
        Ok(())
    }

    /// Forgets a learned MAC address: the link is new (a VM started again
    /// on it, maybe another guest), and its first frame teaches it again.
    pub fn forget_learned_mac(&mut self) -> Result<(), DataplaneError> {
        if self.mac()?.is_some_and(|k| k.learned) {
            self.remove_mac()?;
        }
        Ok(())
    }

    /// The MAC addresses the programs will not learn as the instance's.
    pub fn reserved_macs(&self) -> Result<BTreeSet<[u8; 6]>, DataplaneError> {
        let map: HashMap<&MapData, MacKey, u8> =
            HashMap::try_from(self.map(m::MAC_RESERVED)).map_err(map_err(m::MAC_RESERVED))?;
        map.keys()
            .map(|k| k.map(|k| k.mac))
            .collect::<Result<_, _>>()
            .map_err(map_err(m::MAC_RESERVED))
    }

    /// Makes `macs` the MAC addresses the programs will not learn as the
    /// instance's (the host's, every other instance's): what is there and
    /// not in `macs` goes, what is missing is added. At most
    /// [`m::MAC_RESERVED_MAX_ENTRIES`]; the rest are left out (and said).
    pub fn set_reserved_macs(&mut self, macs: &BTreeSet<[u8; 6]>) -> Result<(), DataplaneError> {
        let now = self.reserved_macs()?;
        let map = self
            .ebpf
            .map_mut(m::MAC_RESERVED)
            .unwrap_or_else(|| panic!("the object defines map {}", m::MAC_RESERVED));
        let mut map: HashMap<&mut MapData, MacKey, u8> =
            HashMap::try_from(map).map_err(map_err(m::MAC_RESERVED))?;
        let key = |mac: [u8; 6]| MacKey { mac, pad: [0; 2] };
        for gone in now.difference(macs) {
            match map.remove(&key(*gone)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(m::MAC_RESERVED)(e)),
            }
        }
        let room =
            (m::MAC_RESERVED_MAX_ENTRIES as usize).saturating_sub(now.intersection(macs).count());
        let added: Vec<&[u8; 6]> = macs.difference(&now).collect();
        if added.len() > room {
            log::warn!(
                "{} MAC addresses to reserve beyond the {} an instance holds: a guest could be taught one of them",
                added.len() - room,
                m::MAC_RESERVED_MAX_ENTRIES
            );
        }
        for mac in added.into_iter().take(room) {
            map.insert(key(*mac), 1, 0)
                .map_err(map_err(m::MAC_RESERVED))?;
        }
        Ok(())
    }

    fn remove_mac(&mut self) -> Result<(), DataplaneError> {
        match self.mac_map_mut()?.remove(&0) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(m::MAC)(e)),
        }
    }
}
