//! Per-client-address concurrency: a client may hold at most `max_per_client` sessions of
//! a service at once; the rest get the protocol's temporary failure. The count drops when
//! the session's [`ClientSlot`] is dropped, however the session ends.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

#[derive(Default)]
pub struct PerClient {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

pub struct ClientSlot {
    table: Arc<PerClient>,
    addr: IpAddr,
}

impl PerClient {
    /// A slot for `addr`, or `None` when it already holds `max` sessions.
    pub fn acquire(self: &Arc<Self>, addr: IpAddr, max: u32) -> Option<ClientSlot> {
        let mut counts = self.counts.lock().ok()?;
        let n = counts.entry(addr).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: Arc::clone(self),
            addr,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.table.counts.lock()
            && let Some(n) = counts.get_mut(&self.addr)
        {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_address_and_released_on_drop() {
        let t = Arc::new(PerClient::default());
        let a: IpAddr = "198.18.0.100".parse().unwrap();
        let b: IpAddr = "198.18.0.101".parse().unwrap();
        let s1 = t.acquire(a, 2).unwrap();
        let _s2 = t.acquire(a, 2).unwrap();
        assert!(t.acquire(a, 2).is_none());
        assert!(
            t.acquire(b, 2).is_some(),
            "another address has its own count"
        );
        drop(s1);
        assert!(t.acquire(a, 2).is_some());
    }
}
