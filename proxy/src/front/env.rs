//! What every session of a service shares: the service, its routing map, the pools and
//! the server certificate.

use std::sync::Arc;

use crate::{
    backend::PoolSet,
    config::Service,
    reload::Watched,
    route::{Route, RouteTable},
    tls::ServerTls,
};

/// What every session of a service shares.
pub struct Env {
    pub service: Arc<Service>,
    pub routes: Option<Arc<Watched<RouteTable>>>,
    pub pools: Arc<PoolSet>,
    pub tls: Option<Arc<ServerTls>>,
    pub groups: Arc<super::groups::Groups>,
    /// Failed logins per client, for every session of the service.
    pub auth_failures: Arc<super::limits::AuthFailures>,
}

impl Env {
    /// The shared state of `service`'s sessions; its routing map (if any) is loaded now
    /// and re-read whenever the file changes.
    pub fn new(
        service: &Service,
        pools: Arc<PoolSet>,
        tls: Option<Arc<ServerTls>>,
        groups: Arc<super::groups::Groups>,
    ) -> Result<Env, String> {
        let routes = match &service.routes {
            Some(path) => {
                let p = path.clone();
                let w = Watched::new("routing map", vec![path.clone()], move || {
                    RouteTable::load(&p).map_err(|e| e.to_string())
                })?;
                Some(Arc::new(w))
            }
            None => None,
        };
        Ok(Env {
            service: Arc::new(service.clone()),
            routes,
            pools,
            tls,
            groups,
            auth_failures: Arc::new(super::limits::AuthFailures::default()),
        })
    }

    /// Whether a client at `peer` may send a password over a connection that is (`tls`) or
    /// is not TLS: on TLS, from loopback, or where the service allows it in clear
    /// (`plaintext_auth`). Anywhere else a password could be read off the wire.
    pub fn password_allowed(&self, peer: std::net::IpAddr, tls: bool) -> bool {
        tls || peer.to_canonical().is_loopback() || self.service.plaintext_auth
    }

    /// The key `peer` is counted under in per-client limits.
    pub fn client_key(&self, peer: std::net::IpAddr) -> std::net::IpAddr {
        super::limits::client_key(peer, self.service.client_prefix_v6)
    }

    /// Whether `peer` has failed to log in too often lately.
    pub fn login_refused(&self, peer: std::net::IpAddr) -> bool {
        self.auth_failures.refused(self.client_key(peer))
    }

    /// Counts a failed login of `peer`.
    pub fn login_failed(&self, peer: std::net::IpAddr) {
        self.auth_failures.failed(self.client_key(peer));
    }

    /// Every pool the service can route to: its default pool and those of its map.
    pub fn pool_names(&self) -> Vec<String> {
        let mut pools: Vec<String> = self.service.pool.iter().cloned().collect();
        if let Some(r) = &self.routes {
            pools.extend(r.get().pools().into_iter().map(str::to_owned));
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

    /// CHUNKING can be offered when every back-end the service may use offers it.
    pub fn chunking(&self) -> bool {
        self.pools.board.chunking(&self.pool_names())
    }

    /// The route of a login name: as an address (`user@domain`) when it has one, else as a
    /// bare user name.
    pub fn route_user(&self, user: &str) -> Option<Route> {
        match crate::smtp::command::Address::parse_user(user) {
            Some(addr) => self.route(|t| t.lookup(&addr).cloned()),
            None => self.route(|t| t.lookup_user(user).cloned()),
        }
    }

    /// The pools serving `key`: the routing map first, then the service's default pool.
    /// `None`: nothing routes it (relay denied); `Some(Route::Reject)`: unknown recipient.
    pub fn route(&self, lookup: impl Fn(&RouteTable) -> Option<Route>) -> Option<Route> {
        if let Some(r) = self.routes.as_ref().and_then(|t| lookup(&t.get())) {
            return Some(r);
        }
        self.service.pool.clone().map(|p| Route::Pools(vec![p]))
    }
}
