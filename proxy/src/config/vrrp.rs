//! Virtual-IP failover settings: the `[ha]` table and the `[[vrrp]]` virtual routers
//! as written ([`RawHa`], [`RawVrrp`]) and validated ([`Ha`], [`VirtualRouter`]).
//!
//! ```toml
//! [ha]
//! control_socket = "/run/robustifier/mx-a/control.sock"   # default: /run/robustifier/<frontend.name>/control.sock
//! drain_deadline_s = 30                                   # planned handoff: sessions may finish for this long
//!
//! [[vrrp]]
//! vrid = 51                    # 1..=255; one IPv4 and one IPv6 router may share a VRID
//! interface = "eth0"           # default: frontend.interface
//! priority = 150               # 1..=254, or 255 for the address owner
//! advert_interval_cs = 100     # centiseconds, 1..=4095
//! max_advert_interval_cs = 1000 # the longest master interval a backup adopts (default:
//!                               # 1000 = 10 s, or advert_interval_cs if that is longer)
//! preempt = true
//! preempt_delay_ms = 0
//! vips = ["198.18.0.25"]       # one family; "/len" optional (default /32 or /128)
//! unicast_peers = []           # empty: multicast to 224.0.0.18 / ff02::12; otherwise adverts
//!                              # go to these, and only theirs are heard
//! garp_count = 5               # gratuitous ARP / unsolicited NA on becoming master ...
//! garp_interval_ms = 1000      # ... this far apart
//! track = { listeners = 50, datapath = 50, interfaces = { int0 = 60 } }
//! ```
//!
//! `max_advert_interval_cs` bounds the Master_Adver_Interval a backup learns from the
//! master's adverts (RFC 5798 section 6.4.2 has it adopt whatever is advertised): adverts are
//! not authenticated, and one forged advert announcing 4095 cs would otherwise keep the
//! backups from taking over for over two minutes. A larger advertised interval is taken as
//! the bound. It may not be below the router's own interval: peers of one cluster advertise
//! alike, and a bound under that would shorten the wait for an honest master.
//!
//! Invariant: the values the state machine needs are parsed once, here, into the types of
//! [`crate::vrrp::types`] (VRID, priority, intervals, 1..=255 addresses of one family), so
//! [`VirtualRouter::state_config`] and `vrrp::Router::new` cannot fail; no VIP belongs to two
//! routers, and no two routers share (interface, VRID, family); tracking never applies to an
//! address owner, whose priority RFC 5798 section 5.2.4 pins at 255.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::vrrp::{
    self, Interval, Priority, VirtualAddresses, Vrid, state::DEFAULT_MAX_MASTER_INTERVAL,
};

/// Where the control socket lives unless `ha.control_socket` says otherwise.
pub const CONTROL_DIR: &str = "/run/robustifier";
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// The control socket of front-end `name` unless `ha.control_socket` says otherwise.
pub fn default_control_socket(name: &str) -> PathBuf {
    PathBuf::from(CONTROL_DIR).join(name).join("control.sock")
}
/// keepalived's habit: a burst of announcements spread over a few seconds, so a switch or
/// host that missed the first still learns the new master.
pub const DEFAULT_GARP_COUNT: u32 = 5;
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_secs(1);
const MAX_GARP_COUNT: u32 = 100;
const MAX_DELAY_MS: u64 = 3_600_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    /// Unix socket for `robustifier ha status|release|resume`.
    pub control_socket: Option<String>,
    /// How long a planned handoff (release, shutdown) lets sessions on the VIPs finish.
    pub drain_deadline_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVrrp {
    pub vrid: u32,
    pub interface: Option<String>,
    pub priority: Option<u32>,
    pub advert_interval_cs: Option<u32>,
    pub max_advert_interval_cs: Option<u32>,
    pub preempt: Option<bool>,
    pub preempt_delay_ms: Option<u64>,
    pub vips: Vec<String>,
    #[serde(default)]
    pub unicast_peers: Vec<String>,
    pub garp_count: Option<u32>,
    pub garp_interval_ms: Option<u64>,
    #[serde(default)]
    pub track: RawTrack,
}

