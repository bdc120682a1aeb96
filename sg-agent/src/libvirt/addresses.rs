//! The addresses libvirt's own networks give a NIC: the DHCP reservations
//! of the network's live definition (`<dhcp><host mac ip/>`, under
//! `/run/libvirt/network`) and the current leases of its dnsmasq (libvirt's
//! lease helper keeps them as JSON in `/var/lib/libvirt/dnsmasq/BRIDGE.status`,
//! what `virsh net-dhcp-leases` shows). What the guest sets up otherwise is
//! not its address: the source check drops it, as on AWS.
//!
//! A lease is the guest's word (DHCP is unauthenticated): dnsmasq gives it
//! only a free address of the range, never one leased to another MAC
//! address, and a lease counts only for the MAC address it names, which is
//! the NIC's own (the host side drops every frame from another). A lease
//! whose Ethernet client identifier names another MAC address than its own
//! (a guest asking in another NIC's name, which dnsmasq would answer with
//! that NIC's address) is no one's address. A guest can still ask with
//! another NIC's MAC address as its client hardware address (the programs
//! do not read DHCP's fields) and move that NIC's lease within the range: a
//! denial of service, never an address of its own. A reservation is the
//! host's word, and known before the guest boots: prefer one.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use super::{DomainNic, read_state};
use crate::config::MacAddr;

/// Where libvirt's lease helper keeps each network's leases.
pub const LEASES_DIR: &str = "/var/lib/libvirt/dnsmasq";
/// Where libvirtd keeps the live definitions of active networks.
pub const NETWORK_STATE_DIR: &str = "/run/libvirt/network";

/// The addresses of every NIC on libvirt's networks, by network (its name
/// for reservations, its bridge for leases) and MAC address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkAddresses {
    /// (network name, MAC) -> reserved addresses.
    reserved: BTreeMap<(String, MacAddr), BTreeSet<IpAddr>>,
    /// (bridge, MAC) -> leased addresses.
    leased: BTreeMap<(String, MacAddr), BTreeSet<IpAddr>>,
}

impl NetworkAddresses {
    /// Reads every active network's reservations (`networks`) and every
    /// bridge's unexpired leases (`leases`, at `now`, Unix seconds). A file
    /// that cannot be read gives nothing (said at debug level): a network
    /// that went away has no addresses to give.
    pub fn read(networks: &Path, leases: &Path, now: u64) -> Self {
        let mut out = Self::default();
        for (stem, text) in files(networks, ".xml") {
            if let Err(e) = out.reservations(&text) {
                log::debug!("libvirt network {stem}: {e}");
            }
        }
        for (bridge, text) in files(leases, ".status") {
            if let Err(e) = out.leases(&bridge, &text, now) {
                log::debug!("{}/{bridge}.status: {e}", leases.display());
            }
        }
        out
    }

    /// A network's live definition (`<networkstatus>` around `<network>`,
    /// or the bare `<network>`): its DHCP hosts.
    fn reservations(&mut self, xml: &str) -> Result<(), String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
        let network = doc
            .descendants()
            .find(|n| n.has_tag_name("network"))
            .ok_or("no <network>")?;
        let name = network
            .children()
            .find(|n| n.has_tag_name("name"))
            .and_then(|n| n.text())
            .ok_or("no <name>")?
            .to_owned();
        for host in network.descendants().filter(|n| n.has_tag_name("host")) {
            let (Some(mac), Some(ip)) = (host.attribute("mac"), host.attribute("ip")) else {
                continue;
            };
            let (Ok(mac), Ok(ip)) = (mac.parse::<MacAddr>(), ip.parse::<IpAddr>()) else {
                return Err(format!(
                    "<host mac={mac:?} ip={ip:?}> is not a MAC and an address"
                ));
            };
            self.reserved
                .entry((name.clone(), mac))
                .or_default()
                .insert(ip);
        }
        Ok(())
    }

    /// A bridge's lease file: `[{"ip-address": .., "mac-address": ..,
    /// "expiry-time": ..}, ...]` (libvirt's `leaseshelper`).
    fn leases(&mut self, bridge: &str, json: &str, now: u64) -> Result<(), String> {
        #[derive(serde::Deserialize)]
        struct Lease {
            #[serde(rename = "ip-address")]
            ip: IpAddr,
            #[serde(rename = "mac-address")]
            mac: Option<String>,
            #[serde(rename = "expiry-time")]
            expiry: Option<u64>,
            #[serde(rename = "client-id")]
            client_id: Option<String>,
        }
        if json.trim().is_empty() {
            return Ok(());
        }
        let leases: Vec<Lease> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        for lease in leases {
            // An expiry of 0 is dnsmasq's infinite lease.
            if lease.expiry.is_some_and(|t| t != 0 && t <= now) {
                continue;
            }
            let Some(mac) = lease.mac.and_then(|m| m.parse::<MacAddr>().ok()) else {
                continue;
            };
            // dnsmasq finds a lease by the client identifier first: one of
            // Ethernet's type (01:MAC) naming another MAC address than the
            // frame's is a guest asking in another NIC's name (which would
            // hand it that NIC's address). Not an address of either.
            if let Some(id) = lease.client_id.as_deref()
                && let Some(named) = id.strip_prefix("01:")
                && named.parse::<MacAddr>().is_ok_and(|m| m != mac)
            {
                log::warn!(
                    "{bridge}: the lease of {} to {mac} was asked for in {named}'s name \
                     (DHCP client identifier {id}): not taken as anyone's address",
                    lease.ip
                );
                continue;
            }
            self.leased
                .entry((bridge.to_owned(), mac))
                .or_default()
                .insert(lease.ip);
        }
        Ok(())
    }

    /// What libvirt gives `nic`: the domain's own `<ip>` addresses, its
    /// network's reservation for its MAC and its bridge's leases, in order.
    pub fn of(&self, nic: &DomainNic) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = nic.addresses.clone();
        let mut add = |set: Option<&BTreeSet<IpAddr>>| {
            for a in set.into_iter().flatten() {
                if !out.contains(a) {
                    out.push(*a);
                }
            }
        };
        if let Some(network) = &nic.network {
            add(self.reserved.get(&(network.clone(), nic.mac)));
        }
        if let Some(bridge) = &nic.bridge {
            add(self.leased.get(&(bridge.clone(), nic.mac)));
        }
        out
    }
}

