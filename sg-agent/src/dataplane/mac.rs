//! The instance's MAC address, which the host side's layer-2 guard checks
//! (`sg_common::guard`): written here when the rules file or libvirt gives
//! it, learned by the programs from the instance's first frame otherwise.

use aya::maps::{HashMap, MapData, MapError};
use sg_common::{
    guard::{MAC_CONFIGURED, MAC_LEARNED, MacEntry},
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

    fn remove_mac(&mut self) -> Result<(), DataplaneError> {
        match self.mac_map_mut()?.remove(&0) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(m::MAC)(e)),
        }
    }
}
