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

use crate::config::MacAddr;

/// Where libvirtd keeps the live state of running QEMU domains.
pub const QEMU_STATE_DIR: &str = "/run/libvirt/qemu";

/// The largest domain XML read (a domain's is a few tens of KiB).
const MAX_XML: u64 = 4 << 20;

/// One NIC of a running domain: its tap on this host and the guest's MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainNic {
    /// The tap (`vnetN`, or the `<target dev>` the domain names).
    pub ifname: String,
    pub mac: MacAddr,
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
        out.push(DomainNic {
            ifname: ifname.to_owned(),
            mac,
        });
    }
    Ok(out)
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
        <source network='default'/>
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
                    mac: mac("52:54:00:aa:00:01")
                },
                DomainNic {
                    ifname: "vnet4".into(),
                    mac: mac("52:54:00:aa:00:02")
                },
            ],
            "bridge and network NICs have taps; macvtap and user networking do not"
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
                   <target dev='tap-db' managed='no'/></interface></devices></domain>";
        let found = nics(xml).expect("parses");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].ifname, "tap-db");
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