/// Weights subtracted from the priority while a check fails.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrack {
    /// The proxy's accept loops are not all running.
    pub listeners: Option<u32>,
    /// The steering program is not attached.
    pub datapath: Option<u32>,
    /// A service of this front-end has no back-end that can take a session.
    pub backends: Option<u32>,
    /// Interface name -> weight, for an interface that is down (not up and running).
    #[serde(default)]
    pub interfaces: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ha {
    pub control_socket: PathBuf,
    pub drain_deadline: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualRouter {
    pub vrid: Vrid,
    pub interface: String,
    /// 255 = address owner, otherwise 1..=254.
    pub priority: Priority,
    pub advert_interval: Interval,
    /// The longest Master_Adver_Interval adopted from a master's adverts.
    pub max_advert_interval: Interval,
    pub preempt: bool,
    pub preempt_delay: Duration,
    /// The virtual addresses with the prefix length they are added with; one family.
    pub vips: Vec<IpNet>,
    /// The same addresses as adverts carry them (no prefix lengths).
    pub virtual_addresses: VirtualAddresses,
    /// Empty: adverts go to the multicast group, and any sender is heard. Otherwise adverts
    /// go to these, and adverts from any other source are discarded.
    pub unicast_peers: Vec<IpAddr>,
    /// Announcements on becoming master (at least 1: the one sent at once).
    pub garp_count: u32,
    pub garp_interval: Duration,
    pub track: Track,
}

impl VirtualRouter {
    pub fn ipv6(&self) -> bool {
        self.virtual_addresses.is_ipv6()
    }

    pub fn addresses(&self) -> Vec<IpAddr> {
        self.virtual_addresses.to_vec()
    }

    /// The state machine's configuration, sending from `primary` (an address of this
    /// router's family on its interface).
    pub fn state_config(&self, primary: IpAddr) -> vrrp::Config {
        vrrp::Config {
            vrid: self.vrid,
            priority: self.priority,
            advert_interval: self.advert_interval,
            max_master_interval: self.max_advert_interval,
            preempt: self.preempt,
            preempt_delay: self.preempt_delay,
            primary,
            addresses: self.virtual_addresses.clone(),
            peers: self.unicast_peers.clone(),
        }
    }

    pub fn family(&self) -> &'static str {
        if self.ipv6() { "ipv6" } else { "ipv4" }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Track {
    pub listeners: u8,
    pub datapath: u8,
    pub backends: u8,
    pub interfaces: Vec<(String, u8)>,
}

impl Track {
    pub fn is_empty(&self) -> bool {
        self.listeners == 0
            && self.datapath == 0
            && self.backends == 0
            && self.interfaces.is_empty()
    }
}

type Failure = (String, String);

/// Validates the `[ha]` table and the `[[vrrp]]` routers of front-end `frontend_name`,
/// whose `frontend.interface` is the default router interface.
pub fn validate(
    frontend_name: &str,
    frontend_interface: Option<&str>,
    ha: RawHa,
    routers: Vec<RawVrrp>,
) -> Result<(Ha, Vec<VirtualRouter>), Failure> {
    let control_socket = match ha.control_socket {
        Some(p) => {
            let path = PathBuf::from(&p);
            if !path.is_absolute() {
                return Err((
                    "ha.control_socket".into(),
                    "must be an absolute path".into(),
                ));
            }
            // sockaddr_un holds 108 bytes including the terminating zero.
            if p.len() > 107 {
                return Err((
                    "ha.control_socket".into(),
                    "longer than the 107 bytes a unix socket path may have".into(),
                ));
            }
            path
        }
        None => {
            if frontend_name.contains(['/', '\0']) || frontend_name.starts_with('.') {
                return Err((
                    "ha.control_socket".into(),
                    format!(
                        "frontend.name {frontend_name:?} cannot name a directory; set ha.control_socket"
                    ),
                ));
            }
            default_control_socket(frontend_name)
        }
    };
    let drain_deadline = match ha.drain_deadline_s {
        None => DEFAULT_DRAIN_DEADLINE,
        Some(s) if s <= 86_400 => Duration::from_secs(s),
        Some(_) => {
            return Err((
                "ha.drain_deadline_s".into(),
                "must be at most 86400 (a day)".into(),
            ));
        }
    };

    let mut out: Vec<VirtualRouter> = Vec::new();
    let mut instances = HashSet::new();
    let mut owners: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, raw) in routers.into_iter().enumerate() {
        let r = router(i, raw, frontend_interface)?;
        if !instances.insert((r.interface.clone(), r.vrid, r.ipv6())) {
            return Err((
                format!("vrrp[{i}].vrid"),
                format!(
                    "VRID {} ({}) is already configured on {}",
                    r.vrid,
                    r.family(),
                    r.interface
                ),
            ));
        }
        for (j, vip) in r.vips.iter().enumerate() {
            if let Some(other) = owners.insert(vip.addr(), i) {
                return Err((
                    format!("vrrp[{i}].vips[{j}]"),
                    format!("{} already belongs to vrrp[{other}]", vip.addr()),
                ));
            }
        }
        out.push(r);
    }
    Ok((
        Ha {
            control_socket,
            drain_deadline,
        },
        out,
    ))
}

fn router(
    i: usize,
    raw: RawVrrp,
    frontend_interface: Option<&str>,
) -> Result<VirtualRouter, Failure> {
    let key = |k: &str| format!("vrrp[{i}].{k}");
    let Some(vrid) = u8::try_from(raw.vrid).ok().and_then(Vrid::new) else {
        return Err((key("vrid"), format!("{} is outside 1..=255", raw.vrid)));
    };
    let interface = match raw.interface.as_deref().or(frontend_interface) {
        Some(name) => interface_name(name).map_err(|e| (key("interface"), e.to_string()))?,
        None => {
            return Err((
                key("interface"),
                "missing, and there is no frontend.interface to default to".into(),
            ));
        }
    };
    let priority = match raw.priority {
        None => Priority::DEFAULT,
        Some(0) => {
            return Err((
                key("priority"),
                "0 is reserved for a master resigning (RFC 5798 section 5.2.4); use 1..=254, or 255 for the address owner".into(),
            ));
        }
        Some(p) => u8::try_from(p)
            .ok()
            .and_then(Priority::new)
            .ok_or_else(|| {
                (
                    key("priority"),
                    format!("{p} is outside 1..=254 (255 for the address owner)"),
                )
            })?,
    };
    let interval = |k: &str, cs: Option<u32>| -> Result<Option<Interval>, Failure> {
        cs.map(|cs| {
            u16::try_from(cs)
                .ok()
                .and_then(Interval::from_cs)
                .ok_or_else(|| {
                    (
                        key(k),
                        format!("{cs} is outside 1..=4095 centiseconds (RFC 5798 section 5.2.7)"),
                    )
                })
        })
        .transpose()
    };
    let advert_interval =
        interval("advert_interval_cs", raw.advert_interval_cs)?.unwrap_or(Interval::DEFAULT);
    let max_advert_interval = match interval("max_advert_interval_cs", raw.max_advert_interval_cs)?
    {
        None => DEFAULT_MAX_MASTER_INTERVAL.max(advert_interval),
        Some(max) if max < advert_interval => {
            return Err((
                key("max_advert_interval_cs"),
                format!(
                    "{} is below advert_interval_cs {}: the peers' adverts would be cut short",
                    max.cs(),
                    advert_interval.cs()
                ),
            ));
        }
        Some(max) => max,
    };
    let preempt_delay_ms = raw.preempt_delay_ms.unwrap_or(0);
    if preempt_delay_ms > MAX_DELAY_MS {
        return Err((
            key("preempt_delay_ms"),
            format!("must be at most {MAX_DELAY_MS} (an hour)"),
        ));
    }

    if raw.vips.is_empty() {
        return Err((key("vips"), "at least one virtual address is needed".into()));
    }
    if raw.vips.len() > 255 {
        return Err((
            key("vips"),
            format!(
                "{} addresses; an advert carries at most 255",
                raw.vips.len()
            ),
        ));
    }
    let mut vips: Vec<IpNet> = Vec::new();
    for (j, v) in raw.vips.iter().enumerate() {
        let vkey = format!("vrrp[{i}].vips[{j}]");
        let net = v
            .parse::<IpNet>()
            .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                (
                    vkey.clone(),
                    format!("{v:?} is not an address (optionally with /prefix)"),
                )
            })?;
        let addr = net.addr();
        if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
            return Err((
                vkey,
                format!("{addr} cannot be a virtual address (unspecified, multicast or loopback)"),
            ));
        }
        if let Some(first) = vips.first()
            && first.addr().is_ipv6() != addr.is_ipv6()
        {
            return Err((
                vkey,
                format!(
                    "{addr} is not of the family of {}; one virtual router carries one family (RFC 5798 section 1), use another [[vrrp]] with the same VRID",
                    first.addr()
                ),
            ));
        }
        if vips.iter().any(|n| n.addr() == addr) {
            return Err((vkey, format!("{addr} is listed twice")));
        }
        vips.push(net);
    }
    let virtual_addresses = VirtualAddresses::new(vips.iter().map(IpNet::addr).collect())
        .map_err(|e| (key("vips"), e.to_string()))?;
    let ipv6 = virtual_addresses.is_ipv6();

    let mut unicast_peers = Vec::new();
    for (j, p) in raw.unicast_peers.iter().enumerate() {
        let pkey = format!("vrrp[{i}].unicast_peers[{j}]");
        let addr: IpAddr = p
            .parse()
            .map_err(|_| (pkey.clone(), format!("{p:?} is not an IP address")))?;
        if addr.is_ipv6() != ipv6 {
            return Err((
                pkey,
                format!("{addr} is not of the virtual addresses' family"),
            ));
        }
        if addr.is_unspecified() || addr.is_multicast() {
            return Err((pkey, format!("{addr} is not a unicast address")));
        }
        unicast_peers.push(addr);
    }

    let garp_count = raw.garp_count.unwrap_or(DEFAULT_GARP_COUNT);
    if !(1..=MAX_GARP_COUNT).contains(&garp_count) {
        return Err((key("garp_count"), format!("must be 1 to {MAX_GARP_COUNT}")));
    }
    let garp_interval = match raw.garp_interval_ms {
        None => DEFAULT_GARP_INTERVAL,
        Some(ms @ 1..=60_000) => Duration::from_millis(ms),
        Some(_) => {
            return Err((key("garp_interval_ms"), "must be 1 to 60000".into()));
        }
    };

    let track = track(i, raw.track, priority)?;
    Ok(VirtualRouter {
        vrid,
        interface,
        priority,
        advert_interval,
        max_advert_interval,
        preempt: raw.preempt.unwrap_or(true),
        preempt_delay: Duration::from_millis(preempt_delay_ms),
        vips,
        virtual_addresses,
        unicast_peers,
        garp_count,
        garp_interval,
        track,
    })
}

