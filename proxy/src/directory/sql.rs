//! The SQL source: one parameterised query against PostgreSQL, MariaDB/MySQL or SQLite,
//! through sqlx.
//!
//! The query template's `%s`/`%u`/`%d` become the engine's placeholders (`$1`, `$2`, ... for
//! PostgreSQL, `?` for MySQL and SQLite) and the key's parts are bound as parameters: a key
//! is never part of the SQL text, whatever it holds. Each server has its own pool, opened
//! lazily (a directory that is down does not stop a front-end from starting); servers are
//! asked in order, each within its share of the lookup's time, so that a server that hangs
//! still leaves time for the next one. SQLite files are opened read-only, and sqlx runs
//! each SQLite connection on a thread of its own, so its blocking I/O never blocks the
//! runtime.

use std::{
    str::FromStr as _,
    sync::{Arc, OnceLock},
    time::Duration,
};

use futures_util::TryStreamExt as _;
use sqlx::{
    Row as _,
    mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlSslMode},
    postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode},
    sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions},
};

use super::{
    Found, Key, LookupFuture, Source, SourceError,
    template::{self, Part},
};
use crate::config::directory::sql::{Engine, Sql};

/// Rows one key may have: a few pools or back-ends. More is a query that matches far more
/// than one key's entry (a missing condition), not a route.
pub const MAX_ROWS: usize = 16;

/// One server: its connection options, and its pool once a lookup needed it. Pools are
/// made on first use, inside the runtime (sqlx starts a pool's upkeep task there), so a
/// source may be built anywhere, a configuration check included.
struct Server<O, P> {
    url: String,
    options: O,
    pool: OnceLock<P>,
}

impl<O: Clone, P> Server<O, P> {
    fn new(url: &str, options: O) -> Self {
        Server {
            url: url.to_owned(),
            options,
            pool: OnceLock::new(),
        }
    }

    fn pool(&self, make: impl FnOnce(O) -> P) -> &P {
        self.pool.get_or_init(|| make(self.options.clone()))
    }
}

enum Pools {
    Postgres(Vec<Server<PgConnectOptions, PgPool>>),
    Mysql(Vec<Server<MySqlConnectOptions, MySqlPool>>),
    Sqlite(Box<Server<SqliteConnectOptions, SqlitePool>>),
}

struct SqlSource {
    engine: Engine,
    pools: Pools,
    /// The query with the engine's placeholders.
    sql: String,
    /// The key's part bound to each placeholder, in order.
    binds: Vec<Part>,
    /// Time each server gets for one lookup (connecting included).
    per_server: Duration,
    pool_size: u32,
}

/// Builds the source of `config`; no connection is made here. `timeout` is the
/// directory's time for one lookup, shared between the servers.
pub fn open(config: &Sql, timeout: Duration) -> Result<Arc<dyn Source>, SourceError> {
    let parts = template::parse(&config.query).map_err(|e| SourceError::Config(e.to_string()))?;
    let (sql, binds) = placeholders(config.engine, &parts);
    let password = match &config.password_file {
        Some(path) => Some(read_secret(path)?),
        None => None,
    };
    let servers = u32::try_from(config.urls.len().max(1)).unwrap_or(u32::MAX);
    let per_server = (timeout / servers).max(Duration::from_millis(1));
    let config_err = |url: &str, e: sqlx::Error| SourceError::Config(format!("{url}: {e}"));
    let pools = match config.engine {
        Engine::Postgres => {
            let mut pools = Vec::new();
            for url in &config.urls {
                let mut o = PgConnectOptions::from_str(url).map_err(|e| config_err(url, e))?;
                if let Some(p) = &password {
                    o = o.password(p);
                }
                o = if config.tls {
                    o.ssl_mode(PgSslMode::VerifyFull)
                } else {
                    o.ssl_mode(PgSslMode::Disable)
                };
                if let Some(ca) = &config.ca_file {
                    o = o.ssl_root_cert(ca);
                }
                pools.push(Server::new(url, o.application_name("robustifier")));
            }
            Pools::Postgres(pools)
        }
        Engine::Mysql => {
            let mut pools = Vec::new();
            for url in &config.urls {
                let mut o = MySqlConnectOptions::from_str(url).map_err(|e| config_err(url, e))?;
                if let Some(p) = &password {
                    o = o.password(p);
                }
                o = if config.tls {
                    o.ssl_mode(MySqlSslMode::VerifyIdentity)
                } else {
                    o.ssl_mode(MySqlSslMode::Disabled)
                };
                if let Some(ca) = &config.ca_file {
                    o = o.ssl_ca(ca);
                }
                pools.push(Server::new(url, o));
            }
            Pools::Mysql(pools)
        }
        Engine::Sqlite => {
            let Some(path) = config.urls.first() else {
                return Err(SourceError::Config("no SQLite file".into()));
            };
            let o = SqliteConnectOptions::new()
                .filename(path)
                .read_only(true)
                .create_if_missing(false);
            Pools::Sqlite(Box::new(Server::new(path, o)))
        }
    };
    Ok(Arc::new(SqlSource {
        engine: config.engine,
        pools,
        sql,
        binds,
        per_server,
        pool_size: config.pool_size,
    }))
}

