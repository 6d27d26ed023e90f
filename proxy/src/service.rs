//! What every session of a service shares: the service, its routing map, the pools and
//! the server certificate.

use std::sync::Arc;

use crate::{
    backend::PoolSet,
    config::Service,
    reload::Watched,
    route::{DomainPattern, DomainQueues, PoolNames, Route, RouteTable},
    tls::ServerTls,
};

/// What every session of a service shares.
pub struct ServiceContext {
    pub service: Arc<Service>,
    pub routes: Option<Arc<Watched<RouteTable>>>,
    /// The service's `[[directory]]`, consulted after the routing map. The front-end owns
    /// it across reloads (its cache and counters survive a reload that keeps it).
    pub directory: Option<Arc<crate::directory::resolver::Resolver>>,
    pub pools: Arc<PoolSet>,
    pub tls: Option<Arc<ServerTls>>,
    pub groups: Arc<crate::backend::groups::Groups>,
    /// Failed logins per client, for every session of the service.
    pub auth_failures: Arc<crate::front::limits::Strikes>,
    /// Sessions whose own input a back-end refused, per client.
    pub offences: Arc<crate::front::limits::Strikes>,
    /// The front-end's events: relayed messages and refused sessions are recorded there.
    pub events: crate::events::Events,
    /// The statistics' counters of the configuration in force, and this service's index
    /// in them.
    pub stats: Arc<crate::stats::Table>,
    pub stats_index: usize,
    /// Recipient domains with a dedicated queue (SMTP services only; empty otherwise).
    pub domain_queues: Arc<DomainQueues>,
    /// The `auto = true` blocks isolated now, set by the front-end's isolation monitor
    /// and read by every recipient without a lock (SMTP services only).
    pub isolated: Arc<arc_swap::ArcSwap<DomainQueues>>,
    /// The route to the service's `pool`, made once: recipients routed there share it.
    pool_route: Option<PoolNames>,
}

/// Where a recipient's route came from, in the order they are consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteSource {
    /// A `[[domain_queue]]` pattern (as the configuration normalised it).
    DomainQueue(DomainPattern),
    /// A pattern of an `auto = true` block, while the block is isolated.
    Isolated(DomainPattern),
    /// The service's routing map.
    RouteMap,
    /// The service's `[[directory]]`, and where its answer came from.
    Directory {
        name: String,
        origin: crate::directory::resolver::Origin,
    },
    /// The service's `pool`.
    ServicePool,
}

/// Where a recipient or a user goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// The route (`Route::Reject`: refused), and where it came from.
    Route(Route, RouteSource),
    /// Nothing routes it (relay denied for a recipient, an unknown user).
    Unrouted,
    /// The directory failed and no stale answer could stand in: a temporary reply, never
    /// a refusal for good. The text says why, for the session's log.
    Unavailable(String),
}

impl std::fmt::Display for RouteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteSource::DomainQueue(p) => write!(f, "domain_queue {p}"),
            RouteSource::Isolated(p) => write!(f, "domain_queue {p} (isolated)"),
            RouteSource::RouteMap => f.write_str("route map"),
            RouteSource::Directory { name, origin } => write!(f, "directory {name} ({origin})"),
            RouteSource::ServicePool => f.write_str("the service's pool"),
        }
    }
}

impl ServiceContext {
    /// The shared state of `service`'s sessions; its routing map (if any) is loaded and
    /// resolved against `pools` now, and again whenever the file changes (off the
    /// runtime's threads): a re-read naming a pool that does not exist or cannot serve the
    /// service's protocol is refused with its file and line, and the map in force stays.
    pub fn new(
        service: &Service,
        pools: Arc<PoolSet>,
        tls: Option<Arc<ServerTls>>,
        groups: Arc<crate::backend::groups::Groups>,
    ) -> Result<ServiceContext, crate::route::RouteError> {
        let routes = match &service.routes {
            Some(path) => {
                let p = path.clone();
                let known = Arc::clone(&pools);
                let protocol = service.protocol;
                let w = Watched::new("routing map", vec![path.clone()], move || {
                    RouteTable::load_for(&p, protocol, &*known)
                })?;
                Some(Arc::new(w))
            }
            None => None,
        };
        Ok(ServiceContext {
            service: Arc::new(service.clone()),
            routes,
            directory: None,
            pools,
            tls,
            groups,
            auth_failures: Arc::new(crate::front::limits::Strikes::default()),
            offences: Arc::new(crate::front::limits::Strikes::default()),
            events: crate::events::Events::default(),
            stats: Arc::default(),
            stats_index: 0,
            domain_queues: Arc::default(),
            isolated: Arc::default(),
            pool_route: service.pool.clone().map(|p| PoolNames::from([p])),
        })
    }

