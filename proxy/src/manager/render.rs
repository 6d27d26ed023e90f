//! One cluster configuration, rendered into each member's own configuration.
//!
//! A cluster configuration is a front-end configuration (the shared parts: services,
//! pools, routes, groups, thresholds, flood, virtual routers) plus a `[members.NAME]` table
//! per front-end holding what differs between them:
//!
//! ```toml
//! [members.fe1]
//! frontend = { interface = "eth0", pin_dir = "/sys/fs/bpf/robustifier" }
//! ha = { control_socket = "/run/robustifier/fe1/control.sock" }
//! vrrp = { 51 = { priority = 200 } }      # merged into the routers with that VRID
//! ```
//!
//! A member's configuration is the shared document with `frontend.name` set to the member's
//! name and its tables merged in, key by key. Only the keys that are a front-end's own
//! (`frontend`, `ha`, `tls`, and the routers' per-member keys) may differ: a member whose
//! services or pools differ from the others' would route the same mail differently
//! depending on which front-end holds the address.
//!
//! Every member's rendering is validated with the member's own rules ([`Config::parse`]),
//! as the file it will be on the member, so a text that any member would refuse is refused
//! for all, naming that member, the key and the reason. Paths in a cluster configuration
//! (certificates, maps, keys) should be absolute: they are checked on the manager and read
//! on every member.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use toml::{Table, Value};

use crate::config::{Config, ConfigError};

/// Keys a member may set for itself; any other is refused.
const MEMBER_KEYS: &[&str] = &["frontend", "ha", "tls", "vrrp"];
/// Keys of a virtual router that may differ per member.
const ROUTER_KEYS: &[&str] = &[
    "priority",
    "interface",
    "unicast_peers",
    "preempt",
    "preempt_delay_ms",
    "track",
];

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cluster configuration: {key}{}{reason}", if key.is_empty() { "" } else { ": " })]
    Text { key: String, reason: String },
    #[error("member {member} refuses it: {error}")]
    Member { member: String, error: ConfigError },
}

fn text_error(key: impl Into<String>, reason: impl Into<String>) -> RenderError {
    RenderError::Text {
        key: key.into(),
        reason: reason.into(),
    }
}

/// A parsed cluster configuration: the shared document and each member's own keys.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    shared: Table,
    members: BTreeMap<String, Table>,
}

/// One member's configuration: its text (what the member writes and loads) and the
/// validated result.
#[derive(Debug)]
pub struct Rendered {
    pub member: String,
    pub text: String,
    pub config: Config,
}

impl ClusterConfig {
    /// Parses `text` and checks the shape of `[members]`; does not validate the members'
    /// configurations ([`check`] does).
    pub fn parse(text: &str) -> Result<ClusterConfig, RenderError> {
        let mut shared: Table = text
            .parse()
            .map_err(|e: toml::de::Error| text_error("", first_line(e.message())))?;
        let members = match shared.remove("members") {
            Some(Value::Table(t)) => t,
            Some(_) => return Err(text_error("members", "must be a table of member tables")),
            None => {
                return Err(text_error(
                    "members",
                    "missing: a cluster configuration names its front-ends as [members.NAME]",
                ));
            }
        };
        if members.is_empty() {
            return Err(text_error("members", "names no member"));
        }
        let mut out = BTreeMap::new();
        for (name, value) in members {
            let key = format!("members.{name}");
            if !valid_name(&name) {
                return Err(text_error(
                    key,
                    "a member name is 1 to 64 of A-Z a-z 0-9 . _ - (it is the name in the member's certificate)",
                ));
            }
            let Value::Table(own) = value else {
                return Err(text_error(key, "must be a table"));
            };
            for (k, v) in &own {
                if !MEMBER_KEYS.contains(&k.as_str()) {
                    return Err(text_error(
                        format!("{key}.{k}"),
                        format!(
                            "not a per-member key (one of {}); shared keys are set once for all members",
                            MEMBER_KEYS.join(", ")
                        ),
                    ));
                }
                if !v.is_table() {
                    return Err(text_error(format!("{key}.{k}"), "must be a table"));
                }
            }
            out.insert(name, own);
        }
        Ok(ClusterConfig {
            shared,
            members: out,
        })
    }

