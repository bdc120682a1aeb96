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

impl Dataplane {
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
