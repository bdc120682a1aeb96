//! Where a libvirt domain's NICs are on this host: the tap of each
//! `<interface>` of the running domain (its `<target dev>`) and the guest's
//! MAC address (its `<mac address>`), read from the domain XML.
//!
//! The running agent reads libvirt's live state file of the domain
//! (`/run/libvirt/qemu/NAME.xml`, written by libvirtd while the domain runs
//! and removed when it stops), so no libvirt client library (and no
//! connection to libvirtd) is needed; the libvirt hook (`sg-agent
//! libvirt-hook`) reads the same XML from its standard input, as libvirt
//! gives it to hooks.

use std::{
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub mod addresses;
pub mod overlay;

use crate::config::MacAddr;

/// Where libvirtd keeps the live state of running QEMU domains.
pub const QEMU_STATE_DIR: &str = "/run/libvirt/qemu";

/// The largest domain XML read (a domain's is a few tens of KiB).
const MAX_XML: u64 = 4 << 20;

/// One NIC of a running domain: its tap on this host and the guest's MAC;
/// what the domain's own `<metadata>` says of it (see [`METADATA_NS`]),
/// and where libvirt knows its addresses from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainNic {
    /// The tap (`vnetN`, or the `<target dev>` the domain names).
    pub ifname: String,
    pub mac: MacAddr,
    /// The instance the domain's metadata makes of this NIC, if any.
    #[serde(default)]
    pub instance: Option<NicInstance>,
    /// Addresses the domain's XML gives the NIC (`<ip address>`).
    #[serde(default)]
    pub addresses: Vec<std::net::IpAddr>,
    /// The libvirt network it is on (`<source network>`), whose DHCP
    /// reservations and leases name its addresses.
    #[serde(default)]
    pub network: Option<String>,
    /// The bridge it is a port of (`<source bridge>`, which libvirt also
    /// fills in for a network's NIC): a network's leases are kept by it.
    #[serde(default)]
    pub bridge: Option<String>,
}

/// The XML namespace of sg-agent's element in a domain's `<metadata>`:
///
/// ```xml
/// <metadata>
///   <sg:instance xmlns:sg="https://github.com/sg-agent/sg-agent/libvirt/1">
///     <sg:security-group>web</sg:security-group>
///     <!-- per NIC, where a domain has several (groups of its own, a name) -->
///     <sg:interface mac="52:54:00:00:00:02" name="web-backend">
///       <sg:security-group>backend</sg:security-group>
///     </sg:interface>
///   </sg:instance>
/// </metadata>
/// ```
///
/// `virsh metadata DOMAIN --uri URI --key sg --set '<instance>...</instance>'`
/// writes it (`--live`: on the running domain too); `name`, `vpc` and
/// `subnet` attributes of `<sg:instance>` are optional.
pub const METADATA_NS: &str = "https://github.com/sg-agent/sg-agent/libvirt/1";

/// The instance a domain's metadata makes of one of its NICs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInstance {
    /// The instance's name: the metadata's, else the domain's (with the
    /// NIC's MAC address where the domain has several).
    pub name: String,
    pub groups: Vec<String>,
    pub vpc: Option<String>,
    pub subnet: Option<String>,
}

/// Interface types whose host side is a tap this host owns. `direct`
/// (macvtap) hands the guest's frames to a NIC's driver past any tap, and
/// `user`/`vhostuser` have no host interface.
const TAP_TYPES: [&str; 3] = ["bridge", "network", "ethernet"];

