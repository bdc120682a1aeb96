//! The host side of an instance's link (`host_interface`): what the
//! instance sends is checked at layer 2 before its security groups judge
//! it (libvirt's `clean-traffic`, Neutron's port security): its source MAC,
//! ARP for its own addresses only, neighbour discovery for its own
//! addresses only, no router messages, no VLAN tags. The same frames on the
//! instance's own side of its link are not checked (the guest could lift
//! that anyway).

use sg_agent::dataplane::Dataplane;
use sg_tests::{
    frames::{SYN, Shape, frame},
    kernel::{dataplane_for, tc_passes, vpc},
};

use crate::{ip, tcp};

pub(crate) const GUEST: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
pub(crate) const OTHER: [u8; 6] = [0x52, 0x54, 0, 0x99, 0x99, 0x99];

pub(crate) fn config(link: &str) -> String {
    format!(
        r#"
[[security_group]]
name = "vm"
  [[security_group.egress]]
  protocol = "tcp"
  from_port = 443
  to_port = 443
  cidr_blocks = ["0.0.0.0/0"]
  ipv6_cidr_blocks = ["::/0"]

[[instance]]
name = "vm"
addresses = ["10.0.0.1", "2001:db8::1"]
security_groups = ["vm"]
{link}
"#
    )
}

/// `frame` with another source MAC.
pub(crate) fn from_mac(mut f: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    f[6..12].copy_from_slice(&mac);
    f
}

