//! What security groups never filter (DHCP, `DHCPv6`, link-local
//! addresses: metadata, Amazon DNS at 169.254.169.253, Time Sync, ECS task
//! metadata; the IPv6 services; Amazon DNS at the VPC's base plus two; the
//! reserved addresses of each subnet, the VPC router among them): it passes
//! with egress limited to tcp/443, without a connection-table entry, but
//! only from and to where the services are (`[vpc] service_mac`), as on
//! EC2, where only the Nitro host answers there. A lab host posing as one
//! of them is judged by the rules; no connection is opened "by" a service.

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
service_mac = "02:00:00:00:00:05"

[[subnet]]
cidr_block = "10.0.1.0/24"

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
addresses = ["10.0.1.10", "2001:db8::10"]
security_groups = ["narrow"]
"#;

const SERVICES: [u8; 6] = [0x02, 0, 0, 0, 0, 5];
const INSTANCE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const ELSEWHERE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x77];

/// Where the remote end of a case's frame is, at layer 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// The services' MAC address.
    Services,
    /// Another host's.
    Elsewhere,
    /// A broadcast (IPv4) or multicast (IPv6) address, outbound.
    Everyone,
}

fn udp(sport: u16, dport: u16) -> Transport {
    Transport::Udp { sport, dport }
}

fn echo(ty: u8) -> Transport {
    Transport::Icmp {
        ty,
        code: 0,
        rest: [0, 9, 0, 1],
    }
}

/// The frame of a case: the remote end's MAC address is the source
/// inbound, the destination outbound.
fn shape(direction: Direction, at: At, v6: bool) -> Shape {
    let remote = match (at, v6) {
        (At::Services, _) => SERVICES,
        (At::Elsewhere, _) => ELSEWHERE,
        (At::Everyone, false) => [0xff; 6],
        (At::Everyone, true) => [0x33, 0x33, 0, 1, 0, 2],
    };
    let macs = match direction {
        Direction::Ingress => (INSTANCE, remote),
        Direction::Egress => (remote, INSTANCE),
    };
    Shape {
        macs: Some(macs),
        ..Shape::default()
    }
}

/// The reference evaluator's word on the same packet (no TCP flags: it
/// does not model them), told where the frame comes from or goes to as
/// the programs see it.
fn reference(direction: Direction, src: &str, dst: &str, t: &Transport, at: At) -> bool {
    let vpc = vpc(CONFIG);
    let (src, dst) = (ip(src), ip(dst));
    let l4 = crate::l4_of(t, false);
    let dhcp_request = matches!(
        t,
        Transport::Udp {
            sport: 68,
            dport: 67
        } | Transport::Udp {
            sport: 546,
            dport: 547
        }
    );
    let packet = Packet {
        src,
        dst,
        proto: t.proto(src.is_ipv6()),
        l4,
        later_fragment: false,
        via_ah: false,
        service_place: at == At::Services
            || (at == At::Everyone && direction == Direction::Egress && dhcp_request),
    };
    evaluate(&vpc, &vpc.instances[0], direction, &packet, false).passes()
}

/// (direction, src, dst, transport, where the remote end is, passes, what)
type Case = (
    Direction,
    &'static str,
    &'static str,
    Transport,
    At,
    bool,
    &'static str,
);

