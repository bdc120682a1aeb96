//! Untracked flows, as AWS's "Security group connection tracking" page
//! works its example: inbound TCP 22 from 203.0.113.1/32, TCP 80 from
//! `0.0.0.0/0` and `::/0`, ICMP from `0.0.0.0/0`; outbound all traffic to
//! `0.0.0.0/0` and `::/0`. Port 22 is tracked, port 80 is not, ICMP always is;
//! without the IPv4 outbound rule every IPv4 flow is tracked.

use sg_agent::{
    config::Direction,
    dataplane::Dataplane,
    policy::{
        compile::compile,
        reference::{Packet, untracked},
    },
};
use sg_tests::{
    frames::{ACK, SYN, Shape, Transport, frame},
    kernel::{dataplane_for, tc_passes, vpc, xdp_passes},
};

use crate::{ip, tcp};

const EXAMPLE: &str = r#"
[[security_group]]
name = "web"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["203.0.113.1/32"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["0.0.0.0/0"]
  ipv6_cidr_blocks = ["::/0"]
  [[security_group.ingress]]
  protocol = "icmp"
  from_port = -1
  to_port = -1
  cidr_blocks = ["0.0.0.0/0"]
  [[security_group.egress]]
  protocol = "-1"
  cidr_blocks = ["0.0.0.0/0"]
  [[security_group.egress]]
  protocol = "-1"
  ipv6_cidr_blocks = ["::/0"]

[[instance]]
name = "web"
addresses = ["10.0.0.1", "2001:db8::1"]
security_groups = ["web"]
"#;

/// The same without the IPv4 outbound rule.
fn without_ipv4_egress() -> String {
    EXAMPLE.replace(
        "  [[security_group.egress]]\n  protocol = \"-1\"\n  cidr_blocks = [\"0.0.0.0/0\"]\n",
        "",
    )
}

/// The example with the inbound port 80 and port 22 rules gone.
fn without_inbound_rules() -> String {
    let start = EXAMPLE.find("  [[security_group.ingress]]").unwrap();
    let end = EXAMPLE
        .find("  [[security_group.ingress]]\n  protocol = \"icmp\"")
        .unwrap();
    format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..])
}

fn counted(dp: &Dataplane, reason: &str) -> u64 {
    dp.counters().expect("counters").ingress.get(reason)
}

/// Sends `frame` inbound and says how the programs passed it.
fn inbound(dp: &Dataplane, frame: &[u8]) -> &'static str {
    let (tracked, rule, untracked) = (
        counted(dp, "pass_tracked"),
        counted(dp, "pass_rule"),
        counted(dp, "pass_untracked"),
    );
    if !xdp_passes(dp, frame) {
        return "dropped";
    }
    if counted(dp, "pass_untracked") > untracked {
        "untracked"
    } else if counted(dp, "pass_rule") > rule {
        "new tracked flow"
    } else if counted(dp, "pass_tracked") > tracked {
        "tracked"
    } else {
        "passed otherwise"
    }
}

fn packet(src: &str, dst: &str, l4: &Transport) -> Packet {
    let (proto, l4) = match *l4 {
        Transport::Tcp { sport, dport, .. } => (
            6,
            sg_agent::policy::reference::L4::Ports {
                src: sport,
                dst: dport,
            },
        ),
        _ => unreachable!("TCP only here"),
    };
    Packet {
        src: ip(src),
        dst: ip(dst),
        proto,
        l4,
        later_fragment: false,
        via_ah: false,
        service_place: false,
    }
}