/// The NICs of a domain, from its XML (the live state file wraps the domain
/// in `<domstatus>`; a hook gets the bare `<domain>`). A NIC that has no
/// tap yet (`<target dev>` is set when the domain starts) is left out.
pub fn nics(xml: &str) -> Result<Vec<DomainNic>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not domain XML: {e}"))?;
    let domain = doc
        .descendants()
        .find(|n| n.has_tag_name("domain"))
        .ok_or("no <domain> element")?;
    let name = domain
        .children()
        .find(|n| n.has_tag_name("name"))
        .and_then(|n| n.text())
        .unwrap_or_default();
    let devices = domain
        .children()
        .find(|n| n.has_tag_name("devices"))
        .ok_or("the domain has no <devices>")?;
    let mut out = Vec::new();
    for iface in devices.children().filter(|n| n.has_tag_name("interface")) {
        let kind = iface.attribute("type").unwrap_or_default();
        if !TAP_TYPES.contains(&kind) {
            continue;
        }
        let child = |tag| iface.children().find(|n| n.has_tag_name(tag));
        let Some(ifname) = child("target").and_then(|t| t.attribute("dev")) else {
            continue;
        };
        let mac = child("mac")
            .and_then(|m| m.attribute("address"))
            .ok_or_else(|| format!("interface {ifname} has no <mac address>"))?;
        let mac = mac
            .parse()
            .map_err(|why| format!("interface {ifname}: MAC address {mac:?} {why}"))?;
        // The guest's own addresses where the XML gives them: `<ip
        // address>` (LXC's, and QEMU's user networking), but on an
        // `ethernet` tap that is the host end's, and the guest's is `peer`.
        let mut addresses = Vec::new();
        let key = if kind == "ethernet" {
            "peer"
        } else {
            "address"
        };
        for ip in iface.children().filter(|n| n.has_tag_name("ip")) {
            let Some(text) = ip.attribute(key) else {
                continue;
            };
            let text = text.split('/').next().unwrap_or_default();
            addresses.push(
                text.parse().map_err(|_| {
                    format!("interface {ifname}: <ip address={text:?}> is no address")
                })?,
            );
        }
        let source = child("source");
        // A network's NIC: its bridge is in the `<actual>` device libvirt
        // resolved it to (live XML only).
        let actual = child("actual")
            .and_then(|a| a.children().find(|n| n.has_tag_name("source")))
            .and_then(|s| s.attribute("bridge"));
        out.push(DomainNic {
            ifname: ifname.to_owned(),
            mac,
            instance: None,
            addresses,
            network: source
                .and_then(|s| s.attribute("network"))
                .map(str::to_owned),
            bridge: source
                .and_then(|s| s.attribute("bridge"))
                .or(actual)
                .map(str::to_owned),
        });
    }
    if let Some(meta) = domain
        .children()
        .find(|n| n.has_tag_name("metadata"))
        .and_then(|m| {
            m.children()
                .find(|n| n.has_tag_name((METADATA_NS, "instance")))
        })
    {
        instances_of(name, meta, &mut out)?;
    }
    Ok(out)
}

/// Gives each NIC the instance `meta` (sg-agent's metadata element) makes
/// of it: its own `<sg:interface>`'s groups where it has one, else the
/// domain's. A domain whose metadata gives no group to a NIC leaves that
/// NIC to the rules file.
fn instances_of(
    domain: &str,
    meta: roxmltree::Node<'_, '_>,
    nics: &mut [DomainNic],
) -> Result<(), String> {
    let groups_in = |node: roxmltree::Node<'_, '_>| -> Vec<String> {
        node.children()
            .filter(|n| n.has_tag_name((METADATA_NS, "security-group")))
            .filter_map(|n| n.text())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    };
    let attr = |node: roxmltree::Node<'_, '_>, key: &str| node.attribute(key).map(str::to_owned);
    let base = attr(meta, "name").unwrap_or_else(|| domain.to_owned());
    let mut per_nic = Vec::new();
    for iface in meta
        .children()
        .filter(|n| n.has_tag_name((METADATA_NS, "interface")))
    {
        let text = iface.attribute("mac").unwrap_or_default();
        let mac: MacAddr = text.parse().map_err(|why| {
            format!("its sg-agent metadata: <interface mac={text:?}>: MAC address {why}")
        })?;
        per_nic.push((mac, iface));
    }
    if let Some((mac, _)) = per_nic
        .iter()
        .find(|(m, _)| !nics.iter().any(|n| n.mac == *m))
    {
        return Err(format!(
            "its sg-agent metadata names NIC {mac}, which the domain does not have"
        ));
    }
    let domain_groups = groups_in(meta);
    for (index, nic) in nics.iter_mut().enumerate() {
        let own = per_nic.iter().find(|(m, _)| *m == nic.mac).map(|(_, n)| *n);
        let groups = own
            .map(groups_in)
            .filter(|g| !g.is_empty())
            .unwrap_or_else(|| domain_groups.clone());
        if groups.is_empty() {
            continue;
        }
        // The first NIC is the domain's instance; another (hot-plugged,
        // say) is named by its MAC address too, so the first keeps its
        // name (and its connections) whatever is plugged in after it.
        let name = own.and_then(|n| attr(n, "name")).unwrap_or_else(|| {
            if index == 0 {
                base.clone()
            } else {
                format!("{base}:{}", nic.mac)
            }
        });
        nic.instance = Some(NicInstance {
            name,
            groups,
            vpc: attr(meta, "vpc"),
            subnet: own
                .and_then(|n| attr(n, "subnet"))
                .or_else(|| attr(meta, "subnet")),
        });
    }
    Ok(())
}