/// The query text with the engine's placeholders, and the part bound to each.
fn placeholders(engine: Engine, parts: &[Part]) -> (String, Vec<Part>) {
    let mut sql = String::new();
    let mut binds = Vec::new();
    for p in parts {
        match p {
            Part::Text(t) => sql.push_str(t),
            other => {
                binds.push(other.clone());
                match engine {
                    Engine::Postgres => sql.push_str(&format!("${}", binds.len())),
                    Engine::Mysql | Engine::Sqlite => sql.push('?'),
                }
            }
        }
    }
    (sql, binds)
}

fn read_secret(path: &std::path::Path) -> Result<String, SourceError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SourceError::Config(format!("password file {}: {e}", path.display())))?;
    // A file written by `echo` ends with a newline that is not part of the password.
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

/// One server's failure: try the next one, or give up on the key.
enum Failure {
    Next(String),
    Invalid(String),
}

/// Asks one pool (any engine: the sqlx types differ, the steps do not).
macro_rules! ask {
    ($pool:expr, $sql:expr, $values:expr) => {{
        let mut q = sqlx::query($sql);
        for v in $values {
            q = q.bind(*v);
        }
        let mut rows = q.fetch($pool);
        let mut values = Vec::new();
        let mut seen = 0usize;
        loop {
            match rows.try_next().await {
                Ok(Some(row)) => {
                    seen += 1;
                    if seen > MAX_ROWS {
                        break Err(Failure::Invalid(format!(
                            "more than {MAX_ROWS} rows for one key"
                        )));
                    }
                    // NULL is a row without a value (a mailbox without this service).
                    // Text with a binary collation (MariaDB's `utf8mb4_bin`) comes as
                    // bytes: taken when they are UTF-8.
                    let value = row.try_get::<Option<String>, _>(0).or_else(|e| {
                        match row.try_get::<Option<Vec<u8>>, _>(0) {
                            Ok(b) => b
                                .map(String::from_utf8)
                                .transpose()
                                .map_err(|_| "the first column is not UTF-8 text".to_owned()),
                            Err(_) => Err(format!("the first column is not text: {e}")),
                        }
                    });
                    match value {
                        Ok(Some(v)) => values.push(v),
                        Ok(None) => {}
                        Err(why) => break Err(Failure::Invalid(why)),
                    }
                }
                Ok(None) if values.is_empty() => break Ok(Found::NotFound),
                Ok(None) => break Ok(Found::Values(values)),
                Err(e) => break Err(Failure::Next(e.to_string())),
            }
        }
    }};
}