#[test]
fn aws_worked_example_port_80_untracked_port_22_tracked() {
    let example = vpc(EXAMPLE);
    let inst = &example.instances[0];
    let dp = dataplane_for(&example, "web");
    let me = "10.0.0.1";
    let (admin, anyone) = ("203.0.113.1", "198.51.100.7");

    let ssh = tcp(50022, 22, SYN);
    let http = tcp(50080, 80, SYN);
    // The reference evaluator says so first.
    assert!(!untracked(
        &example,
        inst,
        Direction::Ingress,
        &packet(admin, me, &ssh)
    ));
    assert!(untracked(
        &example,
        inst,
        Direction::Ingress,
        &packet(anyone, me, &http)
    ));
    // And the kernel agrees.
    assert_eq!(
        inbound(&dp, &frame(ip(admin), ip(me), &ssh, &Shape::default())),
        "new tracked flow",
        "ssh from a /32 is tracked"
    );
    assert_eq!(
        inbound(&dp, &frame(ip(anyone), ip(me), &http, &Shape::default())),
        "untracked",
        "http from 0.0.0.0/0 with all traffic out is untracked"
    );
    // Its answer leaves by the outbound rule, and makes no entry either.
    let answer = frame(
        ip(me),
        ip(anyone),
        &tcp(80, 50080, SYN | ACK),
        &Shape::default(),
    );
    let untracked_out = dp.counters().unwrap().egress.get("pass_untracked");
    assert!(tc_passes(&dp, &answer));
    assert_eq!(
        dp.counters().unwrap().egress.get("pass_untracked"),
        untracked_out + 1,
        "the answer of an untracked flow is untracked"
    );
    // ICMP is always tracked.
    let ping = frame(
        ip(anyone),
        ip(me),
        &Transport::Icmp {
            ty: 8,
            code: 0,
            rest: [0, 7, 0, 1],
        },
        &Shape::default(),
    );
    assert_eq!(
        inbound(&dp, &ping),
        "new tracked flow",
        "ICMP is always tracked"
    );
    // IPv6 port 80 alike.
    assert_eq!(
        inbound(
            &dp,
            &frame(
                ip("2001:db8:9::7"),
                ip("2001:db8::1"),
                &http,
                &Shape::default()
            )
        ),
        "untracked"
    );
}

#[test]
fn without_the_ipv4_outbound_rule_ipv4_port_80_is_tracked() {
    let narrowed = vpc(&without_ipv4_egress());
    let inst = &narrowed.instances[0];
    let dp = dataplane_for(&narrowed, "web");
    let http = tcp(50081, 80, SYN);
    assert!(!untracked(
        &narrowed,
        inst,
        Direction::Ingress,
        &packet("198.51.100.7", "10.0.0.1", &http)
    ));
    assert_eq!(
        inbound(
            &dp,
            &frame(ip("198.51.100.7"), ip("10.0.0.1"), &http, &Shape::default())
        ),
        "new tracked flow"
    );
    assert_eq!(
        inbound(
            &dp,
            &frame(
                ip("2001:db8:9::7"),
                ip("2001:db8::1"),
                &http,
                &Shape::default()
            )
        ),
        "untracked",
        "the IPv6 outbound rule still makes IPv6 port 80 untracked"
    );
}

/// AWS: "An untracked flow of traffic is immediately interrupted if the
/// rule that enables the flow is removed or modified"; a tracked one is
/// not.
#[test]
fn removing_the_rule_cuts_untracked_flows_at_once_not_tracked_ones() {
    let example = vpc(EXAMPLE);
    let mut dp = dataplane_for(&example, "web");
    let me = "10.0.0.1";
    let (admin, anyone) = ("203.0.113.1", "198.51.100.7");
    for (src, sport, dport) in [(admin, 50122, 22), (anyone, 50180, 80)] {
        assert!(xdp_passes(
            &dp,
            &frame(ip(src), ip(me), &tcp(sport, dport, SYN), &Shape::default())
        ));
    }
    let narrowed = compile(&vpc(&without_inbound_rules()));
    dp.publish(
        &narrowed.instances[0].tables,
        narrowed.instances[0].settings,
    )
    .expect("publish");
    assert_eq!(
        inbound(
            &dp,
            &frame(ip(admin), ip(me), &tcp(50122, 22, ACK), &Shape::default())
        ),
        "tracked",
        "the ssh connection outlives its rule"
    );
    assert_eq!(
        inbound(
            &dp,
            &frame(ip(anyone), ip(me), &tcp(50180, 80, ACK), &Shape::default())
        ),
        "dropped",
        "the http connection ends with its rule"
    );
}

