//! A libvirt domain that starts while no agent runs: its instances'
//! programs, left pinned by an agent that stopped with `--keep-on-exit` (or
//! was killed), are on the domain's old taps, which went with the domain.
//! The new taps would be open. The libvirt hook (`sg-agent libvirt-hook`,
//! run by libvirtd as root before the guest's CPUs run) puts the very same
//! programs, with their maps (rules, connections, learned state), on the
//! new taps and pins the new links where the next agent adopts them.
//!
//! An instance is the domain's NIC's when the MAC address its guard checks
//! (pinned in `SG_MAC`, written from libvirt's XML: configured, never one
//! learned) is the NIC's, and all its pinned links are host-side TC links
//! that are off their hooks: a live one is some running tap's, not this
//! start's to move.

use std::{io, os::unix::fs::MetadataExt as _, path::PathBuf};

use aya::maps::{HashMap, MapData};
use sg_common::{
    guard::{MAC_CONFIGURED, MacEntry},
    maps as m,
};

use super::{
    netns::NetnsGuard,
    pins::{Hook, InstancePins, PinError, PlaceId, StateDir, place_here},
    sys,
};
use crate::{config::MacAddr, libvirt::DomainNic};

#[derive(Debug, thiserror::Error)]
pub enum RescueError {
    #[error(transparent)]
    State(#[from] PinError),
    #[error("instance {instance}: {what}: {source}")]
    Io {
        instance: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "instance {instance}: its link {hook} is not a host-side TC link, which this hook cannot move"
    )]
    NotMovable {
        instance: String,
        hook: &'static str,
    },
    #[error(
        "instance {instance}: its old tap's namespace (inode {inode}) is neither this host's nor one \
         under /run/netns"
    )]
    NoNamespace { instance: String, inode: u64 },
}

/// One instance put back in force on a NIC's new tap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reattached {
    pub instance: String,
    pub tap: String,
}

/// What an instance's pins say of where it was.
struct Pinned {
    name: String,
    pins: InstancePins,
    links: Vec<(PathBuf, Hook, PlaceId)>,
}

/// Puts the pinned programs of the instances on `nics`' taps (see the
/// module's comment). `state` is the agent's state directory; the caller
/// holds its lock (no agent runs). An instance whose links are still on
/// their hooks is left as it is; one whose links cannot be moved is an
/// error, so the domain does not start open.
pub fn reattach(state: &StateDir, nics: &[DomainNic]) -> Result<Vec<Reattached>, RescueError> {
    let mut out = Vec::new();
    for name in state.instances()? {
        let pins = state.instance(&name);
        let Some(mac) = configured_mac(&pins) else {
            continue;
        };
        let Some(nic) = nics.iter().find(|n| n.mac == mac) else {
            continue;
        };
        let links = pins.links();
        if links.is_empty() {
            continue;
        }
        let io = |what: &str| {
            let instance = name.clone();
            let what = what.to_owned();
            move |source| RescueError::Io {
                instance,
                what,
                source,
            }
        };
        let mut live = false;
        for (path, _, _) in &links {
            live |= super::pin_attached(path).map_err(io(&format!("{}", path.display())))?;
        }
        if live {
            continue;
        }
        let pinned = Pinned { name, pins, links };
        move_links(&pinned, &nic.ifname)?;
        out.push(Reattached {
            instance: pinned.name,
            tap: nic.ifname.clone(),
        });
    }
    Ok(out)
}

/// The MAC address the instance's guard was given (libvirt's, or the
/// file's), if its maps are pinned here.
fn configured_mac(pins: &InstancePins) -> Option<MacAddr> {
    let data = MapData::from_pin(pins.map(m::MAC)).ok()?;
    let map: HashMap<MapData, u32, MacEntry> =
        HashMap::try_from(aya::maps::Map::HashMap(data)).ok()?;
    let entry = map.get(&0, 0).ok()?;
    (entry.learned == MAC_CONFIGURED).then_some(MacAddr(entry.mac))
}

/// Each of the instance's pinned links' programs on `tap`, in the
/// namespace its old tap was in: a new link, pinned where the next agent
/// adopts it, then the old pin removed.
fn move_links(p: &Pinned, tap: &str) -> Result<(), RescueError> {
    let io = |what: String| {
        let instance = p.name.clone();
        move |source| RescueError::Io {
            instance,
            what,
            source,
        }
    };
    // The old pins, removed once every link is moved.
    let mut moved: Vec<PathBuf> = Vec::new();
    for (old_pin, hook, old_place) in &p.links {
        let ingress = match hook {
            Hook::HostTcIngress => true,
            Hook::HostTcEgress => false,
            other => {
                return Err(RescueError::NotMovable {
                    instance: p.name.clone(),
                    hook: other.as_str(),
                });
            }
        };
        let Some(old) = sys::obj_get(old_pin).map_err(io(format!("{}", old_pin.display())))? else {
            continue;
        };
        let info = sys::link_info(&old).map_err(io(format!("{}", old_pin.display())))?;
        let prog = sys::prog_by_id(info.prog_id).map_err(io(format!(
            "program {} of {}",
            info.prog_id,
            old_pin.display()
        )))?;
        let netns = namespace_named(old_place.netns_inode).ok_or(RescueError::NoNamespace {
            instance: p.name.clone(),
            inode: old_place.netns_inode,
        })?;
        let name = match &netns {
            Netns::Own => None,
            Netns::Named(n) => Some(n.as_str()),
        };
        let _in_ns = NetnsGuard::enter_opt(name).map_err(|e| RescueError::Io {
            instance: p.name.clone(),
            what: format!("entering namespace {}", name.unwrap_or_default()),
            source: io::Error::other(e.to_string()),
        })?;
        let place = place_here(tap).map_err(io(format!("tap {tap}")))?;
        let link = sys::tcx_link(&prog, place.ifindex, ingress)
            .map_err(io(format!("attaching {} to {tap}", hook.as_str())))?;
        let new_pin = p.pins.link(*hook, place);
        sys::obj_pin(&link, &new_pin).map_err(io(format!("pinning {}", new_pin.display())))?;
        moved.push(old_pin.clone());
    }
    for old_pin in &moved {
        if let Err(e) = std::fs::remove_file(old_pin) {
            log::warn!("removing the old pin {}: {e}", old_pin.display());
        }
    }
    Ok(())
}

/// A network namespace the hook can enter.
enum Netns {
    /// This process's own.
    Own,
    /// One under /run/netns, by name.
    Named(String),
}

/// The namespace with this inode, as the hook can enter it (`None`: not
/// one it can name).
fn namespace_named(inode: u64) -> Option<Netns> {
    let own = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
    if own == inode {
        return Some(Netns::Own);
    }
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == inode))
        .map(|e| Netns::Named(e.file_name().to_string_lossy().into_owned()))
}