#[expect(
    clippy::too_many_lines,
    reason = "a table of cases, one per line before rustfmt"
)]
fn cases() -> Vec<Case> {
    use At::{Elsewhere, Everyone, Services};
    use Direction::{Egress, Ingress};
    let me = "10.0.1.10";
    vec![
        (
            Egress,
            me,
            "10.0.0.2",
            udp(40000, 53),
            Services,
            true,
            "DNS query to VPC+2",
        ),
        (
            Ingress,
            "10.0.0.2",
            me,
            udp(53, 40000),
            Services,
            true,
            "its answer",
        ),
        (
            Egress,
            me,
            "10.0.0.2",
            tcp(40001, 53, SYN),
            Services,
            true,
            "DNS over TCP",
        ),
        (
            Egress,
            me,
            "169.254.169.253",
            udp(40002, 53),
            Services,
            true,
            "link-local DNS",
        ),
        (
            Egress,
            me,
            "169.254.169.254",
            tcp(40003, 80, SYN),
            Services,
            true,
            "metadata",
        ),
        (
            Ingress,
            "169.254.169.254",
            me,
            tcp(80, 40003, SYN | ACK),
            Services,
            true,
            "metadata answers",
        ),
        (
            Egress,
            me,
            "169.254.169.254",
            tcp(40004, 8080, SYN),
            Services,
            true,
            "any port of a link-local address",
        ),
        (
            Egress,
            me,
            "169.254.170.2",
            tcp(40005, 80, SYN),
            Services,
            true,
            "ECS task metadata",
        ),
        (
            Egress,
            me,
            "169.254.169.123",
            udp(40006, 123),
            Services,
            true,
            "time",
        ),
        (
            Egress,
            "2001:db8::10",
            "fd00:ec2::123",
            udp(40007, 123),
            Services,
            true,
            "time, IPv6",
        ),
        (
            Egress,
            "2001:db8::10",
            "fd00:ec2::253",
            udp(40008, 53),
            Services,
            true,
            "DNS, IPv6",
        ),
        (
            Egress,
            me,
            "10.0.1.1",
            echo(8),
            Services,
            true,
            "pinging the subnet's router",
        ),
        (
            Ingress,
            "10.0.1.1",
            me,
            echo(0),
            Services,
            true,
            "its answer",
        ),
        (
            Egress,
            me,
            "10.0.1.3",
            udp(40009, 9),
            Services,
            true,
            "the subnet's +3, reserved",
        ),
        (
            Egress,
            me,
            "10.0.1.255",
            udp(40010, 9),
            Services,
            true,
            "the subnet's last address",
        ),
        (
            Egress,
            "0.0.0.0",
            "255.255.255.255",
            udp(68, 67),
            Everyone,
            true,
            "DHCP discover, broadcast",
        ),
        (
            Ingress,
            "10.0.255.254",
            "255.255.255.255",
            udp(67, 68),
            Services,
            true,
            "DHCP offer",
        ),
        (
            Egress,
            "fe80::1",
            "ff02::1:2",
            udp(546, 547),
            Everyone,
            true,
            "DHCPv6 solicit, multicast",
        ),
        (
            Ingress,
            "fe80::9",
            "fe80::1",
            udp(547, 546),
            Services,
            true,
            "DHCPv6 advertise",
        ),
        (
            Egress,
            me,
            "10.0.1.4",
            udp(40011, 9),
            Services,
            false,
            "the subnet's +4 is an address like any",
        ),
        (
            Egress,
            "10.0.1.7",
            "10.0.0.2",
            udp(40012, 53),
            Services,
            false,
            "from another's address: source/destination check",
        ),
        // Posing as the services from elsewhere: judged by the rules.
        (
            Ingress,
            "169.254.169.253",
            me,
            udp(53, 40002),
            Elsewhere,
            false,
            "a lab host posing as Amazon DNS",
        ),
        (
            Ingress,
            "10.0.0.2",
            me,
            udp(53, 40000),
            Elsewhere,
            false,
            "a lab host posing as the VPC resolver",
        ),
        (
            Ingress,
            "10.0.1.1",
            me,
            echo(8),
            Elsewhere,
            false,
            "a lab host posing as the VPC router",
        ),
        (
            Ingress,
            "10.0.1.99",
            me,
            udp(67, 68),
            Elsewhere,
            false,
            "another host's DHCP server",
        ),
        (
            Egress,
            me,
            "10.0.1.99",
            udp(68, 67),
            Elsewhere,
            false,
            "a DHCP request to another host",
        ),
        (
            Egress,
            me,
            "10.0.0.2",
            udp(40013, 53),
            Elsewhere,
            false,
            "the resolver's address on another host",
        ),
        (
            Egress,
            me,
            "169.254.169.254",
            tcp(40014, 80, SYN),
            Everyone,
            false,
            "metadata is not broadcast",
        ),
    ]
}

#[test]
fn aws_services_pass_from_their_place_with_narrow_egress_and_use_no_entry() {
    let dp = dataplane_for(&vpc(CONFIG), "narrow");
    let cases = cases();
    let mut failures = Vec::new();
    for (direction, src, dst, t, at, want, what) in &cases {
        let (src_ip, dst_ip) = (ip(src), ip(dst));
        let f = frame(src_ip, dst_ip, t, &shape(*direction, *at, src_ip.is_ipv6()));
        let got = match direction {
            Direction::Ingress => xdp_passes(&dp, &f),
            Direction::Egress => tc_passes(&dp, &f),
        };
        let oracle = reference(*direction, src, dst, t, *at);
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
        cases.iter().filter(|c| c.5).count() as u64,
        "each passed as an AWS service"
    );
}

/// Without a place for the services (no `service_mac`, not on the host
/// side), nothing is exempt: DHCP and DNS are judged by the rules.
#[test]
fn without_a_place_for_the_services_nothing_is_exempt() {
    let text = CONFIG.replace("service_mac = \"02:00:00:00:00:05\"\n", "");
    let dp = dataplane_for(&vpc(&text), "narrow");
    let query = frame(
        ip("10.0.1.10"),
        ip("10.0.0.2"),
        &udp(40000, 53),
        &shape(Direction::Egress, At::Services, false),
    );
    assert!(!tc_passes(&dp, &query), "judged by the rules: tcp/443 only");
    assert_eq!(
        dp.counters()
            .expect("counters")
            .egress
            .get("pass_aws_service"),
        0
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
        ip("10.0.1.10"),
        &tcp(80, 22, SYN),
        &shape(Direction::Ingress, At::Services, false),
    );
    assert!(!xdp_passes(&dp, &syn), "not from 10.9.0.0/16: refused");
    let compiled = compile(&vpc(CONFIG));
    assert!(
        compiled.instances[0].tables.v4.len() > 3,
        "the service addresses are in the tries"
    );
}
