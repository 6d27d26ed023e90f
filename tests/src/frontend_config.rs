//! Front-end configuration text for lab tests, built from typed parts: the `[frontend]`
//! table, services, pools of back-ends and any further TOML (groups, `[ha]`, `[[vrrp]]`,
//! `[flood]`, ...). Each test states only what it is about; the rest is written the same
//! way everywhere.
//!
//! ```ignore
//! let cfg = FrontendConfig::new("fea", &lab.pin_dir(0))
//!     .service(Service::new("smtp", "smtp", 25).vips(&[VIP_SMTP.into()]).line("pool = \"mx\""))
//!     .pool(Pool::new("mx", "none").backend(Backend::new("be1", addr)))
//!     .build();
//! ```

use std::{fmt::Write as _, net::IpAddr, path::Path};

/// A whole front-end configuration.
#[derive(Clone, Debug)]
pub struct FrontendConfig {
    frontend: String,
    rest: String,
}

impl FrontendConfig {
    /// `[frontend]` with `name`, the lab's public interface `pub0` and `pin_dir`.
    pub fn new(name: &str, pin_dir: &Path) -> FrontendConfig {
        FrontendConfig {
            frontend: format!(
                "[frontend]\nname = \"{name}\"\ninterface = \"pub0\"\npin_dir = \"{}\"\n",
                pin_dir.display()
            ),
            rest: String::new(),
        }
    }

    /// A further key of the `[frontend]` table (`user = "robustifier"`, ...).
    pub fn frontend_line(mut self, line: &str) -> FrontendConfig {
        self.frontend.push_str(line);
        self.frontend.push('\n');
        self
    }

    /// Any TOML after what is there already (tables such as `[ha]`, `[flood]`,
    /// `[[group]]`, `[[vrrp]]`); empty text adds nothing.
    pub fn toml(mut self, text: &str) -> FrontendConfig {
        if !text.is_empty() {
            self.rest.push('\n');
            self.rest.push_str(text);
            if !text.ends_with('\n') {
                self.rest.push('\n');
            }
        }
        self
    }

    pub fn service(self, s: Service) -> FrontendConfig {
        let text = s.render();
        self.toml(&text)
    }

    pub fn pool(self, p: Pool) -> FrontendConfig {
        let text = p.render();
        self.toml(&text)
    }

    pub fn build(&self) -> String {
        format!("{}{}", self.frontend, self.rest)
    }
}

/// One `[[service]]`.
#[derive(Clone, Debug)]
pub struct Service {
    name: String,
    protocol: String,
    port: u16,
    vips: Vec<IpAddr>,
    lines: Vec<String>,
}

impl Service {
    pub fn new(name: &str, protocol: &str, port: u16) -> Service {
        Service {
            name: name.to_owned(),
            protocol: protocol.to_owned(),
            port,
            vips: Vec::new(),
            lines: Vec::new(),
        }
    }

    pub fn vips(mut self, vips: &[IpAddr]) -> Service {
        self.vips.extend_from_slice(vips);
        self
    }

    /// A further key (`pool = "mx"`, `tls = "starttls"`, ...); empty text adds nothing.
    pub fn line(mut self, line: &str) -> Service {
        if !line.is_empty() {
            self.lines.push(line.to_owned());
        }
        self
    }

    fn render(&self) -> String {
        let mut s = format!(
            "[[service]]\nname = \"{}\"\nprotocol = \"{}\"\nport = {}\n",
            self.name, self.protocol, self.port
        );
        if !self.vips.is_empty() {
            let vips: Vec<String> = self.vips.iter().map(|v| format!("\"{v}\"")).collect();
            let _ = writeln!(s, "vips = [{}]", vips.join(", "));
        }
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }
}

/// One back-end of a pool, with its agent's address if it has one.
#[derive(Clone, Debug)]
pub struct Backend {
    pub name: String,
    pub address: String,
    pub agent: Option<String>,
    /// `weight`; absent: the front-end's default.
    pub weight: Option<u32>,
}

impl Backend {
    pub fn new(name: &str, address: impl std::fmt::Display) -> Backend {
        Backend {
            name: name.to_owned(),
            address: address.to_string(),
            agent: None,
            weight: None,
        }
    }

    pub fn weight(mut self, weight: u32) -> Backend {
        self.weight = Some(weight);
        self
    }

    pub fn agent(mut self, address: impl std::fmt::Display) -> Backend {
        self.agent = Some(address.to_string());
        self
    }

    /// The inline table as it stands in the pool's `backend = [...]` list.
    pub fn render(&self) -> String {
        let agent = self
            .agent
            .as_ref()
            .map(|a| format!(", agent = \"{a}\""))
            .unwrap_or_default();
        let weight = self
            .weight
            .map(|w| format!(", weight = {w}"))
            .unwrap_or_default();
        format!(
            "{{ name = \"{}\", address = \"{}\"{agent}{weight} }}",
            self.name, self.address
        )
    }
}