    /// The context routing the domains of isolated blocks as `isolated` says at each
    /// recipient. Only SMTP routes recipients.
    pub fn with_isolated(
        mut self,
        isolated: Arc<arc_swap::ArcSwap<DomainQueues>>,
    ) -> ServiceContext {
        if self.service.protocol == crate::config::Protocol::Smtp {
            self.isolated = isolated;
        }
        self
    }

    /// The context sending recipients of `queues`' domains to their dedicated pools. Only
    /// SMTP routes recipients; a POP3 service keeps none.
    pub fn with_domain_queues(mut self, queues: Arc<DomainQueues>) -> ServiceContext {
        if self.service.protocol == crate::config::Protocol::Smtp {
            self.domain_queues = queues;
        }
        self
    }

    /// The context consulting `directory` after its routing map (the front-end builds one
    /// resolver per `[[directory]]` and shares it between the services naming it).
    pub fn with_directory(
        mut self,
        directory: Option<Arc<crate::directory::resolver::Resolver>>,
    ) -> ServiceContext {
        self.directory = directory;
        self
    }

    /// The context recording its sessions' messages in `events`.
    pub fn with_events(mut self, events: crate::events::Events) -> ServiceContext {
        self.events = events;
        self
    }

    /// Counts into `table`, as its service number `index`.
    pub fn counting(mut self, table: Arc<crate::stats::Table>, index: usize) -> ServiceContext {
        self.stats = table;
        self.stats_index = index;
        self
    }

    /// This service's own counters (client sessions, limits).
    pub fn counters(&self) -> Option<&Arc<crate::stats::Counters>> {
        self.stats.service(self.stats_index)
    }

    /// Whether a client at `peer` may send a password over a connection that is (`tls`) or
    /// is not TLS: on TLS, from loopback, or where the service allows it in clear
    /// (`plaintext_auth`). Anywhere else a password could be read off the wire.
    pub fn password_allowed(&self, peer: std::net::IpAddr, tls: bool) -> bool {
        tls || peer.to_canonical().is_loopback() || self.service.plaintext_auth
    }

    /// The key `peer` is counted under in per-client limits.
    pub fn client_key(&self, peer: std::net::IpAddr) -> std::net::IpAddr {
        crate::front::limits::client_key(peer, self.service.client_prefix_v6)
    }

    /// Whether `peer` has failed to log in too often lately (a refusal counts in the
    /// statistics as a limit).
    pub fn login_refused(&self, peer: std::net::IpAddr) -> bool {
        let refused = self.auth_failures.refused(self.client_key(peer));
        if refused && let Some(c) = self.counters() {
            c.deflected(crate::stats::Reason::Limit);
        }
        refused
    }

    /// Counts a failed login of `peer`.
    pub fn login_failed(&self, peer: std::net::IpAddr) {
        self.auth_failures.failed(self.client_key(peer));
    }

    /// Whether `peer`'s sessions have made back-ends refuse their input too often lately.
    pub fn offender(&self, peer: std::net::IpAddr) -> bool {
        self.offences.refused(self.client_key(peer))
    }

    /// Counts a session of `peer` whose own input a back-end refused.
    pub fn offended(&self, peer: std::net::IpAddr) {
        self.offences.failed(self.client_key(peer));
    }

