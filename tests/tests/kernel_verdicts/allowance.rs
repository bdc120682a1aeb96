//! The connection allowance (AWS's `conntrack_allowance_exceeded`): a full
//! connection table refuses new tracked flows, keeps every tracked one,
//! never spends the allowance on untracked flows, and admits new flows
//! again once expired entries are reclaimed.

use sg_agent::{dataplane::Dataplane, policy::compile::compile};
use sg_tests::{
    frames::{ACK, SYN, Shape, frame},
    kernel::{vpc, xdp_passes},
};

use crate::{ip, tcp};

const ALLOWANCE: u32 = 16;

/// tcp/22 from a narrow range (tracked), tcp/80 from everywhere with the
/// default egress (untracked, as AWS has it).
fn config(allowance: u32) -> String {
    format!(
        r#"
[[security_group]]
name = "web"
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 22
  to_port = 22
  cidr_blocks = ["10.9.0.0/16"]
  [[security_group.ingress]]
  protocol = "tcp"
  from_port = 80
  to_port = 80
  cidr_blocks = ["0.0.0.0/0"]

[[instance]]
name = "web"
addresses = ["10.0.0.1"]
security_groups = ["web"]
  [instance.conntrack]
  max_tracked_connections = {allowance}
"#
    )
}

fn syn_from(port: u16, dport: u16) -> Vec<u8> {
    frame(
        ip("10.9.0.7"),
        ip("10.0.0.1"),
        &tcp(port, dport, SYN),
        &Shape::default(),
    )
}

#[test]
fn a_full_table_refuses_new_flows_and_keeps_every_tracked_one() {
    let vpc = vpc(&config(ALLOWANCE));
    let compiled = compile(&vpc);
    let inst = &compiled.instances[0];
    assert_eq!(inst.max_tracked_connections, ALLOWANCE);
    let mut dp = Dataplane::load_with_allowance(ALLOWANCE).expect("load");
    // Half-open flows idle out after 1.5 s here, so the test can watch
    // the allowance come back.
    let settings = sg_common::policy::Settings {
        tcp_syn_ns: 1_500_000_000,
        ..inst.settings
    };
    dp.publish(&inst.tables, settings).expect("publish");

    for port in 0..u16::try_from(ALLOWANCE).expect("small") {
        assert!(
            xdp_passes(&dp, &syn_from(40_000 + port, 22)),
            "flow {port} fits the allowance"
        );
    }
    assert_eq!(dp.tracked_connections(), ALLOWANCE as usize);
    assert!(
        !xdp_passes(&dp, &syn_from(41_000, 22)),
        "one flow past the allowance is dropped"
    );
    let counts = dp.counters().expect("counters");
    assert_eq!(counts.ingress.get("drop_conntrack_allowance_exceeded"), 1);
    // Every tracked flow still works, both ways: nothing was evicted.
    for port in 0..u16::try_from(ALLOWANCE).expect("small") {
        let me_to_peer = frame(
            ip("10.0.0.1"),
            ip("10.9.0.7"),
            &tcp(22, 40_000 + port, SYN | ACK),
            &Shape::default(),
        );
        assert!(
            sg_tests::kernel::tc_passes(&dp, &me_to_peer),
            "tracked flow {port} answers"
        );
    }
    // Untracked flows do not use the allowance.
    let http = frame(
        ip("198.51.100.4"),
        ip("10.0.0.1"),
        &tcp(50_000, 80, SYN),
        &Shape::default(),
    );
    assert!(
        xdp_passes(&dp, &http),
        "an untracked flow passes a full table"
    );
    assert_eq!(
        dp.counters()
            .expect("counters")
            .ingress
            .get("pass_untracked"),
        1
    );

    // Nothing expired yet: reclaiming finds every flow live.
    let r = dp.reclaim_expired(&settings).expect("reclaim");
    assert_eq!((r.live, r.removed), (ALLOWANCE as usize, 0));
    assert!(!xdp_passes(&dp, &syn_from(41_001, 22)), "still full");

    // Keep one flow in use, let the others idle out, and reclaim: the
    // allowance comes back, the flow in use stays.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let ack = frame(
        ip("10.9.0.7"),
        ip("10.0.0.1"),
        &tcp(40_000, 22, ACK),
        &Shape::default(),
    );
    assert!(xdp_passes(&dp, &ack), "flow 0 is still in use");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let r = dp.reclaim_expired(&settings).expect("reclaim");
    assert_eq!(
        (r.live, r.removed),
        (1, ALLOWANCE as usize - 1),
        "the idle flows are reclaimed, the one in use is not"
    );
    assert!(
        xdp_passes(&dp, &syn_from(41_002, 22)),
        "a new flow is admitted again"
    );
    let answer = frame(
        ip("10.0.0.1"),
        ip("10.9.0.7"),
        &tcp(22, 40_000, ACK),
        &Shape::default(),
    );
    assert!(
        sg_tests::kernel::tc_passes(&dp, &answer),
        "the flow in use still answers"
    );
}
