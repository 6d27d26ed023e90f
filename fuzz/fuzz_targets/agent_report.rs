//! A back-end agent's report line as the front-end parses it (`agent_wire`):
//! parsing never panics and keeps every figure in range; the line an agent writes
//! (`agent::Figures::line`) reads back as the figures it was made from.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use robustifier::agent::Figures;
use robustifier::agent_wire::parse;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    line: &'a str,
    run_queue: f64,
    mail_queue: u32,
    disk_permille: u16,
    weight: Option<u16>,
    drain: bool,
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(r) = parse(input.line) {
        assert!(r.disk_permille <= 1000);
        assert!(r.weight.is_none_or(|w| w <= 65535));
    }
    let f = Figures {
        run_queue: input.run_queue,
        mail_queue: input.mail_queue,
        disk_permille: u32::from(input.disk_permille).min(1000),
        weight: input.weight.map(u32::from),
        drain: input.drain,
    };
    let line = f.line();
    let r = parse(line.trim_end()).expect("an agent's own line parses");
    assert_eq!(
        (r.mail_queue, r.disk_permille, r.weight, r.drain),
        (f.mail_queue, f.disk_permille, f.weight, f.drain),
        "{line:?}"
    );
    // runq travels with two decimals: within 5 thousandths, clamped to what u32 holds.
    let q = f.run_queue;
    if q.is_finite() && (0.0..4_000_000.0).contains(&q) {
        let milli = (q * 1000.0).round() as i64;
        assert!(
            (i64::from(r.run_queue_milli) - milli).abs() <= 5,
            "{line:?} -> {}",
            r.run_queue_milli
        );
    }
});
