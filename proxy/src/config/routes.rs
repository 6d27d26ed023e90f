//! A routing map checked against the pools a service can use (part of the configuration:
//! a service's map is checked when the file is validated). The daemon's maps are
//! re-read while it runs: a map naming a pool that does not exist, or one that cannot
//! carry the service's protocol, must be refused whole (the previous map stays in force)
//! instead of sending every recipient it routes there to a `451`.

use std::path::Path;

use super::{Identity, Pool, Protocol};
use crate::route::{PoolError, RouteError, RouteTable};

/// Where the pools a map may name are found: the configuration at check time, the running
/// pool set (which a reload cannot add pools to) afterwards.
pub trait Pools {
    fn pool(&self, name: &str) -> Option<&Pool>;
    /// The pool holding back-end `name` (back-end names are unique across pools), for
    /// directory answers that pin a single back-end.
    fn backend_pool(&self, name: &str) -> Option<&Pool>;
}

impl Pools for [Pool] {
    fn pool(&self, name: &str) -> Option<&Pool> {
        self.iter().find(|p| p.name == name)
    }

    fn backend_pool(&self, name: &str) -> Option<&Pool> {
        self.iter()
            .find(|p| p.backends.iter().any(|b| b.name == name))
    }
}

/// Whether `pool` can serve a session of `protocol`: POP3 has no XCLIENT, so a pool that
/// passes the client's address that way (its own identity, or one of its back-ends') would
/// lose it on every login.
pub fn serves(pool: &Pool, protocol: Protocol) -> Result<(), PoolError> {
    if protocol == Protocol::Pop3
        && (pool.identity == Some(Identity::Xclient)
            || pool
                .backends
                .iter()
                .any(|b| b.identity == Identity::Xclient))
    {
        return Err(PoolError::XclientForPop3 {
            name: pool.name.clone(),
        });
    }
    Ok(())
}

/// The pool called `name`, if it exists and can serve `protocol`.
pub fn usable<'a>(
    pools: &'a (impl Pools + ?Sized),
    name: &str,
    protocol: Protocol,
) -> Result<&'a Pool, PoolError> {
    let pool = pools.pool(name).ok_or_else(|| PoolError::Missing {
        name: name.to_owned(),
    })?;
    serves(pool, protocol)?;
    Ok(pool)
}

impl RouteTable {
    /// Checks that every pool the map names exists in `pools` and serves `protocol`; the
    /// first line naming one that does not is the error.
    pub fn resolve(
        self,
        file: &Path,
        protocol: Protocol,
        pools: &(impl Pools + ?Sized),
    ) -> Result<RouteTable, RouteError> {
        for (line, name) in self.pool_lines() {
            usable(pools, name, protocol).map_err(|source| RouteError::Pool {
                file: file.to_owned(),
                line,
                source,
            })?;
        }
        Ok(self)
    }

    /// Reads, parses and resolves a map file: what the daemon does on every read.
    pub fn load_for(
        path: &Path,
        protocol: Protocol,
        pools: &(impl Pools + ?Sized),
    ) -> Result<RouteTable, RouteError> {
        RouteTable::load(path)?.resolve(path, protocol, pools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(pop_identity: &str) -> Config {
        let text = format!(
            "[frontend]\nname = \"fe\"\n\
             [[service]]\nname = \"pop3\"\nprotocol = \"pop3\"\nport = 110\n\
             [[pool]]\nname = \"store\"\nidentity = \"proxy\"\nbackend = [{{ name = \"s\", address = \"198.18.1.1:110\" }}]\n\
             [[pool]]\nname = \"mx\"\nidentity = \"xclient\"\nbackend = [{{ name = \"m\", address = \"198.18.1.2:25\" }}]\n\
             [[pool]]\nname = \"mixed\"\nidentity = \"none\"\nbackend = [{{ name = \"x\", address = \"198.18.1.3:110\" }}, {{ name = \"y\", address = \"198.18.1.4:110\", identity = \"{pop_identity}\" }}]\n"
        );
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    fn resolve(map: &str, protocol: Protocol, cfg: &Config) -> Result<RouteTable, String> {
        RouteTable::parse(map, Path::new("/etc/r.map"))
            .unwrap()
            .resolve(Path::new("/etc/r.map"), protocol, &cfg.pools[..])
            .map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_pool_is_named_with_file_and_line() {
        let cfg = config("proxy");
        let e = resolve(
            "# c\nalice store\n\nbob store mx-typo\ncarol mx-typo\n",
            Protocol::Smtp,
            &cfg,
        )
        .unwrap_err();
        assert_eq!(e, "/etc/r.map:4: pool \"mx-typo\" is not configured");
        assert!(resolve("alice store\nbob mx\n", Protocol::Smtp, &cfg).is_ok());
        assert!(resolve("alice reject\n", Protocol::Pop3, &cfg).is_ok());
    }

    #[test]
    fn pop3_refuses_xclient_pools() {
        let cfg = config("proxy");
        let e = resolve("alice store\n* mx\n", Protocol::Pop3, &cfg).unwrap_err();
        assert!(
            e.starts_with("/etc/r.map:2: pool \"mx\" passes the client with XCLIENT"),
            "{e}"
        );
        assert!(resolve("alice store\n* mx\n", Protocol::Smtp, &cfg).is_ok());
        assert!(resolve("* mixed\n", Protocol::Pop3, &cfg).is_ok());
        // One back-end overriding its pool's identity is enough.
        let cfg = config("xclient");
        let e = resolve("* mixed\n", Protocol::Pop3, &cfg).unwrap_err();
        assert!(
            e.contains("pool \"mixed\" passes the client with XCLIENT"),
            "{e}"
        );
    }

    #[test]
    fn load_for_reads_then_resolves() {
        let dir = std::env::temp_dir().join(format!("rb-resolve-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("r.map");
        std::fs::write(&file, "a.example store\nb.example nowhere\n").unwrap();
        let cfg = config("proxy");
        let e = RouteTable::load_for(&file, Protocol::Smtp, &cfg.pools[..]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}:2: pool \"nowhere\" is not configured", file.display())
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