impl SqlSource {
    async fn lookup_key(&self, key: &Key) -> Result<Found, SourceError> {
        let values: Vec<&str> = self
            .binds
            .iter()
            .map(|p| p.value(key).unwrap_or_default())
            .collect();
        // PostgreSQL text never holds NUL (the server refuses the parameter): no entry can
        // match such a key, and that is an answer, not a failing server.
        if self.engine == Engine::Postgres && values.iter().any(|v| v.contains('\0')) {
            return Ok(Found::NotFound);
        }
        let mut errors = Vec::new();
        let mut attempt = |url: &str, r: Option<Result<Found, Failure>>| match r {
            Some(Ok(found)) => Some(Ok(found)),
            Some(Err(Failure::Invalid(why))) => {
                Some(Err(SourceError::Invalid(format!("{url}: {why}"))))
            }
            Some(Err(Failure::Next(why))) => {
                errors.push(format!("{url}: {why}"));
                None
            }
            None => {
                errors.push(format!(
                    "{url}: no answer within {} ms",
                    self.per_server.as_millis()
                ));
                None
            }
        };
        let (t, n) = (self.per_server, self.pool_size);
        match &self.pools {
            Pools::Postgres(servers) => {
                for server in servers {
                    let pool = server.pool(|o| {
                        PgPoolOptions::new()
                            .max_connections(n)
                            .acquire_timeout(t)
                            .connect_lazy_with(o)
                    });
                    let r = tokio::time::timeout(t, async { ask!(pool, &self.sql, &values) });
                    if let Some(done) = attempt(&server.url, r.await.ok()) {
                        return done;
                    }
                }
            }
            Pools::Mysql(servers) => {
                for server in servers {
                    let pool = server.pool(|o| {
                        MySqlPoolOptions::new()
                            .max_connections(n)
                            .acquire_timeout(t)
                            .connect_lazy_with(o)
                    });
                    let r = tokio::time::timeout(t, async { ask!(pool, &self.sql, &values) });
                    if let Some(done) = attempt(&server.url, r.await.ok()) {
                        return done;
                    }
                }
            }
            Pools::Sqlite(server) => {
                let pool = server.pool(|o| {
                    SqlitePoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(t)
                        .connect_lazy_with(o)
                });
                let r = tokio::time::timeout(t, async { ask!(pool, &self.sql, &values) });
                if let Some(done) = attempt(&server.url, r.await.ok()) {
                    return done;
                }
            }
        }
        Err(SourceError::Unavailable(errors.join("; ")))
    }
}

