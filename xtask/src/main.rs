//! `cargo xtask <command>`: everything a fresh machine needs to build, run and test
//! Robustifier. Each command that needs prerequisites runs `setup` first, so nothing has to
//! be installed by hand.

mod bench;
mod demo;
mod fuzz;
mod image;
mod lab;
mod lanes;
mod package;
mod scratch;
mod setup;
mod soak;
mod test;
mod util;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent): nightly rust-src, bpf-linker,
    /// Debian packages; mount bpffs.
    Setup,
    /// Build, load, attach and pin on a real interface, then run in the foreground.
    BuildAndLoad {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        config: PathBuf,
    },
    /// The network lab of namespaces: up, down, status.
    Lab {
        #[arg(value_enum)]
        action: lab::Action,
    },
    /// Bring up a lab, run a front-end, send traffic through it, show the counters.
    Demo {
        /// Only this step, in a lab of its own (the relay lab's slow domain and its move;
        /// routing by LDAP).
        #[arg(long, value_parser = ["slow-domain", "directory"])]
        only: Option<String>,
    },
    /// The demo's cluster under steady mail and random chaos (crashes, failovers, cable
    /// pulls, reloads, attacks); fails when a message acknowledged with 250 is not in its
    /// Maildirs. Writes target/soak/*.json.
    Soak {
        /// How long mail is sent (chaos stops shortly before); retries and the drain add
        /// up to 3.5 minutes.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Legitimate SMTP clients sending at once (every fourth over IPv6).
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// Seed of the random choices (printed by every run).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Setup, formatting, clippy (user crates and eBPF crate), and the whole test suite
    /// with privileged tests required.
    Test {
        /// Only these steps, comma-separated (to time them alone; CI runs every step).
        #[arg(long, value_delimiter = ',', hide = true)]
        only: Vec<String>,
    },
    /// Build the libFuzzer targets of `fuzz/` (cargo-fuzz, nightly) and run each for a
    /// bounded time; fails with the reproducer's path if any target crashes.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (default: all of them).
        #[arg(long)]
        target: Option<String>,
    },
    /// Benchmarks side by side with HAProxy, nginx mail, keepalived and nftables; writes
    /// target/bench/report.json and report.md.
    Bench {
        /// Fewer repetitions and sessions (under 3 minutes).
        #[arg(long)]
        quick: bool,
        /// Each scenario once at tiny size: proves the harness works, figures mean nothing.
        #[arg(long)]
        smoke: bool,
        /// Only these scenarios (cost, slow, drop, memory, failover, bulk, overload, reload,
        /// propagation), comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Skip setup and the release build (use the existing target/release/robustifier).
        #[arg(long)]
        no_build: bool,
        /// Run nothing: compare two report.json files (earlier,later) and print where
        /// they agree within their spread.
        #[arg(
            long,
            value_delimiter = ',',
            num_args = 2,
            value_name = "EARLIER,LATER"
        )]
        compare: Vec<std::path::PathBuf>,
    },
    /// The bench's idle back-end: greets and holds every connection.
    #[command(hide = true)]
    BenchGreeter {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// The bench's slow directory: a TCP relay holding each answer for a while.
    #[command(hide = true)]
    BenchDelayRelay {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        upstream: std::net::SocketAddr,
        #[arg(long)]
        delay_ms: u64,
    },
    /// Build the Debian package (cargo-deb) into target/debian/ and print its path.
    Package {
        /// `dev` for tests and the VM image, `release` for operators.
        #[arg(long, default_value = "release", value_parser = ["dev", "release"])]
        profile: String,
    },
    /// The appliance: a Debian 12 disk image (GPT, UEFI) with the Robustifier package
    /// and the first boot from a seed disk; see README "The appliance image".
    Image {
        /// Seed file (TOML) to write as a seed disk next to the image (`<out>.seed.img`).
        #[arg(long)]
        seed: Option<PathBuf>,
        /// The disk image to write.
        #[arg(long, default_value = "target/image/robustifier.img")]
        out: PathBuf,
        /// Cargo profile of the packaged binary.
        #[arg(long, default_value = "release", value_parser = ["dev", "release"])]
        profile: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::BuildAndLoad { iface, config } => build_and_load(&iface, &config),
        Command::Lab { action } => lab::run(action),
        Command::Demo { only } => demo::run(only.as_deref()),
        Command::Soak {
            minutes,
            clients,
            seed,
        } => soak::run(&soak::Options {
            minutes,
            clients,
            seed,
            prepare: true,
        }),
        Command::Test { only } => test::run(&only),
        Command::Fuzz { seconds, target } => setup::run().and_then(|()| {
            fuzz::run(
                target.as_deref(),
                fuzz::Budget {
                    seconds,
                    runs: None,
                    optimized: true,
                },
            )
        }),
        Command::Bench {
            quick,
            smoke,
            only,
            no_build,
            compare,
        } => match compare.as_slice() {
            [earlier, later] => bench::compare(earlier, later),
            _ => bench::run(quick, smoke, &only, no_build),
        },
        Command::BenchGreeter { listen } => robustifier_bench::rivals::serve_greeter(listen),
        Command::BenchDelayRelay {
            listen,
            upstream,
            delay_ms,
        } => robustifier_bench::scenarios::lookups::serve_delay_relay(
            listen,
            upstream,
            std::time::Duration::from_millis(delay_ms),
        ),
        Command::Package { profile } => package::build(&profile).map(|_| ()),
        Command::Image { seed, out, profile } => {
            setup::run().and_then(|()| image::run(seed, &out, &profile).map(|_| ()))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn build_and_load(iface: &str, config: &std::path::Path) -> anyhow::Result<()> {
    setup::run()?;
    util::cargo(&["build", "--release", "-p", "robustifier"])?;
    let bin = util::root().join("target/release/robustifier");
    println!(
        "xtask: starting {} (Ctrl-C detaches the programs; maps stay pinned)",
        bin.display()
    );
    util::exec(
        std::process::Command::new(bin)
            .args(["run", "--iface", iface, "--config"])
            .arg(config),
    )
}
