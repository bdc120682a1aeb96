//! The packet parser the kernel runs (`sg_common::parse`, the very code the
//! XDP and TC programs inline), over any bytes as a frame, held to the
//! reference decoder (`sg_common::wire_reference`): the same verdict for
//! frames it does not judge by rules, the same fields for those it does.
//! The flows start full of junk, so a field the parser forgets to write
//! shows; the slice view panics on any load outside the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sg_common::{
    flow::Flow,
    parse::{Next, SliceView, parse},
    wire_reference::{Decoded, decode, observed},
};

fn junk(seed: u8) -> Flow {
    let w = u32::from_ne_bytes([seed; 4]);
    Flow {
        src: [w; 4],
        dst: [!w; 4],
        sport: u16::from(seed) * 257,
        dport: !(u16::from(seed) * 257),
        frag_id: w,
        family: seed,
        proto: seed,
        frag: seed,
        tcp_flags: seed,
        icmp_type: seed,
        icmp_code: seed,
        ipv6_ah: seed,
        pad: seed,
        tcp_seq: w,
    }
}

fuzz_target!(|frame: &[u8]| {
    let seed = frame.first().copied().unwrap_or(0xa5) ^ 0x5a;
    let (mut flow, mut inner) = (junk(seed), junk(!seed));
    let got = match parse::<true>(&SliceView::new(frame), &mut flow, &mut inner).next {
        Next::Verdict(reason) => Decoded::Verdict(reason),
        Next::Arp { .. } => Decoded::Verdict(sg_common::counters::PASS_NOT_IP),
        Next::Ip { has_inner, .. } => observed(&flow, has_inner.then_some(&inner)),
    };
    let want = decode(frame);
    assert_eq!(got, want, "parser and reference disagree on {frame:02x?}");
});