pub(crate) fn eth(src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An Ethernet/IPv4 ARP packet (`op` 1 request, 2 reply).
pub(crate) fn arp(src: [u8; 6], op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = eth(src, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

/// An IPv6 neighbour-discovery message: `ty` 133..137, from `src`, with
/// `target` (NS, NA) and one link-layer address option (`opt` 1 source,
/// 2 target) unless `lladdr` is `None`.
pub(crate) fn nd(
    mac: [u8; 6],
    ty: u8,
    src: &str,
    target: Option<&str>,
    opt: u8,
    lladdr: Option<[u8; 6]>,
) -> Vec<u8> {
    let mut body = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    if let Some(t) = target {
        body.extend_from_slice(&t.parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
    if let Some(l) = lladdr {
        body.extend_from_slice(&[opt, 1]);
        body.extend_from_slice(&l);
    }
    let mut f = eth(mac, 0x86dd);
    let mut ip6 = vec![0x60, 0, 0, 0];
    ip6.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    ip6.extend_from_slice(&[58, 255]);
    ip6.extend_from_slice(&src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    ip6.extend_from_slice(&"ff02::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&ip6);
    f.extend_from_slice(&body);
    f
}

/// The host side's outbound verdict (what the instance sent).
pub(crate) fn outbound(dp: &Dataplane, f: &[u8]) -> bool {
    sg_tests::kernel::classifier_passes(dp.egress_host(), f)
}

/// A data plane of `vm` with the host side's outbound program loaded.
pub(crate) fn host_side(link: &str) -> Dataplane {
    let mut dp = dataplane_for(&vpc(&config(link)), "vm");
    dp.load_program(sg_agent::dataplane::EGRESS_HOST_PROGRAM)
        .expect("the host side's outbound program verifies");
    dp
}

pub(crate) fn dropped(dp: &Dataplane, reason: &str) -> u64 {
    dp.counters().expect("counters").egress.get(reason)
}

/// A TCP SYN from the guest's own address to an allowed port, from `mac`.
pub(crate) fn syn(mac: [u8; 6]) -> Vec<u8> {
    from_mac(
        frame(
            ip("10.0.0.1"),
            ip("198.51.100.7"),
            &tcp(40000, 443, SYN),
            &Shape::default(),
        ),
        mac,
    )
}

#[test]
fn the_guest_sends_only_from_its_own_mac_and_speaks_arp_only_for_itself() {
    let mut dp = host_side("host_interface = \"tap-vm\"\nmac = \"52:54:00:12:34:56\"");
    dp.set_mac(Some(GUEST)).expect("MAC set");
    assert!(
        outbound(&dp, &syn(GUEST)),
        "its own MAC passes to the rules"
    );
    assert!(!outbound(&dp, &syn(OTHER)), "another MAC is dropped");
    assert_eq!(dropped(&dp, "drop_mac_spoofed"), 1);

    let own = [10, 0, 0, 1];
    let neighbour = [10, 0, 0, 2];
    let cases: [(&str, Vec<u8>, bool); 7] = [
        (
            "a request from its own address",
            arp(GUEST, 1, GUEST, own, neighbour),
            true,
        ),
        (
            "a gratuitous ARP for its own address",
            arp(GUEST, 2, GUEST, own, own),
            true,
        ),
        (
            "an address probe (sender 0.0.0.0)",
            arp(GUEST, 1, GUEST, [0; 4], own),
            true,
        ),
        (
            "a reply claiming a neighbour's address",
            arp(GUEST, 2, GUEST, neighbour, own),
            false,
        ),
        (
            "a gratuitous ARP for a neighbour's address",
            arp(GUEST, 1, GUEST, neighbour, neighbour),
            false,
        ),
        (
            "a sender MAC that is not its own",
            arp(GUEST, 2, OTHER, own, neighbour),
            false,
        ),
        (
            "an ARP frame from another MAC",
            arp(OTHER, 1, OTHER, own, neighbour),
            false,
        ),
    ];
    for (what, f, passes) in &cases {
        assert_eq!(outbound(&dp, f), *passes, "ARP: {what}");
    }
    assert_eq!(dropped(&dp, "drop_arp_spoofed"), 3);
    assert_eq!(dropped(&dp, "drop_mac_spoofed"), 2);

    // No VLAN tags (a tag could hop VLANs on a VLAN-aware bridge).
    let tagged = from_mac(
        frame(
            ip("10.0.0.1"),
            ip("198.51.100.7"),
            &tcp(40000, 443, SYN),
            &Shape {
                vlans: 1,
                ..Shape::default()
            },
        ),
        GUEST,
    );
    assert!(!outbound(&dp, &tagged), "a VLAN-tagged frame is dropped");
    assert_eq!(dropped(&dp, "drop_unsupported_l2"), 1);

    // What comes in from the host is not checked at layer 2: an ARP
    // request for a neighbour reaches the guest, which ignores it.
    dp.load_ingress_tc()
        .expect("the inbound TC program verifies");
    assert!(sg_tests::kernel::tc_ingress_passes(
        &dp,
        &arp(OTHER, 1, OTHER, neighbour, own)
    ));
}

#[test]
fn neighbour_discovery_claims_only_the_guests_own_addresses() {
    let mut dp = host_side("host_interface = \"tap-vm\"");
    dp.set_mac(Some(GUEST)).expect("MAC set");
    // fe80::5054:ff:fe12:3456: the guest's link-local address (EUI-64).
    let ll = "fe80::5054:ff:fe12:3456";
    let cases: [(&str, Vec<u8>, bool); 11] = [
        (
            "NA for its global address",
            nd(GUEST, 136, ll, Some("2001:db8::1"), 2, Some(GUEST)),
            true,
        ),
        (
            "NA for its link-local address",
            nd(GUEST, 136, ll, Some(ll), 2, Some(GUEST)),
            true,
        ),
        (
            "NS for a neighbour, with its own MAC",
            nd(GUEST, 135, ll, Some("2001:db8::2"), 1, Some(GUEST)),
            true,
        ),
        (
            "duplicate address detection of its own address",
            nd(GUEST, 135, "::", Some("2001:db8::1"), 1, None),
            true,
        ),
        (
            "a router solicitation",
            nd(GUEST, 133, ll, None, 1, Some(GUEST)),
            true,
        ),
        (
            "NA for a neighbour's address",
            nd(GUEST, 136, ll, Some("2001:db8::2"), 2, Some(GUEST)),
            false,
        ),
        (
            "NA naming another MAC",
            nd(GUEST, 136, ll, Some("2001:db8::1"), 2, Some(OTHER)),
            false,
        ),
        (
            "NS naming another MAC",
            nd(GUEST, 135, ll, Some("2001:db8::2"), 1, Some(OTHER)),
            false,
        ),
        (
            "duplicate address detection of a neighbour's address",
            nd(GUEST, 135, "::", Some("2001:db8::2"), 1, None),
            false,
        ),
        (
            "NS from a neighbour's address",
            nd(
                GUEST,
                135,
                "2001:db8::2",
                Some("2001:db8::9"),
                1,
                Some(GUEST),
            ),
            false,
        ),
        (
            "a router advertisement",
            nd(GUEST, 134, ll, None, 1, Some(GUEST)),
            false,
        ),
    ];
    for (what, f, passes) in &cases {
        assert_eq!(outbound(&dp, f), *passes, "ND: {what}");
    }
    assert_eq!(dropped(&dp, "drop_nd_spoofed"), 6);
}

#[test]
fn an_unconfigured_mac_is_learned_from_the_first_frame() {
    let dp = host_side("host_interface = \"tap-vm\"");
    assert_eq!(dp.mac().expect("read"), None, "nothing known yet");
    assert!(outbound(&dp, &syn(GUEST)), "the first frame teaches it");
    let known = dp.mac().expect("read").expect("learned");
    assert_eq!((known.mac, known.learned), (GUEST, true));
    assert!(!outbound(&dp, &syn(OTHER)), "then another MAC is dropped");
    assert!(outbound(&dp, &syn(GUEST)));
}

#[test]
fn the_instances_own_side_is_not_checked_at_layer_2() {
    let dp = dataplane_for(&vpc(&config("interface = \"eth0\"")), "vm");
    assert!(tc_passes(&dp, &syn(OTHER)), "any MAC");
    assert!(tc_passes(
        &dp,
        &arp(OTHER, 2, OTHER, [10, 0, 0, 2], [10, 0, 0, 1])
    ));
    assert!(tc_passes(
        &dp,
        &nd(OTHER, 134, "fe80::1", None, 1, Some(OTHER))
    ));
    assert_eq!(dp.mac().expect("read"), None, "and nothing learned");
}
