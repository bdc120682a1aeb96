//! sg-agent's data plane: one XDP program judging what enters an instance's
//! interface, one TC program judging what leaves it. Each instance gets its
//! own copy of this object, so its maps hold exactly that instance's policy
//! and connections.
//!
//! Each program comes twice: as named, for an instance whose subnet has no
//! network ACL (most: they carry none of its code), and with `_acl`
//! appended, which also walks the subnet's network ACL. The agent loads the
//! variant an instance's policy needs and swaps it on the live links when a
//! reload adds or removes its subnet's network ACL.
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

/// The programs of one variant: `$acl` says whether they walk the subnet's
/// network ACL.
macro_rules! programs {
    ($acl:literal, $ingress:ident, $ingress_tc:ident, $egress:ident, $egress_host:ident) => {
        /// Inbound: judged before the stack sees the packet; a drop is
        /// silent.
        ///
        /// Frags-aware (multi-buffer XDP): without it, attaching to veth
        /// turns off GSO/GRO on the path and TCP throughput falls to a
        /// quarter. The parser only reads headers, which sit in the first
        /// buffer.
        #[xdp(frags)]
        pub fn $ingress(ctx: XdpContext) -> u32 {
            if pipeline::judge::<false, $acl>(&Frame(&ctx), INGRESS) {
                xdp_action::XDP_PASS
            } else {
                xdp_action::XDP_DROP
            }
        }

        /// Inbound at TC ingress instead (`sg-agent run --ingress-hook
        /// tc`): the same judgement, after GRO, on the packets as the stack
        /// sees them. On veth this keeps a bulk TCP flow's throughput,
        /// which XDP there does not.
        #[classifier]
        pub fn $ingress_tc(ctx: TcContext) -> i32 {
            context::linearize_headers(&ctx);
            if pipeline::judge::<false, $acl>(&Frame(&ctx), INGRESS) {
                TC_ACT_UNSPEC
            } else {
                TC_ACT_SHOT
            }
        }

        /// Outbound. A pass hands the packet on to the next TC program
        /// (`TCX_NEXT` / `TC_ACT_UNSPEC`) rather than short-circuiting
        /// programs attached after us.
        #[classifier]
        pub fn $egress(ctx: TcContext) -> i32 {
            context::linearize_headers(&ctx);
            if pipeline::judge::<false, $acl>(&Frame(&ctx), EGRESS) {
                TC_ACT_UNSPEC
            } else {
                TC_ACT_SHOT
            }
        }

        /// What the instance sends, seen on the host side of its link (TC
        /// ingress of its tap or host veth): checked at layer 2 (source
        /// MAC, ARP, neighbour discovery; see `sg_common::guard`), then
        /// judged as its outbound.
        #[classifier]
        pub fn $egress_host(ctx: TcContext) -> i32 {
            context::linearize_headers(&ctx);
            if pipeline::judge::<true, $acl>(&Frame(&ctx), EGRESS) {
                TC_ACT_UNSPEC
            } else {
                TC_ACT_SHOT
            }
        }
    };
}

programs!(false, sg_ingress, sg_ingress_tc, sg_egress, sg_egress_host);
programs!(
    true,
    sg_ingress_acl,
    sg_ingress_tc_acl,
    sg_egress_acl,
    sg_egress_host_acl
);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
