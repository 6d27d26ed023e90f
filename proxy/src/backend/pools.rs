//! Pools at run time: the configured back-ends, a rotating start index per pool, a short
//! penalty for back-ends that just failed, and the TLS connector for the pool.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tokio_rustls::TlsConnector;

use crate::config::{Backend, BackendTls, Config, Pool};

/// How long a back-end that refused or dropped a connection is tried last.
pub const PENALTY: Duration = Duration::from_secs(10);

pub struct PoolRuntime {
    pub pool: Pool,
    pub tls: Option<(TlsConnector, Option<String>)>,
    next: AtomicUsize,
    failed: Mutex<HashMap<u32, Instant>>,
}

/// One back-end to try, with its pool.
#[derive(Clone)]
pub struct Candidate {
    pub pool: Arc<PoolRuntime>,
    pub backend: Backend,
}

pub struct PoolSet {
    pools: HashMap<String, Arc<PoolRuntime>>,
}

impl PoolSet {
    pub fn new(cfg: &Config) -> Result<PoolSet, String> {
        let mut pools = HashMap::new();
        for p in &cfg.pools {
            let tls = match &p.tls {
                BackendTls::None => None,
                BackendTls::StartTls { ca, server_name } => {
                    Some((crate::tls::connector(ca)?, server_name.clone()))
                }
            };
            pools.insert(
                p.name.clone(),
                Arc::new(PoolRuntime {
                    pool: p.clone(),
                    tls,
                    next: AtomicUsize::new(0),
                    failed: Mutex::new(HashMap::new()),
                }),
            );
        }
        Ok(PoolSet { pools })
    }

    /// The back-ends to try for a route, in order: for each pool of the route (primary,
    /// then alternates), its back-ends from a rotating start, recently failed ones last.
    pub fn candidates(
        &self,
        route: &[String],
        usable: impl Fn(&Backend) -> bool,
    ) -> Vec<Candidate> {
        let mut fresh = Vec::new();
        let mut penalised = Vec::new();
        for name in route {
            let Some(rt) = self.pools.get(name) else {
                continue;
            };
            let n = rt.pool.backends.len();
            if n == 0 {
                continue;
            }
            let start = rt.next.fetch_add(1, Ordering::Relaxed) % n;
            let failed = rt.failed.lock().map(|f| f.clone()).unwrap_or_default();
            for i in 0..n {
                let b = &rt.pool.backends[(start + i) % n];
                if !usable(b) {
                    continue;
                }
                let c = Candidate {
                    pool: Arc::clone(rt),
                    backend: b.clone(),
                };
                match failed.get(&b.id) {
                    Some(t) if t.elapsed() < PENALTY => penalised.push(c),
                    _ => fresh.push(c),
                }
            }
        }
        fresh.extend(penalised);
        fresh
    }

    pub fn mark_failed(&self, c: &Candidate) {
        if let Ok(mut f) = c.pool.failed.lock() {
            f.insert(c.backend.id, Instant::now());
        }
    }

    pub fn mark_ok(&self, c: &Candidate) {
        if let Ok(mut f) = c.pool.failed.lock() {
            f.remove(&c.backend.id);
        }
    }
}
