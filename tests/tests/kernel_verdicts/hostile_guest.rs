//! Root in a guest, on the host side of its link: frames crafted to get
//! past the guard and the source/destination check (hardening round four).
//! Each test names the hole it closes: a frame that passed before and is
//! dropped now, beside the legitimate frame of the same kind, which still
//! passes.

use std::collections::BTreeSet;

use sg_agent::dataplane::Dataplane;
use sg_tests::{
    frames::{SYN, Shape, Transport, frame},
    kernel::{dataplane_for, vpc},
};

use crate::{
    host_side::{GUEST, OTHER, arp, from_mac, nd, outbound},
    ip, tcp,
};

/// The host's MAC address on the link (the bridge's: where the AWS
/// services answer).
const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const BROADCAST: [u8; 6] = [0xff; 6];

/// A guest with AWS's default outbound rule (all traffic, both families),
/// SSH in from 10.0.0.0/8, on the host side of a tap, its MAC address
/// given, the host's MAC address where the services answer.
fn guest() -> Dataplane {
    let text = r#"
[[security_group]]
name = "vm"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["10.0.0.0/8"]
  [[security_group.egress]]
  protocol = "-1"
  cidr_blocks = ["0.0.0.0/0"]
  ipv6_cidr_blocks = ["::/0"]

[[instance]]
name = "vm"
addresses = ["10.0.0.1", "2001:db8::1"]
security_groups = ["vm"]
host_interface = "tap-vm"
mac = "52:54:00:12:34:56"
"#;
    let mut dp = dataplane_for(&vpc(text), "vm");
    dp.load_program(sg_agent::dataplane::EGRESS_HOST_PROGRAM)
        .expect("the host side's outbound program verifies");
    dp.set_mac(Some(GUEST)).expect("MAC set");
    dp.set_service_mac(Some(HOST)).expect("services' MAC set");
    dp
}

/// How many of what the guest sent the host side counted under `reason`.
fn counted(dp: &Dataplane, reason: &str) -> u64 {
    dp.counters().expect("counters").egress.get(reason)
}

fn from(src: [u8; 6], dst: [u8; 6]) -> Shape {
    Shape {
        macs: Some((dst, src)),
        ..Shape::default()
    }
}

fn udp(sport: u16, dport: u16) -> Transport {
    Transport::Udp { sport, dport }
}

/// Item 1: the guest sends as another instance's global IPv6 address to a
/// link-local destination. The exemption for link-local addresses is for
/// the instance's *own* end: its EUI-64 address (or one it lists).
#[test]
fn a_link_local_destination_does_not_lift_the_source_check() {
    let dp = guest();
    let neighbour_ll = "fe80::5054:ff:fe99:9999";
    let send = |src: &str, dst: &str| {
        outbound(
            &dp,
            &frame(ip(src), ip(dst), &tcp(40000, 22, SYN), &from(GUEST, OTHER)),
        )
    };
    assert!(
        !send("2001:db8::2", neighbour_ll),
        "another instance's global address, to a link-local one"
    );
    assert!(
        !send("fe80::1234", neighbour_ll),
        "a link-local address that is not the guest's EUI-64"
    );
    assert_eq!(counted(&dp, "drop_source_dest_check"), 2);
    assert!(
        send("fe80::5054:ff:fe12:3456", neighbour_ll),
        "its own link-local address (EUI-64 of its MAC)"
    );
    assert!(
        send("2001:db8::1", neighbour_ll),
        "its own global address, to a link-local one"
    );
}

/// Item 2: with no MAC address given, only a unicast address that is no
/// one else's is learned: not broadcast, not the services' (the host's),
/// not one the agent reserved (the link's host end, another instance's).
#[test]
fn a_guest_teaches_only_a_mac_address_of_its_own() {
    let mut dp = guest();
    dp.set_mac(None).expect("MAC forgotten");
    let neighbour = [0x52, 0x54, 0, 0xaa, 0xbb, 0xcc];
    let host_end = [0xfe, 0x54, 0, 0x12, 0x34, 0x56];
    dp.set_reserved_macs(&BTreeSet::from([neighbour, host_end]))
        .expect("reserved");
    let syn = |mac: [u8; 6]| {
        from_mac(
            frame(
                ip("10.0.0.1"),
                ip("10.0.0.9"),
                &tcp(40000, 22, SYN),
                &Shape::default(),
            ),
            mac,
        )
    };
    for (what, mac) in [
        ("broadcast", BROADCAST),
        ("multicast", [0x33, 0x33, 0, 0, 0, 0x16]),
        ("all zeros", [0; 6]),
        ("the services' (the host's bridge)", HOST),
        ("the link's host end", host_end),
        ("another instance's", neighbour),
    ] {
        assert!(!outbound(&dp, &syn(mac)), "{what} is not learned");
        assert_eq!(dp.mac().expect("read"), None, "{what}: nothing learned");
    }
    assert_eq!(counted(&dp, "drop_mac_spoofed"), 6);
    assert!(outbound(&dp, &syn(GUEST)), "its own is learned");
    let known = dp.mac().expect("read").expect("learned");
    assert_eq!((known.mac, known.learned), (GUEST, true));
    assert_eq!(
        dp.reserved_macs().expect("read"),
        BTreeSet::from([neighbour, host_end]),
        "the agent's reserved addresses are as written"
    );
}

