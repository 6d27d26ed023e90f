//! Kernel drop path: a SYN flood from one /24 into the front-end's veth, dropped by
//! Robustifier's XDP block list, by an nftables netdev-ingress rule on the same veth, or
//! answered by the plain stack (SYN cookies); meanwhile a legitimate client sends mail
//! through Robustifier. Figures: SYNs/s the sender achieved, SYNs/s dropped (from the
//! XDP and nftables counters), the receive path's CPU per packet (the poller's CPU time over
//! the packets it handled: one sender cannot saturate an XDP drop, so the cost per packet,
//! not the rate, tells the drop paths apart), and the share of legitimate sessions
//! delivered.
//!
//! On a veth the receive side would run in the sender's softirq on the sender's CPU; the
//! scenario switches the front-end's veth to threaded NAPI and pins its poller to the
//! system-under-test CPU, so the sender (on the load CPU) fills the veth's ring and the
//! drop rate is what one CPU of receive processing sustains.

use std::{
    net::SocketAddrV4,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use robustifier_lab::topology::VIP_SMTP;

use crate::{Ctx, flood, procs, report::Metric, rivals, smtp};

const SCENARIO: &str = "drop";
const XDP_NET: [u8; 3] = [198, 19, 66];
const NFT_NET: [u8; 3] = [198, 19, 77];
const STACK_NET: [u8; 3] = [198, 19, 88];

const SENT: Metric = Metric {
    name: "flood SYNs sent per second",
    unit: "pps",
    lower_is_better: false,
};
const DROPPED: Metric = Metric {
    name: "flood SYNs dropped per second",
    unit: "pps",
    lower_is_better: false,
};
const RX_CPU: Metric = Metric {
    name: "receive CPU per packet",
    unit: "ns",
    lower_is_better: true,
};
const LEGIT: Metric = Metric {
    name: "legitimate sessions delivered",
    unit: "%",
    lower_is_better: false,
};
const LEGIT_P99: Metric = Metric {
    name: "legitimate session p99",
    unit: "ms",
    lower_is_better: true,
};

fn nft_packets(lab: &robustifier_lab::Lab) -> u64 {
    lab.frontend(0)
        .ns
        .sh("nft", &["list", "chain", "netdev", "rbbench", "ingress"])
        .ok()
        .and_then(|t| {
            let i = t.find("packets ")?;
            t[i + 8..].split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let mut lab = super::lab("bd", 1, 1)?;
    rivals::sink(&mut lab, 0, &[])?;
    let top = format!(
        "[flood]\nblock = [\"{}.{}.{}.0/24\"]\n",
        XDP_NET[0], XDP_NET[1], XDP_NET[2]
    );
    let cfg = rivals::robustifier_config(&lab, 0, 1, &top, "");
    rivals::start_robustifier(&mut lab, &cfg)?;
    // All three cases run in pub0's receive path, now on the system-under-test CPU.
    let pollers = procs::pin_napi(&lab.frontend(0).ns.name, "pub0", procs::SUT_CPU)?;
    let rules = format!(
        "table netdev rbbench {{\n chain ingress {{\n  type filter hook ingress device \"pub0\" priority -500; policy accept;\n  ip saddr {}.{}.{}.0/24 counter drop\n }}\n}}\n",
        NFT_NET[0], NFT_NET[1], NFT_NET[2]
    );
    let path = lab.log_dir.join("bench.nft");
    std::fs::write(&path, rules)?;
    lab.frontend(0)
        .ns
        .sh("nft", &["-f", path.to_str().unwrap_or_default()])?;
    let msg = smtp::message(1024);
    let dst = SocketAddrV4::new(VIP_SMTP, 25);
    let cases = [
        ("robustifier", XDP_NET),
        ("nftables", NFT_NET),
        ("stack", STACK_NET),
    ];
    let secs = Duration::from_secs_f64(s.flood_secs);
    // Warm-up: neighbour entries, the proxy's first sessions.
    let ns = lab.client.ns.clone();
    ns.enter(|| smtp::session(rivals::vip(), &msg, smtp::Timeouts::NORMAL))??;
    for rep in 0..s.flood_reps {
        for (name, net) in super::shuffled(&cases) {
            let xdp0 = rivals::maps(&lab)?["xdp"]["dropped_blocklist"]
                .as_u64()
                .unwrap_or(0);
            let nft0 = nft_packets(&lab);
            let packets0 = rivals::maps(&lab)?["xdp"]["packets"].as_u64().unwrap_or(0);
            let rx_cpu0 = procs::cpu_us(&pollers);
            let done = AtomicBool::new(false);
            let (((sent, _errors), el), legit) = ns.enter(|| {
                std::thread::scope(|sc| {
                    let legit = sc.spawn(|| {
                        let _ = procs::pin_current(procs::LOAD_CPU);
                        let mut ok = Vec::new();
                        let mut failed = 0usize;
                        let t = smtp::Timeouts {
                            connect: Duration::from_secs(1),
                            io: Duration::from_secs(2),
                        };
                        while !done.load(Ordering::Relaxed) {
                            match smtp::session(rivals::vip(), &msg, t) {
                                Ok(d) => ok.push(d),
                                Err(_) => failed += 1,
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        (ok, failed)
                    });
                    let t0 = Instant::now();
                    let r = flood::syn_flood(net, dst, secs);
                    // The flood's own duration: joining the legitimate client below may
                    // take a while longer, and no flood packet arrives meanwhile.
                    let flood_secs = t0.elapsed().as_secs_f64();
                    done.store(true, Ordering::Relaxed);
                    let l = legit.join().unwrap_or_default();
                    r.map(|r| ((r, flood_secs), l))
                })
            })??;
            let case = "SYN flood from one /24";
            // Every packet pub0 received (flood and legitimate), and the CPU its receive path
            // took in the poller: what one packet costs XDP, nftables or the stack.
            let packets = rivals::maps(&lab)?["xdp"]["packets"].as_u64().unwrap_or(0) - packets0;
            let rx_cpu = procs::cpu_us(&pollers) - rx_cpu0;
            if packets > 0 {
                ctx.add(
                    SCENARIO,
                    case,
                    RX_CPU,
                    name,
                    rx_cpu * 1000.0 / packets as f64,
                );
            }
            ctx.add(SCENARIO, case, SENT, name, sent as f64 / el);
            let dropped = match name {
                "robustifier" => Some(
                    rivals::maps(&lab)?["xdp"]["dropped_blocklist"]
                        .as_u64()
                        .unwrap_or(0)
                        - xdp0,
                ),
                "nftables" => Some(nft_packets(&lab) - nft0),
                _ => None,
            };
            if let Some(d) = dropped {
                ctx.add(SCENARIO, case, DROPPED, name, d as f64 / el);
            }
            let (ok, failed) = legit;
            let total = ok.len() + failed;
            if total > 0 {
                ctx.add(
                    SCENARIO,
                    case,
                    LEGIT,
                    name,
                    100.0 * ok.len() as f64 / total as f64,
                );
            }
            if !ok.is_empty() {
                let p = smtp::percentiles(&ok, &[0.99]);
                ctx.add(SCENARIO, case, LEGIT_P99, name, p[0]);
            }
            // Let the stack's half-open connections (SYN-RECV, cookies) age out a little.
            std::thread::sleep(Duration::from_millis(300));
        }
        println!(
            "bench: drop: repetition {} of {} done",
            rep + 1,
            s.flood_reps
        );
    }
    ctx.note(
        "drop: \"robustifier\" = XDP block list, \"nftables\" = netdev ingress drop on the same \
         veth (behind our XDP program, which passes those sources), \"stack\" = no filter \
         (SYN-ACK or cookie per SYN). One sender thread on CPU 1 drives all three; pub0's \
         receive path runs in its threaded-NAPI poller, pinned to CPU 0.",
    );
    // The table goes with the namespace; removing it here only keeps the lab tidy.
    let _ = lab
        .frontend(0)
        .ns
        .sh("nft", &["delete", "table", "netdev", "rbbench"]);
    Ok(())
}
