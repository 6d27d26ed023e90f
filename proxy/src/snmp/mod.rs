//! SNMP notifications of alarms: one per alarm raised and one per alarm cleared, to every
//! manager of `[[monitor.snmp]]`, as `mib/ROBUSTIFIER-MIB.txt` defines them.
//!
//! The event path never waits for a manager: a relay task reads the front-end's events and
//! hands each notification to a bounded queue per destination; a full queue (a manager that
//! acknowledges informs slowly, or not at all) drops the notification, counted and logged,
//! and one slow manager holds up no other. Encoding, v3 security (USM: HMAC-SHA
//! authentication, AES-128 privacy) and informs' retries are the `async-snmp` crate's.

#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use async_snmp::{
    Auth as SnmpAuth, AuthProtocol, Client, Oid, PrivProtocol, UsmConfig, Value, VarBind,
    v3::{AuthoritativeEngine, PersistedAuthoritativeEngine},
};
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::snmp::{self as cfg, Destination, Security},
    events::{Event, Events, Severity},
    supervise::Supervisor,
};

/// The placeholder enterprise number the MIB sits under until one is assigned.
pub const ENTERPRISE: u32 = 99999;
/// `robustifierMIB`: enterprises.99999.
const MIB: [u32; 7] = [1, 3, 6, 1, 4, 1, ENTERPRISE];
/// Notifications a destination's queue holds while its manager is slow.
const QUEUE: usize = 256;
/// The longest text a varbind carries (`SnmpAdminString (SIZE (0..255))`).
const MAX_TEXT: usize = 255;

fn mib(arcs: &[u32]) -> Oid {
    Oid::new(MIB.iter().chain(arcs).copied())
}

/// `robustifierAlarmRaised`.
pub fn alarm_raised() -> Oid {
    mib(&[0, 1])
}

/// `robustifierAlarmCleared`.
pub fn alarm_cleared() -> Oid {
    mib(&[0, 2])
}

/// The objects a notification carries, as `robustifierAlarmObjects` numbers them; the
/// instance of each is `.0`, the convention for objects sent only in notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    Frontend = 1,
    Key = 2,
    Severity = 3,
    Sequence = 4,
    Message = 5,
    Kind = 6,
}

impl Object {
    pub fn oid(self) -> Oid {
        mib(&[1, self as u32, 0])
    }
}

/// `RobustifierSeverity`.
fn severity(s: Severity) -> i32 {
    match s {
        Severity::Info => 1,
        Severity::Warning => 2,
        Severity::Major => 3,
        Severity::Critical => 4,
    }
}

/// Text cut to the MIB's size at a character boundary.
fn text(s: &str) -> Value {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Value::OctetString(s.as_bytes()[..end].to_vec().into())
}

/// One notification: its type (snmpTrapOID.0) and its varbinds after sysUpTime.0 and
/// snmpTrapOID.0, which the sender adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub trap_oid: Oid,
    pub varbinds: Vec<VarBind>,
}

