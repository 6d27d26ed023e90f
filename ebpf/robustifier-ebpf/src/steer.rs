//! sk_lookup entry point: choose the proxy socket that accepts a new TCP connection.
//!
//! The proxy listens on one socket per (service, slot) and registers it in the sockmap;
//! it binds no VIP, so addresses can come and go (VRRP) without touching the proxy.
//! Slot choice: the shed listener when the service is out of capacity for the client's
//! class, the priority listener for the priority class, the normal listener otherwise,
//! falling back to the normal listener when a slot has no socket.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{BPF_SK_LOOKUP_F_REPLACE, sk_action::SK_PASS},
    btf_maps::lpm_trie::Key,
    macros::sk_lookup,
    programs::SkLookupContext,
};
use aya_log_ebpf::warn;
use robustifier_common::{
    CAPACITY_EXHAUSTED, CAPACITY_PRIORITY_ONLY, CLASS_PRIORITY, FAMILY_V4, FAMILY_V6, SLOT_NORMAL,
    SLOT_PRIORITY, SLOT_SHED, ServiceStats, listener_slot, v4_mapped,
};

use crate::maps::{CLASS_V4, CLASS_V6, LISTENERS, SVC_STATE, service_for, svc_stats};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const IPPROTO_TCP: u32 = 6;

#[sk_lookup]
pub fn rb_steer(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // Context fields are read with volatile loads at their fixed offsets: the verifier
    // refuses a load through a context pointer the compiler has offset by a variable, which
    // is what merging the IPv4 and IPv6 branches would produce.
    // SAFETY: the kernel hands the program a non-null, aligned `bpf_sk_lookup` context that
    // stays valid and unchanged for its whole run; the fields are plain integers read by
    // value through raw pointers, so no reference to the context is created.
    let (protocol, family, local_port) = unsafe {
        (
            read_volatile(&raw const (*l).protocol),
            read_volatile(&raw const (*l).family),
            read_volatile(&raw const (*l).local_port),
        )
    };
    if protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    // local_port is in host order; ip fields are stored in network order.
    let port_be = (local_port as u16).to_be();
    let (local, class, fam) = match family {
        AF_INET => {
            // SAFETY: as for the first context read above: a valid context, fields read by value.
            let (remote, local) = unsafe {
                (
                    read_volatile(&raw const (*l).remote_ip4).to_ne_bytes(),
                    read_volatile(&raw const (*l).local_ip4).to_ne_bytes(),
                )
            };
            let class = CLASS_V4.get(&Key::new(32, remote)).map(|c| c.class);
            (v4_mapped(local), class, FAMILY_V4)
        }
        AF_INET6 => {
            // SAFETY: as for the first context read above: a valid context, fields read by value.
            let (remote, local) = unsafe {
                (
                    read_volatile(&raw const (*l).remote_ip6),
                    read_volatile(&raw const (*l).local_ip6),
                )
            };
            let class = CLASS_V6
                .get(&Key::new(128, v6_bytes(&remote)))
                .map(|c| c.class);
            (v6_bytes(&local), class, FAMILY_V6)
        }
        _ => return SK_PASS,
    };
    let Some(service) = service_for(local, port_be) else {
        return SK_PASS;
    };
    let id = service.service_id;
    let Some(stats) = svc_stats(id) else {
        return SK_PASS;
    };
    let priority = class == Some(CLASS_PRIORITY);
    let capacity = SVC_STATE.get(id).map(|s| s.capacity).unwrap_or(0);
    let shed = capacity == CAPACITY_EXHAUSTED || (capacity == CAPACITY_PRIORITY_ONLY && !priority);

    if shed && assign(&ctx, id, SLOT_SHED, fam) {
        stats.steered_shed += 1;
    } else if priority && assign(&ctx, id, SLOT_PRIORITY, fam) {
        stats.steered_priority += 1;
    } else if assign(&ctx, id, SLOT_NORMAL, fam) {
        stats.steered_normal += 1;
    } else {
        no_listener(&ctx, id, stats);
    }
    SK_PASS
}

/// During a binary upgrade two steering programs run on the namespace, the old process's
/// and the new one's, in the order attached; with `REPLACE` the newest's choice stands
/// (without it the later program's assignment fails once the earlier one chose).
#[inline(always)]
fn assign(ctx: &SkLookupContext, service_id: u32, slot: u32, family: u32) -> bool {
    LISTENERS
        .redirect_sk_lookup(
            ctx,
            listener_slot(service_id, slot, family),
            BPF_SK_LOOKUP_F_REPLACE as u64,
        )
        .is_ok()
}

/// A service with no registered listener: the daemon is down or restarting. The
/// connection falls through to the normal socket lookup (and usually gets a reset).
#[inline(never)]
fn no_listener(ctx: &SkLookupContext, service_id: u32, stats: &mut ServiceStats) {
    stats.steer_no_listener += 1;
    warn!(
        ctx,
        "service {} has no listener; connection left to the stack", service_id
    );
}

#[inline(always)]
fn v6_bytes(words: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w = words[i].to_ne_bytes();
        out[i * 4] = w[0];
        out[i * 4 + 1] = w[1];
        out[i * 4 + 2] = w[2];
        out[i * 4 + 3] = w[3];
        i += 1;
    }
    out
}