/// The worked example with a Network Load Balancer at 198.51.100.80 and a
/// `DynamoDB` gateway endpoint at 198.51.100.90 (`[[aws_service]]`).
fn with_services(nlb_tcp_idle: u32) -> String {
    format!(
        "{EXAMPLE}
[[aws_service]]
name = \"nlb-1\"
type = \"network_load_balancer\"
addresses = [\"198.51.100.80\", \"2001:db8:80::/64\"]
tcp_idle_timeout = {nlb_tcp_idle}

[[aws_service]]
name = \"ddb\"
type = \"dynamodb_gateway_endpoint\"
addresses = [\"198.51.100.90\"]
"
    )
}

/// AWS ("Automatically tracked connections"): a flow through a Network
/// Load Balancer is tracked whatever the rules say, so an HTTP connection
/// from `0.0.0.0/0` through it outlives its rule, while one from anyone
/// else is cut; it idles out after the balancer's timeouts (TCP as set,
/// UDP 120 s), not the instance's.
#[test]
fn flows_through_a_load_balancer_are_tracked_whatever_the_rules_say() {
    let text = with_services(600);
    let services = vpc(&text);
    let inst = &services.instances[0];
    let mut dp = dataplane_for(&services, "web");
    let me = "10.0.0.1";
    let (nlb, anyone) = ("198.51.100.80", "198.51.100.7");
    let http = tcp(50280, 80, SYN);
    assert!(!untracked(
        &services,
        inst,
        Direction::Ingress,
        &packet(nlb, me, &http)
    ));
    assert!(untracked(
        &services,
        inst,
        Direction::Ingress,
        &packet(anyone, me, &http)
    ));
    assert_eq!(
        inbound(&dp, &frame(ip(nlb), ip(me), &http, &Shape::default())),
        "new tracked flow",
        "http through the load balancer is tracked"
    );
    assert_eq!(
        inbound(
            &dp,
            &frame(
                ip("2001:db8:80::5"),
                ip("2001:db8::1"),
                &http,
                &Shape::default()
            )
        ),
        "new tracked flow",
        "so is IPv6 through its /64"
    );
    assert_eq!(
        inbound(
            &dp,
            &frame(ip(anyone), ip(me), &tcp(50281, 80, SYN), &Shape::default())
        ),
        "untracked",
        "http from anyone else stays untracked"
    );
    // The entry carries the balancer's TCP idle timeout.
    let entries = dp.connections().expect("connections");
    assert!(
        entries
            .iter()
            .any(|(k, e)| k.port_a.max(k.port_b) == 50280 && e.idle_s == 600),
        "the entry carries the load balancer's 600 s: {entries:?}"
    );
    // The rule goes: the connection through the balancer lives on.
    let narrowed = compile(&vpc(&format!(
        "{}{}",
        without_inbound_rules(),
        &text[EXAMPLE.len()..]
    )));
    dp.publish(
        &narrowed.instances[0].tables,
        narrowed.instances[0].settings,
    )
    .expect("publish");
    assert_eq!(
        inbound(
            &dp,
            &frame(ip(nlb), ip(me), &tcp(50280, 80, ACK), &Shape::default())
        ),
        "tracked",
        "the connection through the load balancer outlives its rule"
    );
    assert_eq!(
        inbound(
            &dp,
            &frame(ip(anyone), ip(me), &tcp(50281, 80, ACK), &Shape::default())
        ),
        "dropped",
        "the untracked one ends with its rule"
    );
}

/// AWS: a connection through a `DynamoDB` gateway endpoint takes two
/// entries of the allowance. With room for sixteen entries, eight
/// connections through it fit and a ninth is refused; the table lists each
/// once.
#[test]
fn a_dynamodb_gateway_endpoint_connection_takes_two_entries() {
    let text = with_services(350).replace(
        "[[instance]]\nname = \"web\"\n",
        "[[instance]]\nname = \"web\"\nconntrack.max_tracked_connections = 16\n",
    );
    let services = vpc(&text);
    let mut dp = dataplane_for(&services, "web");
    let (me, ddb) = ("10.0.0.1", "198.51.100.90");
    let out = |dp: &sg_agent::dataplane::Dataplane, sport: u16| {
        let before = dp.counters().unwrap().egress.get("pass_rule");
        let passed = tc_passes(
            dp,
            &frame(ip(me), ip(ddb), &tcp(sport, 443, SYN), &Shape::default()),
        );
        passed && dp.counters().unwrap().egress.get("pass_rule") > before
    };
    for sport in 51001..=51008 {
        assert!(
            out(&dp, sport),
            "connection from port {sport} opens a tracked flow"
        );
    }
    assert!(!out(&dp, 51009), "a ninth finds the allowance used up");
    assert_eq!(
        dp.counters()
            .unwrap()
            .egress
            .get("drop_conntrack_allowance_exceeded"),
        1
    );
    assert_eq!(dp.tracked_connections(), 16, "two entries per connection");
    assert_eq!(
        dp.connections().expect("connections").len(),
        8,
        "listed once each"
    );
    // The second entries live exactly as long as the first: one
    // connection kept in use keeps both, the idle ones give both back.
    let settings = sg_common::policy::Settings {
        tcp_syn_ns: 1_000_000_000,
        ..compile(&services).instances[0].settings
    };
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    assert!(tc_passes(
        &dp,
        &frame(ip(me), ip(ddb), &tcp(51001, 443, ACK), &Shape::default())
    ));
    let r = dp.reclaim_expired(&settings).expect("reclaim");
    assert_eq!(
        (r.live, r.removed),
        (2, 14),
        "both entries of the one in use stay"
    );
    assert_eq!(r.gone.len(), 7, "each idle connection reported once");
    assert!(out(&dp, 51010), "the allowance has room again");
}
