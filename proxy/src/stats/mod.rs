//! Per-minute statistics of a front-end's sessions.
//!
//! Sessions count into atomics ([`counters`]) found by index through the [`table`] of the
//! configuration in force: per service, back-end, pool and user group, the sessions, the
//! messages a back-end acknowledged and their recipients, the bytes each way between
//! client and back-end, the deflections by reason (`overload`: every back-end over its
//! thresholds; `no_backend`: none reachable; `limit`: the front-end's connection,
//! per-client or login limits) and the back-ends' connect and greeting time. Every
//! minute, on the wall clock's minute, the [`minute`] roll-up turns their growth into one
//! [`Minute`]: kept in memory (`[monitor] stats_minutes`), appended to `stats.jsonl` in
//! `[monitor] stats_log` (rotated like `events.jsonl`), served by the control request
//! `stats [SINCE]`, and shipped by the front-end's member to the cluster manager.
//!
//! A minute as JSON (keys with nothing during the minute are left out, and so are zero
//! deflections and an empty latency):
//!
//! ```json
//! {"member":"fe-a","minute":29410560,
//!  "services":{"smtp":{"sessions":12,"messages":10,"recipients":14,
//!     "bytes_to_backend":52011,"bytes_to_client":2210,"deflected":{"limit":1}}},
//!  "backends":{"mx1":{"sessions":11,"messages":10,"recipients":14,"bytes_to_backend":52011,
//!     "bytes_to_client":2210,"latency":{"count":11,"sum_us":30512,
//!     "buckets":[9,2,0,0,0,0,0,0,0]}}},
//!  "pools":{"mx":{...}},"groups":{"default":{...}},
//!  "xdp":{"service":130,"dropped_syn_budget":4}}
//! ```
//!
//! `latency.buckets` counts per bucket (not cumulative) with the upper bounds of
//! [`counters::LATENCY_BOUNDS_MS`], the last bucket above them.

pub mod counters;
pub mod minute;
pub mod record;
pub mod table;

pub use counters::{Counters, Reason, Totals};
pub use minute::{Roller, Thresholds};
pub use record::Minute;
pub use table::{Scope, Stats, Table, Tally};

/// Minutes one `stats` request returns: its reply line stays well under the reader's
/// bound, and a member asks again for the rest.
pub const MINUTES_PER_REQUEST: usize = 60;

/// Renders minutes as a compact table for an operator: one line per minute and key.
pub fn render(minutes: &[Minute]) -> String {
    let mut out = format!(
        "{:<17} {:<8} {:<16} {:>8} {:>8} {:>8} {:>12} {:>12} {:>9}\n",
        "minute (UTC)",
        "scope",
        "name",
        "sessions",
        "messages",
        "rcpts",
        "to back-end",
        "to client",
        "deflected"
    );
    for m in minutes {
        let when = minute_utc(m.minute);
        let scopes = [
            ("service", &m.services),
            ("backend", &m.backends),
            ("pool", &m.pools),
            ("group", &m.groups),
        ];
        let mut any = false;
        for (scope, keys) in scopes {
            for (name, t) in keys {
                any = true;
                out.push_str(&format!(
                    "{when:<17} {scope:<8} {name:<16} {:>8} {:>8} {:>8} {:>12} {:>12} {:>9}\n",
                    t.sessions,
                    t.messages,
                    t.recipients,
                    t.bytes_to_backend,
                    t.bytes_to_client,
                    t.deflections()
                ));
            }
        }
        if !m.xdp.is_empty() {
            any = true;
            let v: Vec<String> = m.xdp.iter().map(|(k, n)| format!("{k}={n}")).collect();
            out.push_str(&format!("{when:<17} xdp      {}\n", v.join(" ")));
        }
        if !any {
            out.push_str(&format!("{when:<17} (nothing)\n"));
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM` (UTC) of a unix minute.
fn minute_utc(minute: u64) -> String {
    i64::try_from(minute.saturating_mul(60))
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]"
            ))
            .ok()
        })
        .unwrap_or_else(|| minute.to_string())
}
