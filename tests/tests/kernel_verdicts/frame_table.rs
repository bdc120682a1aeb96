//! One table of frames through both inbound programs (XDP and TC ingress),
//! each verdict compared with the reference evaluator, or fixed where the
//! evaluator has no notion of the input (malformed or link-layer frames).

use sg_agent::config::Direction;
use sg_tests::{
    frames::{SYN, Shape, Transport, frame},
    kernel::{dataplane_for, tc_ingress_passes, vpc, xdp_passes},
};

use crate::{CONFIG, ip, reference, tcp};

const OUTSIDE: &str = "198.51.100.7";
const WEB: &str = "10.0.0.1";
const OUTSIDE6: &str = "2001:db8:1::7";
const WEB6: &str = "2001:db8::1";

/// One frame and what it must get.
struct Case {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    l4: Transport,
    shape: Shape,
    /// None: ask the reference evaluator. Some: malformed or link-layer
    /// input the evaluator has no notion of.
    fixed: Option<bool>,
    /// `BPF_PROG_TEST_RUN` builds an skb around the frame for TC. It
    /// refuses (EINVAL) a frame whose IPv4 header is cut short, so such a
    /// frame is run through XDP alone.
    skb: bool,
}

fn case(name: &'static str, src: &'static str, dst: &'static str, l4: Transport) -> Case {
    Case {
        name,
        src,
        dst,
        l4,
        shape: Shape::default(),
        fixed: None,
        skb: true,
    }
}

impl Case {
    fn shape(mut self, set: impl FnOnce(&mut Shape)) -> Self {
        set(&mut self.shape);
        self
    }
    fn drops(mut self) -> Self {
        self.fixed = Some(false);
        self
    }
    fn passes(mut self) -> Self {
        self.fixed = Some(true);
        self
    }
    fn no_skb(mut self) -> Self {
        self.skb = false;
        self
    }
}

fn udp(sport: u16, dport: u16) -> Transport {
    Transport::Udp { sport, dport }
}

fn icmp(ty: u8, rest: [u8; 4]) -> Transport {
    Transport::Icmp { ty, code: 0, rest }
}

