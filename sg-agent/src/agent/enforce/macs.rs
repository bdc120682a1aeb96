//! MAC addresses on the host side: which instance holds which, so that no
//! guest is taught another's (or the host's) by its first frame, and what
//! each guest taught and when.
//!
//! The programs learn an instance's MAC address from its first frame only
//! when the file and libvirt give none, and then only a unicast address
//! that is not in the instance's `SG_MAC_RESERVED` map: the host's own on
//! its link (the link's host end, the bridge), and every other instance's,
//! configured or learned. The agent keeps that map: before a link is
//! attached, and after every change and reconcile tick, when what guests
//! learned is carried to every other instance's map. Two guests that
//! taught the same address before the agent could carry it over (within
//! one tick) both lose it, and learn again from their next frame; one that
//! taught an address another instance already held loses it at once.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{Agent, Enforced, place::Place};
use crate::{config::MacAddr, dataplane::Side, observe::unix_now};

/// How long the host's own MAC addresses on a link are taken as read.
const HOST_MACS_FRESH: Duration = Duration::from_secs(10);

/// A MAC address an instance taught the host side by its first frame, and
/// when the agent first saw it (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Learned {
    pub mac: [u8; 6],
    pub since: u64,
}

/// What the agent keeps per host-side instance about MAC addresses.
#[derive(Debug, Default)]
pub(super) struct MacGuard {
    /// The address it learned, once the agent saw it.
    pub learned: Option<Learned>,
    /// What its reserved map holds, as last written.
    reserved: Option<BTreeSet<[u8; 6]>>,
    /// The host's own MAC addresses on its link, and when they were read.
    host: Option<(Place, Vec<[u8; 6]>, Instant)>,
}

impl MacGuard {
    /// The host's own MAC addresses on `place` (read again after a while,
    /// or when the place changed).
    fn host_macs(&mut self, place: &Place) -> Vec<[u8; 6]> {
        let fresh =
            matches!(&self.host, Some((p, _, at)) if p == place && at.elapsed() < HOST_MACS_FRESH);
        if !fresh {
            self.host = Some((place.clone(), place.host_end_macs(), Instant::now()));
        }
        self.host
            .as_ref()
            .map(|(_, macs, _)| macs.clone())
            .unwrap_or_default()
    }
}

/// The MAC addresses the rules file gives its instances, by holder.
pub(super) fn configured(
    instances: &[crate::policy::compile::CompiledInstance],
) -> BTreeMap<[u8; 6], String> {
    let mut holders = BTreeMap::new();
    for inst in instances {
        if let Some(mac) = inst.mac {
            holders.entry(mac.0).or_insert_with(|| inst.name.clone());
        }
    }
    holders
}

