//! Running the loaded programs on crafted frames through `BPF_PROG_TEST_RUN`.

use aya::programs::{TestRun as _, TestRunOptions};
use sg_agent::{
    config::{self, Vpc},
    dataplane::Dataplane,
    policy::compile::compile,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// `TC_ACT_UNSPEC`: pass on to the next program.
const TC_NEXT: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;

/// Privileged tests never skip: without root they fail and say why.
pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test loads eBPF programs and must run as root (cargo xtask test runs it so)"
    );
}

/// Parses a rules file given as text; panics with the diagnostics.
pub fn vpc(text: &str) -> Vpc {
    config::from_str("test.toml".as_ref(), text)
        .unwrap_or_else(|d| panic!("test config invalid:\n{d}"))
}

/// A fresh data plane holding `instance`'s compiled policy, not attached.
pub fn dataplane_for(vpc: &Vpc, instance: &str) -> Dataplane {
    require_root();
    let compiled = compile(vpc);
    let inst = compiled
        .instances
        .iter()
        .find(|i| i.name == instance)
        .expect("instance in config");
    let mut dp = Dataplane::load_with_allowance(inst.max_tracked_connections)
        .expect("eBPF object loads and passes the verifier");
    dp.publish(&inst.tables, inst.settings)
        .expect("policy published");
    dp.set_service_mac(inst.service_mac.map(|m| m.0))
        .expect("services' MAC address set");
    dp
}

/// Ingress verdict of the XDP program on `frame`: true for pass.
pub fn xdp_passes(dp: &Dataplane, frame: &[u8]) -> bool {
    let r = dp
        .ingress()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN on XDP");
    match r.return_value {
        XDP_PASS => true,
        XDP_DROP => false,
        other => panic!("unexpected XDP verdict {other}"),
    }
}

/// Egress verdict of the TC program on `frame`: true for pass.
pub fn tc_passes(dp: &Dataplane, frame: &[u8]) -> bool {
    classifier_passes(dp.egress(), frame)
}

/// Ingress verdict of the TC ingress program (`--ingress-hook tc`).
pub fn tc_ingress_passes(dp: &Dataplane, frame: &[u8]) -> bool {
    classifier_passes(dp.ingress_tc(), frame)
}

/// A TC program's verdict on `frame`: true for pass.
pub fn classifier_passes(prog: &aya::programs::SchedClassifier, frame: &[u8]) -> bool {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN on TC");
    match r.return_value {
        TC_NEXT => true,
        TC_ACT_SHOT => false,
        other => panic!("unexpected TC verdict {other}"),
    }
}
