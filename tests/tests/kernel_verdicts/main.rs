//! The loaded programs, run by the kernel on crafted frames through
//! `BPF_PROG_TEST_RUN`, each verdict compared with the reference evaluator.
//!
//! [`frame_table`]: one table of frames (well-formed, odd and malformed)
//! through the inbound programs; [`conntrack`]: replies, ICMP errors and
//! idle timeouts; [`fragments`]; [`reloads`]: whole-policy swaps;
//! [`logging`]: no log statement in the programs unless asked for;
//! [`source_dest`]: the source/destination check; [`untracked`]: AWS's
//! untracked flows; [`allowance`]: the connection allowance; [`services`]:
//! the AWS services security groups never filter; [`hostile_guest`]:
//! what root in a guest sends on the host side to get past them;
//! [`network_acls`]: subnets' stateless network ACLs.

mod allowance;
mod conntrack;
mod differential;
mod fragments;
mod frame_table;
mod host_side;
mod hostile_guest;
mod listeners;
mod logging;
mod network_acls;
mod reloads;
mod services;
mod source_dest;
mod untracked;
mod vpc_links;
mod vpcs;

use std::net::IpAddr;

use sg_agent::{
    config::Direction,
    policy::reference::{L4, Packet, evaluate},
};
use sg_tests::{frames::Transport, kernel::vpc};

/// One instance, "web", whose rules each frame exercises.
pub const CONFIG: &str = r#"
[[security_group]]
name = "web"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["0.0.0.0/0"]
  ipv6_cidr_blocks = ["::/0"]
  [[security_group.ingress]]
  # A port a parser that ignores IPv4 options would read (0x0101).
  protocol = "tcp"
  from_port = 257
  to_port = 257
  cidr_blocks = ["0.0.0.0/0"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["10.9.0.0/16"]
  [[security_group.ingress]]
  protocol = "udp"
  from_port = 5000
  to_port = 5010
  cidr_blocks = ["10.0.0.0/8"]
  [[security_group.ingress]]
  protocol = "icmp"
  from_port = 8
  to_port = -1
  cidr_blocks = ["10.0.0.0/8"]
  [[security_group.ingress]]
  protocol = "icmpv6"
  from_port = 128
  to_port = -1
  ipv6_cidr_blocks = ["::/0"]
  [[security_group.ingress]]
  protocol = "gre"
  cidr_blocks = ["10.1.0.0/16"]
  [[security_group.egress]]
  protocol = "tcp"
  from_port = 443
  to_port = 443
  cidr_blocks = ["0.0.0.0/0"]

[[instance]]
name = "web"
addresses = ["10.0.0.1", "2001:db8::1"]
security_groups = ["web"]
"#;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Transport {
    Transport::Tcp {
        sport,
        dport,
        flags,
    }
}

/// What the rules see of a transport header (nothing for a later fragment).
pub fn l4_of(t: &Transport, later_fragment: bool) -> L4 {
    if later_fragment {
        return L4::None;
    }
    match t {
        Transport::Tcp { sport, dport, .. }
        | Transport::TcpSeq { sport, dport, .. }
        | Transport::Udp { sport, dport } => L4::Ports {
            src: *sport,
            dst: *dport,
        },
        Transport::Icmp { ty, code, .. } => L4::Icmp {
            ty: *ty,
            code: *code,
        },
        Transport::Raw { .. } => L4::None,
    }
}

/// The reference verdict for a well-formed packet.
pub fn reference(
    direction: Direction,
    src: &str,
    dst: &str,
    t: &Transport,
    later_fragment: bool,
    tracked: bool,
) -> bool {
    let vpc = vpc(CONFIG);
    let inst = vpc.instance("web").unwrap();
    let (src, dst) = (ip(src), ip(dst));
    let l4 = l4_of(t, later_fragment);
    let packet = Packet {
        src,
        dst,
        proto: t.proto(src.is_ipv6()),
        l4,
        later_fragment,
        via_ah: false,
        service_place: false,
    };
    evaluate(&vpc, inst, direction, &packet, tracked).passes()
}
