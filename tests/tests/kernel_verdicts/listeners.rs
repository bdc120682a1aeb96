//! Multicast listener messages on the link (RFC 3810: from a link-local
//! address or `::`, to a link-scope group): plumbing no security group
//! sees, passed like neighbour discovery on both sides of a link. A host's
//! tap sends its own reports as it comes up; they filled the drop log.
//! The same message type from a global address, or to a unicast one, is
//! judged by the rules like any other `ICMPv6`.

use sg_tests::{
    frames::{Shape, Transport, frame},
    kernel::{dataplane_for, tc_passes, vpc, xdp_passes},
};

use crate::{
    host_side::{GUEST, config, from_mac, host_side, outbound},
    ip,
};

fn listener(ty: u8) -> Transport {
    Transport::Icmp {
        ty,
        code: 0,
        rest: [0; 4],
    }
}

/// A version 2 listener report (143) from `src` to `dst`.
fn report(src: &str, dst: &str) -> Vec<u8> {
    frame(ip(src), ip(dst), &listener(143), &Shape::default())
}

#[test]
fn link_listener_messages_pass_and_others_are_judged() {
    // The group allows no IPv6 inbound at all, and outbound only TCP 443.
    let v = vpc(&config(""));
    let dp = dataplane_for(&v, "vm");
    for (ty, src, dst) in [
        (143, "fe80::1", "ff02::16"),
        (131, "fe80::1", "ff02::1:ff00:1"),
        (132, "fe80::1", "ff02::2"),
        (130, "fe80::1", "ff02::1"),
        (143, "::", "ff02::16"),
    ] {
        let f = frame(ip(src), ip(dst), &listener(ty), &Shape::default());
        assert!(xdp_passes(&dp, &f), "inbound {ty} {src} -> {dst}");
        assert!(tc_passes(&dp, &f), "outbound {ty} {src} -> {dst}");
    }
    for (src, dst, what) in [
        ("2001:db8::7", "ff02::16", "from a global address"),
        ("fe80::1", "2001:db8::1", "to a unicast address"),
        ("fe80::1", "ff05::16", "to a group beyond the link"),
    ] {
        assert!(
            !xdp_passes(&dp, &report(src, dst)),
            "inbound {what}: judged, refused"
        );
    }
    // Another ICMPv6 type on the same addresses is judged too.
    let echo = frame(
        ip("fe80::1"),
        ip("ff02::16"),
        &listener(128),
        &Shape::default(),
    );
    assert!(
        !xdp_passes(&dp, &echo),
        "an echo request to the group is judged"
    );
}

#[test]
fn the_host_side_lets_the_guests_listener_reports_out() {
    let dp = host_side("host_interface = \"tap-vm\"\nmac = \"52:54:00:12:34:56\"");
    assert!(outbound(
        &dp,
        &from_mac(report("fe80::5054:ff:fe12:3456", "ff02::16"), GUEST)
    ));
    assert!(outbound(&dp, &from_mac(report("::", "ff02::16"), GUEST)));
    assert!(
        !outbound(&dp, &from_mac(report("2001:db8::99", "ff02::16"), GUEST)),
        "from a global address it is judged (and refused: not the guest's)"
    );
}
