//! AWS's source/destination check: an instance sends only from its own
//! addresses and receives only for them (new flows are checked; a tracked
//! flow's entry was made by a packet that was), except link-local traffic
//! and DHCP; `source_dest_check = false` turns it off.

use sg_agent::dataplane::Dataplane;
use sg_tests::{
    frames::{SYN, Shape, Transport, frame},
    kernel::{dataplane_for, tc_passes, vpc, xdp_passes},
};

use crate::{CONFIG, ip, tcp};

fn reason_counts(dp: &Dataplane) -> (u64, u64) {
    let c = dp.counters().expect("counters");
    (
        c.ingress.get("drop_source_dest_check") + c.egress.get("drop_source_dest_check"),
        c.ingress.get("drop_no_rule") + c.egress.get("drop_no_rule"),
    )
}

#[test]
fn only_own_addresses_send_and_receive() {
    // The services answer from 02:00:00:00:00:05, where DHCP is exempt.
    let dp = dataplane_for(
        &vpc(&format!(
            "[vpc]\nservice_mac = \"02:00:00:00:00:05\"\n{CONFIG}"
        )),
        "web",
    );
    let syn = |src: &str, dst: &str, port: u16| {
        frame(ip(src), ip(dst), &tcp(41000, port, SYN), &Shape::default())
    };
    // Outbound tcp/443 is allowed to anywhere, but only from 10.0.0.1.
    assert!(tc_passes(&dp, &syn("10.0.0.1", "198.51.100.9", 443)));
    let (checked, _) = reason_counts(&dp);
    assert!(
        !tc_passes(&dp, &syn("10.0.0.99", "198.51.100.9", 443)),
        "a source that is not the instance's is dropped"
    );
    assert_eq!(reason_counts(&dp).0, checked + 1, "under its own reason");
    // Inbound tcp/80 is allowed from anywhere, but only to 10.0.0.1.
    assert!(xdp_passes(&dp, &syn("203.0.113.7", "10.0.0.1", 80)));
    assert!(
        !xdp_passes(&dp, &syn("203.0.113.7", "10.0.0.99", 80)),
        "a destination that is not the instance's is dropped"
    );
    assert!(
        !xdp_passes(&dp, &syn("2001:db8:7::5", "2001:db8::99", 80)),
        "IPv6 too"
    );
    assert_eq!(reason_counts(&dp).0, checked + 3);

    // Link-local IPv6 is exempt: an echo request between link-local
    // addresses is judged by the rules (icmpv6 128 from ::/0 is allowed).
    let echo = Transport::Icmp {
        ty: 128,
        code: 0,
        rest: [0, 1, 0, 1],
    };
    assert!(xdp_passes(
        &dp,
        &frame(ip("fe80::1"), ip("fe80::2"), &echo, &Shape::default())
    ));
    // DHCP is exempt from the check, and (an AWS service, broadcast as a
    // client's discover is) from the rules: no rule here allows it
    // outbound, and it passes.
    let dhcp = frame(
        ip("0.0.0.0"),
        ip("255.255.255.255"),
        &Transport::Udp {
            sport: 68,
            dport: 67,
        },
        &Shape {
            macs: Some(([0xff; 6], [0x02, 0, 0, 0, 0, 1])),
            ..Shape::default()
        },
    );
    let (checked, no_rule) = reason_counts(&dp);
    assert!(tc_passes(&dp, &dhcp));
    assert_eq!(
        reason_counts(&dp),
        (checked, no_rule),
        "DHCP is refused neither by the check nor by the rules"
    );
}

#[test]
fn source_dest_check_false_lets_a_router_instance_forward() {
    let router = CONFIG.replace(
        "security_groups = [\"web\"]",
        "security_groups = [\"web\"]\nsource_dest_check = false",
    );
    assert_ne!(router, CONFIG);
    let dp = dataplane_for(&vpc(&router), "web");
    let syn = frame(
        ip("10.0.0.99"),
        ip("198.51.100.9"),
        &tcp(41001, 443, SYN),
        &Shape::default(),
    );
    assert!(
        tc_passes(&dp, &syn),
        "forwarded traffic passes by the rules"
    );
    assert_eq!(reason_counts(&dp).0, 0);
}
