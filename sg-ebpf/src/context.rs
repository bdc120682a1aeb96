//! One packet abstraction for XDP and TC, so parsing and judging are written
//! once (as Cilium writes its library against one buffer type).

use aya_ebpf::{
    EbpfContext,
    programs::{TcContext, XdpContext},
};

/// A packet buffer; an eBPF context too, so aya-log can write records.
pub trait Packet: EbpfContext {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

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
    if (linear as u32) < want {
        // On failure the parser sees a short packet and judges it as such.
        let _ = ctx.pull_data(want);
    }
}

/// A pointer to a `T` at `offset`, or `None` when it would cross data_end.
/// Every header read goes through here.
#[inline(always)]
pub fn ptr_at<T>(ctx: &impl Packet, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    // The verifier needs this comparison against data_end on the very
    // pointer that is then dereferenced.
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}