fn track(i: usize, raw: RawTrack, priority: Priority) -> Result<Track, Failure> {
    let weight = |k: &str, w: u32| -> Result<u8, Failure> {
        match u8::try_from(w) {
            Ok(w @ 1..=254) => Ok(w),
            _ => Err((
                format!("vrrp[{i}].track.{k}"),
                format!("weight {w} is outside 1..=254"),
            )),
        }
    };
    let mut track = Track::default();
    if let Some(w) = raw.listeners {
        track.listeners = weight("listeners", w)?;
    }
    if let Some(w) = raw.datapath {
        track.datapath = weight("datapath", w)?;
    }
    if let Some(w) = raw.backends {
        track.backends = weight("backends", w)?;
    }
    for (name, w) in raw.interfaces {
        let k = format!("interfaces.{name}");
        interface_name(&name).map_err(|e| (format!("vrrp[{i}].track.{k}"), e.to_string()))?;
        track.interfaces.push((name, weight(&k, w)?));
    }
    if priority.is_owner() && !track.is_empty() {
        return Err((
            format!("vrrp[{i}].track"),
            "the address owner's priority stays 255 (RFC 5798 section 5.2.4), so tracking cannot lower it; use priority 254".into(),
        ));
    }
    Ok(track)
}

/// A name the kernel would refuse for an interface.
#[derive(Debug, thiserror::Error)]
#[error("{name:?} is not a valid interface name (1 to 15 characters)")]
struct InterfaceNameError {
    name: String,
}

