//! The lab's SQL directories: PostgreSQL and MariaDB servers, each a lab process in a lab
//! namespace with its own data directory under the lab's log folder, listening on a lab
//! address with TLS only (a certificate from the lab CA), and an SQLite file. Each holds
//! the table `mailbox(address, smtp_pool, submission_pool, pop_pool)` for the lab's
//! mailboxes ([`MAILBOXES`]) and a user the front-ends log in as, with a password in a
//! file ([`SqlServer::password_file`]).

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{sys::signal::kill, unistd::Pid};

use crate::{Lab, Netns, mail::tls, netns::run, process::Signal};

/// The lab's mailboxes and their pools: SMTP, submission, POP3 (NULL: no such service).
pub const MAILBOXES: &[(&str, &str, Option<&str>, &str)] = &[
    ("alice@example.test", "be1", Some("sub-be1"), "pop-be1"),
    ("bob@example.test", "be1", Some("sub-be1"), "pop-be1"),
    ("carol@example.net", "be2", Some("sub-be2"), "pop-be2"),
    ("dave@example.net", "be2", Some("sub-be2"), "pop-be2"),
    ("erin@example.org", "be3", None, "pop-be3"),
];

/// The database and the user the front-ends use.
pub const DATABASE: &str = "mail";
pub const USER: &str = "robustifier";

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mariadb,
}

/// A database server run by the lab.
pub struct SqlServer {
    pub engine: Engine,
    pub name: String,
    pub ns: Netns,
    pub addr: SocketAddr,
    /// Its data, configuration, socket and TLS files.
    pub dir: PathBuf,
    /// The front-end user's password, readable by the front-end daemon's user.
    pub password_file: PathBuf,
    /// The CA its certificate chains to (the lab CA).
    pub ca: PathBuf,
}

/// Quotes `s` as an SQL string literal (both engines: quotes doubled; MariaDB runs with
/// NO_BACKSLASH_ESCAPES so backslashes are plain characters too).
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The `mailbox` table's rows as one INSERT.
fn inserts() -> String {
    let rows: Vec<String> = MAILBOXES
        .iter()
        .map(|(a, s, sub, p)| {
            format!(
                "({}, {}, {}, {})",
                literal(a),
                literal(s),
                sub.map_or("NULL".to_owned(), literal),
                literal(p)
            )
        })
        .collect();
    format!(
        "INSERT INTO mailbox (address, smtp_pool, submission_pool, pop_pool) VALUES {};\n",
        rows.join(", ")
    )
}

fn chown_r(path: &Path, user: &str) -> anyhow::Result<()> {
    run(Command::new("chown")
        .args(["-R", &format!("{user}:{user}")])
        .arg(path))?;
    Ok(())
}

/// `program args...` run as `user` (for servers that refuse to run as root).
fn as_user(user: &str, program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={user}"),
        &format!("--regid={user}"),
        "--init-groups",
        "--",
    ])
    .arg(program);
    cmd
}

/// Writes the password file for the front-end: readable by root and the daemon's group.
fn password_file(dir: &Path, password: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join("frontend.password");
    std::fs::write(&path, format!("{password}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
    if let Some(group) = nix::unistd::Group::from_name("robustifier")? {
        nix::unistd::chown(&path, None, Some(group.gid))?;
    }
    Ok(path)
}

fn random_password() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("lab-{}-{}", std::process::id(), now.as_nanos())
}

/// Copies the lab CA-signed certificate of `name` (for `ip`) into `dir`, owned by `user`.
fn server_cert(
    lab: &Lab,
    dir: &Path,
    name: &str,
    ip: IpAddr,
    user: &str,
) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let c = tls::host_cert(
        &lab.log_dir,
        name,
        &format!("{name}.robustifier.test"),
        &[ip],
    )?;
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::copy(&c.cert, &cert)?;
    std::fs::copy(&c.key, &key)?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    chown_r(&cert, user)?;
    chown_r(&key, user)?;
    Ok((cert, key, c.ca))
}

