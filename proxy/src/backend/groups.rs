//! User groups (premium, regular, bulk, ...): which group a session belongs to, by
//! recipient, recipient domain or client prefix, and the share of the thresholds it may use.

use std::{net::IpAddr, time::Duration};

use crate::{config::balance::Group, smtp::command::Address};

pub struct Groups {
    groups: Vec<Group>,
    /// The share of sessions that match no group: a member-less group's, else 1.0.
    pub default_share: f64,
    /// The admission wait of sessions that match no group: a member-less group's, if set.
    default_wait: Option<Duration>,
}

impl Groups {
    pub fn new(groups: Vec<Group>) -> Groups {
        let memberless = groups
            .iter()
            .find(|g| g.domains.is_empty() && g.recipients.is_empty() && g.clients.is_empty());
        let default_share = memberless.map_or(1.0, |g| g.share);
        let default_wait = memberless.and_then(|g| g.wait);
        Groups {
            groups,
            default_share,
            default_wait,
        }
    }

    /// The admission wait a group (by the name [`Groups::classify`] gave) sets, if any;
    /// `None` means the service's.
    pub fn wait(&self, group: &str) -> Option<Duration> {
        match self.groups.iter().find(|g| g.name == group) {
            Some(g) => g.wait,
            None => self.default_wait,
        }
    }

    /// The group of a session from `peer` for recipient (or user address) `rcpt`: an exact
    /// recipient first, then its domain, then the client's prefix.
    pub fn classify(&self, peer: IpAddr, rcpt: Option<&Address>) -> (&str, f64) {
        // The address is written out only for groups that list recipients.
        let addr = rcpt
            .filter(|_| self.groups.iter().any(|g| !g.recipients.is_empty()))
            .map(|a| a.to_string().to_ascii_lowercase());
        let domain = rcpt.and_then(|a| a.domain.as_deref());
        let by = |f: &dyn Fn(&Group) -> bool| self.groups.iter().find(|g| f(g));
        let found = addr
            .as_deref()
            .and_then(|a| by(&|g| g.recipients.iter().any(|r| r == a)))
            .or_else(|| domain.and_then(|d| by(&|g| g.domains.iter().any(|x| x == d))))
            .or_else(|| by(&|g| g.clients.iter().any(|n| n.contains(&peer.to_canonical()))));
        found.map_or(("default", self.default_share), |g| {
            (g.name.as_str(), g.share)
        })
    }

    /// The position of a group named by [`Groups::classify`] (the configured groups in
    /// order, then the sessions that match none): by the name's address first, as the name
    /// came from here, so counting a session compares no strings.
    pub fn position(&self, group: &str) -> usize {
        self.groups
            .iter()
            .position(|g| std::ptr::eq(g.name.as_str(), group))
            .or_else(|| self.groups.iter().position(|g| g.name == group))
            .unwrap_or(self.groups.len())
    }

    /// Whether shedding normal-class clients at connect can be right: only when no group
    /// above the default is defined by recipient or domain (such a recipient may arrive
    /// from any client, and must not be turned away before it is named).
    pub fn connect_shedding_safe(&self) -> bool {
        self.groups.iter().all(|g| {
            g.share <= self.default_share || (g.domains.is_empty() && g.recipients.is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Groups {
        let g =
            |name: &str, share, domains: &[&str], recipients: &[&str], clients: &[&str]| Group {
                name: name.into(),
                share,
                domains: domains.iter().map(|s| s.to_string()).collect(),
                recipients: recipients.iter().map(|s| s.to_string()).collect(),
                clients: clients.iter().map(|s| s.parse().unwrap()).collect(),
                wait: (share == 1.0).then_some(Duration::from_secs(5)),
            };
        Groups::new(vec![
            g(
                "premium",
                1.0,
                &["vip.example"],
                &["ceo@corp.example"],
                &["198.18.0.101/32"],
            ),
            g("bulk", 0.5, &["lists.example"], &[], &[]),
            g("regular", 0.8, &[], &[], &[]),
        ])
    }

    fn addr(s: &str) -> Address {
        let (l, d) = s.split_once('@').unwrap();
        Address {
            local: l.into(),
            domain: Some(d.into()),
        }
    }

    #[test]
    fn recipients_domains_and_clients_pick_the_group() {
        let g = groups();
        let client: IpAddr = "198.18.0.100".parse().unwrap();
        assert_eq!(
            g.classify(client, Some(&addr("ceo@corp.example"))),
            ("premium", 1.0)
        );
        assert_eq!(
            g.classify(client, Some(&addr("x@vip.example"))),
            ("premium", 1.0)
        );
        assert_eq!(
            g.classify(client, Some(&addr("x@lists.example"))),
            ("bulk", 0.5)
        );
        assert_eq!(
            g.classify(client, Some(&addr("x@corp.example"))),
            ("default", 0.8)
        );
        assert_eq!(
            g.classify("198.18.0.101".parse().unwrap(), None),
            ("premium", 1.0)
        );
        assert!(!g.connect_shedding_safe());
        assert_eq!(g.wait("premium"), Some(Duration::from_secs(5)));
        assert_eq!(g.wait("bulk"), None, "the service's wait");
        assert_eq!(g.wait("default"), None, "the member-less group's");
    }
}