fn interface_name(name: &str) -> Result<String, InterfaceNameError> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
        return Err(InterfaceNameError {
            name: name.to_owned(),
        });
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
[frontend]
name = "fea"
interface = "pub0"
"#;

    fn parse(extra: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(Path::new("/etc/rb.toml"), &format!("{BASE}{extra}"))
    }

    fn fails(extra: &str, key: &str, reason: &str) {
        let err = parse(extra).expect_err(extra);
        assert_eq!(err.key, key, "{err}");
        assert!(err.reason.contains(reason), "{err} does not say {reason:?}");
        assert!(err.to_string().starts_with("/etc/rb.toml: "), "{err}");
    }

    #[test]
    fn defaults() {
        let cfg = parse("[[vrrp]]\nvrid = 51\nvips = [\"198.18.0.25\"]\n").unwrap();
        assert_eq!(
            cfg.ha,
            Ha {
                control_socket: PathBuf::from("/run/robustifier/fea/control.sock"),
                drain_deadline: DEFAULT_DRAIN_DEADLINE,
            }
        );
        let r = &cfg.vrrp[0];
        assert_eq!(r.vrid.get(), 51);
        assert_eq!(r.interface, "pub0");
        assert_eq!(r.priority.get(), 100);
        assert_eq!(r.advert_interval.cs(), 100);
        assert_eq!(r.max_advert_interval.cs(), 1000);
        assert!(r.preempt);
        assert_eq!(r.preempt_delay, Duration::ZERO);
        assert_eq!(r.vips, vec!["198.18.0.25/32".parse::<IpNet>().unwrap()]);
        assert!(r.unicast_peers.is_empty());
        assert_eq!((r.garp_count, r.garp_interval), (5, Duration::from_secs(1)));
        assert!(r.track.is_empty());
        assert!(!r.ipv6());
    }

    #[test]
    fn no_vrrp_is_fine() {
        let cfg = parse("").unwrap();
        assert!(cfg.vrrp.is_empty());
    }

    #[test]
    fn full_router() {
        let cfg = parse(
            r#"
[ha]
control_socket = "/tmp/x/ctl.sock"
drain_deadline_s = 5

[[vrrp]]
vrid = 52
interface = "eth1"
priority = 254
advert_interval_cs = 10
preempt = false
preempt_delay_ms = 1500
vips = ["2001:db8:0:1::25", "2001:db8:0:1::26/64"]
unicast_peers = ["fe80::2"]
garp_count = 3
garp_interval_ms = 200
track = { listeners = 50, datapath = 60, interfaces = { int0 = 70 } }

[[vrrp]]
vrid = 52
priority = 255
vips = ["198.18.0.25"]
"#,
        )
        .unwrap();
        assert_eq!(cfg.ha.control_socket, PathBuf::from("/tmp/x/ctl.sock"));
        assert_eq!(cfg.ha.drain_deadline, Duration::from_secs(5));
        let r = &cfg.vrrp[0];
        assert!(r.ipv6());
        assert_eq!(r.vips[1].prefix_len(), 64);
        assert_eq!(r.vips[0].prefix_len(), 128);
        assert_eq!(r.preempt_delay, Duration::from_millis(1500));
        assert!(!r.preempt);
        assert_eq!(
            r.track,
            Track {
                listeners: 50,
                datapath: 60,
                backends: 0,
                interfaces: vec![("int0".into(), 70)],
            }
        );
        assert_eq!(cfg.vrrp[1].priority, Priority::OWNER);
    }

    #[test]
    fn errors_name_key_and_reason() {
        let v = "vips = [\"198.18.0.25\"]\n";
        fails(
            &format!("[[vrrp]]\nvrid = 0\n{v}"),
            "vrrp[0].vrid",
            "1..=255",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 256\n{v}"),
            "vrrp[0].vrid",
            "1..=255",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\npriority = 0\n{v}"),
            "vrrp[0].priority",
            "resigning",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\npriority = 256\n{v}"),
            "vrrp[0].priority",
            "1..=254",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\nadvert_interval_cs = 0\n{v}"),
            "vrrp[0].advert_interval_cs",
            "1..=4095",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\nadvert_interval_cs = 4096\n{v}"),
            "vrrp[0].advert_interval_cs",
            "1..=4095",
        );
        fails(
            "[[vrrp]]\nvrid = 1\nvips = []\n",
            "vrrp[0].vips",
            "at least one",
        );
        fails("[[vrrp]]\nvrid = 1\n", "vrrp[0]", "vips");
        fails(
            "[[vrrp]]\nvrid = 1\nvips = [\"198.18.0.25\", \"2001:db8::25\"]\n",
            "vrrp[0].vips[1]",
            "one family",
        );
        fails(
            "[[vrrp]]\nvrid = 1\nvips = [\"198.18.0.25\", \"198.18.0.25/24\"]\n",
            "vrrp[0].vips[1]",
            "twice",
        );
        fails(
            "[[vrrp]]\nvrid = 1\nvips = [\"mail\"]\n",
            "vrrp[0].vips[0]",
            "not an address",
        );
        fails(
            "[[vrrp]]\nvrid = 1\nvips = [\"224.0.0.18\"]\n",
            "vrrp[0].vips[0]",
            "multicast",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\nunicast_peers = [\"2001:db8::2\"]\n{v}"),
            "vrrp[0].unicast_peers[0]",
            "family",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\ninterface = \"a/b\"\n{v}"),
            "vrrp[0].interface",
            "interface name",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\ngarp_count = 0\n{v}"),
            "vrrp[0].garp_count",
            "1 to 100",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\ntrack = {{ listeners = 0 }}\n{v}"),
            "vrrp[0].track.listeners",
            "1..=254",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\ntrack = {{ interfaces = {{ int0 = 300 }} }}\n{v}"),
            "vrrp[0].track.interfaces.int0",
            "1..=254",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\npriority = 255\ntrack = {{ datapath = 10 }}\n{v}"),
            "vrrp[0].track",
            "owner",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\ntrack = {{ bogus = 1 }}\n{v}"),
            "vrrp[0].track.bogus",
            "unknown field",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\n{v}\n[[vrrp]]\nvrid = 1\nvips = [\"198.18.0.26\"]\n"),
            "vrrp[1].vrid",
            "already configured",
        );
        fails(
            &format!("[[vrrp]]\nvrid = 1\n{v}\n[[vrrp]]\nvrid = 2\n{v}"),
            "vrrp[1].vips[0]",
            "already belongs to vrrp[0]",
        );
        fails(
            "[ha]\ncontrol_socket = \"run/x.sock\"\n",
            "ha.control_socket",
            "absolute",
        );
        fails(
            "[ha]\ndrain_deadline_s = 100000\n",
            "ha.drain_deadline_s",
            "at most",
        );
    }

    #[test]
    fn max_advert_interval_bounds_the_learned_interval() {
        let v = "vips = [\"198.18.0.25\"]\n";
        // Default: 10 s, or the router's own interval when that is longer.
        let cfg = parse(&format!(
            "[[vrrp]]\nvrid = 1\nadvert_interval_cs = 2000\n{v}"
        ))
        .unwrap();
        assert_eq!(cfg.vrrp[0].max_advert_interval.cs(), 2000);
        let cfg = parse(&format!(
            "[[vrrp]]\nvrid = 1\nadvert_interval_cs = 10\nmax_advert_interval_cs = 50\n{v}"
        ))
        .unwrap();
        let r = &cfg.vrrp[0];
        assert_eq!(r.max_advert_interval.cs(), 50);
        // It reaches the state machine, together with the peers and the addresses.
        let primary: IpAddr = "198.18.0.1".parse().unwrap();
        let sc = r.state_config(primary);
        assert_eq!(sc.max_master_interval.cs(), 50);
        assert_eq!(sc.advert_interval.cs(), 10);
        assert_eq!(sc.addresses.as_slice(), r.addresses().as_slice());
        assert_eq!(sc.primary, primary);
        fails(
            &format!(
                "[[vrrp]]\nvrid = 1\nadvert_interval_cs = 100\nmax_advert_interval_cs = 99\n{v}"
            ),
            "vrrp[0].max_advert_interval_cs",
            "below advert_interval_cs",
        );
        for bad in [0, 4096] {
            fails(
                &format!("[[vrrp]]\nvrid = 1\nmax_advert_interval_cs = {bad}\n{v}"),
                "vrrp[0].max_advert_interval_cs",
                "1..=4095",
            );
        }
    }

    #[test]
    fn unicast_peers_reach_the_state_machine() {
        let cfg = parse(
            "[[vrrp]]\nvrid = 1\nvips = [\"198.18.0.25\"]\nunicast_peers = [\"198.18.0.2\", \"198.18.0.3\"]\n",
        )
        .unwrap();
        let sc = cfg.vrrp[0].state_config("198.18.0.1".parse().unwrap());
        assert_eq!(
            sc.peers,
            vec![
                "198.18.0.2".parse::<IpAddr>().unwrap(),
                "198.18.0.3".parse().unwrap()
            ]
        );
    }

    #[test]
    fn interface_defaults_to_frontend_interface_or_is_required() {
        let err = Config::parse(
            Path::new("/etc/rb.toml"),
            "[frontend]\nname = \"x\"\n[[vrrp]]\nvrid = 1\nvips = [\"198.18.0.25\"]\n",
        )
        .unwrap_err();
        assert_eq!(err.key, "vrrp[0].interface");
        assert!(err.reason.contains("no frontend.interface"), "{err}");
    }

    #[test]
    fn same_vrid_for_both_families_is_two_routers() {
        let cfg = parse(
            "[[vrrp]]\nvrid = 7\nvips = [\"198.18.0.25\"]\n[[vrrp]]\nvrid = 7\nvips = [\"2001:db8::25\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.vrrp.len(), 2);
        assert_eq!(cfg.vrrp[1].family(), "ipv6");
    }
}
