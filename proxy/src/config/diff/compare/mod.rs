//! The comparison, one function per configuration struct. Each destructures the running
//! value without `..`, so that a new field is a compile error here until it is compared
//! (or said, with `_` and a reason, not to be a change of its own).

use super::{Change, ChangeKind, show::Show};
use crate::config::{
    Config, DomainQueue, Flood, Frontend, Monitor, Service, TlsFiles,
    balance::Group,
    directory::{CachePolicy, Directory, NotFound, SourceConfig},
    vrrp::{Ha, Track, VirtualRouter},
};

use ChangeKind::{Balance, Kernel, Pools, Services, Tls, Vrrp};
use pools::{backends, pool};

/// [`Out::value`] for fields of the same name in the running struct (destructured into
/// bindings) and in `$new`; the field's name, after an optional prefix, names the value.
macro_rules! fields {
    ($out:ident, $kind:expr, $s:expr, $prefix:literal, $new:expr; $($f:ident),+ $(,)?) => {
        $( $out.value($kind, $s, concat!($prefix, stringify!($f)), $f, &$new.$f); )+
    };
    ($out:ident, $kind:expr, $s:expr, $new:expr; $($f:ident),+ $(,)?) => {
        $( $out.value($kind, $s, stringify!($f), $f, &$new.$f); )+
    };
}

mod pools;

#[derive(Default)]
struct Out(Vec<Change>);

impl Out {
    fn push(&mut self, kind: ChangeKind, what: String) {
        self.0.push(Change { kind, what });
    }

    /// `subject: name old -> new` when they differ.
    fn value<T: PartialEq + Show + ?Sized>(
        &mut self,
        kind: ChangeKind,
        subject: &str,
        name: &str,
        old: &T,
        new: &T,
    ) {
        if old != new {
            self.push(
                kind,
                format!("{subject}: {name} {} -> {}", old.show(), new.show()),
            );
        }
    }

    /// A list of values: each member added or removed; the whole list when only the
    /// order or the count of repeats changed.
    fn list<T: PartialEq + Show>(
        &mut self,
        kind: ChangeKind,
        subject: &str,
        name: &str,
        old: &[T],
        new: &[T],
    ) {
        let before = self.0.len();
        for n in new.iter().filter(|n| !old.contains(n)) {
            self.push(kind, format!("{subject}: {name} {} added", n.show()));
        }
        for o in old.iter().filter(|o| !new.contains(o)) {
            self.push(kind, format!("{subject}: {name} {} removed", o.show()));
        }
        if self.0.len() == before {
            self.value(kind, subject, name, old, new);
        }
    }

    /// Sections matched by name: each added or removed one, and `each` for the ones in
    /// both (with the subject `noun name`).
    fn members<T>(
        &mut self,
        kind: ChangeKind,
        noun: &str,
        (old, new): (&[T], &[T]),
        name: impl Fn(&T) -> String,
        mut each: impl FnMut(&mut Out, &str, &T, &T),
    ) {
        for n in new {
            match old.iter().find(|o| name(o) == name(n)) {
                None => self.push(kind, format!("{noun} {} added", name(n))),
                Some(o) => each(self, &format!("{noun} {}", name(n)), o, n),
            }
        }
        for o in old
            .iter()
            .filter(|o| !new.iter().any(|n| name(n) == name(o)))
        {
            self.push(kind, format!("{noun} {} removed", name(o)));
        }
    }

    /// The order of the members in both lists, where order means something (back-ends of
    /// a pool without a shared store are tried in it; groups match in it).
    fn order(&mut self, kind: ChangeKind, subject: &str, noun: &str, old: &[&str], new: &[&str]) {
        let old: Vec<&str> = old.iter().copied().filter(|o| new.contains(o)).collect();
        let new: Vec<&str> = new.iter().copied().filter(|n| old.contains(n)).collect();
        if old != new {
            self.push(
                kind,
                format!(
                    "{subject}: {noun} order {} -> {}",
                    old.join(", "),
                    new.join(", ")
                ),
            );
        }
    }
}

