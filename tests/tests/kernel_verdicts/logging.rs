//! What the programs observe beyond new flows and dropped packets costs
//! nothing per packet when it is off: the agent loads the object with the
//! `SG_OBSERVE` global at 0, and the verifier removes the code it switches
//! off (dead code behind a read-only global). The report of a dropped
//! packet stays in every build, behind a flag of the settings
//! (`sg_common::policy::LIVE`) that `sg-agent flows --live` sets at run
//! time: the drop log only makes the flag's test go.

use sg_agent::dataplane::{Dataplane, Observe};

fn translated_sizes(dp: &Dataplane) -> (u32, u32) {
    let size = |info: aya::programs::ProgramInfo| info.size_translated().expect("xlated size");
    (
        size(dp.ingress().info().expect("XDP program info")),
        size(dp.egress().info().expect("TC program info")),
    )
}

#[test]
fn observing_code_is_removed_when_it_is_off() {
    sg_tests::kernel::require_root();
    let off = Dataplane::load_observing(Observe::default()).expect("loads observing nothing");
    let drops = Dataplane::load_observing(Observe::default().with_drops()).expect("drop log");
    let all = Dataplane::load_observing(Observe::default().with_flow_logs()).expect("flow logs");
    let (off, drops, all) = (
        translated_sizes(&off),
        translated_sizes(&drops),
        translated_sizes(&all),
    );
    assert!(
        off.0 < all.0 && off.1 < all.1 && drops.0 < all.0 && drops.1 < all.1,
        "flow logs add code the verifier removes when they are off: XDP {} and {} < {} bytes, \
         TC {} and {} < {} bytes",
        off.0,
        drops.0,
        all.0,
        off.1,
        drops.1,
        all.1
    );
    assert!(
        drops.0 <= off.0 && drops.1 <= off.1,
        "the drop log adds no code (the drop report is there for a live follower): XDP {} <= {}, \
         TC {} <= {} bytes",
        drops.0,
        off.0,
        drops.1,
        off.1
    );
}
