//! Pools and their back-ends: a pool's settings, health checks and thresholds, and the
//! back-ends of all pools matched by name.

use super::{Out, Show, names};
use crate::{
    agent_wire::Endpoint,
    config::{
        Backend, BackendTls, Pool,
        balance::{Health, Thresholds},
        diff::ChangeKind::{Backends, Balance, Pools},
    },
};

pub(super) fn pool(out: &mut Out, s: &str, old: &Pool, new: &Pool) {
    let Pool {
        id: _,
        name: _,
        tls,
        shared_store,
        identity,
        connect_timeout,
        idle_legs,
        idle_leg_age,
        data_as_bdat,
        health,
        thresholds,
        agent_key_file,
        agent_insecure,
        // Their order here; the back-ends themselves across pools in `backends`, which
        // sees one move from a pool to another.
        backends,
    } = old;
    backend_tls(out, s, tls, &new.tls);
    fields!(out, Pools, s, new; shared_store, identity, connect_timeout, idle_legs, idle_leg_age, data_as_bdat);
    self::health(out, s, health, &new.health);
    self::thresholds(out, s, thresholds, &new.thresholds);
    fields!(out, Pools, s, new; agent_key_file, agent_insecure);
    out.order(
        Backends,
        s,
        "back-end",
        &names(backends, |b| &b.name),
        &names(&new.backends, |b| &b.name),
    );
}

fn backend_tls(out: &mut Out, s: &str, old: &BackendTls, new: &BackendTls) {
    match (old, new) {
        (BackendTls::None, BackendTls::None) => {}
        (BackendTls::StartTls { .. }, BackendTls::None) => {
            out.push(Pools, format!("{s}: tls starttls -> none"));
        }
        (BackendTls::None, BackendTls::StartTls { ca, server_name }) => out.push(
            Pools,
            format!(
                "{s}: tls none -> starttls (ca {}, server_name {})",
                ca.show(),
                server_name.show()
            ),
        ),
        (
            BackendTls::StartTls { ca, server_name },
            BackendTls::StartTls {
                ca: c,
                server_name: n,
            },
        ) => {
            out.value(Pools, s, "ca", ca, c);
            out.value(Pools, s, "server_name", server_name, n);
        }
    }
}

fn health(out: &mut Out, s: &str, old: &Health, new: &Health) {
    let Health {
        interval,
        timeout,
        rise,
        fall,
        agent_interval,
    } = old;
    fields!(out, Pools, s, "health.", new; interval, timeout, rise, fall, agent_interval);
}

/// In the units the file uses (percent, a load average, milliseconds).
fn thresholds(out: &mut Out, s: &str, old: &Thresholds, new: &Thresholds) {
    let Thresholds {
        mail_queue,
        disk_permille,
        run_queue_milli,
        response_us,
        sessions,
    } = old;
    let scaled = |v: u32, by: f64| f64::from(v) / by;
    out.value(
        Balance,
        s,
        "thresholds.mail_queue",
        mail_queue,
        &new.mail_queue,
    );
    out.value(
        Balance,
        s,
        "thresholds.disk_percent",
        &scaled(*disk_permille, 10.0),
        &scaled(new.disk_permille, 10.0),
    );
    out.value(
        Balance,
        s,
        "thresholds.run_queue",
        &scaled(*run_queue_milli, 1000.0),
        &scaled(new.run_queue_milli, 1000.0),
    );
    out.value(
        Balance,
        s,
        "thresholds.response_ms",
        &scaled(*response_us, 1000.0),
        &scaled(new.response_us, 1000.0),
    );
    out.value(Balance, s, "thresholds.sessions", sessions, &new.sessions);
}

/// Back-ends matched by name across pools (names are unique in the whole file), so that
/// one moved to another pool is said so rather than removed and added.
pub(super) fn backends(out: &mut Out, old: &[Pool], new: &[Pool]) {
    let (old, new) = (all_backends(old), all_backends(new));
    for (pool, b) in &new {
        let s = format!("back-end {}", b.name);
        match old.iter().find(|(_, o)| o.name == b.name) {
            None => out.push(Backends, format!("{s} added to pool {pool}")),
            Some((was, o)) => {
                out.value(Backends, &s, "pool", *was, *pool);
                backend(out, &s, o, b);
            }
        }
    }
    for (pool, o) in old
        .iter()
        .filter(|(_, o)| !new.iter().any(|(_, b)| b.name == o.name))
    {
        out.push(
            Backends,
            format!("back-end {} removed from pool {pool}", o.name),
        );
    }
}

fn all_backends(pools: &[Pool]) -> Vec<(&String, &Backend)> {
    pools
        .iter()
        .flat_map(|p| p.backends.iter().map(move |b| (&p.name, b)))
        .collect()
}

fn backend(out: &mut Out, s: &str, old: &Backend, new: &Backend) {
    let Backend {
        id: _,
        name: _,
        address,
        weight,
        identity,
        agent,
    } = old;
    fields!(out, Backends, s, new; address, weight, identity);
    // The key is named by whether there is one, never by its bytes.
    let keyed = |k: &Option<_>| {
        if k.is_some() {
            "with a key"
        } else {
            "without a key"
        }
    };
    match (agent, &new.agent) {
        (None, None) => {}
        (Some(_), None) => out.push(Backends, format!("{s}: agent removed")),
        (None, Some(Endpoint { address, key })) => out.push(
            Backends,
            format!("{s}: agent {address} added, {}", keyed(key)),
        ),
        (Some(Endpoint { address, key }), Some(n)) => {
            out.value(Backends, s, "agent", address, &n.address);
            if *key != n.key {
                let what = match (key, n.key) {
                    (Some(_), Some(_)) => "changed",
                    (None, Some(_)) => "added",
                    (_, None) => "removed (agent_insecure)",
                };
                out.push(Backends, format!("{s}: agent key {what}"));
            }
        }
    }
}