impl SqlServer {
    /// A PostgreSQL server named `name` in `ns`, on `ip`:5432: initdb'd as the `postgres`
    /// user under the lab's log folder, TLS only for TCP (pg_hba `hostssl`), SCRAM
    /// passwords.
    pub fn postgres(
        lab: &mut Lab,
        ns: &Netns,
        ip: IpAddr,
        name: &str,
    ) -> anyhow::Result<SqlServer> {
        let dir = lab.log_dir.join(name);
        let data = dir.join("data");
        std::fs::create_dir_all(&dir)?;
        chown_r(&dir, "postgres")?;
        run(as_user("postgres", &Path::new(PG_BIN).join("initdb"))
            .args([
                "--auth-local=trust",
                "--auth-host=reject",
                "--username=postgres",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "-D",
            ])
            .arg(&data))
        .context("initdb")?;
        let (cert, key, ca) = server_cert(lab, &dir, name, ip, "postgres")?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 0.0.0.0/0 scram-sha-256\nhostssl all all ::/0 scram-sha-256\n",
        )?;
        std::fs::write(
            data.join("postgresql.auto.conf"),
            format!(
                "listen_addresses = '{ip}'\nport = 5432\nunix_socket_directories = '{dir}'\nssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\npassword_encryption = 'scram-sha-256'\nlog_connections = on\n",
                dir = dir.display(),
                cert = cert.display(),
                key = key.display()
            ),
        )?;
        chown_r(&dir, "postgres")?;
        let password = random_password();
        let server = SqlServer {
            engine: Engine::Postgres,
            name: name.to_owned(),
            ns: ns.clone(),
            addr: SocketAddr::new(ip, 5432),
            password_file: password_file(&dir, &password)?,
            dir,
            ca,
        };
        server.start(lab)?;
        server.admin(&format!(
            "CREATE ROLE {USER} LOGIN PASSWORD {};\nCREATE DATABASE {DATABASE};\n",
            literal(&password)
        ))?;
        server.sql(&format!(
            "CREATE TABLE mailbox (address text NOT NULL, smtp_pool text, submission_pool text, pop_pool text);\nGRANT SELECT ON mailbox TO {USER};\n{}",
            inserts()
        ))?;
        Ok(server)
    }

    /// A MariaDB server named `name` in `ns`, on `ip`:3306: its data installed with
    /// mariadb-install-db under the lab's log folder, run as `mysql`, TLS required for every
    /// TCP connection. The table compares addresses byte for byte (`utf8mb4_bin`), as a key
    /// is matched in the other engines.
    pub fn mariadb(lab: &mut Lab, ns: &Netns, ip: IpAddr, name: &str) -> anyhow::Result<SqlServer> {
        let dir = lab.log_dir.join(name);
        let data = dir.join("data");
        std::fs::create_dir_all(&data)?;
        chown_r(&dir, "mysql")?;
        run(Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=mysql",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", data.display())))
        .context("mariadb-install-db")?;
        let (cert, key, ca) = server_cert(lab, &dir, name, ip, "mysql")?;
        let ca_copy = dir.join("ca.pem");
        std::fs::copy(&ca, &ca_copy)?;
        chown_r(&dir, "mysql")?;
        std::fs::write(
            dir.join("my.cnf"),
            format!(
                "[mariadbd]\ndatadir = {data}\nsocket = {dir}/mysqld.sock\npid-file = {dir}/mysqld.pid\nbind-address = {ip}\nport = 3306\nuser = mysql\nskip-name-resolve\nrequire-secure-transport = ON\nssl-cert = {cert}\nssl-key = {key}\nssl-ca = {ca}\nsql-mode = NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES\nlog-error = {dir}/error.log\n",
                data = data.display(),
                dir = dir.display(),
                cert = cert.display(),
                key = key.display(),
                ca = ca_copy.display()
            ),
        )?;
        let password = random_password();
        let server = SqlServer {
            engine: Engine::Mariadb,
            name: name.to_owned(),
            ns: ns.clone(),
            addr: SocketAddr::new(ip, 3306),
            password_file: password_file(&dir, &password)?,
            dir,
            ca,
        };
        server.start(lab)?;
        server.admin(&format!(
            "CREATE DATABASE {DATABASE};\nCREATE USER '{USER}'@'%' IDENTIFIED BY {} REQUIRE SSL;\n",
            literal(&password)
        ))?;
        server.sql(&format!(
            "CREATE TABLE mailbox (address TEXT NOT NULL, smtp_pool TEXT, submission_pool TEXT, pop_pool TEXT) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;\nGRANT SELECT ON {DATABASE}.mailbox TO '{USER}'@'%';\n{}",
            inserts()
        ))?;
        Ok(server)
    }

    /// The daemon's name in the lab.
    fn daemon_name(&self) -> String {
        format!("sql-{}", self.name)
    }

    /// Starts the server and waits until it accepts connections on its address.
    pub fn start(&self, lab: &mut Lab) -> anyhow::Result<()> {
        let name = self.daemon_name();
        let args: Vec<String> = match self.engine {
            Engine::Postgres => vec![
                "setpriv".into(),
                "--reuid=postgres".into(),
                "--regid=postgres".into(),
                "--init-groups".into(),
                "--".into(),
                format!("{PG_BIN}/postgres"),
                "-D".into(),
                self.dir.join("data").display().to_string(),
            ],
            Engine::Mariadb => vec![
                "mariadbd".into(),
                format!("--defaults-file={}", self.dir.join("my.cnf").display()),
            ],
        };
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.spawn(&self.ns, &name, &argv)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if crate::wait_port(&self.ns, self.addr).is_ok() && self.admin("SELECT 1;").is_ok() {
                return Ok(());
            }
            let running = lab
                .daemons()
                .iter()
                .rev()
                .find(|d| d.name == name)
                .is_some_and(|d| d.running());
            if !running || Instant::now() > deadline {
                bail!(
                    "{name} did not come up; see {}",
                    lab.log_dir.join(format!("{name}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn pid(&self, lab: &mut Lab) -> anyhow::Result<Pid> {
        let name = self.daemon_name();
        lab.daemons()
            .iter()
            .rev()
            .find(|d| d.name == name && d.running())
            .map(|d| d.pid())
            .with_context(|| format!("{name} is not running"))
    }

    /// Stops the server (PostgreSQL's fast shutdown: clients are cut off at once).
    pub fn stop(&self, lab: &mut Lab) -> anyhow::Result<()> {
        let name = self.daemon_name();
        let signal = match self.engine {
            Engine::Postgres => Signal::SIGINT,
            Engine::Mariadb => Signal::SIGTERM,
        };
        if let Some(d) = lab
            .daemons()
            .iter_mut()
            .rev()
            .find(|d| d.name == name && d.running())
        {
            d.stop_with(signal, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing answers.
    pub fn pause(&self, lab: &mut Lab) -> anyhow::Result<()> {
        // PostgreSQL's backends are children of the postmaster: freeze them all.
        let pid = self.pid(lab)?;
        for p in std::iter::once(pid).chain(children(pid)) {
            kill(p, Signal::SIGSTOP)?;
        }
        Ok(())
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self, lab: &mut Lab) -> anyhow::Result<()> {
        let pid = self.pid(lab)?;
        for p in std::iter::once(pid).chain(children(pid)) {
            kill(p, Signal::SIGCONT)?;
        }
        Ok(())
    }

    /// The URL the front-ends use (no password: it is in [`SqlServer::password_file`]).
    pub fn url(&self) -> String {
        let scheme = match self.engine {
            Engine::Postgres => "postgres",
            Engine::Mariadb => "mysql",
        };
        format!("{scheme}://{USER}@{}/{DATABASE}", self.addr)
    }

    /// Runs `sql` as the administrator, over the server's local socket, in the default
    /// database (`postgres`) or none.
    pub fn admin(&self, sql: &str) -> anyhow::Result<String> {
        self.client(None, sql)
    }

    /// Runs `sql` as the administrator in the lab's database; its output (tab-separated).
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        self.client(Some(DATABASE), sql)
    }

    fn client(&self, db: Option<&str>, sql: &str) -> anyhow::Result<String> {
        use std::io::Write as _;
        let mut cmd = match self.engine {
            Engine::Postgres => {
                let mut c = as_user("postgres", &Path::new(PG_BIN).join("psql"));
                c.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
                    .arg(&self.dir)
                    .args(["-U", "postgres", "-d", db.unwrap_or("postgres")])
                    .env("PGCLIENTENCODING", "UTF8");
                c
            }
            Engine::Mariadb => {
                let mut c = Command::new("mariadb");
                c.arg("--no-defaults")
                    .arg(format!(
                        "--socket={}",
                        self.dir.join("mysqld.sock").display()
                    ))
                    .args(["-u", "root", "--batch", "--skip-column-names"])
                    .arg("--default-character-set=utf8mb4");
                if let Some(db) = db {
                    c.arg(db);
                }
                c
            }
        };
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("SQL client")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(sql.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{} on {}: {}",
                sql.lines().next().unwrap_or_default(),
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Child processes of `pid` (from /proc), for pausing a server with all its workers.
fn children(pid: Pid) -> Vec<Pid> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// An SQLite file `name` in the lab's log folder with the `mailbox` table, readable by the
/// front-end daemon's user.
pub fn sqlite_file(lab: &Lab, name: &str) -> anyhow::Result<PathBuf> {
    let path = lab.log_dir.join(name);
    let _ = std::fs::remove_file(&path);
    sqlite_exec(
        &path,
        &format!(
            "CREATE TABLE mailbox (address TEXT NOT NULL, smtp_pool TEXT, submission_pool TEXT, pop_pool TEXT);\n{}",
            inserts()
        ),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    Ok(path)
}

/// Runs `sql` on the SQLite file `path` with the `sqlite3` tool.
pub fn sqlite_exec(path: &Path, sql: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new("sqlite3")
        .arg("-bail")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("sqlite3")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(sql.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "sqlite3 {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