pub fn config(running: &Config, new: &Config) -> Vec<Change> {
    let Config {
        // Where the file was read from and the hash of its bytes: a comment or a moved
        // file is no change of what runs.
        file: _,
        version: _,
        frontend,
        tls,
        flood,
        priority_prefixes,
        services,
        pools,
        groups,
        ha,
        vrrp,
        monitor,
        domain_queues,
        directories,
    } = running;
    let mut out = Out::default();
    self::frontend(&mut out, frontend, &new.frontend);
    self::tls(&mut out, tls.as_ref(), new.tls.as_ref());
    self::flood(&mut out, flood, &new.flood);
    out.list(
        Kernel,
        "classes",
        "priority",
        priority_prefixes,
        &new.priority_prefixes,
    );
    out.members(
        Services,
        "service",
        (services, &new.services),
        |s| s.name.clone(),
        service,
    );
    out.members(Pools, "pool", (pools, &new.pools), |p| p.name.clone(), pool);
    backends(&mut out, pools, &new.pools);
    out.members(
        Balance,
        "group",
        (groups, &new.groups),
        |g| g.name.clone(),
        group,
    );
    out.order(
        Balance,
        "groups",
        "group",
        &names(groups, |g| &g.name),
        &names(&new.groups, |g| &g.name),
    );
    self::ha(&mut out, ha, &new.ha);
    self::monitor(&mut out, monitor, &new.monitor);
    out.members(
        Vrrp,
        "vrrp",
        (vrrp, &new.vrrp),
        |r| format!("{} {} on {}", r.vrid, r.family(), r.interface),
        router,
    );
    self::domain_queues(&mut out, domain_queues, &new.domain_queues);
    out.members(
        Services,
        "directory",
        (directories, &new.directories),
        |d| d.name.clone(),
        directory,
    );
    out.0
}

impl Show for NotFound {
    fn show(&self) -> String {
        match self {
            NotFound::Pool => "pool",
            NotFound::Reject => "reject",
        }
        .to_owned()
    }
}

/// A directory's common keys by name; its source's own sub-table as a whole (its kind, or
/// that its settings changed: they are each source's to name).
fn directory(out: &mut Out, s: &str, old: &Directory, new: &Directory) {
    let Directory {
        name: _,
        timeout,
        cache,
        not_found,
        source,
    } = old;
    let CachePolicy {
        positive_ttl,
        negative_ttl,
        size,
        stale_max,
    } = cache;
    let k = Services;
    fields!(out, k, s, new; timeout, not_found);
    let c = &new.cache;
    out.value(k, s, "cache_ttl", positive_ttl, &c.positive_ttl);
    out.value(k, s, "negative_ttl", negative_ttl, &c.negative_ttl);
    out.value(k, s, "cache_size", size, &c.size);
    out.value(k, s, "stale", &stale_max.is_some(), &c.stale_max.is_some());
    if let (Some(o), Some(n)) = (stale_max, c.stale_max) {
        out.value(k, s, "stale_max", o, &n);
    }
    if source.kind() != new.source.kind() {
        out.push(
            k,
            format!("{s}: source {} -> {}", source.kind(), new.source.kind()),
        );
    } else if *source != new.source {
        out.push(k, format!("{s}: [directory.{}] changed", section(source)));
    }
}

/// The sub-table a source is configured in.
fn section(source: &SourceConfig) -> &'static str {
    match source {
        SourceConfig::Ldap(_) => "ldap",
        SourceConfig::Sql(_) => "sql",
        SourceConfig::Radius(_) => "radius",
    }
}

/// Dedicated queues, matched by domain pattern: each pattern added or removed, or its
/// block's pool and thresholds changed. They are part of each service's routing, rebuilt
/// with the services' contexts at every reload, so live like the services.
fn domain_queues(out: &mut Out, old: &[DomainQueue], new: &[DomainQueue]) {
    let flat = |queues: &[DomainQueue]| -> Vec<(String, DomainQueue)> {
        queues
            .iter()
            .flat_map(|q| q.domains.iter().map(|d| (d.to_string(), q.clone())))
            .collect()
    };
    out.members(
        Services,
        "domain_queue",
        (&flat(old), &flat(new)),
        |(d, _)| d.clone(),
        |out, s, (_, old), (_, new)| {
            let DomainQueue {
                // The match is by domain; the block's other domains are compared on their own.
                domains: _,
                pool,
                deferred_alarm,
                oldest_alarm_secs,
                auto,
                recover_secs,
                isolation_interval_secs,
            } = old;
            fields!(out, Services, s, new; pool, deferred_alarm, oldest_alarm_secs, auto, recover_secs, isolation_interval_secs);
        },
    );
}

fn names<T>(list: &[T], name: impl Fn(&T) -> &String) -> Vec<&str> {
    list.iter().map(|t| name(t).as_str()).collect()
}

fn frontend(out: &mut Out, old: &Frontend, new: &Frontend) {
    let Frontend {
        name,
        interface,
        xdp_mode,
        pin_dir,
        user,
        serve_loopback_clients,
        // Read by the member when a package arrives, never by the running front-end: a
        // change is live without a restart.
        update_dir: _,
        runtime,
        workers,
    } = old;
    let (k, s) = (ChangeKind::Frontend, "frontend");
    fields!(out, k, s, new; name, interface, xdp_mode, pin_dir, user, serve_loopback_clients, runtime, workers);
}