/// One `[[pool]]`: its keys, its back-ends, then its sub-tables (`[pool.health]`,
/// `[pool.thresholds]`).
#[derive(Clone, Debug)]
pub struct Pool {
    name: String,
    identity: String,
    lines: Vec<String>,
    backends: Vec<Backend>,
    tables: Vec<String>,
}

impl Pool {
    /// A pool passing the client's identity by `identity` (`none`, `xclient`, `proxy`).
    pub fn new(name: &str, identity: &str) -> Pool {
        Pool {
            name: name.to_owned(),
            identity: identity.to_owned(),
            lines: Vec::new(),
            backends: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// A further key (`agent_key_file = "..."`, `tls = "starttls"`, ...).
    pub fn line(mut self, line: &str) -> Pool {
        if !line.is_empty() {
            self.lines.push(line.to_owned());
        }
        self
    }

    pub fn backend(mut self, b: Backend) -> Pool {
        self.backends.push(b);
        self
    }

    pub fn backends(mut self, bs: impl IntoIterator<Item = Backend>) -> Pool {
        self.backends.extend(bs);
        self
    }

    /// `[pool.health]` with `body` (one key a line).
    pub fn health(self, body: &str) -> Pool {
        self.table(&format!("[pool.health]\n{body}"))
    }

    /// `[pool.thresholds]` with `body` (one key a line).
    pub fn thresholds(self, body: &str) -> Pool {
        self.table(&format!("[pool.thresholds]\n{body}"))
    }

    /// Any sub-table text; empty text adds nothing.
    pub fn table(mut self, text: &str) -> Pool {
        if !text.is_empty() {
            self.tables.push(text.trim_end().to_owned());
        }
        self
    }

    fn render(&self) -> String {
        let mut s = format!(
            "[[pool]]\nname = \"{}\"\nidentity = \"{}\"\n",
            self.name, self.identity
        );
        for l in &self.lines {
            s.push_str(l);
            s.push('\n');
        }
        let list: Vec<String> = self.backends.iter().map(Backend::render).collect();
        let _ = writeln!(s, "backend = [{}]", list.join(", "));
        let mut tables = self.tables.clone();
        if self.backends.iter().any(|b| b.agent.is_some()) {
            host_wide_thresholds(&mut tables);
        }
        for t in &tables {
            s.push_str(t);
            s.push('\n');
        }
        s
    }
}

/// Thresholds of the keys an agent measures for the whole machine. The lab's back-ends
/// share the host's kernel and disk, so each agent reports the machine's load average and
/// disk use: on a busy machine (a VM test beside another test binary, builds) those pass
/// the defaults (run queue 8, disk 90 %) times regular mail's share, and regular mail
/// would be deflected with `421 4.3.2` whatever the test is about. A test that means one
/// of them sets it in its own `[pool.thresholds]`.
const HOST_WIDE_THRESHOLDS: [(&str, &str); 2] = [("run_queue", "64"), ("disk_percent", "100")];

/// Adds each of [`HOST_WIDE_THRESHOLDS`] the pool's `[pool.thresholds]` does not set (and
/// the table, if the pool has none).
fn host_wide_thresholds(tables: &mut Vec<String>) {
    const HEADER: &str = "[pool.thresholds]";
    let at = match tables.iter().position(|t| t.starts_with(HEADER)) {
        Some(at) => at,
        None => {
            tables.push(HEADER.to_owned());
            tables.len() - 1
        }
    };
    let table = &tables[at];
    let set = |key: &str| {
        table
            .lines()
            .any(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
    };
    let missing: String = HOST_WIDE_THRESHOLDS
        .iter()
        .filter(|(k, _)| !set(k))
        .map(|(k, v)| format!("\n{k} = {v}"))
        .collect();
    // Right under the header: the text may go on with another table.
    tables[at] = format!("{HEADER}{missing}{}", &table[HEADER.len()..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_agent() -> Backend {
        Backend::new("be1", "198.18.1.11:25").agent("198.18.1.11:7025")
    }

    #[test]
    fn a_pool_with_agents_ignores_the_host_wide_load_unless_it_sets_a_threshold() {
        let plain = Pool::new("mx", "none").backend(with_agent()).render();
        assert!(
            plain.ends_with("[pool.thresholds]\nrun_queue = 64\ndisk_percent = 100\n"),
            "{plain}"
        );
        let own = Pool::new("mx", "none")
            .backend(with_agent())
            .thresholds("mail_queue = 1\ndisk_percent = 90")
            .health("interval_ms = 200")
            .render();
        assert!(
            own.contains(
                "[pool.thresholds]\nrun_queue = 64\nmail_queue = 1\ndisk_percent = 90\n[pool.health]"
            ),
            "{own}"
        );
        assert!(!own.contains("disk_percent = 100"), "{own}");
        let config: toml::Value = toml::from_str(&own).unwrap();
        assert_eq!(
            config["pool"][0]["thresholds"]["run_queue"].as_integer(),
            Some(64)
        );
    }

    #[test]
    fn a_pool_without_agents_gets_no_thresholds() {
        let pool = Pool::new("mx", "none")
            .backend(Backend::new("be1", "198.18.1.11:25"))
            .render();
        assert!(!pool.contains("thresholds"), "{pool}");
    }
}
