//! One packet abstraction for XDP and TC, so parsing and judging are written
//! once (as Cilium writes its library against one buffer type).

use aya_ebpf::helpers::generated::bpf_xdp_get_buff_len;
use aya_ebpf::programs::{TcContext, XdpContext};
use sg_common::parse::PacketView;

/// A packet buffer the shared parser reads ([`PacketView`], with this
/// crate's one-instruction loads), and what flow logs need besides.
pub trait Packet: PacketView {
    /// The packet's length on the wire, in bytes (for flow logs).
    fn wire_len(&self) -> u32;
}

impl Packet for Frame<'_, XdpContext> {
    #[inline(always)]
    fn wire_len(&self) -> u32 {
        // SAFETY: the helper reads the program's own context.
        let len = unsafe { bpf_xdp_get_buff_len(self.0.ctx) };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "a frame is far below 4 GiB"
        )]
        let len = len as u32;
        len
    }
}

impl Packet for Frame<'_, TcContext> {
    #[inline(always)]
    fn wire_len(&self) -> u32 {
        self.0.len()
    }
}

/// A program's context seen as a packet. A local wrapper, because Rust's
/// orphan rule forbids implementing sg-common's trait on aya's types here.
pub struct Frame<'a, C>(pub &'a C);

/// XDP and TC contexts give the same view: their bounds, and this crate's
/// one-instruction loads; `$len` gives the whole packet's length (past the
/// direct view too), `$tagged` whether the kernel took a VLAN tag out of
/// the frame into its metadata (TC's skb; XDP sees every tag in the frame).
macro_rules! packet_view {
    ($ctx:ty, $len:expr, $tagged:expr) => {
        impl PacketView for Frame<'_, $ctx> {
            #[inline(always)]
            fn data(&self) -> usize {
                self.0.data()
            }
            #[inline(always)]
            fn data_end(&self) -> usize {
                self.0.data_end()
            }
            #[inline(always)]
            fn packet_len(&self) -> usize {
                $len(self)
            }
            #[inline(always)]
            fn vlan_tagged(&self) -> bool {
                $tagged(self)
            }
            #[inline(always)]
            unsafe fn load_u32(&self, p: *const u8) -> u32 {
                // SAFETY: the caller's contract is this function's.
                unsafe { load_u32(p) }
            }
            #[inline(always)]
            unsafe fn load_be16(&self, p: *const u8) -> u16 {
                // SAFETY: the caller's contract is this function's.
                unsafe { load_be16(p) }
            }
        }
    };
}

packet_view!(
    XdpContext,
    |frame: &Frame<'_, XdpContext>| { frame.wire_len() as usize },
    |_| false
);
packet_view!(
    TcContext,
    |frame: &Frame<'_, TcContext>| { frame.0.len() as usize },
    |frame: &Frame<'_, TcContext>| {
        // SAFETY: the program's own context; the kernel rewrites the read of
        // `vlan_present` into one of the skb's VLAN fields.
        unsafe { (*frame.0.skb.skb).vlan_present != 0 }
    }
);

/// Headers the parser may read, at most: Ethernet, two VLAN tags, IPv6 with
/// an extension chain, and an ICMP error's quoted headers.
const PULL_LEN: u32 = 256;

/// An skb's headers can sit outside its linear part (GSO, fragments lists):
/// pull them in so direct packet access sees them. Cheap no-op otherwise.
#[inline(always)]
pub fn linearize_headers(ctx: &TcContext) {
    let linear = ctx.data_end().saturating_sub(ctx.data());
    let len = ctx.len();
    let want = if len < PULL_LEN { len } else { PULL_LEN };
    // A linear part longer than 4 GiB does not exist; `as` keeps the
    // comparison one instruction.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "an skb's linear part is far below 4 GiB"
    )]
    let linear = linear as u32;
    if linear < want {
        // On failure the parser sees a short packet and judges it as such.
        let _ = ctx.pull_data(want);
    }
}

/// Four packet bytes as they sit (no byte-order change), in one load.
///
/// Packet headers are not aligned (the IP header starts 14 bytes into the
/// frame), and Rust reads a `[u8; 4]` field as four byte loads joined by
/// three shifts and three ors: for the eight words of two IPv6 addresses that
/// was the largest part of the parser. An eBPF load may be unaligned: the
/// verifier permits it where the CPU handles it (x86, arm64) and checks the
/// alignment elsewhere, refusing the program at load time rather than
/// letting it misread. Inline assembly states exactly that one instruction,
/// which a Rust read of a misaligned `u32` could not.
///
/// # Safety
/// `p .. p + 4` must lie inside the packet, checked against `data_end` on
/// this very pointer (see `sg_common::parse::ptr_at`).
#[inline(always)]
unsafe fn load_u32(p: *const u8) -> u32 {
    let v: u64;
    // SAFETY: one 4-byte load at `p`, inside the packet by the caller's contract; the instruction only reads.
    unsafe {
        core::arch::asm!(
            "{v} = *(u32 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) v,
            options(nostack, readonly),
        );
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a 32-bit load zero-extends into the 64-bit register"
    )]
    let v = v as u32;
    v
}

/// A big-endian 16-bit packet field, in one load (see [`load_u32`]).
///
/// # Safety
/// As for [`load_u32`], for `p .. p + 2`.
#[inline(always)]
unsafe fn load_be16(p: *const u8) -> u16 {
    let v: u64;
    // SAFETY: one 2-byte load at `p`, inside the packet by the caller's contract; the instruction only reads.
    unsafe {
        core::arch::asm!(
            "{v} = *(u16 *)({p} + 0)",
            p = in(reg) p,
            v = lateout(reg) v,
            options(nostack, readonly),
        );
    }
    #[expect(
        clippy::cast_possible_truncation,
        reason = "a 16-bit load zero-extends into the 64-bit register"
    )]
    let v = v as u16;
    u16::from_be(v)
}