    /// Every pool the service can route to: its default pool, its dedicated queues' and
    /// those of its map.
    pub fn pool_names(&self) -> Vec<String> {
        let mut pools: Vec<String> = self.service.pool.iter().cloned().collect();
        pools.extend(self.domain_queues.pools().into_iter().map(str::to_owned));
        pools.extend(self.isolated.load().pools().into_iter().map(str::to_owned));
        if let Some(r) = &self.routes {
            pools.extend(r.get().pools().into_iter().map(str::to_owned));
        }
        // A directory may name any pool that serves the protocol.
        if self.directory.is_some() {
            let protocol = self.service.protocol;
            pools.extend(
                self.pools
                    .names()
                    .filter(|n| crate::config::routes::usable(&*self.pools, n, protocol).is_ok())
                    .map(str::to_owned),
            );
        }
        pools.sort();
        pools.dedup();
        pools
    }

    /// How long a session of `group` may wait for a back-end slot: its group's `wait_ms`,
    /// else the service's, and never beyond the client's idle timeout.
    pub fn admission_wait(&self, group: &str) -> std::time::Duration {
        self.groups
            .wait(group)
            .unwrap_or(self.service.wait)
            .min(self.service.idle_timeout)
    }

    /// Leases a back-end of `route` for a session of `group` (`backend::lease`), with the
    /// group's admission wait: `client` is the session's reader, watched for a hang-up
    /// while nothing of its input is buffered (`quiet`), and `closing` ends the wait.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per protocol; the parts come from different owners"
    )]
    pub async fn lease<L, E, R, F, Fut>(
        &self,
        route: &[String],
        (group, share): (&str, f64),
        session: &str,
        client: &mut R,
        quiet: bool,
        closing: &tokio_util::sync::CancellationToken,
        open: F,
    ) -> Result<crate::backend::lease::Lease<L>, crate::backend::lease::LeaseError<E>>
    where
        E: crate::backend::lease::Faulted,
        R: tokio::io::AsyncBufRead + Unpin,
        F: FnMut(crate::backend::Candidate) -> Fut,
        Fut: Future<Output = Result<(L, std::time::Duration), E>>,
    {
        use crate::backend::lease::{self, Ask, LeaseError, Waiting};
        use crate::stats::{Reason, Tally};
        let ask = Ask {
            route,
            share,
            group,
            wait: self.admission_wait(group),
            session,
        };
        let waiting = Waiting {
            client,
            quiet,
            closing,
        };
        let outcome = lease::lease(&self.pools, &ask, waiting, open).await;
        let group_counters = self.stats.group(self.groups.position(group));
        match outcome {
            Ok(mut l) => {
                let tally = Tally::new(
                    self.stats.backend(l.candidate.backend.id),
                    self.stats.pool(l.candidate.pool.pool.id),
                    self.counters(),
                    group_counters,
                );
                tally.session(Some(l.greeting));
                l.tally = tally;
                Ok(l)
            }
            Err(e) => {
                let why = match &e {
                    LeaseError::Busy => Some(Reason::Overload),
                    LeaseError::Unavailable(_) | LeaseError::Empty => Some(Reason::NoBackend),
                    LeaseError::Client(_) => None,
                };
                if let Some(why) = why {
                    // The route's pools by name: only on this path, not on every session's.
                    for pool in route.iter().filter_map(|p| self.pools.entry_pool(p)) {
                        if let Some(c) = self.stats.pool(pool.pool.id) {
                            c.deflected(why);
                        }
                    }
                    Tally::new(None, None, self.counters(), group_counters).deflected(why);
                }
                Err(e)
            }
        }
    }

    /// CHUNKING can be offered when every back-end the service may use offers it.
    pub fn chunking(&self) -> bool {
        self.pools.board.chunking(&self.pool_names())
    }

    /// The route of a login name (POP3, SMTP AUTH): the routing map (as an address,
    /// `user@domain`, when it has one, else as a bare user name), then the directory, then
    /// the service's pool.
    pub async fn route_user(&self, user: &str) -> Routed {
        let mapped = match crate::smtp::command::Address::parse_user(user) {
            Some(addr) => self.mapped(|t| t.lookup(&addr).cloned()),
            None => self.mapped(|t| t.lookup_user(user).cloned()),
        };
        if let Some(r) = mapped {
            return Routed::Route(r, RouteSource::RouteMap);
        }
        self.directory_then_pool(|| crate::directory::Key::user(user))
            .await
    }

    /// The pools serving SMTP recipient `to`, and where that came from: its domain's
    /// dedicated queue first, then an isolated block's, the routing map, the directory,
    /// and the service's default pool.
    pub async fn route_recipient(&self, to: &crate::smtp::command::Address) -> Routed {
        if let Some(dedicated) = to
            .domain
            .as_deref()
            .and_then(|d| self.domain_queues.lookup(d))
        {
            return Routed::Route(
                Route::Pools(PoolNames::from([dedicated.pool.to_owned()])),
                RouteSource::DomainQueue(dedicated.pattern),
            );
        }
        if let Some(domain) = to.domain.as_deref() {
            let isolated = self.isolated.load();
            if let Some(dedicated) = isolated.lookup(domain) {
                return Routed::Route(
                    Route::Pools(PoolNames::from([dedicated.pool.to_owned()])),
                    RouteSource::Isolated(dedicated.pattern),
                );
            }
        }
        if let Some(r) = self.mapped(|t| t.lookup(to).cloned()) {
            return Routed::Route(r, RouteSource::RouteMap);
        }
        self.directory_then_pool(|| {
            crate::directory::Key::recipient(match &to.domain {
                Some(d) => format!("{}@{}", to.local, d.to_ascii_lowercase()),
                None => to.local.clone(),
            })
        })
        .await
    }

    /// `key` in the service's directory, if it has one; else, or when the directory does
    /// not know the key and `not_found = "pool"`, the service's pool. The key is built only
    /// for a directory: a service without one routes every recipient without allocating it.
    async fn directory_then_pool(&self, key: impl FnOnce() -> crate::directory::Key) -> Routed {
        use crate::{config::directory::NotFound, directory::Found};
        if let Some(dir) = &self.directory {
            let key = key();
            let lookup = dir.lookup(&key, false).await;
            let source = || RouteSource::Directory {
                name: dir.name().to_owned(),
                origin: lookup.origin,
            };
            match &lookup.answer {
                Ok(Found::Values(values)) => {
                    let protocol = self.service.protocol;
                    return match crate::directory::answer::route(values, &*self.pools, protocol) {
                        Ok(route) => Routed::Route(route, source()),
                        Err(e) => {
                            dir.count_error();
                            Routed::Unavailable(format!(
                                "directory {}: the entry of {:?}: {e}",
                                dir.name(),
                                key.text
                            ))
                        }
                    };
                }
                Ok(Found::NotFound) => {
                    if dir.directory().not_found == NotFound::Reject {
                        return Routed::Route(Route::Reject, source());
                    }
                }
                Err(e) => {
                    return Routed::Unavailable(format!("directory {}: {e}", dir.name()));
                }
            }
        }
        match self.service_pool() {
            Some(p) => Routed::Route(Route::Pools(p), RouteSource::ServicePool),
            None => Routed::Unrouted,
        }
    }

    /// The route to the service's `pool`: the one made with the context while the service
    /// still names that pool (`service` is a public field, so it is checked, not trusted).
    fn service_pool(&self) -> Option<PoolNames> {
        let pool = self.service.pool.as_deref()?;
        Some(match &self.pool_route {
            Some(p) if p.len() == 1 && p[0] == pool => Arc::clone(p),
            _ => PoolNames::from([pool.to_owned()]),
        })
    }

    /// The service's routing map's route for a key, if the map has one.
    fn mapped(&self, lookup: impl Fn(&RouteTable) -> Option<Route>) -> Option<Route> {
        self.routes.as_ref().and_then(|t| lookup(&t.get()))
    }

    /// The pools serving `key` by the routing map and the service's default pool alone
    /// (no directory): `None`: nothing routes it; `Some(Route::Reject)`: refused.
    pub fn route(&self, lookup: impl Fn(&RouteTable) -> Option<Route>) -> Option<Route> {
        if let Some(r) = self.mapped(lookup) {
            return Some(r);
        }
        self.service_pool().map(Route::Pools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, reload::Outcome, smtp::command::Address};

    /// A service of `protocol` with a routing map over pools "a" (XCLIENT) and "b" (PROXY v2).
    fn env(dir: &std::path::Path, protocol: &str, map: &str) -> ServiceContext {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("routes"), map).unwrap();
        let text = format!(
            "[frontend]\nname = \"fe\"\n[[service]]\nname = \"s\"\nprotocol = \"{protocol}\"\nport = 2525\nroutes = \"routes\"\n\
             [[pool]]\nname = \"a\"\nidentity = \"xclient\"\nbackend = [{{ name = \"a0\", address = \"198.18.1.1:25\" }}]\n\
             [[pool]]\nname = \"b\"\nidentity = \"proxy\"\nbackend = [{{ name = \"b0\", address = \"198.18.1.2:25\" }}]\n"
        );
        let cfg = Config::parse(&dir.join("t.toml"), &text).unwrap();
        let pools = Arc::new(PoolSet::standalone(&cfg).unwrap());
        let groups = Arc::new(crate::backend::groups::Groups::new(cfg.groups.clone()));
        ServiceContext::new(&cfg.services[0], pools, None, groups).unwrap()
    }

    fn dir(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("rb-env-{tag}-{}", std::process::id()))
    }

    fn smtp_route(env: &ServiceContext, domain: &str) -> Option<Route> {
        let to = Address {
            local: "someone".into(),
            domain: Some(domain.into()),
        };
        env.route(|t| t.lookup(&to).cloned())
    }

    fn reread(env: &ServiceContext, map: &str) -> Outcome {
        let watched = env.routes.as_ref().unwrap();
        let before = watched.check_now();
        assert_eq!(before, Outcome::Unchanged);
        // The map's file name is fixed by `env`; a change of length is always noticed.
        let file = env.service.routes.clone().unwrap();
        std::fs::write(file, map).unwrap();
        watched.check_now()
    }

    #[test]
    fn reread_map_naming_an_unknown_pool_is_refused_and_the_old_map_keeps_routing() {
        let d = dir("typo");
        let env = env(&d, "smtp", "a.example a\nb.example b\n");
        let pools = |r: Option<Route>| r.map(|r| r.to_string());
        let before = pools(smtp_route(&env, "b.example"));
        assert_eq!(before.as_deref(), Some("b"));

        let outcome = reread(&env, "a.example a\n# b moved\nb.example bb a\n");
        let file = d.join("routes");
        assert_eq!(
            outcome,
            Outcome::Refused(format!(
                "{}:3: pool \"bb\" is not configured",
                file.display()
            ))
        );
        assert_eq!(pools(smtp_route(&env, "b.example")), before);
        assert_eq!(pools(smtp_route(&env, "a.example")).as_deref(), Some("a"));
        assert_eq!(env.pool_names(), ["a", "b"]);

        // Fixed: the valid change is picked up.
        assert_eq!(
            reread(&env, "a.example a\nb.example a b\n"),
            Outcome::Reloaded
        );
        assert_eq!(pools(smtp_route(&env, "b.example")).as_deref(), Some("a b"));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn reread_pop3_map_naming_an_xclient_pool_is_refused() {
        let d = dir("pop");
        let env = env(&d, "pop3", "alice b\n");
        let outcome = reread(&env, "alice b\nbob a\n");
        let Outcome::Refused(e) = outcome else {
            panic!("a POP3 map routing to an XCLIENT pool was accepted: {outcome:?}");
        };
        assert!(
            e.starts_with(&format!(
                "{}:2: pool \"a\" passes the client with XCLIENT",
                d.join("routes").display()
            )),
            "{e}"
        );
        assert_eq!(
            user(&env, "alice"),
            Some(Route::Pools(PoolNames::from(["b".to_owned()])))
        );
        assert_eq!(user(&env, "bob"), None, "the refused map is not in force");
        std::fs::remove_dir_all(d).unwrap();
    }

    fn queues(entries: &[(&str, &str)]) -> Arc<DomainQueues> {
        let parsed: Vec<(DomainPattern, &str)> = entries
            .iter()
            .map(|(d, p)| (DomainPattern::parse(d).unwrap(), *p))
            .collect();
        Arc::new(DomainQueues::new(parsed.iter().map(|(d, p)| (d, *p))))
    }

    fn recipient(env: &ServiceContext, address: &str) -> Option<(String, String)> {
        let (local, domain) = address.split_once('@').unwrap();
        let to = Address {
            local: local.into(),
            domain: Some(domain.into()),
        };
        match ready(env.route_recipient(&to)) {
            Routed::Route(r, source) => Some((r.to_string(), source.to_string())),
            Routed::Unrouted => None,
            Routed::Unavailable(e) => panic!("no directory, yet unavailable: {e}"),
        }
    }

    /// A routing future without a directory: it has nothing to wait for.
    fn ready<T>(f: impl Future<Output = T>) -> T {
        futures_util::FutureExt::now_or_never(f).expect("routing without a directory waits")
    }

    fn user(env: &ServiceContext, user: &str) -> Option<Route> {
        match ready(env.route_user(user)) {
            Routed::Route(r, _) => Some(r),
            Routed::Unrouted => None,
            Routed::Unavailable(e) => panic!("no directory, yet unavailable: {e}"),
        }
    }

    #[test]
    fn a_dedicated_queue_comes_before_the_route_map_and_the_default_pool() {
        let d = dir("dedicated");
        let env = env(
            &d,
            "smtp",
            "slow.example b\nboss@slow.example reject\n* b\n",
        )
        .with_domain_queues(queues(&[("slow.example", "a"), (".slow.example", "a")]));
        let got = |a| recipient(&env, a);
        assert_eq!(
            got("x@slow.example"),
            Some(("a".into(), "domain_queue slow.example".into()))
        );
        // Dedicated before the map, even over the map's exact address.
        assert_eq!(
            got("boss@slow.example"),
            Some(("a".into(), "domain_queue slow.example".into()))
        );
        assert_eq!(
            got("x@mx.slow.example"),
            Some(("a".into(), "domain_queue .slow.example".into()))
        );
        assert_eq!(
            got("x@notslow.example"),
            Some(("b".into(), "route map".into()))
        );
        assert_eq!(env.pool_names(), ["a", "b"]);
        // A login name is routed by the map alone: AUTH and POP3 users are not recipients.
        assert_eq!(
            user(&env, "x@slow.example"),
            Some(Route::Pools(PoolNames::from(["b".to_owned()])))
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn without_a_map_the_default_pool_follows_the_dedicated_queue() {
        let d = dir("dedicated-pool");
        let mut env = env(&d, "smtp", "");
        let mut service = (*env.service).clone();
        service.routes = None;
        service.pool = Some("b".into());
        env.service = Arc::new(service);
        env.routes = None;
        let env = env.with_domain_queues(queues(&[("slow.example", "a")]));
        assert_eq!(
            recipient(&env, "x@slow.example"),
            Some(("a".into(), "domain_queue slow.example".into()))
        );
        assert_eq!(
            recipient(&env, "x@fast.example"),
            Some(("b".into(), "the service's pool".into()))
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn an_isolated_block_routes_only_while_isolated() {
        let d = dir("isolated");
        let isolated = Arc::new(arc_swap::ArcSwap::from_pointee(DomainQueues::default()));
        let env = env(&d, "smtp", "* b\n").with_isolated(Arc::clone(&isolated));
        assert_eq!(
            recipient(&env, "x@slow.example"),
            Some(("b".into(), "route map".into()))
        );
        isolated.store(queues(&[(".slow.example", "a")]));
        assert_eq!(
            recipient(&env, "x@mx.slow.example"),
            Some(("a".into(), "domain_queue .slow.example (isolated)".into()))
        );
        assert_eq!(env.pool_names(), ["a", "b"]);
        isolated.store(Arc::default());
        assert_eq!(
            recipient(&env, "x@mx.slow.example"),
            Some(("b".into(), "route map".into()))
        );
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_pop3_service_keeps_no_dedicated_queue() {
        let d = dir("dedicated-pop");
        let env = env(&d, "pop3", "alice@slow.example b\n")
            .with_domain_queues(queues(&[("slow.example", "a")]));
        assert!(env.domain_queues.is_empty());
        assert_eq!(
            user(&env, "alice@slow.example"),
            Some(Route::Pools(PoolNames::from(["b".to_owned()])))
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