/// The notification of `event`: none unless it raised or cleared an alarm.
pub fn notification(event: &Event) -> Option<Notification> {
    let trap_oid = match event.alarm.as_deref()? {
        "raised" => alarm_raised(),
        "cleared" => alarm_cleared(),
        _ => return None,
    };
    let key = event.kind.alarm_key()?;
    Some(Notification {
        trap_oid,
        varbinds: vec![
            VarBind::new(Object::Frontend.oid(), text(&event.frontend)),
            VarBind::new(Object::Key.oid(), text(&key)),
            VarBind::new(
                Object::Severity.oid(),
                Value::Integer(severity(event.severity)),
            ),
            VarBind::new(Object::Sequence.oid(), Value::Counter64(event.seq)),
            VarBind::new(Object::Message.oid(), text(&event.message)),
            VarBind::new(Object::Kind.oid(), text(event.kind.name())),
        ],
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SnmpError {
    #[error("cannot read {}: {source}", path.display())]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SNMPv3 keys: {0}")]
    Keys(String),
    #[error("snmpEngineBoots in {}: {reason}", path.display())]
    Boots { path: PathBuf, reason: String },
    /// What [`prepare`] found wrong, said again at each restart of the sender.
    #[error("{0}")]
    Unusable(String),
    #[error("SNMP: {0}")]
    Snmp(#[from] Box<async_snmp::Error>),
}

/// This front-end's default snmpEngineID (RFC 3411 text format): the enterprise number
/// with the high bit set, format 4 (text), and the front-end's name, cut to 27 octets.
pub fn default_engine_id(frontend: &str) -> Vec<u8> {
    let mut id = (0x8000_0000u32 | ENTERPRISE).to_be_bytes().to_vec();
    id.push(4);
    id.extend(frontend.bytes().take(27));
    id
}

/// Counts of what did not reach a manager.
#[derive(Debug, Default)]
pub struct Stats {
    /// Notifications dropped: a destination's queue full, or the relay too slow for the
    /// event stream.
    pub dropped: AtomicU64,
    /// Notifications whose sending failed (an inform never acknowledged, a socket error).
    pub failed: AtomicU64,
}

/// A destination with what it takes to reach it, made at start while the front-end still
/// runs as root: the secret files and the boots file may be for root's eyes only.
pub struct Prepared {
    dest: Destination,
    ready: Result<Ready, String>,
}

#[derive(Clone)]
struct Ready {
    auth: SnmpAuth,
    /// v3 traps: this front-end as the authoritative engine.
    engine: Option<AuthoritativeEngine>,
}

/// Reads the secrets and, for v3 traps, takes the next snmpEngineBoots. A destination that
/// fails is said here, and its sender reports the same reason each time it is restarted.
pub fn prepare(frontend: &str, destinations: &[Destination]) -> Vec<Prepared> {
    destinations
        .iter()
        .map(|dest| {
            let ready = Ready::new(dest, frontend).map_err(|e| {
                warn!(destination = %dest, error = %e, "SNMP destination not usable");
                e.to_string()
            });
            Prepared {
                dest: dest.clone(),
                ready,
            }
        })
        .collect()
}

/// Starts the front-end's relay and one sender per destination under `supervisor`: for
/// the alarms the front-end notifies itself ([`Event::notified`]). The subscription is
/// taken here, before the health checks start, so an alarm raised at start is sent.
pub fn spawn(prepared: &[Prepared], events: &Events, supervisor: &Supervisor) -> Arc<Stats> {
    events.set_notifies(!prepared.is_empty());
    let source = events.clone();
    start(
        prepared,
        move || source.subscribe(),
        |e: &Event| e.notified,
        supervisor,
    )
}

/// Starts the relay of the events `subscribe` gives that `ours` accepts, and one sender
/// per destination, under `supervisor`. The first subscription is taken here.
pub fn start<S>(
    prepared: &[Prepared],
    subscribe: S,
    ours: fn(&Event) -> bool,
    supervisor: &Supervisor,
) -> Arc<Stats>
where
    S: Fn() -> broadcast::Receiver<Event> + Send + Sync + 'static,
{
    let stats = Arc::new(Stats::default());
    if prepared.is_empty() {
        return stats;
    }
    let started = Instant::now();
    let mut queues = Vec::new();
    for p in prepared {
        let (tx, rx) = mpsc::channel(QUEUE);
        queues.push((p.dest.to_string(), tx));
        let rx = Arc::new(Mutex::new(rx));
        let (dest, ready, stats, stop) = (
            p.dest.clone(),
            p.ready.clone(),
            Arc::clone(&stats),
            supervisor.stop().clone(),
        );
        supervisor.spawn(format!("snmp {}", dest.target), move || {
            let (dest, ready, stats, rx, stop) = (
                dest.clone(),
                ready.clone(),
                Arc::clone(&stats),
                Arc::clone(&rx),
                stop.clone(),
            );
            async move { send(dest, ready, started, rx, stats, stop).await }
        });
    }
    let first = Arc::new(std::sync::Mutex::new(Some(subscribe())));
    let (relay_stats, stop) = (Arc::clone(&stats), supervisor.stop().clone());
    let queues = Arc::new(queues);
    supervisor.spawn("snmp relay", move || {
        // After a restart the relay subscribes anew: what passed meanwhile is lost.
        let rx = crate::sync::lock(&first).take().unwrap_or_else(&subscribe);
        relay(
            rx,
            ours,
            Arc::clone(&queues),
            Arc::clone(&relay_stats),
            stop.clone(),
        )
    });
    stats
}

type Queues = Arc<Vec<(String, mpsc::Sender<Notification>)>>;

async fn relay(
    mut rx: broadcast::Receiver<Event>,
    ours: fn(&Event) -> bool,
    queues: Queues,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            r = rx.recv() => r,
        };
        let event = match event {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let total = stats.dropped.fetch_add(n, Ordering::Relaxed) + n;
                warn!(
                    missed = n,
                    dropped = total,
                    "SNMP notifications dropped: events came faster than the relay read them"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !ours(&event) {
            continue;
        }
        let Some(n) = notification(&event) else {
            continue;
        };
        for (dest, tx) in queues.iter() {
            if tx.try_send(n.clone()).is_err() {
                let total = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                warn!(destination = %dest, seq = event.seq, dropped = total, "SNMP notification dropped: the destination's queue is full");
            }
        }
    }
}

impl Ready {
    fn new(dest: &Destination, frontend: &str) -> Result<Ready, SnmpError> {
        Ok(match &dest.security {
            Security::V2c { community_file } => Ready {
                auth: SnmpAuth::v2c(secret(community_file)?),
                engine: None,
            },
            Security::V3(v3) => {
                let auth = match v3.auth {
                    cfg::Auth::Sha1 => AuthProtocol::Sha1,
                    cfg::Auth::Sha224 => AuthProtocol::Sha224,
                    cfg::Auth::Sha256 => AuthProtocol::Sha256,
                    cfg::Auth::Sha384 => AuthProtocol::Sha384,
                    cfg::Auth::Sha512 => AuthProtocol::Sha512,
                };
                let auth_key = secret(&v3.auth_key_file)?;
                let usm = UsmConfig::new(v3.user.clone().into_bytes());
                let usm = match &v3.privacy {
                    None => usm.auth(auth, auth_key),
                    Some(cfg::Privacy::Aes128 { key_file }) => {
                        usm.auth_priv(auth, auth_key, PrivProtocol::Aes128, secret(key_file)?)
                    }
                }
                .map_err(|e| SnmpError::Keys(e.to_string()))?;
                // Traps: this front-end is the authoritative engine. Informs: the manager
                // is, and is discovered.
                let engine = match &v3.engine_boots_file {
                    Some(boots) => {
                        let id = v3
                            .engine_id
                            .clone()
                            .unwrap_or_else(|| default_engine_id(frontend));
                        Some(engine(id, boots)?)
                    }
                    None => None,
                };
                Ready {
                    auth: usm.into(),
                    engine,
                }
            }
        })
    }
}

/// How a destination is reached, made once per sender run.
struct Sender {
    client: Client,
    inform: bool,
}

impl Sender {
    async fn open(dest: &Destination, ready: Ready) -> Result<Sender, SnmpError> {
        let mut builder = Client::builder(dest.target, ready.auth);
        if let Some(engine) = ready.engine {
            builder = builder.local_authoritative_engine(engine);
        }
        Ok(Sender {
            client: builder.connect().await?,
            inform: dest.inform,
        })
    }

    async fn send(&self, n: Notification, uptime: u32) -> Result<(), SnmpError> {
        if self.inform {
            self.client
                .send_inform(&n.trap_oid, uptime, n.varbinds)
                .await?;
        } else {
            self.client
                .send_trap(&n.trap_oid, uptime, n.varbinds)
                .await?;
        }
        Ok(())
    }
}

fn secret(path: &Path) -> Result<String, SnmpError> {
    cfg::read_secret(path).map_err(|source| SnmpError::Secret {
        path: path.to_owned(),
        source,
    })
}

/// The authoritative engine of v3 traps: snmpEngineBoots one more than the file says (1
/// without a file), written back before the first trap, so a manager never sees the
/// (boots, time) pair go back after a restart.
fn engine(id: Vec<u8>, boots_file: &Path) -> Result<AuthoritativeEngine, SnmpError> {
    let bad = |reason: String| SnmpError::Boots {
        path: boots_file.to_owned(),
        reason,
    };
    let path = boots_file.to_owned();
    let persist =
        move |state: &PersistedAuthoritativeEngine| write_boots(&path, state.engine_boots());
    let engine = match std::fs::read_to_string(boots_file) {
        Ok(text) => {
            let boots = cfg::read_boots(&text).map_err(&bad)?;
            let previous =
                PersistedAuthoritativeEngine::new(id, boots).map_err(|e| bad(e.to_string()))?;
            AuthoritativeEngine::restart(previous, persist)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            AuthoritativeEngine::install(id, persist)
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    engine.map_err(|e| bad(e.to_string()))
}

/// Replaces the boots file whole (a crash leaves the old number or the new one).
fn write_boots(path: &Path, boots: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{boots}\n"))?;
    std::fs::rename(&tmp, path)
}

/// One destination's sender: its queue, one notification at a time, until the stop.
async fn send(
    dest: Destination,
    ready: Result<Ready, String>,
    started: Instant,
    rx: Arc<Mutex<mpsc::Receiver<Notification>>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) -> Result<(), SnmpError> {
    let sender = Sender::open(&dest, ready.map_err(SnmpError::Unusable)?).await?;
    info!(destination = %dest, "SNMP notifications");
    let mut rx = rx.lock().await;
    loop {
        let n = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            n = rx.recv() => n,
        };
        let Some(n) = n else { return Ok(()) };
        // sysUpTime: hundredths of a second since the front-end started, wrapping as
        // TimeTicks do.
        let uptime = (started.elapsed().as_millis() / 10) as u32;
        // An inform being retried does not hold up the stop.
        let sent = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            sent = sender.send(n, uptime) => sent,
        };
        if let Err(e) = sent {
            let total = stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(destination = %dest, error = %e, failed = total, "SNMP notification not sent");
        }
    }
}