fn gre() -> Transport {
    Transport::Raw {
        proto: 47,
        bytes: vec![0; 8],
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one table of cases reads best in one place"
)]
fn cases() -> Vec<Case> {
    vec![
        case("v4 tcp/80 from anywhere", OUTSIDE, WEB, tcp(40000, 80, SYN)),
        case("v4 tcp/81: no rule", OUTSIDE, WEB, tcp(40001, 81, SYN)),
        case(
            "v4 tcp/22 from 10.9/16",
            "10.9.1.1",
            WEB,
            tcp(40002, 22, SYN),
        ),
        case(
            "v4 tcp/22 from outside 10.9/16",
            "10.8.1.1",
            WEB,
            tcp(40003, 22, SYN),
        ),
        case("v4 udp/5005 from 10/8", "10.3.3.3", WEB, udp(999, 5005)),
        case(
            "v4 udp/5011: outside the range",
            "10.3.3.3",
            WEB,
            udp(998, 5011),
        ),
        case(
            "icmp echo request allowed by type",
            "10.2.3.4",
            WEB,
            icmp(8, [0, 7, 0, 1]),
        ),
        case("icmp timestamp: no rule", "10.2.3.4", WEB, icmp(13, [0; 4])),
        case(
            "icmp echo from outside 10/8",
            OUTSIDE,
            WEB,
            icmp(8, [0, 8, 0, 1]),
        ),
        case(
            "gre from 10.1/16 (protocol without ports)",
            "10.1.2.3",
            WEB,
            gre(),
        ),
        case("gre from elsewhere", "10.2.2.3", WEB, gre()),
        case("v6 tcp/80", OUTSIDE6, WEB6, tcp(40004, 80, SYN)),
        case("v6 tcp/22: no v6 rule", OUTSIDE6, WEB6, tcp(40005, 22, SYN)),
        case("v6 echo request", OUTSIDE6, WEB6, icmp(128, [0, 9, 0, 1])),
        case(
            "v6 icmp type 200: no rule",
            OUTSIDE6,
            WEB6,
            icmp(200, [0; 4]),
        ),
        case(
            "v4 options skipped: tcp/80",
            OUTSIDE,
            WEB,
            tcp(40010, 80, SYN),
        )
        .shape(|s| s.ipv4_options = 8),
        case(
            "v4 options skipped: tcp/23 is not read as 257",
            OUTSIDE,
            WEB,
            tcp(40011, 23, SYN),
        )
        .shape(|s| s.ipv4_options = 8),
        case("v4 40 bytes of options", OUTSIDE, WEB, tcp(40012, 80, SYN))
            .shape(|s| s.ipv4_options = 40),
        case("v4 IHL below 5", OUTSIDE, WEB, tcp(40013, 80, SYN))
            .shape(|s| s.ihl = Some(4))
            .drops(),
        case("v4 IHL past the frame", OUTSIDE, WEB, tcp(40014, 80, SYN))
            .shape(|s| s.ihl = Some(15))
            .drops(),
        case("truncated tcp header", OUTSIDE, WEB, tcp(40015, 80, SYN))
            .shape(|s| s.truncate = Some(14 + 20 + 10))
            .drops(),
        case("truncated ipv4 header", OUTSIDE, WEB, tcp(40016, 80, SYN))
            .shape(|s| s.truncate = Some(14 + 12))
            .drops()
            .no_skb(),
        case("one VLAN tag: tcp/80", OUTSIDE, WEB, tcp(40017, 80, SYN)).shape(|s| s.vlans = 1),
        case("one VLAN tag: tcp/23", OUTSIDE, WEB, tcp(40018, 23, SYN)).shape(|s| s.vlans = 1),
        case("two VLAN tags: tcp/80", OUTSIDE, WEB, tcp(40019, 80, SYN)).shape(|s| s.vlans = 2),
        case(
            "three VLAN tags: beyond the parser",
            OUTSIDE,
            WEB,
            tcp(40020, 80, SYN),
        )
        .shape(|s| s.vlans = 3)
        .drops(),
        case(
            "v6 hop-by-hop + dst opts: tcp/80",
            OUTSIDE6,
            WEB6,
            tcp(40021, 80, SYN),
        )
        .shape(|s| s.ipv6_ext = vec![0, 60]),
        case(
            "v6 ext chain hides tcp/22",
            OUTSIDE6,
            WEB6,
            tcp(40022, 22, SYN),
        )
        .shape(|s| s.ipv6_ext = vec![0, 43, 60]),
        case(
            "v6 ext chain of 9: beyond the parser",
            OUTSIDE6,
            WEB6,
            tcp(40023, 80, SYN),
        )
        .shape(|s| s.ipv6_ext = vec![60; 9])
        .drops(),
        case(
            "v6 ext chain truncated",
            OUTSIDE6,
            WEB6,
            tcp(40024, 80, SYN),
        )
        .shape(|s| {
            s.ipv6_ext = vec![0, 60];
            s.truncate = Some(14 + 40 + 12);
        })
        .drops(),
        case(
            "v4 later fragment, no first: tcp has no all-ports rule",
            OUTSIDE,
            WEB,
            tcp(1, 80, 0),
        )
        .shape(|s| s.fragment = Some((100, false)))
        .drops(),
        case(
            "v4 later fragment of gre: all-ports rule",
            "10.1.2.3",
            WEB,
            gre(),
        )
        .shape(|s| s.fragment = Some((100, false))),
        case("v6 later fragment, no first", OUTSIDE6, WEB6, tcp(1, 80, 0))
            .shape(|s| {
                s.ipv6_ext = vec![44];
                s.fragment = Some((50, false));
            })
            .drops(),
        case(
            "v6 neighbour solicitation",
            "fe80::1",
            "ff02::1:ff00:1",
            icmp(135, [0; 4]),
        )
        .passes(),
    ]
}

#[test]
fn ingress_verdicts_match_the_reference() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    // The TC ingress program on a data plane of its own: each sees every
    // frame as a first packet.
    let mut dp_tc = dataplane_for(&vpc(CONFIG), "web");
    dp_tc
        .load_ingress_tc()
        .expect("TC ingress program verifies");
    let cases = cases();
    let mut failures = Vec::new();
    for c in &cases {
        let later = c.shape.fragment.is_some_and(|(off, _)| off > 0);
        let want = c
            .fixed
            .unwrap_or_else(|| reference(Direction::Ingress, c.src, c.dst, &c.l4, later, false));
        let f = frame(ip(c.src), ip(c.dst), &c.l4, &c.shape);
        let mut verdicts = vec![("XDP", xdp_passes(&dp, &f))];
        if c.skb {
            verdicts.push(("TC ingress", tc_ingress_passes(&dp_tc, &f)));
        }
        for (hook, got) in verdicts {
            if got != want {
                failures.push(format!(
                    "{}: {hook} {} but expected {}",
                    c.name,
                    verdict(got),
                    verdict(want)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "DROP" }
}

#[test]
fn link_layer_frames() {
    let dp = dataplane_for(&vpc(CONFIG), "web");
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert!(
        xdp_passes(&dp, &arp),
        "ARP passes: security groups never see it"
    );
    let mut mpls = arp.clone();
    mpls[12..14].copy_from_slice(&0x8847u16.to_be_bytes());
    assert!(
        !xdp_passes(&dp, &mpls),
        "MPLS could carry IP past the filter: dropped"
    );
}