/// The event log, the metrics endpoint and the SNMP senders are set up at start: a change
/// takes a restart.
fn monitor(out: &mut Out, old: &Monitor, new: &Monitor) {
    let Monitor {
        event_log,
        event_log_max_bytes,
        event_log_files,
        metrics,
        snmp,
        event_history,
        stats,
    } = old;
    let (k, s) = (ChangeKind::Frontend, "monitor");
    if stats != &new.stats {
        out.push(k, "monitor: statistics settings changed".to_owned());
    }
    fields!(out, k, s, new; event_log, event_log_max_bytes, event_log_files, event_history);
    if metrics != &new.metrics {
        let show = |m: &Option<crate::config::MetricsEndpoint>| {
            m.as_ref()
                .map_or("none".to_owned(), |m| m.listen.to_string())
        };
        out.push(
            k,
            format!(
                "monitor: metrics endpoint {} -> {}",
                show(metrics),
                show(&new.metrics)
            ),
        );
    }
    if snmp != &new.snmp {
        let show = |d: &[crate::config::snmp::Destination]| {
            if d.is_empty() {
                return "none".to_owned();
            }
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(
            k,
            format!(
                "monitor: snmp destinations {} -> {}",
                show(snmp),
                show(&new.snmp)
            ),
        );
    }
}

fn tls(out: &mut Out, old: Option<&TlsFiles>, new: Option<&TlsFiles>) {
    match (old, new) {
        (None, None) => {}
        (Some(_), None) => out.push(Tls, "tls removed".into()),
        (None, Some(TlsFiles { certificate, key })) => out.push(
            Tls,
            format!(
                "tls added: certificate {}, key {}",
                certificate.show(),
                key.show()
            ),
        ),
        (Some(TlsFiles { certificate, key }), Some(new)) => {
            fields!(out, Tls, "tls", new; certificate, key);
        }
    }
}

fn flood(out: &mut Out, old: &Flood, new: &Flood) {
    let Flood {
        syn_rate_per_sec,
        syn_burst,
        block,
        client_prefix_v6,
    } = old;
    let s = "flood";
    fields!(out, Kernel, s, new; syn_rate_per_sec, syn_burst);
    out.list(Kernel, s, "block", block, &new.block);
    fields!(out, Kernel, s, new; client_prefix_v6);
}

fn service(out: &mut Out, s: &str, old: &Service, new: &Service) {
    let Service {
        // The position in the file; the name is the match.
        id: _,
        name: _,
        protocol,
        port,
        vips,
        hostname,
        max_connections,
        max_per_client,
        tls,
        auth,
        plaintext_auth,
        // Copied from `flood.client_prefix_v6`, reported there.
        client_prefix_v6: _,
        routes,
        directory,
        pool,
        max_message_size,
        idle_timeout,
        wait,
    } = old;
    let k = Services;
    fields!(out, k, s, new; protocol, port);
    out.list(k, s, "vips", vips, &new.vips);
    fields!(out, k, s, new;
        hostname, max_connections, max_per_client, tls, auth, plaintext_auth, routes, directory, pool,
        max_message_size, idle_timeout);
    fields!(out, Balance, s, new; wait);
}

fn group(out: &mut Out, s: &str, old: &Group, new: &Group) {
    let Group {
        name: _,
        share,
        domains,
        recipients,
        clients,
        wait,
    } = old;
    fields!(out, Balance, s, new; share);
    out.list(Balance, s, "domains", domains, &new.domains);
    out.list(Balance, s, "recipients", recipients, &new.recipients);
    out.list(Balance, s, "clients", clients, &new.clients);
    fields!(out, Balance, s, new; wait);
}

fn ha(out: &mut Out, old: &Ha, new: &Ha) {
    let Ha {
        control_socket,
        drain_deadline,
    } = old;
    let s = "ha";
    // The control socket is the daemon's, bound at its start (it is how a reload arrives).
    let k = ChangeKind::Frontend;
    fields!(out, k, s, new; control_socket);
    let k = ChangeKind::Ha;
    fields!(out, k, s, new; drain_deadline);
}

fn router(out: &mut Out, s: &str, old: &VirtualRouter, new: &VirtualRouter) {
    let VirtualRouter {
        // With the family, the match.
        vrid: _,
        interface: _,
        priority,
        advert_interval,
        max_advert_interval,
        preempt,
        preempt_delay,
        vips,
        // The same addresses as `vips`, without prefix lengths.
        virtual_addresses: _,
        unicast_peers,
        garp_count,
        garp_interval,
        track,
    } = old;
    fields!(out, Vrrp, s, new;
        priority, advert_interval, max_advert_interval, preempt, preempt_delay);
    out.list(Vrrp, s, "vips", vips, &new.vips);
    out.list(Vrrp, s, "unicast_peers", unicast_peers, &new.unicast_peers);
    fields!(out, Vrrp, s, new; garp_count, garp_interval);
    let Track {
        listeners,
        datapath,
        backends,
        interfaces,
    } = track;
    fields!(out, Vrrp, s, "track.", new.track; listeners, datapath, backends);
    out.list(
        Vrrp,
        s,
        "track.interfaces",
        interfaces,
        &new.track.interfaces,
    );
}