/// The NIC an instance names: the domain's only NIC, or the one whose MAC
/// address is `mac`.
pub fn pick(domain: &str, nics: &[DomainNic], mac: Option<MacAddr>) -> Result<DomainNic, String> {
    match (mac, nics) {
        (_, []) => Err(format!(
            "libvirt domain {domain} has no NIC with a tap (bridge, network or ethernet)"
        )),
        (None, [nic]) => Ok(nic.clone()),
        (None, _) => Err(format!(
            "libvirt domain {domain} has {} NICs ({}): name one with libvirt_mac",
            nics.len(),
            nics.iter()
                .map(|n| n.mac.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (Some(mac), _) => nics
            .iter()
            .find(|n| n.mac == mac)
            .cloned()
            .ok_or_else(|| format!("libvirt domain {domain} has no NIC with MAC address {mac}")),
    }
}

/// The live state file of `domain`.
pub fn state_file(state_dir: &Path, domain: &str) -> PathBuf {
    state_dir.join(format!("{domain}.xml"))
}

/// What [`running_nics`] says of a domain that is not running.
const NOT_RUNNING: &str = "is not running";

/// Whether `reason` (from [`running_nics`]) says only that the domain is not
/// running: a shut-off domain is nothing to alarm anyone about.
pub fn only_not_running(reason: &str) -> bool {
    reason.starts_with("libvirt domain ") && reason.contains(&format!(" {NOT_RUNNING} (no "))
}

/// The NICs of `domain` while it runs, from libvirt's live state; an error
/// that says why not (not running: no state file).
pub fn running_nics(state_dir: &Path, domain: &str) -> Result<Vec<DomainNic>, String> {
    let path = state_file(state_dir, domain);
    let xml = read_state(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!(
                "libvirt domain {domain} {NOT_RUNNING} (no {})",
                path.display()
            )
        }
        _ => format!("{}: {e}", path.display()),
    })?;
    nics(&xml).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a state file without following a symlink or blocking on a FIFO,
/// a regular file of bounded size only.
fn read_state(path: &Path) -> std::io::Result<String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() || kind.is_fifo() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_XML {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than a domain's state holds",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(MAX_XML).read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: &str = r"<!--
WARNING: THIS IS AN AUTO-GENERATED FILE.
-->
<domstatus state='running' reason='booted' pid='4242'>
  <domain type='qemu' id='1'>
    <name>web</name>
    <devices>
      <interface type='bridge'>
        <mac address='52:54:00:aa:00:01'/>
        <source bridge='br0'/>
        <target dev='vnet3'/>
        <model type='virtio'/>
      </interface>
      <interface type='network'>
        <mac address='52:54:00:aa:00:02'/>
        <source network='default' portid='a03a4fbc-82cd-4930-8c34-84a7990cc1b7'/>
        <actual type='bridge'>
          <source bridge='virbr0'/>
        </actual>
        <target dev='vnet4'/>
      </interface>
      <interface type='direct'>
        <mac address='52:54:00:aa:00:03'/>
        <source dev='eth0' mode='bridge'/>
        <target dev='macvtap0'/>
      </interface>
      <interface type='user'>
        <mac address='52:54:00:aa:00:04'/>
      </interface>
    </devices>
  </domain>
</domstatus>";

    fn mac(s: &str) -> MacAddr {
        s.parse().expect("a MAC address")
    }

    #[test]
    fn the_taps_of_a_running_domain_are_read_from_its_live_state() {
        let found = nics(LIVE).expect("parses");
        assert_eq!(
            found,
            vec![
                DomainNic {
                    ifname: "vnet3".into(),
                    mac: mac("52:54:00:aa:00:01"),
                    instance: None,
                    addresses: Vec::new(),
                    network: None,
                    bridge: Some("br0".into()),
                },
                DomainNic {
                    ifname: "vnet4".into(),
                    mac: mac("52:54:00:aa:00:02"),
                    instance: None,
                    addresses: Vec::new(),
                    network: Some("default".into()),
                    bridge: Some("virbr0".into()),
                },
            ],
            "bridge and network NICs have taps; macvtap and user networking do not"
        );
    }

    #[test]
    fn metadata_gives_each_nic_its_instance() {
        let xml = format!(
            "<domain><name>web</name><metadata><sg:instance xmlns:sg='{METADATA_NS}' \
             subnet='public'><sg:security-group>web</sg:security-group>\
             <sg:security-group>ssh</sg:security-group>\
             <sg:interface mac='52:54:00:aa:00:02' name='web-back'>\
             <sg:security-group>backend</sg:security-group></sg:interface>\
             </sg:instance><other:x xmlns:other='urn:other'/></metadata><devices>\
             <interface type='bridge'><mac address='52:54:00:aa:00:01'/>\
             <source bridge='br0'/><target dev='vnet1'/><ip address='10.0.0.5'/></interface>\
             <interface type='bridge'><mac address='52:54:00:aa:00:02'/>\
             <source bridge='br1'/><target dev='vnet2'/></interface>\
             <interface type='bridge'><mac address='52:54:00:aa:00:03'/>\
             <source bridge='br1'/><target dev='vnet3'/></interface>\
             </devices></domain>"
        );
        let found = nics(&xml).expect("parses");
        let inst = |i: usize| found[i].instance.clone().expect("an instance");
        assert_eq!(
            inst(0).name,
            "web",
            "the first NIC is the domain's instance"
        );
        assert_eq!(inst(0).groups, ["web", "ssh"]);
        assert_eq!(inst(0).subnet.as_deref(), Some("public"));
        assert_eq!(
            found[0].addresses,
            ["10.0.0.5".parse::<std::net::IpAddr>().expect("ip")]
        );
        assert_eq!(inst(1).name, "web-back", "named by its own element");
        assert_eq!(inst(1).groups, ["backend"]);
        assert_eq!(
            inst(2).name,
            "web:52:54:00:aa:00:03",
            "another NIC: the domain's groups, named by its MAC address"
        );
        assert_eq!(inst(2).groups, ["web", "ssh"]);
        let wrong = xml.replace(
            "mac='52:54:00:aa:00:02' name",
            "mac='52:54:00:aa:00:09' name",
        );
        let err = nics(&wrong).expect_err("metadata naming a NIC the domain lacks");
        assert!(err.contains("52:54:00:aa:00:09"), "{err}");
        let plain = nics(&xml.replace(METADATA_NS, "urn:someone-else")).expect("parses");
        assert!(
            plain.iter().all(|n| n.instance.is_none()),
            "only sg-agent's namespace counts"
        );
    }

    #[test]
    fn a_nic_is_picked_by_mac_when_there_are_several() {
        let found = nics(LIVE).expect("parses");
        let err = pick("web", &found, None).expect_err("two NICs, no MAC");
        assert!(err.contains("libvirt_mac"), "{err}");
        let nic = pick("web", &found, Some(mac("52:54:00:aa:00:02"))).expect("by MAC");
        assert_eq!(nic.ifname, "vnet4");
        let err = pick("web", &found, Some(mac("52:54:00:aa:00:09"))).expect_err("no such NIC");
        assert!(err.contains("52:54:00:aa:00:09"), "{err}");
    }

    #[test]
    fn a_hook_gets_the_bare_domain_and_a_nic_without_a_tap_is_left_out() {
        let xml = "<domain type='qemu'><name>db</name><devices>\
                   <interface type='bridge'><mac address='52:54:00:00:00:07'/>\
                   <source bridge='br0'/></interface>\
                   <interface type='ethernet'><mac address='52:54:00:00:00:08'/>\
                   <ip address='192.168.9.1' prefix='24' peer='10.0.0.8/24'/>\
                   <target dev='tap-db' managed='no'/></interface></devices></domain>";
        let found = nics(xml).expect("parses");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ifname, "tap-db");
        assert_eq!(
            found[0].addresses,
            ["10.0.0.8".parse::<std::net::IpAddr>().expect("ip")],
            "an ethernet tap's <ip address> is the host end's; the guest's is its peer"
        );
        assert!(nics("<notxml").is_err());
        assert!(nics("<domain><name>x</name></domain>").is_err());
    }

    #[test]
    fn a_state_file_is_read_only_as_a_regular_file() {
        let dir = std::env::temp_dir().join(format!("sg-libvirt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("web.xml"), LIVE).expect("write");
        assert_eq!(running_nics(&dir, "web").expect("reads").len(), 2);
        let err = running_nics(&dir, "gone").expect_err("not running");
        assert!(err.contains("not running"), "{err}");
        std::os::unix::fs::symlink(dir.join("web.xml"), dir.join("link.xml")).expect("symlink");
        assert!(
            running_nics(&dir, "link").is_err(),
            "a symlink is not followed"
        );
        nix::unistd::mkfifo(&dir.join("fifo.xml"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let err = running_nics(&dir, "fifo").expect_err("a FIFO is refused without blocking");
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
