//! Network ACLs in the programs: first match in rule-number order, the `*`
//! rule, stateless (answers judged on their own ports: the ephemeral-port
//! trap), only across the subnet's boundary, and a new deny cutting a held
//! connection at once. Every verdict is also the reference evaluator's.

use sg_agent::{
    config::{Direction, Vpc},
    dataplane::Dataplane,
    policy::{
        compile::compile,
        reference::{Decision, Packet, evaluate},
    },
};
use sg_tests::{
    frames::{ACK, SYN, Shape, Transport, frame},
    kernel::{dataplane_for, tc_passes, vpc, xdp_passes},
};

use crate::{ip, l4_of, tcp};

/// web (10.0.1.10, subnet public-a) allows HTTP from anywhere and SSH from
/// 10.0.0.0/8; its subnet's network ACL denies 203.0.113.0/24 on 80 (rule
/// 90, before the allow at 100), lets in the answers to what web opens
/// (1024-65535), and lets out only HTTPS: the answers to HTTP clients
/// (their ephemeral ports) have no outbound rule.
const TRAP: &str = r#"
[vpc]
cidr_blocks = ["10.0.0.0/16", "2001:db8::/56"]

[[subnet]]
name = "public-a"
cidr_block = "10.0.1.0/24"
ipv6_cidr_block = "2001:db8:0:1::/64"

[[subnet]]
name = "private-a"
cidr_block = "10.0.2.0/24"

[[network_acl]]
name = "public"
subnets = ["public-a"]
  [[network_acl.ingress]]
  rule_no = 100
  action = "allow"
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_block = "0.0.0.0/0"
  [[network_acl.ingress]]
  rule_no = 90
  action = "deny"
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_block = "203.0.113.0/24"
  [[network_acl.ingress]]
  rule_no = 110
  action = "allow"
  protocol = "tcp"
  from_port = 1024
  to_port = 65535
  cidr_block = "0.0.0.0/0"
  [[network_acl.ingress]]
  rule_no = 120
  action = "allow"
  protocol = "tcp"
  from_port = 80
  to_port = 80
  ipv6_cidr_block = "::/0"
  [[network_acl.egress]]
  rule_no = 100
  action = "allow"
  protocol = "tcp"
  from_port = 443
  to_port = 443
  cidr_block = "0.0.0.0/0"

