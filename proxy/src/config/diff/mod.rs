//! What a reload cannot apply: the changes between the running configuration and a new
//! one that take a restart, named for the operator's log. A reload applies the back-ends
//! of running pools (added, removed, moved: see `health::board::Board::reconcile`); the
//! rest was built at startup: services bind sockets and register them with the kernel,
//! pools hold their TLS connectors and settings, and the front-end, flood, class, group
//! and VRRP sections live in maps and tasks set up once.

use super::{Backend, Config, Pool};

/// Each change that takes a restart, one line each, by name.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let sections: [(&str, String, String); 7] = [
        (
            "[frontend]",
            format!("{:?}", running.frontend),
            format!("{:?}", new.frontend),
        ),
        (
            "[tls]",
            format!("{:?}", running.tls),
            format!("{:?}", new.tls),
        ),
        (
            "[flood]",
            format!("{:?}", running.flood),
            format!("{:?}", new.flood),
        ),
        (
            "priority prefixes",
            format!("{:?}", running.priority_prefixes),
            format!("{:?}", new.priority_prefixes),
        ),
        (
            "[[group]]s",
            format!("{:?}", running.groups),
            format!("{:?}", new.groups),
        ),
        ("[ha]", format!("{:?}", running.ha), format!("{:?}", new.ha)),
        (
            "[[vrrp]]s",
            format!("{:?}", running.vrrp),
            format!("{:?}", new.vrrp),
        ),
    ];
    for (name, old, new) in sections {
        if old != new {
            out.push(format!("{name} changed"));
        }
    }
    for s in &new.services {
        match running.services.iter().find(|r| r.name == s.name) {
            None => out.push(format!("service {} is new (services bind sockets)", s.name)),
            Some(r) if format!("{r:?}") != format!("{s:?}") => {
                out.push(format!("service {} changed", s.name))
            }
            Some(_) => {}
        }
    }
    for r in &running.services {
        if !new.services.iter().any(|s| s.name == r.name) {
            out.push(format!("service {} removed (it serves until then)", r.name));
        }
    }
    for p in &new.pools {
        let Some(r) = running.pools.iter().find(|r| r.name == p.name) else {
            let names: Vec<&str> = p.backends.iter().map(|b| b.name.as_str()).collect();
            out.push(format!(
                "pool {} is new, so are its back-ends {} (pools take a restart)",
                p.name,
                names.join(", ")
            ));
            continue;
        };
        if settings(r) != settings(p) {
            out.push(format!("pool {} settings changed", p.name));
        }
        for b in &p.backends {
            let same = r
                .backends
                .iter()
                .find(|o| o.name == b.name && o.address == b.address);
            if let Some(o) = same
                && !same_settings(o, b)
            {
                out.push(format!(
                    "back-end {} weight, identity or agent changed",
                    b.name
                ));
            }
        }
    }
    for r in &running.pools {
        if !new.pools.iter().any(|p| p.name == r.name) {
            out.push(format!(
                "pool {} removed (its back-ends drain; the pool goes at the restart)",
                r.name
            ));
        }
    }
    out
}

/// A pool's settings, without its position and back-ends (those a reload applies).
fn settings(p: &Pool) -> String {
    format!(
        "{:?}",
        Pool {
            id: 0,
            backends: Vec::new(),
            ..p.clone()
        }
    )
}

fn same_settings(a: &Backend, b: &Backend) -> bool {
    (a.weight, a.identity, a.agent) == (b.weight, b.identity, b.agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        Config::parse(std::path::Path::new("t.toml"), text).unwrap()
    }

    const BASE: &str = "[frontend]\nname='f'\n[[service]]\nname='smtp'\nprotocol='smtp'\nport=25\npool='p'\n[[pool]]\nname='p'\nidentity='none'\nbackend=[{name='a',address='198.18.1.11:25'}]\n";

    #[test]
    fn backends_of_running_pools_need_no_restart() {
        let added = BASE.replace("}]", "},{name='b',address='198.18.1.12:25'}]");
        assert!(restart_needed(&cfg(BASE), &cfg(&added)).is_empty());
        let moved = BASE.replace("1.11", "1.21");
        assert!(restart_needed(&cfg(BASE), &cfg(&moved)).is_empty());
        assert!(restart_needed(&cfg(&added), &cfg(BASE)).is_empty());
    }

    #[test]
    fn pools_services_and_settings_are_named() {
        let new = format!(
            "{}[[pool]]\nname='q'\nidentity='none'\nbackend=[{{name='q1',address='198.18.2.11:25'}}]\n",
            BASE.replace("port=25", "port=2525")
                .replace("'198.18.1.11:25'}", "'198.18.1.11:25',weight=5}")
        );
        let got = restart_needed(&cfg(BASE), &cfg(&new));
        assert_eq!(
            got,
            [
                "service smtp changed",
                "back-end a weight, identity or agent changed",
                "pool q is new, so are its back-ends q1 (pools take a restart)",
            ]
        );
        let back = restart_needed(&cfg(&new), &cfg(BASE));
        assert!(
            back.iter()
                .any(|l| l == "pool q removed (its back-ends drain; the pool goes at the restart)"),
            "{back:?}"
        );
    }
}
