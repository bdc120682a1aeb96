//! The AWS services security groups never filter (DHCP, `DHCPv6`, Amazon
//! DNS at the VPC's base plus two and at 169.254.169.253, instance
//! metadata, Amazon Time Sync): they pass with egress limited to tcp/443,
//! without a connection-table entry, and only as themselves (the service's
//! port at the service's address; no connection opened "by" a service).

use sg_agent::{
    config::Direction,
    policy::{
        compile::compile,
        reference::{Packet, evaluate},
    },
};
use sg_tests::{
    frames::{ACK, SYN, Shape, Transport, frame},
    kernel::{dataplane_for, tc_passes, vpc, xdp_passes},
};

use crate::{ip, tcp};

const CONFIG: &str = r#"
[vpc]
cidr_blocks = ["10.0.0.0/16", "2001:db8::/56"]

[[security_group]]
name = "narrow"
egress = [{ protocol = "tcp", from_port = 443, to_port = 443, cidr_blocks = ["0.0.0.0/0"] }]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["10.9.0.0/16"]

[[instance]]
name = "narrow"
addresses = ["10.0.0.1", "2001:db8::1"]
security_groups = ["narrow"]
"#;

fn udp(sport: u16, dport: u16) -> Transport {
    Transport::Udp { sport, dport }
}

/// The reference evaluator's word on the same packet (no TCP flags: it
/// does not model them).
fn reference(direction: Direction, src: &str, dst: &str, t: &Transport) -> bool {
    let vpc = vpc(CONFIG);
    let (src, dst) = (ip(src), ip(dst));
    let l4 = crate::l4_of(t, false);
    let packet = Packet {
        src,
        dst,
        proto: t.proto(src.is_ipv6()),
        l4,
        later_fragment: false,
        via_ah: false,
    };
    evaluate(&vpc, &vpc.instances[0], direction, &packet, false).passes()
}

/// (direction, src, dst, transport, passes, what)
type Case = (
    Direction,
    &'static str,
    &'static str,
    Transport,
    bool,
    &'static str,
);

#[expect(
    clippy::too_many_lines,
    reason = "a table of cases, one per line before rustfmt"
)]
fn cases() -> Vec<Case> {
    vec![
        (
            Direction::Egress,
            "10.0.0.1",
            "10.0.0.2",
            udp(40000, 53),
            true,
            "DNS query to VPC+2",
        ),
        (
            Direction::Ingress,
            "10.0.0.2",
            "10.0.0.1",
            udp(53, 40000),
            true,
            "its answer",
        ),
        (
            Direction::Egress,
            "10.0.0.1",
            "10.0.0.2",
            tcp(40001, 53, SYN),
            true,
            "DNS over TCP",
        ),
        (
            Direction::Egress,
            "10.0.0.1",
            "10.0.0.3",
            udp(40000, 53),
            false,
            "VPC+3 is no DNS",
        ),
        (
            Direction::Egress,
            "10.0.0.1",
            "169.254.169.253",
            udp(40002, 53),
            true,
            "link-local DNS",
        ),
        (
            Direction::Egress,
            "10.0.0.1",
            "169.254.169.254",
            tcp(40003, 80, SYN),
            true,
            "metadata",
        ),
        (
            Direction::Ingress,
            "169.254.169.254",
            "10.0.0.1",
            tcp(80, 40003, SYN | ACK),
            true,
            "metadata answers",
        ),
        (
            Direction::Egress,
            "10.0.0.1",
            "169.254.169.254",
            udp(40004, 53),
            false,
            "metadata is no DNS",
        ),
        (
            Direction::Egress,
            "10.0.0.1",
            "169.254.169.123",
            udp(40005, 123),
            true,
            "time",
        ),
        (
            Direction::Egress,
            "2001:db8::1",
            "fd00:ec2::123",
            udp(40006, 123),
            true,
            "time, IPv6",
        ),
        (
            Direction::Egress,
            "2001:db8::1",
            "fd00:ec2::253",
            udp(40007, 53),
            true,
            "DNS, IPv6",
        ),
        (
            Direction::Egress,
            "0.0.0.0",
            "255.255.255.255",
            udp(68, 67),
            true,
            "DHCP discover",
        ),
        (
            Direction::Ingress,
            "10.0.255.254",
            "255.255.255.255",
            udp(67, 68),
            true,
            "DHCP offer",
        ),
        (
            Direction::Egress,
            "fe80::1",
            "ff02::1:2",
            udp(546, 547),
            true,
            "DHCPv6 solicit",
        ),
        (
            Direction::Ingress,
            "fe80::9",
            "fe80::1",
            udp(547, 546),
            true,
            "DHCPv6 advertise",
        ),
        (
            Direction::Ingress,
            "10.0.0.2",
            "10.0.0.1",
            udp(54, 53),
            false,
            "a DNS server's port 53 is not the service's answer",
        ),
        (
            Direction::Egress,
            "10.0.0.7",
            "10.0.0.2",
            udp(40008, 53),
            false,
            "from another's address: source/destination check",
        ),
    ]
}

#[test]
fn aws_services_pass_with_narrow_egress_and_use_no_entry() {
    let dp = dataplane_for(&vpc(CONFIG), "narrow");
    let cases = cases();
    let mut failures = Vec::new();
    for (direction, src, dst, t, want, what) in &cases {
        let f = frame(ip(src), ip(dst), t, &Shape::default());
        let got = match direction {
            Direction::Ingress => xdp_passes(&dp, &f),
            Direction::Egress => tc_passes(&dp, &f),
        };
        let oracle = reference(*direction, src, dst, t);
        if got != *want || oracle != *want {
            failures.push(format!(
                "{what}: kernel {got}, reference {oracle}, expected {want}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        dp.tracked_connections(),
        0,
        "services use no connection-table entry"
    );
    let counts = dp.counters().expect("counters");
    assert_eq!(
        counts.ingress.get("pass_aws_service") + counts.egress.get("pass_aws_service"),
        cases.iter().filter(|c| c.4).count() as u64,
        "each passed as an AWS service"
    );
}

/// The services answer; they never open a connection: a SYN "from" the
/// metadata service's port 80 to the instance is judged by the rules (it
/// would otherwise reach any port from a spoofed source).
#[test]
fn a_connection_opened_from_a_service_address_meets_the_rules() {
    let dp = dataplane_for(&vpc(CONFIG), "narrow");
    let syn = frame(
        ip("169.254.169.254"),
        ip("10.0.0.1"),
        &tcp(80, 22, SYN),
        &Shape::default(),
    );
    assert!(!xdp_passes(&dp, &syn), "not from 10.9.0.0/16: refused");
    let compiled = compile(&vpc(CONFIG));
    assert!(
        compiled.instances[0].tables.v4.len() > 3,
        "the service addresses are in the tries"
    );
}