impl Source for SqlSource {
    fn kind(&self) -> &'static str {
        self.engine.name()
    }

    fn lookup<'a>(&'a self, key: &'a Key) -> LookupFuture<'a> {
        Box::pin(self.lookup_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite_source(
        rows: &[(&str, &str)],
        query: &str,
    ) -> (Arc<dyn Source>, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "rb-sqlsrc-{}-{}.db",
            std::process::id(),
            fastrand::u64(..)
        ));
        let o = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new().connect_with(o).await.unwrap();
        sqlx::query("CREATE TABLE mailbox (address TEXT NOT NULL, pool TEXT)")
            .execute(&pool)
            .await
            .unwrap();
        for (a, p) in rows {
            sqlx::query("INSERT INTO mailbox VALUES (?, ?)")
                .bind(*a)
                .bind(*p)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
        let config = Sql {
            engine: Engine::Sqlite,
            urls: vec![path.display().to_string()],
            password_file: None,
            query: query.into(),
            tls: false,
            ca_file: None,
            pool_size: 2,
            plaintext_password: false,
        };
        (open(&config, Duration::from_secs(5)).unwrap(), path)
    }

    const BY_ADDRESS: &str = "SELECT pool FROM mailbox WHERE address = %s ORDER BY rowid";

    /// Keys an attacker could send as a recipient or user name: each must reach only a row
    /// holding exactly that text.
    pub const HOSTILE: &[&str] = &[
        "' OR '1'='1",
        "x' OR '1'='1' --",
        "%",
        "_",
        "*",
        ";DROP TABLE mailbox;--",
        "nul\0byte",
        "ünïcødé@exämple.test",
    ];

    #[tokio::test]
    async fn found_not_found_and_several_rows() {
        let (s, _p) = sqlite_source(
            &[
                ("alice@example.test", "be1"),
                ("multi@example.test", "be1/be1"),
                ("multi@example.test", "be2"),
                ("nopool@example.test", "NULL-below"),
            ],
            BY_ADDRESS,
        )
        .await;
        assert_eq!(s.kind(), "sqlite");
        assert_eq!(
            s.lookup(&Key::recipient("alice@example.test")).await,
            Ok(Found::Values(vec!["be1".into()]))
        );
        assert_eq!(
            s.lookup(&Key::recipient("multi@example.test")).await,
            Ok(Found::Values(vec!["be1/be1".into(), "be2".into()]))
        );
        assert_eq!(
            s.lookup(&Key::recipient("nobody@example.test")).await,
            Ok(Found::NotFound)
        );
        // Case and spacing are the key's own: no near match.
        assert_eq!(
            s.lookup(&Key::recipient("Alice@example.test")).await,
            Ok(Found::NotFound)
        );
    }

    #[tokio::test]
    async fn local_part_and_domain_are_bound_separately() {
        let (s, _p) = sqlite_source(
            &[("alice|example.test", "be1")],
            "SELECT pool FROM mailbox WHERE address = %u || '|' || %d",
        )
        .await;
        assert_eq!(
            s.lookup(&Key::recipient("alice@example.test")).await,
            Ok(Found::Values(vec!["be1".into()]))
        );
    }

    #[tokio::test]
    async fn null_values_are_no_values() {
        let (s, p) = sqlite_source(&[], BY_ADDRESS).await;
        let rt_path = p.clone();
        let pool = SqlitePoolOptions::new()
            .connect_with(SqliteConnectOptions::new().filename(&rt_path))
            .await
            .unwrap();
        sqlx::query("INSERT INTO mailbox VALUES ('n@example.test', NULL)")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(
            s.lookup(&Key::recipient("n@example.test")).await,
            Ok(Found::NotFound)
        );
    }

    #[tokio::test]
    async fn bytes_are_text_when_they_are_utf8() {
        let (s, p) = sqlite_source(&[], BY_ADDRESS).await;
        let pool = SqlitePoolOptions::new()
            .connect_with(SqliteConnectOptions::new().filename(&p))
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO mailbox VALUES ('b@example.test', X'626531'), ('x@example.test', X'ff00')",
        )
        .execute(&pool)
        .await
        .unwrap();
        assert_eq!(
            s.lookup(&Key::recipient("b@example.test")).await,
            Ok(Found::Values(vec!["be1".into()]))
        );
        assert!(matches!(
            s.lookup(&Key::recipient("x@example.test")).await,
            Err(SourceError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn more_than_sixteen_rows_is_invalid() {
        let rows: Vec<(&str, &str)> = (0..=MAX_ROWS)
            .map(|_| ("many@example.test", "be1"))
            .collect();
        let (s, _p) = sqlite_source(&rows, BY_ADDRESS).await;
        assert!(matches!(
            s.lookup(&Key::recipient("many@example.test")).await,
            Err(SourceError::Invalid(_))
        ));
        let (s, _p) = sqlite_source(&rows[..MAX_ROWS], BY_ADDRESS).await;
        assert!(matches!(
            s.lookup(&Key::recipient("many@example.test")).await,
            Ok(Found::Values(v)) if v.len() == MAX_ROWS
        ));
    }

    #[tokio::test]
    async fn hostile_keys_match_only_their_literal_rows() {
        let long = "a".repeat(10_000) + "@example.test";
        let mut rows: Vec<(String, String)> = vec![
            ("alice@example.test".into(), "be1".into()),
            ("bob@example.test".into(), "be1".into()),
        ];
        let keys: Vec<String> = HOSTILE
            .iter()
            .map(|k| (*k).to_owned())
            .chain([long.clone()])
            .collect();
        // Every hostile key has a row of its own, with its index as the value.
        for (i, k) in keys.iter().enumerate() {
            rows.push((k.clone(), format!("literal-{i}")));
        }
        let borrowed: Vec<(&str, &str)> =
            rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let (s, p) = sqlite_source(&borrowed, BY_ADDRESS).await;
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                s.lookup(&Key::recipient(k.clone())).await,
                Ok(Found::Values(vec![format!("literal-{i}")])),
                "{k:?}"
            );
        }
        // Without their rows, the same keys find nothing at all (no wildcard, no injected
        // condition), and the table is still there.
        let (s, _q) = sqlite_source(&borrowed[..2], BY_ADDRESS).await;
        for k in &keys {
            assert_eq!(
                s.lookup(&Key::recipient(k.clone())).await,
                Ok(Found::NotFound),
                "{k:?}"
            );
        }
        assert_eq!(
            s.lookup(&Key::recipient("bob@example.test")).await,
            Ok(Found::Values(vec!["be1".into()]))
        );
        let _ = std::fs::remove_file(p);
    }

    #[tokio::test]
    async fn the_file_is_opened_read_only() {
        let (s, _p) = sqlite_source(
            &[("alice@example.test", "be1")],
            "DELETE FROM mailbox WHERE address = %s RETURNING pool",
        )
        .await;
        let r = s.lookup(&Key::recipient("alice@example.test")).await;
        assert!(
            matches!(r, Err(SourceError::Unavailable(ref why)) if why.contains("readonly")),
            "{r:?}"
        );
    }

    /// The front-end may build sources outside its runtime (a configuration check, a
    /// reload on a blocking thread): nothing is started until a lookup.
    #[test]
    fn a_source_is_built_outside_a_runtime() {
        let config = Sql {
            engine: Engine::Mysql,
            urls: vec!["mysql://rb@127.0.0.1:1/mail".into()],
            password_file: None,
            query: BY_ADDRESS.into(),
            tls: true,
            ca_file: None,
            pool_size: 1,
            plaintext_password: false,
        };
        assert_eq!(
            open(&config, Duration::from_secs(1)).unwrap().kind(),
            "mysql"
        );
    }

    #[test]
    fn placeholders_per_engine() {
        let parts = template::parse("SELECT p FROM m WHERE a = %s OR (u = %u AND d = %d) -- 100%%")
            .unwrap();
        let (pg, binds) = placeholders(Engine::Postgres, &parts);
        assert_eq!(
            pg,
            "SELECT p FROM m WHERE a = $1 OR (u = $2 AND d = $3) -- 100%"
        );
        assert_eq!(binds, [Part::Whole, Part::Local, Part::Domain]);
        let (my, _) = placeholders(Engine::Mysql, &parts);
        assert_eq!(
            my,
            "SELECT p FROM m WHERE a = ? OR (u = ? AND d = ?) -- 100%"
        );
    }

    #[tokio::test]
    async fn every_server_down_is_unavailable_after_trying_each() {
        let config = Sql {
            engine: Engine::Postgres,
            // Nothing listens on port 1 of loopback: each connection is refused at once.
            urls: vec![
                "postgres://rb@127.0.0.1:1/mail".into(),
                "postgres://rb@127.0.0.2:1/mail".into(),
            ],
            password_file: None,
            query: BY_ADDRESS.into(),
            tls: false,
            ca_file: None,
            pool_size: 1,
            plaintext_password: false,
        };
        let s = open(&config, Duration::from_secs(10)).unwrap();
        match s.lookup(&Key::recipient("alice@example.test")).await {
            Err(SourceError::Unavailable(why)) => {
                assert!(
                    why.contains("127.0.0.1:1") && why.contains("127.0.0.2:1"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
