//! XDP entry point: count every packet by verdict, count service traffic per service, and
//! drop service traffic from block-listed prefixes or from sources over their SYN budget.
//! Everything else passes: this program never breaks traffic it does not understand.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    btf_maps::lpm_trie::Key,
    helpers::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use robustifier_common::{SynBucket, XdpStats};

use crate::{
    maps::{BLOCK_V4, BLOCK_V6, CONFIG, SYN_BUCKET, XDP_STATS, service_for, svc_stats},
    parse::{Parsed, TcpPacket, parse},
};

/// Elapsed time beyond which a bucket is simply full again (bounds the refill arithmetic).
const MAX_REFILL_NS: u64 = 60_000_000_000;

#[xdp]
pub fn rb_xdp(ctx: XdpContext) -> u32 {
    // SAFETY: a successful lookup of a per-CPU array returns a non-null, aligned pointer to
    // this CPU's slot; programs are not preempted on their CPU, so only this run holds a
    // reference to it, and array slots are never freed.
    let Some(stats) = XDP_STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p }) else {
        return XDP_PASS;
    };
    stats.packets += 1;
    let mut pkt = TcpPacket::default();
    match parse(&ctx, &mut pkt) {
        Parsed::NonIp => {
            stats.non_ip += 1;
            XDP_PASS
        }
        Parsed::Malformed => {
            stats.malformed += 1;
            XDP_PASS
        }
        Parsed::NonTcp => {
            stats.non_tcp += 1;
            XDP_PASS
        }
        Parsed::Tcp => tcp(&ctx, &pkt, stats),
    }
}

#[inline(always)]
fn tcp(ctx: &XdpContext, pkt: &TcpPacket, stats: &mut XdpStats) -> u32 {
    let Some(service) = service_for(pkt.dst, pkt.dst_port_be) else {
        stats.no_service += 1;
        return XDP_PASS;
    };
    stats.service += 1;
    let Some(svc) = svc_stats(service.service_id) else {
        return XDP_PASS;
    };
    svc.packets += 1;
    svc.bytes += (ctx.data_end() - ctx.data()) as u64;
    if pkt.syn {
        svc.syns += 1;
    }
    if blocked(pkt) {
        svc.dropped_blocklist += 1;
        stats.dropped_blocklist += 1;
        return XDP_DROP;
    }
    if pkt.syn && !syn_allowed(pkt) {
        svc.dropped_syn_budget += 1;
        stats.dropped_syn_budget += 1;
        return XDP_DROP;
    }
    svc.passed += 1;
    XDP_PASS
}

#[inline(always)]
fn blocked(pkt: &TcpPacket) -> bool {
    if pkt.is_v4 {
        let addr = [pkt.src[12], pkt.src[13], pkt.src[14], pkt.src[15]];
        BLOCK_V4.get(&Key::new(32, addr)).is_some()
    } else {
        BLOCK_V6.get(&Key::new(128, pkt.src)).is_some()
    }
}

/// The bucket of a source: an IPv4 address as it is, an IPv6 address masked to
/// `prefix` bits (0 or over 128: the whole address). Two 64-bit halves, because 128-bit
/// shifts are not BPF instructions.
#[inline(always)]
fn bucket_key(src: &[u8; 16], is_v4: bool, prefix: u32) -> [u8; 16] {
    if is_v4 || prefix == 0 || prefix >= 128 {
        return *src;
    }
    let hi = u64::from_be_bytes([
        src[0], src[1], src[2], src[3], src[4], src[5], src[6], src[7],
    ]);
    let lo = u64::from_be_bytes([
        src[8], src[9], src[10], src[11], src[12], src[13], src[14], src[15],
    ]);
    let (hi, lo) = if prefix >= 64 {
        // prefix 64..=127: the low half keeps its first prefix - 64 bits.
        (hi, lo & !(u64::MAX >> (prefix - 64)))
    } else {
        (hi & !(u64::MAX >> prefix), 0)
    };
    let (h, l) = (hi.to_be_bytes(), lo.to_be_bytes());
    [
        h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5], l[6],
        l[7],
    ]
}

/// Token bucket per source (IPv6: per prefix): `syn_rate_per_sec` tokens a second, at
/// most `syn_burst`. The bucket map is shared by all CPUs; a lost update under a race
/// costs one token's accuracy, never a wrong drop of a well-behaved source.
#[inline(always)]
fn syn_allowed(pkt: &TcpPacket) -> bool {
    let Some(cfg) = CONFIG.get(0) else {
        return true;
    };
    if cfg.syn_rate_per_sec == 0 {
        return true;
    }
    let key = bucket_key(&pkt.src, pkt.is_v4, cfg.client_prefix_v6);
    let src = &key;
    let rate = cfg.syn_rate_per_sec as u64;
    let burst_milli = (cfg.syn_burst.max(1) as u64) * 1000;
    // SAFETY: a helper that takes no arguments and only reads the monotonic clock.
    let now = unsafe { bpf_ktime_get_ns() };
    match SYN_BUCKET.get_ptr_mut(src) {
        Some(p) => {
            // SAFETY: a successful lookup returns a non-null, aligned pointer to a value that
            // the kernel keeps allocated while the program runs (RCU). LRU eviction or another
            // CPU may update the same bucket concurrently; its fields are plain integers, so a
            // lost update at worst misstates one source's budget, never memory.
            let bucket = unsafe { &mut *p };
            let elapsed = now.saturating_sub(bucket.last_ns).min(MAX_REFILL_NS);
            // tokens_milli per ns = rate * 1000 / 1e9 = rate / 1e6.
            let refill = elapsed * rate / 1_000_000;
            let tokens = (bucket.tokens_milli + refill).min(burst_milli);
            bucket.last_ns = now;
            if tokens >= 1000 {
                bucket.tokens_milli = tokens - 1000;
                true
            } else {
                bucket.tokens_milli = tokens;
                false
            }
        }
        None => {
            let fresh = SynBucket {
                tokens_milli: burst_milli - 1000,
                last_ns: now,
            };
            let _ = SYN_BUCKET.insert(src, fresh, 0);
            true
        }
    }
}