#[cfg(test)]
impl NetworkAddresses {
    pub(super) fn insert_lease(&mut self, bridge: &str, mac: &str, ip: &str) {
        self.leased
            .entry((bridge.to_owned(), mac.parse().expect("MAC")))
            .or_default()
            .insert(ip.parse().expect("address"));
    }
}

/// The regular files of `dir` ending in `suffix`: (name without it, text).
fn files(dir: &Path, suffix: &str) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(suffix)?.to_owned();
            let text = read_state(&e.path()).ok()?;
            Some((stem, text))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nic(network: Option<&str>, bridge: Option<&str>, mac: &str) -> DomainNic {
        DomainNic {
            ifname: "vnet0".into(),
            mac: mac.parse().expect("MAC"),
            instance: None,
            addresses: Vec::new(),
            network: network.map(str::to_owned),
            bridge: bridge.map(str::to_owned),
        }
    }

    #[test]
    fn reservations_and_unexpired_leases_give_a_nic_its_addresses() {
        let mut found = NetworkAddresses::default();
        found
            .reservations(
                "<networkstatus><network><name>lab</name><bridge name='virbr7'/>\
                 <ip address='10.9.0.1' prefix='24'><dhcp><range start='10.9.0.100' \
                 end='10.9.0.200'/><host mac='52:54:00:00:00:01' ip='10.9.0.10'/></dhcp></ip>\
                 </network></networkstatus>",
            )
            .expect("a network");
        found
            .leases(
                "virbr7",
                r#"[{"ip-address":"10.9.0.150","mac-address":"52:54:00:00:00:02","expiry-time":2000,"client-id":"01:52:54:00:00:00:02"},
                    {"ip-address":"10.9.0.160","mac-address":"52:54:00:00:00:04","expiry-time":2000,"client-id":"01:52:54:00:00:00:02"},
                    {"ip-address":"10.9.0.151","mac-address":"52:54:00:00:00:03","expiry-time":900},
                    {"ip-address":"10.9.0.10","mac-address":"52:54:00:00:00:01","expiry-time":2000}]"#,
                1000,
            )
            .expect("leases");
        let of = |network, bridge, mac| found.of(&nic(network, bridge, mac));
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        assert_eq!(
            of(Some("lab"), Some("virbr7"), "52:54:00:00:00:01"),
            [ip("10.9.0.10")],
            "reserved and leased: once"
        );
        assert_eq!(
            of(Some("lab"), Some("virbr7"), "52:54:00:00:00:02"),
            [ip("10.9.0.150")]
        );
        assert!(
            of(Some("lab"), Some("virbr7"), "52:54:00:00:00:03").is_empty(),
            "an expired lease is no address"
        );
        assert!(
            of(Some("other"), Some("virbr8"), "52:54:00:00:00:02").is_empty(),
            "another network's lease is not this NIC's"
        );
        assert!(
            of(Some("lab"), Some("virbr7"), "52:54:00:00:00:04").is_empty(),
            "a lease asked for in another NIC's name is no one's"
        );
        assert!(found.leases("virbr7", "not json", 0).is_err());
    }
}
