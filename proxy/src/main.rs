//! The `robustifier` command: front-end daemon, map inspection, configuration check, HA
//! control, reloads and binary upgrades of a running front-end, the cluster manager, a
//! member's link to it, and the operator's cluster commands.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Parser, Subcommand};
use robustifier::{
    config::Config,
    control,
    datapath::{Snapshot, Tables, remove_pins},
    frontend::{StatusReport, render},
};
use robustifier_common::PIN_DIR;

/// mimalloc rather than glibc's malloc, when built with the feature: fewer instructions
/// per session, more memory at rest (proxy/Cargo.toml says why it is not the default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "robustifier",
    version,
    about = "Kernel-assisted load balancer for mail clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr: `text` for people (colours only on a terminal), `json` for log
    /// collectors (one object per line, with the session's span and its id).
    #[arg(long, value_enum, global = true, default_value = "text")]
    log_format: robustifier::logging::Format,
}

#[derive(Subcommand)]
enum Command {
    /// Run a front-end: load and attach the data path, serve the configured services.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Attach XDP to this interface instead of the config's `frontend.interface`.
        #[arg(long)]
        iface: Option<String>,
        /// No kernel side: listen on each service's own addresses with plain sockets, keep
        /// load records in memory; no XDP, no steering, no root needed.
        #[arg(long, conflicts_with = "iface")]
        without_kernel: bool,
        /// Succeed the front-end running this configuration (a binary upgrade): take its
        /// listening sockets and XDP link over its control socket, then let it drain.
        /// `robustifier upgrade` starts a process this way.
        #[arg(long)]
        take_over: bool,
    },
    /// Apply a configuration to a running front-end, live: its own file read again, or the
    /// file given. Prints what changed; exits non-zero (changing nothing) on refusal.
    Reload {
        /// The configuration to apply (it becomes the front-end's file); its
        /// `ha.control_socket` names the front-end.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Control socket, if not the configuration's.
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Replace a running front-end's process by a new one (a new binary) without refusing
    /// a connection: starts `BINARY run --take-over`, waits until it serves, and returns;
    /// the old process drains and exits on its own.
    Upgrade {
        /// The running front-end's configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// The new binary; default: this one.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The front-end runs without a kernel side (`run --without-kernel`).
        #[arg(long)]
        without_kernel: bool,
        /// Append the new process's output to this file (default: this command's own).
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Validate a configuration file; exits non-zero with file, key and reason.
    CheckConfig { file: PathBuf },
    /// Print the pinned maps: counters, services, block list, back-end load records.
    Maps {
        #[command(flatten)]
        pins: PinArgs,
        /// Also show the configuration version of the front-end using the maps (asked over
        /// its control socket; default: the one of `--config`, if given).
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run on a back-end host: report run queue, mail queue, disk use and operator
    /// requests to the front-ends.
    Agent {
        /// Address to listen on; only this one is bound (e.g. the back-end's internal
        /// address, port 7025).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// File with the key shared with the front-ends (their `agent_key_file`).
        #[arg(long, required_unless_present = "insecure_no_key")]
        key_file: Option<PathBuf>,
        /// Serve reports to anyone who connects, without a key.
        #[arg(long, conflicts_with = "key_file")]
        insecure_no_key: bool,
        #[arg(long, value_enum, default_value = "postfix")]
        mta: robustifier::agent::Mta,
        /// Postfix config directory or Exim config file of the MTA to ask.
        #[arg(long)]
        mta_config: Option<PathBuf>,
        /// Spool directory (its file system's use is reported).
        #[arg(long, default_value = "/var/spool")]
        spool: PathBuf,
        /// Operator file with `weight=N` and `drain=1` lines.
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// The MTA's log file: its lines with a queue id are shipped to the cluster manager
        /// (for `cluster trace`), with the agent's certificate (`cluster issue --agent`).
        #[arg(long, requires_all = ["manager", "ca", "cert", "key"])]
        maillog: Option<PathBuf>,
        /// The cluster manager, `host:port`.
        #[arg(long, requires = "maillog")]
        manager: Option<String>,
        /// The cluster's CA certificate.
        #[arg(long, requires = "maillog")]
        ca: Option<PathBuf>,
        /// The agent's certificate; its name must be the back-end's name in the
        /// configuration.
        #[arg(long, requires = "maillog")]
        cert: Option<PathBuf>,
        #[arg(long, requires = "maillog")]
        key: Option<PathBuf>,
        /// Directory where moves of queued mail keep their journals (`queue move`);
        /// without it the agent refuses moves. Unfinished moves resume at start.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// A running front-end's active alarms (back-ends down or overloaded, pools without a
    /// back-end, agents unreachable, a refused reload) and its recent events.
    Alarms {
        /// Control socket; defaults to the config's `ha.control_socket`.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A running front-end's statistics per minute (sessions, messages, recipients, bytes,
    /// deflections; per service, back-end, pool and user group).
    Stats {
        /// Control socket; defaults to the config's `ha.control_socket`.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only the minutes after this unix minute (unix seconds / 60).
        #[arg(long, value_name = "MIN")]
        since: Option<u64>,
        /// One JSON record per minute and line.
        #[arg(long)]
        json: bool,
    },
    /// Run the cluster manager: the cluster's configuration journal, served to members and
    /// operators over mutual TLS.
    Manager {
        /// Address to listen on (members and operators connect here).
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Holds the journal and the audit trail.
        #[arg(long, default_value = "/var/lib/robustifier/manager")]
        state_dir: PathBuf,
        /// The cluster's CA certificate, and the manager's certificate and key
        /// (`cluster init` wrote them).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Members' configurations are checked as files in this folder.
        #[arg(long, default_value = "/etc/robustifier")]
        render_dir: PathBuf,
        /// Serve `/metrics` (Prometheus) at this address.
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// The bearer token every scrape must carry (one line, at least 16 characters).
        #[arg(
            long,
            requires = "metrics_listen",
            conflicts_with = "metrics_insecure_no_auth"
        )]
        metrics_token_file: Option<PathBuf>,
        /// Serve `/metrics` to anyone who connects, without a token.
        #[arg(long, requires = "metrics_listen")]
        metrics_insecure_no_auth: bool,
        /// Serve the web interface (HTTPS, the manager's certificate) at this address;
        /// operators log in with a link from `robustifier cluster web`.
        #[arg(long)]
        web_listen: Option<std::net::SocketAddr>,
        /// Days of the members' per-minute statistics kept.
        #[arg(long, default_value_t = robustifier::manager::stats::DEFAULT_DAYS)]
        stats_days: u64,
    },
    /// Link a front-end to its cluster's manager: apply each new version live, report.
    /// The front-end runs (and starts from) STATE_DIR/config.toml.
    Member {
        /// The manager, `host:port`.
        #[arg(long)]
        manager: String,
        #[arg(long)]
        ca: PathBuf,
        /// This member's certificate; its name is the member's name.
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
        #[arg(long, default_value = "/var/lib/robustifier/member")]
        state_dir: PathBuf,
        /// The front-end's control socket.
        #[arg(long)]
        socket: PathBuf,
        /// The longest wait between two attempts to reach the manager, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        max_retry_ms: u64,
        /// Raise the front-end's "manager unreachable" alarm once the manager has been out
        /// of reach this long, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        alarm_after_ms: u64,
    },
    /// Operate the cluster through its manager: commit, log, show, diff, rollback,
    /// confirm, status, audit, actions; and create its certificates.
    Cluster {
        #[command(subcommand)]
        command: robustifier::manager::cli::ClusterCommand,
        #[command(flatten)]
        connection: robustifier::manager::cli::Connection,
    },
    /// Remove the pinned maps (programs detach when their daemon stops).
    Unload {
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Virtual-IP failover of a running front-end: status, planned handoff.
    Ha {
        #[command(subcommand)]
        command: HaCommand,
        /// Control socket; defaults to the config's `ha.control_socket`, else the only
        /// socket under /run/robustifier/.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        /// Take the control socket from this configuration.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Operator drain of a back-end on a running front-end: no new session goes to it,
    /// running ones finish. Kept across reloads, not across a restart.
    Backend {
        #[command(subcommand)]
        command: BackendCommand,
        /// Control socket; defaults to the config's `ha.control_socket`, else the only
        /// socket under /run/robustifier/.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        /// Take the control socket from this configuration.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// The back-ends' mail queues per destination domain, asked of their agents by a
    /// running front-end.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
        /// Control socket; defaults to the config's `ha.control_socket`, else the only
        /// socket under /run/robustifier/.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        /// Take the control socket from this configuration.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// How a running front-end routes a recipient or a user, and its directories'
    /// caches and counters.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
        /// Control socket; defaults to the config's `ha.control_socket`, else the only
        /// socket under /run/robustifier/.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        /// Take the control socket from this configuration.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Install the package update a member wrote to DIR (root; run by
    /// robustifier-update.service): check its hash, install it, write DIR/result.json.
    InstallUpdate {
        #[arg(default_value = robustifier::install_update::DEFAULT_DIR)]
        dir: PathBuf,
        /// The installer; the package's path is appended.
        #[arg(long, env = "ROBUSTIFIER_INSTALLER", default_value = robustifier::install_update::DEFAULT_INSTALLER)]
        installer: String,
    },
    /// systemd's ExecReload for a front-end: a binary upgrade (`upgrade`) when the running
    /// process's binary is no longer the installed one (a package replaced it), else a
    /// live reload (`reload`).
    ReloadOrUpgrade {
        /// The running front-end's configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// The running front-end's process; default: systemd's $MAINPID, else the one its
        /// control socket names.
        #[arg(long, env = "MAINPID")]
        pid: Option<u32>,
        /// The front-end runs without a kernel side (`run --without-kernel`).
        #[arg(long)]
        without_kernel: bool,
    },
    /// Write the man pages (robustifier(8), robustifier-SUBCOMMAND(8)) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// How SERVICE routes KEY now, as its sessions would: the dedicated queues, the
    /// routing map, the directory (its own answer shown too) and the service's pool.
    Lookup {
        /// A recipient address, or with --user a login name.
        key: String,
        /// The service (as named in the configuration).
        #[arg(long)]
        service: String,
        /// KEY is a login name (POP3, SMTP AUTH), not a recipient.
        #[arg(long)]
        user: bool,
        /// Ask the directory even when its cache holds the key (the answer is cached).
        #[arg(long)]
        fresh: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Empty the directories' caches (or one directory's): the next lookups ask the source.
    Flush {
        /// Only this directory.
        #[arg(long)]
        directory: Option<String>,
    },
    /// Each directory's lookups, cache hits, misses, stale answers, errors and timeouts.
    Directories {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Each back-end's mail queue per destination domain, from its agent, the most
    /// deferred mail first; a back-end whose agent did not answer is listed with why.
    Status {
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Hand a domain's queued mail over to a pool: every back-end's agent outside the pool
    /// re-submits the domain's messages to the pool's back-ends and removes them once
    /// taken. Asking again reports the progress.
    Move {
        /// A domain (`slow.example`) or its subdomains (`.slow.example`).
        #[arg(long)]
        domain: String,
        /// The pool taking the mail.
        #[arg(long)]
        to: String,
        /// Ask for the progress every second until every back-end is done, for at most
        /// SECS seconds; fails, naming them, if some are not done by then.
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The progress of a domain's move (started by `queue move`, a reload or an
    /// isolation), without starting one.
    Moves {
        #[arg(long)]
        domain: String,
        /// The pool the mail goes to (default: the domain's `[[domain_queue]]` pool).
        #[arg(long)]
        to: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BackendCommand {
    /// Take no new session on back-end NAME (its configured name, in every pool).
    Drain { name: String },
    /// Undo a drain: back-end NAME takes new sessions again.
    Undrain { name: String },
}

#[derive(Subcommand)]
enum HaCommand {
    /// Role, priority, master address and last transition of each virtual router.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Drain-aware handoff: stop accepting on the VRID's addresses, let sessions finish (up
    /// to the drain deadline), then advertise priority 0 and stay backup.
    Release { vrid: u8 },
    /// Undo a release: back to the configured priority (preempting if it is higher).
    Resume { vrid: u8 },
}

#[derive(clap::Args)]
struct PinArgs {
    /// Pin directory; defaults to the config's `frontend.pin_dir`, else /sys/fs/bpf/robustifier.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// Take the pin directory from this configuration.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl PinArgs {
    fn resolve(self) -> anyhow::Result<PathBuf> {
        Ok(match (self.pin_dir, self.config) {
            (Some(dir), _) => dir,
            (None, Some(cfg)) => Config::load(&cfg)?.frontend.pin_dir,
            (None, None) => PathBuf::from(PIN_DIR),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    robustifier::logging::init(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("robustifier: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            iface,
            without_kernel,
            take_over,
        } => {
            let mut cfg = Config::load(&config)?;
            if iface.is_some() {
                cfg.frontend.interface = iface;
            }
            let mode = if without_kernel {
                robustifier::daemon::Mode::UserSpace
            } else {
                robustifier::daemon::Mode::Kernel
            };
            robustifier::daemon::main(cfg, mode, take_over)
        }
        Command::Reload { config, socket } => reload(config, socket),
        Command::Upgrade {
            config,
            binary,
            without_kernel,
            log,
        } => upgrade(&config, binary, without_kernel, log),
        Command::CheckConfig { file } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok ({} services, {} pools, {} back-ends)",
                file.display(),
                cfg.services.len(),
                cfg.pools.len(),
                cfg.backends().count()
            );
            Ok(())
        }
        Command::Maps { pins, json, socket } => {
            let socket = match (socket, &pins.config) {
                (Some(s), _) => Some(s),
                (None, Some(cfg)) => Some(Config::load(cfg)?.ha.control_socket),
                (None, None) => None,
            };
            let dir = pins.resolve()?;
            let snapshot = Snapshot::read(&Tables::from_pins(&dir)?)?;
            // The version is the daemon's to say; the maps do not record it.
            let status = socket.map(|s| status(&s));
            if json {
                let mut value = serde_json::to_value(&snapshot)?;
                if let (Some(Ok(st)), Some(map)) = (&status, value.as_object_mut()) {
                    map.insert("version".into(), st.version.clone().into());
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                match &status {
                    Some(Ok(st)) => println!(
                        "front-end {} (pid {}), configuration version {}",
                        st.frontend, st.pid, st.version
                    ),
                    Some(Err(e)) => println!("configuration version unknown: {e:#}"),
                    None => {}
                }
                print!("{}", snapshot.render());
            }
            Ok(())
        }
        Command::Agent {
            listen,
            mta,
            mta_config,
            spool,
            state_file,
            key_file,
            insecure_no_key: _,
            maillog,
            manager,
            ca,
            cert,
            key: cert_key,
            state_dir,
        } => {
            // clap guarantees a key file unless --insecure-no-key was given.
            let key = key_file
                .map(|f| robustifier::agent_wire::AgentKey::from_file(&f))
                .transpose()?;
            let o = robustifier::agent::Options {
                mta,
                mta_config,
                spool,
                state_file,
                key,
                state_dir,
            };
            // clap guarantees the manager's connection with --maillog.
            let ship = match (maillog, manager, ca, cert, cert_key) {
                (Some(maillog), Some(manager), Some(ca), Some(cert), Some(key)) => {
                    Some(robustifier::agent::maillog::ShipOptions {
                        manager,
                        ca,
                        cert,
                        key,
                        maillog,
                        mta,
                    })
                }
                _ => None,
            };
            tokio::runtime::Runtime::new()?.block_on(async move {
                let stop = tokio_util::sync::CancellationToken::new();
                if let Some(ship) = ship {
                    tokio::spawn(robustifier::agent::maillog::ship(ship, stop.clone()));
                }
                let served = robustifier::agent::serve(listen, o).await;
                stop.cancel();
                served
            })?;
            Ok(())
        }
        Command::Ha {
            command,
            socket,
            config,
        } => ha(command, socket, config),
        Command::Backend {
            command,
            socket,
            config,
        } => {
            let path = control_path(socket, config.as_deref())?;
            let line = match command {
                BackendCommand::Drain { name } => format!("drain {name}"),
                BackendCommand::Undrain { name } => format!("undrain {name}"),
            };
            println!(
                "{}",
                control::request(&path, &line, Duration::from_secs(30))?
            );
            Ok(())
        }
        Command::Queue {
            command: QueueCommand::Status { domain, json },
            socket,
            config,
        } => {
            let path = control_path(socket, config.as_deref())?;
            let line = domain.map_or("queue".to_owned(), |d| format!("queue {d}"));
            // The front-end waits for its agents up to its own bound.
            let text = control::request(&path, &line, Duration::from_secs(40))?;
            let status: robustifier::frontend::queue::QueueStatus = serde_json::from_str(&text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", robustifier::frontend::queue::render(&status));
            }
            Ok(())
        }
        Command::Queue {
            command:
                QueueCommand::Move {
                    domain,
                    to,
                    wait,
                    json,
                },
            socket,
            config,
        } => {
            let path = control_path(socket, config.as_deref())?;
            queue_move(&path, &domain, &to, wait, json)
        }
        Command::Queue {
            command: QueueCommand::Moves { domain, to, json },
            socket,
            config,
        } => {
            let path = control_path(socket, config.as_deref())?;
            let line = format!("queue moves {domain} {}", to.unwrap_or_default());
            // The front-end waits for its agents up to its own bound.
            let text = control::request(&path, line.trim_end(), Duration::from_secs(40))?;
            print_move(&serde_json::from_str(&text)?, json)
        }
        Command::Route {
            command,
            socket,
            config,
        } => {
            let path = control_path(socket, config.as_deref())?;
            route(&path, command)
        }
        Command::Alarms {
            socket,
            config,
            json,
        } => {
            let path = control_path(socket, config.as_deref())?;
            let text = control::request(&path, "alarms", Duration::from_secs(5))?;
            let report: robustifier::events::Report = serde_json::from_str(&text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", robustifier::events::render(&report));
            }
            Ok(())
        }
        Command::Stats {
            socket,
            config,
            since,
            json,
        } => {
            let path = control_path(socket, config.as_deref())?;
            let mut since = since;
            let mut minutes: Vec<robustifier::stats::Minute> = Vec::new();
            // The front-end answers a bounded batch: ask on until it has no more.
            loop {
                let line = since.map_or("stats".to_owned(), |m| format!("stats {m}"));
                let text = control::request(&path, &line, Duration::from_secs(5))?;
                let batch: Vec<robustifier::stats::Minute> = serde_json::from_str(&text)?;
                let full = batch.len() >= robustifier::stats::MINUTES_PER_REQUEST;
                since = batch.last().map(|m| m.minute).or(since);
                minutes.extend(batch);
                if !full {
                    break;
                }
            }
            if json {
                for m in &minutes {
                    println!("{}", serde_json::to_string(m)?);
                }
            } else {
                print!("{}", robustifier::stats::render(&minutes));
            }
            Ok(())
        }
        Command::Manager {
            listen,
            state_dir,
            ca,
            cert,
            key,
            render_dir,
            metrics_listen,
            metrics_token_file,
            metrics_insecure_no_auth,
            web_listen,
            stats_days,
        } => {
            let metrics = match (metrics_listen, metrics_token_file, metrics_insecure_no_auth) {
                (None, _, _) => None,
                (Some(a), Some(f), _) => {
                    Some((a, Some(robustifier::control::http::Token::from_file(&f)?)))
                }
                (Some(a), None, true) => Some((a, None)),
                (Some(_), None, false) => anyhow::bail!(
                    "--metrics-listen needs --metrics-token-file (or --metrics-insecure-no-auth)"
                ),
            };
            let o = robustifier::manager::server::Options {
                listen,
                state_dir,
                ca,
                cert,
                key,
                render_dir,
                metrics,
                web: web_listen,
                stats_days,
            };
            until_signal(|stop| async move {
                robustifier::manager::server::serve(o, stop, None)
                    .await
                    .map_err(Into::into)
            })
        }
        Command::Member {
            manager,
            ca,
            cert,
            key,
            state_dir,
            socket,
            max_retry_ms,
            alarm_after_ms,
        } => {
            let o = robustifier::manager::member::Options {
                manager,
                ca,
                cert,
                key,
                state_dir,
                control_socket: socket,
                max_retry: Duration::from_millis(max_retry_ms.max(100)),
                alarm_after: Duration::from_millis(alarm_after_ms),
            };
            until_signal(|stop| async move {
                robustifier::manager::member::run(o, stop)
                    .await
                    .map_err(Into::into)
            })
        }
        Command::Cluster {
            command,
            connection,
        } => robustifier::manager::cli::run(command, connection),
        Command::Unload { pins } => {
            let dir = pins.resolve()?;
            let removed = remove_pins(&dir)?;
            println!(
                "removed {} pinned maps from {}",
                removed.len(),
                dir.display()
            );
            Ok(())
        }
        Command::InstallUpdate { dir, installer } => {
            let r = robustifier::install_update::run(&dir, &installer)?;
            println!("{}", serde_json::to_string(&r)?);
            anyhow::ensure!(
                r.ok,
                "update to {} not installed: {}",
                r.version,
                r.error.unwrap_or_default()
            );
            Ok(())
        }
        Command::ReloadOrUpgrade {
            config,
            pid,
            without_kernel,
        } => reload_or_upgrade(&config, pid, without_kernel),
        Command::Manpages { dir } => manpages(&dir),
    }
}

/// Runs `serve` on a runtime until it ends or SIGTERM/SIGINT cancels its token.
fn until_signal<F, Fut>(serve: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    tokio::runtime::Runtime::new()?.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let stop = tokio_util::sync::CancellationToken::new();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let token = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            robustifier::notify::stopping();
            token.cancel();
        });
        serve(stop).await
    })
}

/// The control socket: the one given, the configuration's, or the only one here.
fn control_path(socket: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match (socket, config) {
        (Some(p), _) => p,
        (None, Some(cfg)) => Config::load(cfg)?.ha.control_socket,
        (None, None) => {
            let found: Vec<PathBuf> = std::fs::read_dir(robustifier::config::vrrp::CONTROL_DIR)
                .map(|d| {
                    d.filter_map(Result::ok)
                        .map(|e| e.path().join("control.sock"))
                        .filter(|p| p.exists())
                        .collect()
                })
                .unwrap_or_default();
            match found.as_slice() {
                [one] => one.clone(),
                [] => anyhow::bail!(
                    "no control socket under {}; pass --socket or --config",
                    robustifier::config::vrrp::CONTROL_DIR
                ),
                _ => anyhow::bail!("several front-ends run here; pass --socket or --config"),
            }
        }
    })
}

fn status(path: &Path) -> anyhow::Result<StatusReport> {
    let text = control::request(path, "status", Duration::from_secs(5))?;
    Ok(serde_json::from_str(&text)?)
}

fn reload(config: Option<PathBuf>, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let path = control_path(socket, config.as_deref())?;
    let line = match &config {
        Some(file) => {
            let file = std::fs::canonicalize(file)?;
            let text = file
                .to_str()
                .filter(|t| !t.contains('\n'))
                .ok_or_else(|| anyhow::anyhow!("{}: not a usable path", file.display()))?;
            format!("reload {text}")
        }
        None => "reload".to_owned(),
    };
    // A reload builds everything before it applies anything; a slow certificate or map
    // file read is part of it.
    let text = control::request(&path, &line, Duration::from_secs(120))?;
    let r: robustifier::frontend::Reloaded = serde_json::from_str(&text)?;
    println!("applied: version {} ({})", r.version, r.summary);
    for what in &r.restart_needed {
        println!("takes a restart: {what}");
    }
    Ok(())
}

fn upgrade(
    config: &Path,
    binary: Option<PathBuf>,
    without_kernel: bool,
    log: Option<PathBuf>,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let path = Config::load(config)?.ha.control_socket;
    let before =
        status(&path).map_err(|e| anyhow::anyhow!("no running front-end to upgrade: {e:#}"))?;
    let binary = match binary {
        Some(b) => b,
        None => std::env::current_exe()?,
    };
    let mut cmd = std::process::Command::new(&binary);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--take-over");
    if without_kernel {
        cmd.arg("--without-kernel");
    }
    // Its own process group: a signal to this command's terminal is not for the daemon.
    cmd.stdin(std::process::Stdio::null()).process_group(0);
    // systemd's watchdog variables name this command's pid: without WATCHDOG_PID the new
    // process takes WATCHDOG_USEC as its own, and feeds the watchdog once it is the main
    // process.
    cmd.env_remove("WATCHDOG_PID");
    // systemd sets the watchdog variables for the main process only, not for ExecReload,
    // which runs this command: the interval then comes from the running front-end's own
    // environment (readable with the CAP_SYS_PTRACE ExecReload keeps), so that the new
    // main process feeds the watchdog as the old one did.
    if std::env::var_os("WATCHDOG_USEC").is_none()
        && let Some(usec) = environ_var(before.pid, "WATCHDOG_USEC")
    {
        cmd.env("WATCHDOG_USEC", usec);
    }
    if let Some(log) = &log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(exit) = child.try_wait()? {
            anyhow::bail!(
                "the new process (pid {pid}) ended before it served: {exit}; the front-end (pid {}) serves on",
                before.pid
            );
        }
        if let Ok(now) = status(&path)
            && now.pid == pid
        {
            println!(
                "upgraded: pid {} -> pid {pid} ({}), configuration version {}; pid {} drains and exits",
                before.pid,
                binary.display(),
                now.version,
                before.pid
            );
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the new process (pid {pid}) did not serve within 120 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `robustifier reload-or-upgrade`: after a package upgrade the running process still
/// executes the replaced file (same path, another inode): then the upgrade; else a reload.
/// `NAME`'s value in the environment process `pid` started with, if readable.
fn environ_var(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|kv| {
        let value = kv.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        Some(String::from_utf8_lossy(value).into_owned())
    })
}

fn reload_or_upgrade(config: &Path, pid: Option<u32>, without_kernel: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let pid = match pid {
        Some(p) => p,
        None => status(&Config::load(config)?.ha.control_socket)?.pid,
    };
    let installed = std::env::current_exe()?;
    // The link resolves to the running image even once its file is deleted.
    let running = std::fs::metadata(format!("/proc/{pid}/exe"))
        .map_err(|e| anyhow::anyhow!("the front-end's binary (/proc/{pid}/exe): {e}"))?;
    let now = std::fs::metadata(&installed)?;
    if (running.dev(), running.ino()) == (now.dev(), now.ino()) {
        reload(Some(config.to_owned()), None)
    } else {
        println!(
            "pid {pid} runs a replaced binary: upgrading to {}",
            installed.display()
        );
        upgrade(config, Some(installed), without_kernel, None)
    }
}

/// `robustifier manpages DIR`: one page for the command and one per visible subcommand.
fn manpages(dir: &Path) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir)?;
    let top = Cli::command().name("robustifier");
    let write = |cmd: clap::Command, name: &str| -> anyhow::Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).section("8").render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.8")), page)?;
        Ok(())
    };
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("robustifier-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("robustifier {}", sub.get_name()));
        write(page, &name)?;
    }
    write(top.clone(), "robustifier")?;
    Ok(())
}

fn ha(command: HaCommand, socket: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let path = control_path(socket, config.as_deref())?;
    match command {
        HaCommand::Status { json } => {
            let report = status(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render(&report));
            }
        }
        // A release waits for the drain, which the configuration bounds by a day.
        HaCommand::Release { vrid } => {
            println!(
                "{}",
                control::request(
                    &path,
                    &format!("release {vrid}"),
                    Duration::from_secs(86_460)
                )?
            );
        }
        HaCommand::Resume { vrid } => {
            println!(
                "{}",
                control::request(&path, &format!("resume {vrid}"), Duration::from_secs(30))?
            );
        }
    }
    Ok(())
}

/// `robustifier queue move`: starts the move, then with `wait` asks for its progress every
/// second until every source is done or the time is up.
/// `robustifier route ...` over the control socket.
fn route(path: &Path, command: RouteCommand) -> anyhow::Result<()> {
    use robustifier::frontend::route_lookup;
    match command {
        RouteCommand::Lookup {
            key,
            service,
            user,
            fresh,
            json,
        } => {
            let mut line = format!("route lookup {service} {key}");
            if user {
                line.push_str(" user");
            }
            if fresh {
                line.push_str(" fresh");
            }
            // The front-end bounds the lookup by the directory's own timeout.
            let text = control::request(path, &line, Duration::from_secs(40))?;
            let answer: route_lookup::RouteAnswer = serde_json::from_str(&text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                print!("{}", route_lookup::render(&answer));
            }
        }
        RouteCommand::Flush { directory } => {
            let line = directory.map_or("route flush".to_owned(), |d| format!("route flush {d}"));
            let text = control::request(path, &line, Duration::from_secs(5))?;
            let flushed: Vec<String> = serde_json::from_str(&text)?;
            println!("flushed: {}", flushed.join(", "));
        }
        RouteCommand::Directories { json } => {
            let text = control::request(path, "route directories", Duration::from_secs(5))?;
            let stats: Vec<route_lookup::DirectoryStats> = serde_json::from_str(&text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", route_lookup::render_stats(&stats));
            }
        }
    }
    Ok(())
}

fn queue_move(
    path: &std::path::Path,
    domain: &str,
    pool: &str,
    wait: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    use robustifier::frontend::queue_move::MoveReport;
    // The front-end waits for its agents up to its own bound.
    let ask = |status: bool| -> anyhow::Result<MoveReport> {
        let line = format!(
            "queue move {domain} {pool}{}",
            if status { " status" } else { "" }
        );
        let text = control::request(path, &line, Duration::from_secs(40))?;
        Ok(serde_json::from_str(&text)?)
    };
    let mut report = ask(false)?;
    if let Some(secs) = wait {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while !report.settled() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_secs(1));
            report = ask(true)?;
        }
    }
    print_move(&report, json)?;
    let not_done = report.not_done();
    if wait.is_some() && !not_done.is_empty() {
        anyhow::bail!(
            "the move of {domain} is not done on: {}",
            not_done.join(", ")
        );
    }
    Ok(())
}

fn print_move(
    report: &robustifier::frontend::queue_move::MoveReport,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", robustifier::frontend::queue_move::render(report));
    }
    Ok(())
}
