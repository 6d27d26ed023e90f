//! `cargo xtask lab up|down|status`: the lab topology under the fixed prefix `rblab`, left
//! running between commands for interactive work. Tests build their own labs with unique
//! prefixes from the same code (`robustifier_lab::Lab`).

use robustifier_lab::{Lab, Plan, netns, topology};

pub const PREFIX: &str = "rblab";

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Action {
    Up,
    Down,
    Status,
}

pub fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Up => {
            if netns::list(&format!("{PREFIX}-")).is_empty() {
                Lab::up(PREFIX, Plan::FULL)?.persist();
                println!("lab: up");
            } else {
                println!("lab: already up");
            }
            status()
        }
        Action::Down => {
            let removed = down(&format!("{PREFIX}-"));
            println!("lab: removed {} namespaces", removed.len());
            Ok(())
        }
        Action::Status => status(),
    }
}

/// Removes a lab's namespaces and pin directories by prefix.
pub fn down(prefix: &str) -> Vec<String> {
    let removed = topology::sweep(&format!("{prefix}-"));
    if let Ok(dir) = std::fs::read_dir("/sys/fs/bpf/robustifier") {
        for e in dir.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{prefix}-"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    removed
}

fn status() -> anyhow::Result<()> {
    let names = netns::list(&format!("{PREFIX}-"));
    if names.is_empty() {
        println!("lab: down");
        return Ok(());
    }
    for n in names {
        let ns = netns::Netns { name: n.clone() };
        let addrs = ns
            .ip(&["-br", "addr"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        println!("{n}");
        for line in addrs
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("lo "))
        {
            println!("    {line}");
        }
    }
    Ok(())
}
