//! sg-agent's data plane: one XDP program judging what enters an instance's
//! interface, one TC program judging what leaves it. Each instance gets its
//! own copy of this object, so its maps hold exactly that instance's policy
//! and connections.
#![no_std]
#![no_main]
// Inline assembly for single-instruction unaligned packet loads (context.rs);
// the parser itself is sg_common::parse.
#![feature(asm_experimental_arch)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![expect(
    clippy::inline_always,
    reason = "the verifier needs these helpers inlined into the programs: a call boundary loses the bounds it has proved"
)]

mod context;
mod maps;
mod observe;
mod pipeline;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use context::Frame;
use sg_common::policy::{EGRESS, INGRESS};

/// Inbound: judged before the stack sees the packet; a drop is silent.
///
/// Frags-aware (multi-buffer XDP): without it, attaching to veth turns off
/// GSO/GRO on the path and TCP throughput falls to a quarter. The parser
/// only reads headers, which sit in the first buffer.
#[xdp(frags)]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros pass the context by value"
)]
pub fn sg_ingress(ctx: XdpContext) -> u32 {
    if pipeline::judge::<false>(&Frame(&ctx), INGRESS) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}

/// Inbound at TC ingress instead (`sg-agent run --ingress-hook tc`): the
/// same judgement, after GRO, on the packets as the stack sees them. On veth
/// this keeps a bulk TCP flow's throughput, which XDP there does not.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros pass the context by value"
)]
pub fn sg_ingress_tc(ctx: TcContext) -> i32 {
    context::linearize_headers(&ctx);
    if pipeline::judge::<false>(&Frame(&ctx), INGRESS) {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

/// Outbound. A pass hands the packet on to the next TC program (`TCX_NEXT` /
/// `TC_ACT_UNSPEC`) rather than short-circuiting programs attached after us.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros pass the context by value"
)]
pub fn sg_egress(ctx: TcContext) -> i32 {
    context::linearize_headers(&ctx);
    if pipeline::judge::<false>(&Frame(&ctx), EGRESS) {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

/// What the instance sends, seen on the host side of its link (TC ingress
/// of its tap or host veth): checked at layer 2 (source MAC, ARP, neighbour
/// discovery; see `sg_common::guard`), then judged as its outbound.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's program macros pass the context by value"
)]
pub fn sg_egress_host(ctx: TcContext) -> i32 {
    context::linearize_headers(&ctx);
    if pipeline::judge::<true>(&Frame(&ctx), EGRESS) {
        TC_ACT_UNSPEC
    } else {
        TC_ACT_SHOT
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
