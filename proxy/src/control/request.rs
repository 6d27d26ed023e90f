//! The requests of the control socket's line protocol, parsed once.

use std::path::PathBuf;

/// One request line, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    /// The active alarms and the recent events.
    Alarms,
    /// The kept events after a sequence number (a member ships them to the manager).
    Events(u64),
    /// The kept minutes of statistics after a unix minute (none: from the oldest).
    Stats(Option<u64>),
    /// The front-end's member reached (`None`) or lost (the reason) the cluster manager.
    Manager(Option<String>),
    /// Apply the configuration file again, or this one (which then becomes the file).
    Reload {
        file: Option<PathBuf>,
    },
    Release(u8),
    Resume(u8),
    /// A successor process asks to take over (binary upgrade).
    HandOver,
    /// The operator drains (`drain: true`) or undrains back-end `backend`, by its
    /// configured name, in every pool that has it.
    Drain {
        backend: String,
        drain: bool,
    },
    /// The mail queue per destination domain from every back-end's agent, for one domain
    /// (lowercased) or all.
    Queue(Option<String>),
    /// Hand a domain pattern's queued mail over to a pool (`status_only`: report the move
    /// without starting one): `queue move DOMAIN POOL [status]`; `queue moves DOMAIN
    /// [POOL]` is the status only, and an empty `pool` there means the pattern's
    /// `[[domain_queue]]` pool.
    QueueMove {
        domain: String,
        pool: String,
        status_only: bool,
    },
    /// How a service routes `key` now, as its sessions would (`user`: a login name, else
    /// an SMTP recipient), with the directory's own answer; `fresh` asks the directory
    /// even when its cache holds the key.
    RouteLookup {
        service: String,
        key: String,
        user: bool,
        fresh: bool,
    },
    /// Empty the cache of one directory, or of every one.
    RouteFlush(Option<String>),
    /// Each directory's counters.
    Directories,
}

/// The longest key `route lookup` takes: an SMTP path's longest address (RFC 5321 4.5.3.1).
const MAX_ROUTE_KEY: usize = 320;

impl Request {
    /// The request in `line` (without its newline), or the reason it is refused.
    pub fn parse(line: &str) -> Result<Request, String> {
        let line = line.trim();
        let (verb, rest) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((verb, rest)) => (verb, rest.trim()),
            None => (line, ""),
        };
        let vrid = |rest: &str| -> Result<u8, String> {
            if rest.is_empty() {
                return Err(format!("{verb} needs a VRID"));
            }
            if rest.split_ascii_whitespace().count() > 1 {
                return Err("too many arguments".to_owned());
            }
            match rest.parse::<u8>() {
                Ok(v) if v > 0 => Ok(v),
                _ => Err(format!("{rest:?} is not a VRID (1..=255)")),
            }
        };
        match verb {
            "status" | "handover" | "alarms" if !rest.is_empty() => {
                Err(format!("{verb} takes no argument"))
            }
            "status" => Ok(Request::Status),
            "alarms" => Ok(Request::Alarms),
            "manager" => match rest.split_once(' ').unwrap_or((rest, "")) {
                ("up", "") => Ok(Request::Manager(None)),
                ("down", why) if !why.is_empty() && why.len() <= 500 => {
                    Ok(Request::Manager(Some(why.to_owned())))
                }
                _ => Err("manager takes `up` or `down REASON` (at most 500 characters)".to_owned()),
            },
            "events" => rest
                .parse::<u64>()
                .map(Request::Events)
                .map_err(|_| format!("events takes a sequence number, not {rest:?}")),
            "stats" if rest.is_empty() => Ok(Request::Stats(None)),
            "stats" => rest
                .parse::<u64>()
                .map(|m| Request::Stats(Some(m)))
                .map_err(|_| format!("stats takes a unix minute, not {rest:?}")),
            "handover" => Ok(Request::HandOver),
            "reload" if rest.is_empty() => Ok(Request::Reload { file: None }),
            "reload" => {
                // The daemon runs elsewhere (another working directory, another user):
                // a relative path would name another file there.
                let file = PathBuf::from(rest);
                if !file.is_absolute() || rest.chars().any(char::is_control) {
                    return Err(format!("reload takes an absolute path, not {rest:?}"));
                }
                Ok(Request::Reload { file: Some(file) })
            }
            "drain" | "undrain" => {
                if rest.is_empty() {
                    return Err(format!("{verb} needs a back-end name"));
                }
                if rest.split_ascii_whitespace().count() > 1 {
                    return Err("too many arguments".to_owned());
                }
                // Names come from the configuration; anything with a control character
                // could not be one, and would garble the log line that names it.
                if rest.chars().any(char::is_control) {
                    return Err(format!("{rest:?} is not a back-end name"));
                }
                Ok(Request::Drain {
                    backend: rest.to_owned(),
                    drain: verb == "drain",
                })
            }
            "queue" if rest == "move" || rest.starts_with("move ") => {
                let words: Vec<&str> = rest.split_ascii_whitespace().skip(1).collect();
                let (domain, pool, status_only) = match words[..] {
                    [d, p] => (d, p, false),
                    [d, p, "status"] => (d, p, true),
                    _ => return Err("queue move takes DOMAIN POOL [status]".to_owned()),
                };
                // The front-end checks the pattern and the pool against its configuration;
                // here only what would garble the reply or the log.
                if domain.len() > 256 || domain.chars().any(|c| c.is_control() || c == '@') {
                    return Err(format!("{domain:?} is not a domain"));
                }
                if pool.chars().any(char::is_control) {
                    return Err(format!("{pool:?} is not a pool name"));
                }
                Ok(Request::QueueMove {
                    domain: domain.to_owned(),
                    pool: pool.to_owned(),
                    status_only,
                })
            }
            "queue" if rest == "moves" || rest.starts_with("moves ") => {
                let words: Vec<&str> = rest.split_ascii_whitespace().skip(1).collect();
                let (domain, pool) = match words[..] {
                    [d] => (d, ""),
                    [d, p] => (d, p),
                    _ => return Err("queue moves takes DOMAIN [POOL]".to_owned()),
                };
                if domain.len() > 256 || domain.chars().any(|c| c.is_control() || c == '@') {
                    return Err(format!("{domain:?} is not a domain"));
                }
                if pool.chars().any(char::is_control) {
                    return Err(format!("{pool:?} is not a pool name"));
                }
                Ok(Request::QueueMove {
                    domain: domain.to_owned(),
                    pool: pool.to_owned(),
                    status_only: true,
                })
            }
            "queue" => {
                if rest.split_ascii_whitespace().count() > 1 {
                    return Err("too many arguments".to_owned());
                }
                // A domain is printable and short; anything else would garble the reply.
                if rest.len() > 255 || rest.chars().any(|c| c.is_control() || c == '@') {
                    return Err(format!("{rest:?} is not a domain"));
                }
                Ok(Request::Queue(
                    (!rest.is_empty()).then(|| rest.trim_end_matches('.').to_lowercase()),
                ))
            }
            "route" => Self::route(rest),
            "release" => vrid(rest).map(Request::Release),
            "resume" => vrid(rest).map(Request::Resume),
            _ => Err(format!(
                "unknown request {verb:?} (status, alarms, events SEQ, stats [MINUTE], reload [FILE], release VRID, resume VRID, drain BACKEND, undrain BACKEND, queue [DOMAIN], queue move DOMAIN POOL [status], queue moves DOMAIN [POOL], route lookup SERVICE KEY [user] [fresh], route flush [DIRECTORY], route directories, handover)"
            )),
        }
    }
}