impl Agent<'_> {
    /// Every MAC address an instance holds, by holder: the file's and
    /// libvirt's, then what guests taught, earliest first.
    fn mac_holders(&self) -> BTreeMap<[u8; 6], String> {
        let mut holders = self.configured_macs.clone();
        let mut learned: Vec<(&String, Learned)> = Vec::new();
        for (name, e) in &self.enforced {
            if let Ok(Some(known)) = e.dataplane.mac()
                && !known.learned
            {
                holders.entry(known.mac).or_insert_with(|| name.clone());
            }
            if let Some(l) = e.macs.learned {
                learned.push((name, l));
            }
        }
        learned.sort_by_key(|(_, l)| l.since);
        for (name, l) in learned {
            holders.entry(l.mac).or_insert_with(|| name.clone());
        }
        holders
    }

    /// What `name`'s programs at `place` must not learn: the host's own
    /// addresses there, and every other instance's.
    pub(super) fn reserved_for(&self, name: &str, place: &Place) -> BTreeSet<[u8; 6]> {
        let mut reserved: BTreeSet<[u8; 6]> = self
            .mac_holders()
            .into_iter()
            .filter(|(_, holder)| holder != name)
            .map(|(mac, _)| mac)
            .collect();
        reserved.extend(place.host_end_macs());
        reserved
    }

    /// Notices what guests taught since the last call (logged, with when),
    /// takes an address back from a guest that taught one another instance
    /// holds, and writes every host-side instance's reserved addresses.
    pub(super) fn guard_macs(&mut self) {
        self.notice_learned();
        let holders = self.mac_holders();
        for (name, e) in &mut self.enforced {
            if e.place.side != Side::Host {
                continue;
            }
            let mut reserved: BTreeSet<[u8; 6]> = holders
                .iter()
                .filter(|(_, holder)| *holder != name)
                .map(|(mac, _)| *mac)
                .collect();
            reserved.extend(e.macs.host_macs(&e.place));
            if e.macs.reserved.as_ref() == Some(&reserved) {
                continue;
            }
            match e.dataplane.set_reserved_macs(&reserved) {
                Ok(()) => e.macs.reserved = Some(reserved),
                Err(err) => log::warn!(
                    instance = name.as_str();
                    "instance {name}: {}",
                    crate::errors::chain(&err)
                ),
            }
        }
    }

    /// Records each MAC address a guest taught since the last call; one
    /// another instance holds already (configured, or taught before) is
    /// taken back at once, and one two guests taught at the same time from
    /// both.
    fn notice_learned(&mut self) {
        let configured: BTreeMap<[u8; 6], String> = self
            .mac_holders()
            .into_iter()
            .filter(|(mac, holder)| {
                self.enforced
                    .get(holder)
                    .and_then(|e| e.macs.learned)
                    .is_none_or(|l| l.mac != *mac)
            })
            .collect();
        let mut new: Vec<(String, [u8; 6])> = Vec::new();
        for (name, e) in &mut self.enforced {
            if e.place.side != Side::Host {
                continue;
            }
            match e.dataplane.mac() {
                Ok(Some(known)) if known.learned => {
                    if e.macs.learned.is_none_or(|l| l.mac != known.mac) {
                        e.macs.learned = None;
                        new.push((name.clone(), known.mac));
                    }
                }
                Ok(_) => e.macs.learned = None,
                Err(err) => log::warn!(
                    instance = name.as_str();
                    "instance {name}: {}",
                    crate::errors::chain(&err)
                ),
            }
        }
        let now = unix_now();
        for (name, mac) in &new {
            let earlier = self
                .enforced
                .iter()
                .find(|(other, e)| *other != name && e.macs.learned.is_some_and(|l| l.mac == *mac))
                .map(|(other, _)| other.clone());
            let twin = new.iter().find(|(other, m)| other != name && m == mac);
            let holder = configured
                .get(mac)
                .filter(|h| *h != name)
                .cloned()
                .or(earlier);
            let e = self.enforced.get_mut(name).expect("enforced");
            let place = e.place.describe();
            let shown = MacAddr(*mac);
            if let Some(holder) = holder {
                log::error!(
                    instance = name.as_str();
                    "instance {name}: its guest sent from {shown}, instance {holder}'s MAC \
                     address, on {place}: not taken as its own; its frames are dropped until \
                     it sends from its own"
                );
                forget(name, e);
            } else if let Some((other, _)) = twin {
                log::error!(
                    instance = name.as_str();
                    "instance {name}: its guest and instance {other}'s both sent first from \
                     {shown}: neither keeps it; each learns again from its next frame"
                );
                forget(name, e);
            } else {
                log::info!(
                    instance = name.as_str();
                    "instance {name}: MAC address {shown} learned from its guest's first frame \
                     on {place}"
                );
                e.macs.learned = Some(Learned {
                    mac: *mac,
                    since: now,
                });
            }
        }
    }
}

/// Takes back what `e`'s guest taught.
fn forget(name: &str, e: &mut Enforced) {
    e.macs.learned = None;
    if let Err(err) = e.dataplane.forget_learned_mac() {
        log::warn!(instance = name; "instance {name}: {}", crate::errors::chain(&err));
    }
}