/// Item 4: DHCP's ports lift the source check only for DHCP's exchange: a
/// client's request from 0.0.0.0 (or its own address) to everyone or to
/// the services; anything else on ports 67/68 is judged like any packet.
#[test]
fn dhcp_ports_do_not_lift_the_source_check() {
    let dp = guest();
    let cases: [(&str, &str, &str, Transport, Shape, bool); 6] = [
        (
            "a DISCOVER from 0.0.0.0 to everyone",
            "0.0.0.0",
            "255.255.255.255",
            udp(68, 67),
            from(GUEST, BROADCAST),
            true,
        ),
        (
            "a renewal from its own address to the server",
            "10.0.0.1",
            "10.0.0.2",
            udp(68, 67),
            from(GUEST, HOST),
            true,
        ),
        (
            "a request from a made-up address to everyone",
            "10.0.0.99",
            "255.255.255.255",
            udp(68, 67),
            from(GUEST, BROADCAST),
            false,
        ),
        (
            "a request from a neighbour's address to the services",
            "10.0.0.5",
            "10.0.0.2",
            udp(68, 67),
            from(GUEST, HOST),
            false,
        ),
        (
            "an 'offer' sent as a neighbour to a neighbour",
            "10.0.0.5",
            "10.0.0.6",
            udp(67, 68),
            from(GUEST, OTHER),
            false,
        ),
        (
            "a 'request' sent as a neighbour to a neighbour",
            "10.0.0.5",
            "10.0.0.6",
            udp(68, 67),
            from(GUEST, OTHER),
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (what, src, dst, t, shape, want) in &cases {
        let got = outbound(&dp, &frame(ip(src), ip(dst), t, shape));
        if got != *want {
            failures.push(format!("{what}: passed {got}, expected {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(counted(&dp, "drop_source_dest_check"), 4);
    assert_eq!(counted(&dp, "pass_aws_service"), 2);
}

/// Item 5: an ICMP error quoting a flow the guest tracks passes as related
/// only from the guest's own address, not sent as a neighbour.
#[test]
fn an_icmp_error_sent_as_a_neighbour_is_no_related_packet() {
    let dp = guest();
    let (me, peer) = ("10.0.0.1", "10.0.0.9");
    assert!(outbound(
        &dp,
        &frame(ip(me), ip(peer), &tcp(40000, 22, SYN), &from(GUEST, OTHER))
    ));
    // Port unreachable, quoting the peer's answer to the guest's SYN.
    let error_from = |src: &str| {
        let mut quoted = frame(
            ip(peer),
            ip(me),
            &tcp(22, 40000, SYN | sg_tests::frames::ACK),
            &Shape::default(),
        )[14..]
            .to_vec();
        quoted.truncate(28);
        let mut bytes = vec![3, 3, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&quoted);
        frame(
            ip(src),
            ip(peer),
            &Transport::Raw { proto: 1, bytes },
            &from(GUEST, OTHER),
        )
    };
    assert!(
        !outbound(&dp, &error_from("10.0.0.5")),
        "sent as a neighbour: dropped"
    );
    assert_eq!(counted(&dp, "drop_source_dest_check"), 1);
    assert!(
        outbound(&dp, &error_from(me)),
        "from its own address: related to its tracked flow"
    );
    assert_eq!(counted(&dp, "pass_tracked"), 1);
}

/// Item 7: the transport header is read from inside the IP packet only.
/// Bytes after an IPv6 first fragment that carries no transport header
/// (its payload length ends after the fragment header) are not the
/// packet's: the receiver drops them and reassembles with the ports of a
/// later fragment.
#[test]
fn bytes_after_the_ip_packet_are_not_its_transport_header() {
    let dp = guest();
    // Inbound would be the same; outbound on the host side is the guest's.
    let mut f = frame(
        ip("2001:db8::1"),
        ip("2001:db8::9"),
        &tcp(40000, 22, SYN),
        &Shape {
            ipv6_ext: vec![44],
            fragment: Some((0, true)),
            macs: Some((OTHER, GUEST)),
            ..Shape::default()
        },
    );
    // Payload length: only the 8-byte fragment header; the TCP header
    // behind it is trailing bytes.
    f[14 + 4..14 + 6].copy_from_slice(&8u16.to_be_bytes());
    assert!(
        !outbound(&dp, &f),
        "a transport header past the packet's end"
    );
    assert_eq!(counted(&dp, "drop_malformed"), 1);
    // An IPv4 packet whose total length ends at its header, a TCP header
    // after it.
    let mut f = frame(
        ip("10.0.0.1"),
        ip("10.0.0.9"),
        &tcp(40000, 22, SYN),
        &from(GUEST, OTHER),
    );
    f[14 + 2..14 + 4].copy_from_slice(&20u16.to_be_bytes());
    assert!(!outbound(&dp, &f));
    // A frame shorter than its IP header says.
    let mut f = frame(
        ip("10.0.0.1"),
        ip("10.0.0.9"),
        &tcp(40000, 22, SYN),
        &from(GUEST, OTHER),
    );
    f[14 + 2..14 + 4].copy_from_slice(&1400u16.to_be_bytes());
    assert!(!outbound(&dp, &f));
    assert_eq!(counted(&dp, "drop_malformed"), 3);
    // Ethernet padding after a well-formed packet is no harm.
    let mut f = frame(
        ip("10.0.0.1"),
        ip("10.0.0.9"),
        &tcp(40001, 22, SYN),
        &from(GUEST, OTHER),
    );
    f.extend_from_slice(&[0; 10]);
    assert!(outbound(&dp, &f), "padding after the packet");
}

/// Item 6, as far as a linear frame shows it: the options are walked to
/// the end of the message (the IPv6 payload length), each read; a forged
/// link-layer address after a long padding option is found; bytes after
/// the message are not options.
#[test]
fn neighbour_discovery_is_walked_to_the_end_of_its_message() {
    let dp = guest();
    let ll = "fe80::5054:ff:fe12:3456";
    // An NS for a neighbour with its own MAC address: passes.
    let plain = nd(GUEST, 135, ll, Some("2001:db8::9"), 1, Some(GUEST));
    assert!(outbound(&dp, &plain));
    // A 2 KB padding option (type 200, length 255 x 8), then a source
    // link-layer address naming another instance's MAC address.
    let mut forged = nd(GUEST, 135, ll, Some("2001:db8::9"), 1, Some(GUEST));
    let body_at = 14 + 40;
    let mut extra = vec![200u8, 255];
    extra.resize(255 * 8, 0);
    extra.extend_from_slice(&[1, 1]);
    extra.extend_from_slice(&OTHER);
    forged.extend_from_slice(&extra);
    let len = u16::try_from(forged.len() - body_at).unwrap();
    forged[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    assert!(
        !outbound(&dp, &forged),
        "a forged address after a long padding option"
    );
    assert_eq!(counted(&dp, "drop_nd_spoofed"), 1);
    // The same bytes after the message's end (its payload length ends
    // before them): not part of the message, the receiver never reads them.
    let mut trailing = plain.clone();
    trailing.extend_from_slice(&[1, 1]);
    trailing.extend_from_slice(&OTHER);
    assert!(outbound(&dp, &trailing), "bytes after the message");
    // A message whose options do not fill it (4 bytes left over): the
    // receiver discards it (RFC 4861), and so does the guard.
    let mut ragged = plain;
    ragged.extend_from_slice(&[0; 4]);
    let len = u16::try_from(ragged.len() - body_at).unwrap();
    ragged[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    assert!(!outbound(&dp, &ragged), "options that do not fill it");
}

/// Item 8: an ARP probe (sender 0.0.0.0) asks only for the guest's own
/// address, as its IPv6 twin (duplicate address detection) does: a probe
/// for a neighbour's address could make a neighbour still probing for it
/// give it up.
#[test]
fn an_arp_probe_is_held_to_what_duplicate_address_detection_is() {
    let dp = guest();
    let own = [10, 0, 0, 1];
    let neighbour = [10, 0, 0, 5];
    assert!(outbound(&dp, &arp(GUEST, 1, GUEST, [0; 4], own)));
    assert!(!outbound(&dp, &arp(GUEST, 1, GUEST, [0; 4], neighbour)));
    assert!(!outbound(
        &dp,
        &nd(GUEST, 135, "::", Some("2001:db8::5"), 1, None)
    ));
    assert_eq!(counted(&dp, "drop_arp_spoofed"), 1);
    assert_eq!(counted(&dp, "drop_nd_spoofed"), 1);
}