[[security_group]]
name = "web"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["0.0.0.0/0"]
  ipv6_cidr_blocks = ["::/0"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["10.0.0.0/8"]
  ipv6_cidr_blocks = ["2001:db8::/56"]

[[instance]]
name = "web"
addresses = ["10.0.1.10", "2001:db8:0:1::10"]
security_groups = ["web"]
"#;

/// The rule that lets the answers out: AWS's advice for the trap.
const EPHEMERAL_OUT: &str = r#"
  [[network_acl.egress]]
  rule_no = 120
  action = "allow"
  protocol = "tcp"
  from_port = 1024
  to_port = 65535
  cidr_block = "0.0.0.0/0"
"#;

fn with_ephemeral_out() -> String {
    TRAP.replace(
        "\n[[security_group]]",
        &format!("{EPHEMERAL_OUT}\n[[security_group]]"),
    )
}

const WEB: &str = "10.0.1.10";

/// The kernel's verdict on one TCP packet, checked against the reference
/// evaluator's (`tracked`: whether the flow is in the connection table).
fn judged(
    dp: &Dataplane,
    vpc: &Vpc,
    direction: Direction,
    (src, dst): (&str, &str),
    t: &Transport,
    tracked: bool,
) -> bool {
    let f = frame(ip(src), ip(dst), t, &Shape::default());
    let kernel = match direction {
        Direction::Ingress => xdp_passes(dp, &f),
        Direction::Egress => tc_passes(dp, &f),
    };
    let packet = Packet {
        src: ip(src),
        dst: ip(dst),
        proto: 6,
        l4: l4_of(t, false),
        later_fragment: false,
        via_ah: false,
        service_place: false,
    };
    let web = vpc.instance("web").expect("web");
    let oracle = evaluate(vpc, web, direction, &packet, tracked).passes();
    assert_eq!(
        kernel, oracle,
        "{direction:?} {src} -> {dst} {t:?} (tracked {tracked}): kernel {kernel}, reference {oracle}"
    );
    kernel
}

fn publish(dp: &mut Dataplane, vpc: &Vpc) {
    let compiled = compile(vpc);
    let web = compiled
        .instances
        .iter()
        .find(|i| i.name == "web")
        .expect("web");
    dp.publish(&web.tables, web.settings).expect("publish");
}

#[test]
fn the_first_matching_entry_decides_in_rule_number_order() {
    let v = vpc(TRAP);
    let dp = dataplane_for(&v, "web");
    let syn = tcp(40000, 80, SYN);
    assert!(
        !judged(
            &dp,
            &v,
            Direction::Ingress,
            ("203.0.113.5", WEB),
            &syn,
            false
        ),
        "rule 90 denies 203.0.113.0/24 before rule 100 allows everyone"
    );
    assert!(judged(
        &dp,
        &v,
        Direction::Ingress,
        ("198.51.100.7", WEB),
        &syn,
        false
    ));
    let web = v.instance("web").expect("web");
    let packet = Packet {
        src: ip("203.0.113.5"),
        dst: ip(WEB),
        proto: 6,
        l4: l4_of(&syn, false),
        later_fragment: false,
        via_ah: false,
        service_place: false,
    };
    match evaluate(&v, web, Direction::Ingress, &packet, false) {
        Decision::DeniedByNetworkAcl(at) => {
            assert_eq!(at.to_string(), "network ACL public, inbound rule 90");
        }
        other => panic!("denied by the network ACL, not {other:?}"),
    }
    let counters = dp.counters().expect("counters");
    assert_eq!(counters.ingress.get("drop_network_acl"), 1, "{counters:?}");
}

#[test]
fn answers_need_an_outbound_rule_of_their_own_the_ephemeral_port_trap() {
    let v = vpc(TRAP);
    let dp = dataplane_for(&v, "web");
    let client = "198.51.100.7";
    assert!(judged(
        &dp,
        &v,
        Direction::Ingress,
        (client, WEB),
        &tcp(40000, 80, SYN),
        false
    ));
    // The security group tracks the connection, but the network ACL
    // tracks nothing: the SYN-ACK to port 40000 has no outbound rule.
    assert!(
        !judged(
            &dp,
            &v,
            Direction::Egress,
            (WEB, client),
            &tcp(80, 40000, SYN | ACK),
            true
        ),
        "the answer is denied by the outbound * rule: the connection hangs"
    );
    assert_eq!(
        dp.counters()
            .expect("counters")
            .egress
            .get("drop_network_acl"),
        1
    );
    // AWS's advice: let the ephemeral ports out. The held connection's
    // answers pass at once.
    let fixed = vpc(&with_ephemeral_out());
    let mut dp = dp;
    publish(&mut dp, &fixed);
    assert!(judged(
        &dp,
        &fixed,
        Direction::Egress,
        (WEB, client),
        &tcp(80, 40000, SYN | ACK),
        true
    ));
    assert!(judged(
        &dp,
        &fixed,
        Direction::Ingress,
        (client, WEB),
        &tcp(40000, 80, ACK),
        true
    ));
}

#[test]
fn a_new_deny_cuts_a_held_connection_at_once() {
    let v = vpc(&with_ephemeral_out());
    let mut dp = dataplane_for(&v, "web");
    let client = "198.51.100.7";
    assert!(judged(
        &dp,
        &v,
        Direction::Ingress,
        (client, WEB),
        &tcp(40000, 80, SYN),
        false
    ));
    assert!(judged(
        &dp,
        &v,
        Direction::Egress,
        (WEB, client),
        &tcp(80, 40000, SYN | ACK),
        true
    ));
    for _ in 0..3 {
        // Cached passes: the same verdicts.
        assert!(judged(
            &dp,
            &v,
            Direction::Ingress,
            (client, WEB),
            &tcp(40000, 80, ACK),
            true
        ));
        assert!(judged(
            &dp,
            &v,
            Direction::Egress,
            (WEB, client),
            &tcp(80, 40000, ACK),
            true
        ));
    }
    // AWS: "to immediately interrupt ... use a network ACL". Rule 50 denies
    // the client's network inbound.
    let cut = vpc(&with_ephemeral_out().replace(
        "  [[network_acl.ingress]]\n  rule_no = 100",
        "  [[network_acl.ingress]]\n  rule_no = 50\n  action = \"deny\"\n  protocol = \"all\"\n  \
         cidr_block = \"198.51.100.0/24\"\n  [[network_acl.ingress]]\n  rule_no = 100",
    ));
    publish(&mut dp, &cut);
    assert!(
        !judged(
            &dp,
            &cut,
            Direction::Ingress,
            (client, WEB),
            &tcp(40000, 80, ACK),
            true
        ),
        "the tracked connection's next packet in is cut"
    );
    // Outbound still allows the answers (stateless: each way on its own).
    assert!(judged(
        &dp,
        &cut,
        Direction::Egress,
        (WEB, client),
        &tcp(80, 40000, ACK),
        true
    ));
    // Taken back: the connection (still tracked) flows again.
    publish(&mut dp, &v);
    assert!(judged(
        &dp,
        &v,
        Direction::Ingress,
        (client, WEB),
        &tcp(40000, 80, ACK),
        true
    ));
}

#[test]
fn only_traffic_across_the_subnets_boundary_is_judged() {
    let v = vpc(TRAP);
    let dp = dataplane_for(&v, "web");
    // SSH: the group allows 10.0.0.0/8, the network ACL has no entry for 22.
    let ssh = tcp(40000, 22, SYN);
    assert!(
        judged(&dp, &v, Direction::Ingress, ("10.0.1.20", WEB), &ssh, false),
        "a neighbour in public-a: not filtered by the subnet's network ACL"
    );
    assert!(
        !judged(&dp, &v, Direction::Ingress, ("10.0.2.20", WEB), &ssh, false),
        "from private-a: across the boundary, denied by the * rule"
    );
    // IPv6: the subnet's IPv6 range is inside the boundary too; rule 120
    // allows HTTP from everywhere.
    let v6 = "2001:db8:0:1::10";
    assert!(judged(
        &dp,
        &v,
        Direction::Ingress,
        ("2001:db8:0:1::20", v6),
        &ssh,
        false
    ));
    assert!(!judged(
        &dp,
        &v,
        Direction::Ingress,
        ("2001:db8:0:2::20", v6),
        &ssh,
        false
    ));
    assert!(judged(
        &dp,
        &v,
        Direction::Ingress,
        ("2001:db8:0:2::20", v6),
        &tcp(40000, 80, SYN),
        false
    ));
}

#[test]
fn a_network_acl_without_rules_denies_everything_and_none_allows_everything() {
    let empty = TRAP
        .split("[[network_acl]]")
        .next()
        .expect("head")
        .to_owned()
        + "[[network_acl]]\nname = \"closed\"\nsubnets = [\"public-a\"]\n\n"
        + &TRAP[TRAP.find("[[security_group]]").expect("groups")..];
    let v = vpc(&empty);
    let dp = dataplane_for(&v, "web");
    assert!(!judged(
        &dp,
        &v,
        Direction::Ingress,
        ("198.51.100.7", WEB),
        &tcp(40000, 80, SYN),
        false
    ));
    assert!(judged(
        &dp,
        &v,
        Direction::Ingress,
        ("10.0.1.20", WEB),
        &tcp(40000, 22, SYN),
        false
    ));
    // No network ACL at all: AWS's default one, allowing everything.
    let open = TRAP
        .split("[[network_acl]]")
        .next()
        .expect("head")
        .to_owned()
        + &TRAP[TRAP.find("[[security_group]]").expect("groups")..];
    let v = vpc(&open);
    let dp = dataplane_for(&v, "web");
    assert!(judged(
        &dp,
        &v,
        Direction::Ingress,
        ("203.0.113.5", WEB),
        &tcp(40000, 80, SYN),
        false
    ));
    assert!(judged(
        &dp,
        &v,
        Direction::Egress,
        (WEB, "203.0.113.5"),
        &tcp(80, 40000, SYN | ACK),
        true
    ));
}
