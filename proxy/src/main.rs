//! The `robustifier` command: front-end daemon, map inspection, configuration check, HA
//! control.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use robustifier::{
    config::Config,
    datapath::{Snapshot, Tables, remove_pins},
};
use robustifier_common::PIN_DIR;

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
    },
    /// Validate a configuration file; exits non-zero with file, key and reason.
    CheckConfig { file: PathBuf },
    /// Print the pinned maps: counters, services, block list, back-end load records.
    Maps {
        #[command(flatten)]
        pins: PinArgs,
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
            robustifier::daemon::main(cfg, mode)
        }
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
        Command::Maps { pins, json } => {
            let dir = pins.resolve()?;
            let snapshot = Snapshot::read(&Tables::from_pins(&dir)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&snapshot)?);
            } else {
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
            };
            tokio::runtime::Runtime::new()?.block_on(robustifier::agent::serve(listen, o))?;
            Ok(())
        }
        Command::Ha {
            command,
            socket,
            config,
        } => ha(command, socket, config),
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
    }
}

fn ha(command: HaCommand, socket: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<()> {
    use robustifier::ha;
    let path = match (socket, config) {
        (Some(p), _) => p,
        (None, Some(cfg)) => Config::load(&cfg)?.ha.control_socket,
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
    };
    match command {
        HaCommand::Status { json } => {
            let text = ha::request(&path, "status", Duration::from_secs(5))?;
            let report: ha::StatusReport = serde_json::from_str(&text)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", ha::render(&report));
            }
        }
        // A release waits for the drain, which the configuration bounds by a day.
        HaCommand::Release { vrid } => {
            println!(
                "{}",
                ha::request(
                    &path,
                    &format!("release {vrid}"),
                    Duration::from_secs(86_460)
                )?
            );
        }
        HaCommand::Resume { vrid } => {
            println!(
                "{}",
                ha::request(&path, &format!("resume {vrid}"), Duration::from_secs(30))?
            );
        }
    }
    Ok(())
}
