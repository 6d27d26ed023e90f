//! `robustifier manager` and its members: the cluster's configuration kept in one place,
//! versioned, audited and propagated to every front-end.
//!
//! - [`journal`]: the durable, append-only journal of configuration versions, with
//!   optimistic concurrency, rollback as a forward version and confirmed commits.
//! - [`render`]: one cluster configuration rendered into each member's own, and validated
//!   with each member's rules.
//! - [`audit`]: the append-only, hash-chained audit trail of what operators, members and
//!   the manager did.
//! - [`logs`]: the members' events merged at the manager, each stored once.
//! - [`mta_log`]: the back-end MTAs' log lines, shipped by their agents, by queue id, and
//!   the answer of `cluster trace`.
//! - [`store`]: what the redb files share (JSON records, their errors, the clock).
//! - [`pki`]: the cluster's certificate authority: the CA, the manager's, members' and
//!   operators' certificates, and the identity (role, name, cluster) a certificate carries.
//! - [`tls`]: mutual TLS between the manager and members or operators, on that CA alone.
//! - [`wire`]: the messages between them, one JSON object per line.
//! - [`core`]: the manager's state and its answers to operators.
//! - [`server`]: the manager on the network: operators' requests and members' sessions.
//! - [`member`]: `robustifier member`, a front-end's link to the manager.
//! - [`metrics`]: the manager's own metrics (head version, members' reach and drift).
//! - [`notify`]: SNMP notifications for the members' alarms their front-ends leave to it.
//! - [`client`] and [`cli`]: the operator's side, `robustifier cluster ...`.
//! - [`web`]: the web interface (`--web-listen`), its login links and its JSON API.
//! - [`upgrade`]: packages uploaded by operators and rolled over the members one at a
//!   time; [`upgrade_member`]: a member's side, which hands them to the root installer.

pub mod audit;
pub mod cli;
pub mod client;
pub mod core;
pub mod journal;
pub mod logs;
pub mod member;
pub mod metrics;
pub mod mta_log;
pub mod notify;
pub mod pki;
pub mod render;
pub mod server;
pub mod stats;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod tls;
pub mod upgrade;
pub mod upgrade_cli;
pub mod upgrade_member;
pub mod web;
pub mod wire;