    /// The member names, sorted.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// `member`'s configuration text.
    pub fn render(&self, member: &str) -> Result<String, RenderError> {
        let own = self.members.get(member).ok_or_else(|| {
            text_error(
                format!("members.{member}"),
                "no such member in this configuration",
            )
        })?;
        let mut doc = self.shared.clone();
        let frontend = table_entry(&mut doc, "frontend", "frontend")?;
        frontend.insert("name".into(), Value::String(member.to_owned()));
        for (k, v) in own {
            let key = format!("members.{member}.{k}");
            let Value::Table(t) = v else {
                return Err(text_error(key, "must be a table"));
            };
            if k == "vrrp" {
                merge_routers(&mut doc, t, &key)?;
            } else {
                let into = table_entry(&mut doc, k, &key)?;
                if k == "frontend" && t.contains_key("name") {
                    return Err(text_error(
                        format!("{key}.name"),
                        "a member's name is its key under [members]",
                    ));
                }
                merge(into, t);
            }
        }
        toml::to_string(&doc).map_err(|e| text_error("", e.to_string()))
    }
}

/// Renders `text` for every member and validates each as the file `dir/NAME.toml` would
/// be; the first refusal names its member.
pub fn check(text: &str, dir: &Path) -> Result<Vec<Rendered>, RenderError> {
    let cluster = ClusterConfig::parse(text)?;
    let mut out = Vec::new();
    for member in cluster.members() {
        let rendered = cluster.render(member)?;
        let config = Config::parse(&member_file(dir, member), &rendered).map_err(|error| {
            RenderError::Member {
                member: member.to_owned(),
                error,
            }
        })?;
        out.push(Rendered {
            member: member.to_owned(),
            text: rendered,
            config,
        });
    }
    Ok(out)
}

/// The file a member's configuration is validated as.
pub fn member_file(dir: &Path, member: &str) -> PathBuf {
    dir.join(format!("{member}.toml"))
}

/// A member, operator or cluster name: it becomes a file name and a certificate's name.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with('.')
}

fn table_entry<'a>(doc: &'a mut Table, k: &str, key: &str) -> Result<&'a mut Table, RenderError> {
    doc.entry(k)
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| text_error(key, "the shared value is not a table"))
}

/// `from` merged into `into`: tables key by key, anything else replaced.
fn merge(into: &mut Table, from: &Table) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A member's `vrrp = { VRID = { ... } }` merged into the shared routers by VRID.
fn merge_routers(doc: &mut Table, own: &Table, key: &str) -> Result<(), RenderError> {
    let routers = doc
        .get_mut("vrrp")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| text_error(key, "the shared configuration has no [[vrrp]] routers"))?;
    for (vrid, v) in own {
        let rkey = format!("{key}.{vrid}");
        let Value::Table(t) = v else {
            return Err(text_error(rkey, "must be a table"));
        };
        let wanted: i64 = vrid
            .parse()
            .map_err(|_| text_error(&rkey, "the key is a router's VRID (1 to 255)"))?;
        for k in t.keys() {
            if !ROUTER_KEYS.contains(&k.as_str()) {
                return Err(text_error(
                    format!("{rkey}.{k}"),
                    format!(
                        "not a per-member router key (one of {})",
                        ROUTER_KEYS.join(", ")
                    ),
                ));
            }
        }
        // The IPv4 and IPv6 routers of one VRID are separate routers; both take the keys.
        let mut found = false;
        for router in routers
            .iter_mut()
            .filter_map(Value::as_table_mut)
            .filter(|r| r.get("vrid").and_then(Value::as_integer) == Some(wanted))
        {
            merge(router, t);
            found = true;
        }
        if !found {
            return Err(text_error(rkey, "no shared [[vrrp]] router has this VRID"));
        }
    }
    Ok(())
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("invalid").to_owned()
}

#[cfg(test)]
mod tests;
