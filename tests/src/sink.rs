//! Postfix's smtp-sink as a scripted back-end for fault injection: slow greetings, drops
//! after DATA, refusals; every accepted message is dumped to a file so a test can count
//! where messages went.

use std::path::PathBuf;

use crate::{Lab, netns};

pub struct Sink {
    pub dir: PathBuf,
    pub addr: std::net::SocketAddr,
    pub name: String,
}

impl Sink {
    /// Starts `smtp-sink` on back-end `index` port 25 with extra options (`-W CONNECT:1`
    /// for a slow greeting, `-q .` to drop after the data, ...).
    pub fn start(lab: &mut Lab, index: usize, extra: &[&str]) -> anyhow::Result<Sink> {
        let be = &lab.backends[index];
        let name = format!("sink-{}", be.name);
        let dir = lab.log_dir.join(&name);
        std::fs::create_dir_all(&dir)?;
        // smtp-sink drops to an unprivileged user before writing dumps.
        netns::run(std::process::Command::new("chmod").arg("1777").arg(&dir))?;
        let addr = std::net::SocketAddr::new(be.v4.into(), 25);
        let ns = be.ns.clone();
        let template = format!("{}/%Y%m%d%H%M%S.", dir.display());
        // As root, smtp-sink must be told whose privileges to drop to.
        let mut args: Vec<String> = vec![
            "smtp-sink".into(),
            "-u".into(),
            "nobody".into(),
            "-d".into(),
            template,
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(addr.to_string());
        args.push("256".into());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.spawn(&ns, &name, &argv)?;
        crate::wait_port(&ns, addr)?;
        Ok(Sink { dir, addr, name })
    }

    /// Messages received so far.
    pub fn count(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().count())
            .unwrap_or(0)
    }

    /// Stops this sink (by pid, through the lab).
    pub fn stop(&self, lab: &mut Lab) {
        lab.daemons().retain(|d| d.name != self.name);
    }
}
