//! `--ebpf-log` off costs nothing per packet: the agent loads the object
//! with the log level at 0, and the verifier removes the log statements
//! from the programs (they are dead code behind a read-only global).

use sg_agent::dataplane::Dataplane;

fn translated_sizes(dp: &Dataplane) -> (u32, u32) {
    let size = |info: aya::programs::ProgramInfo| info.size_translated().expect("xlated size");
    (
        size(dp.ingress().info().expect("XDP program info")),
        size(dp.egress().info().expect("TC program info")),
    )
}

#[test]
fn log_statements_are_removed_when_logging_is_off() {
    sg_tests::kernel::require_root();
    let off = Dataplane::load_logging(false).expect("loads without logging");
    let on = Dataplane::load_logging(true).expect("loads with logging");
    let (off, on) = (translated_sizes(&off), translated_sizes(&on));
    assert!(
        off.0 < on.0 && off.1 < on.1,
        "programs loaded without --ebpf-log must be smaller than with it (the log \
         statements removed): XDP {} vs {} bytes, TC {} vs {} bytes",
        off.0,
        on.0,
        off.1,
        on.1
    );
}