impl Request {
    /// `route lookup SERVICE KEY [user] [fresh]`, `route flush [DIRECTORY]`,
    /// `route directories`.
    fn route(rest: &str) -> Result<Request, String> {
        let words: Vec<&str> = rest.split_ascii_whitespace().collect();
        // Names and keys are printable and short; anything else would garble the reply
        // or the log line, and no configuration or mailbox can have it.
        let printable = |w: &str, max: usize| w.len() <= max && !w.chars().any(char::is_control);
        match words.split_first() {
            Some((&"lookup", args)) => {
                let usage = || "route lookup takes SERVICE KEY [user] [fresh]".to_owned();
                let [service, key, flags @ ..] = args else {
                    return Err(usage());
                };
                let (mut user, mut fresh) = (false, false);
                for f in flags {
                    match *f {
                        "user" if !user => user = true,
                        "fresh" if !fresh => fresh = true,
                        _ => return Err(usage()),
                    }
                }
                if !printable(service, 64) {
                    return Err(format!("{service:?} is not a service name"));
                }
                if !printable(key, MAX_ROUTE_KEY) {
                    return Err(format!(
                        "{key:?} is not a key (at most {MAX_ROUTE_KEY} printable octets)"
                    ));
                }
                Ok(Request::RouteLookup {
                    service: (*service).to_owned(),
                    key: (*key).to_owned(),
                    user,
                    fresh,
                })
            }
            Some((&"flush", [])) => Ok(Request::RouteFlush(None)),
            Some((&"flush", [name])) if printable(name, 64) => {
                Ok(Request::RouteFlush(Some((*name).to_owned())))
            }
            Some((&"flush", _)) => Err("route flush takes [DIRECTORY]".to_owned()),
            Some((&"directories", [])) => Ok(Request::Directories),
            _ => Err(
                "route takes lookup SERVICE KEY [user] [fresh], flush [DIRECTORY] or directories"
                    .to_owned(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_their_refusals() {
        let ok: &[(&str, Request)] = &[
            ("status", Request::Status),
            ("alarms", Request::Alarms),
            ("events 0", Request::Events(0)),
            ("manager up", Request::Manager(None)),
            (
                "manager down connection refused",
                Request::Manager(Some("connection refused".into())),
            ),
            ("events 42", Request::Events(42)),
            ("stats", Request::Stats(None)),
            ("stats 29410560", Request::Stats(Some(29_410_560))),
            ("  status  ", Request::Status),
            ("handover", Request::HandOver),
            ("reload", Request::Reload { file: None }),
            (
                "reload /etc/robustifier/new config.toml",
                Request::Reload {
                    file: Some("/etc/robustifier/new config.toml".into()),
                },
            ),
            ("release 51", Request::Release(51)),
            ("resume 255", Request::Resume(255)),
            (
                "drain mx1",
                Request::Drain {
                    backend: "mx1".into(),
                    drain: true,
                },
            ),
            (
                " undrain  store-2.example ",
                Request::Drain {
                    backend: "store-2.example".into(),
                    drain: false,
                },
            ),
            ("queue", Request::Queue(None)),
            (
                "queue Nowhere.Example.",
                Request::Queue(Some("nowhere.example".into())),
            ),
            (
                "queue move .Slow.Example slowq",
                Request::QueueMove {
                    domain: ".Slow.Example".into(),
                    pool: "slowq".into(),
                    status_only: false,
                },
            ),
            (
                "queue moves slow.example",
                Request::QueueMove {
                    domain: "slow.example".into(),
                    pool: String::new(),
                    status_only: true,
                },
            ),
            (
                "queue  move slow.example slowq status ",
                Request::QueueMove {
                    domain: "slow.example".into(),
                    pool: "slowq".into(),
                    status_only: true,
                },
            ),
            (
                "route lookup smtp Alice@Example.TEST",
                Request::RouteLookup {
                    service: "smtp".into(),
                    key: "Alice@Example.TEST".into(),
                    user: false,
                    fresh: false,
                },
            ),
            (
                "route lookup pop3 alice fresh user",
                Request::RouteLookup {
                    service: "pop3".into(),
                    key: "alice".into(),
                    user: true,
                    fresh: true,
                },
            ),
            ("route flush", Request::RouteFlush(None)),
            (
                "route flush users",
                Request::RouteFlush(Some("users".into())),
            ),
            ("route directories", Request::Directories),
        ];
        for (line, want) in ok {
            assert_eq!(Request::parse(line).as_ref(), Ok(want), "{line:?}");
        }
        let refused: &[(&str, &str)] = &[
            ("", "unknown request \"\""),
            ("reboot", "unknown request \"reboot\""),
            ("status now", "status takes no argument"),
            ("alarms all", "alarms takes no argument"),
            ("events", "events takes a sequence number"),
            ("manager", "manager takes `up` or `down REASON`"),
            ("manager down", "manager takes `up` or `down REASON`"),
            ("manager up now", "manager takes `up` or `down REASON`"),
            ("events -1", "events takes a sequence number"),
            ("stats now", "stats takes a unix minute"),
            ("stats 1 2", "stats takes a unix minute"),
            ("handover 1", "handover takes no argument"),
            ("release", "release needs a VRID"),
            ("resume", "resume needs a VRID"),
            ("release 0x33", "\"0x33\" is not a VRID"),
            ("release 300", "\"300\" is not a VRID"),
            ("release 0", "\"0\" is not a VRID"),
            ("release -1", "\"-1\" is not a VRID"),
            ("release 51 52", "too many arguments"),
            ("drain", "drain needs a back-end name"),
            ("undrain   ", "undrain needs a back-end name"),
            ("drain mx1 mx2", "too many arguments"),
            ("drain mx\u{7}1", r#""mx\u{7}1" is not a back-end name"#),
            ("Drain mx1", "unknown request \"Drain\""),
            ("reload etc/x.toml", "reload takes an absolute path"),
            ("queue a.example b.example", "too many arguments"),
            ("queue bob@a.example", "\"bob@a.example\" is not a domain"),
            (
                "queue a\u{7}.example",
                r#""a\u{7}.example" is not a domain"#,
            ),
            ("reload /etc/x\u{7}.toml", "reload takes an absolute path"),
            ("queue move", "queue move takes DOMAIN POOL [status]"),
            ("queue moves a b c", "queue moves takes DOMAIN [POOL]"),
            (
                "queue move slow.example",
                "queue move takes DOMAIN POOL [status]",
            ),
            (
                "queue move slow.example slowq now",
                "queue move takes DOMAIN POOL [status]",
            ),
            (
                "queue move a b status more",
                "queue move takes DOMAIN POOL [status]",
            ),
            (
                "queue move bob@slow.example slowq",
                "\"bob@slow.example\" is not a domain",
            ),
            ("route", "route takes lookup"),
            ("route lookup smtp", "route lookup takes SERVICE KEY"),
            (
                "route lookup smtp a@b fresh fresh",
                "route lookup takes SERVICE KEY",
            ),
            (
                "route lookup smtp a@b now",
                "route lookup takes SERVICE KEY",
            ),
            ("route lookup smtp a\u{7}@b", "\"a\\u{7}@b\" is not a key"),
            ("route flush a b", "route flush takes [DIRECTORY]"),
            ("route directories x", "route takes lookup"),
        ];
        for (line, want) in refused {
            let got = Request::parse(line).unwrap_err();
            assert!(got.starts_with(want), "{line:?}: {got}");
        }
    }
}
