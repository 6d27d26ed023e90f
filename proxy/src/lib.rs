//! Robustifier: a kernel-assisted L4/L7 load balancer for mail clusters.
//!
//! - [`config`]: the TOML configuration, validated into typed values.
//! - [`datapath`]: the eBPF programs and their pinned maps, seen from user space.
//! - [`front`]: the client-facing listeners the kernel steers connections to.
//! - [`service`]: what the sessions of one service share (routes, pools, certificate).
//! - [`lines`]: bounded line reading for both protocols, the probes and the agent.
//! - [`smtp`]: the SMTP protocol core (commands, replies, the DATA-phase scanner) and the
//!   client-facing session.
//! - [`pop3`]: the POP3 protocol core (commands, responses, multi-line relaying) and the
//!   client-facing session.
//! - [`sasl`]: the AUTH responses (PLAIN, LOGIN) of both protocols.
//! - [`stream`]: a connection that may turn into TLS halfway, read line by line.
//! - [`tls`]: the front-end's certificate and the back-end clients' configurations.
//! - [`route`]: the routing map from recipients and users to back-end pools.
//! - [`backend`]: pools, the choice of a back-end by load, and the legs that talk to it.
//! - [`health`]: probes, agent polls and passive results, gathered on the board.
//! - [`load_writer`]: the board published as load records and each service's capacity.
//! - [`agent`]: `robustifier agent`, the load reporter on a back-end host.
//! - [`agent_wire`]: the agent's report line and keyed challenge, shared by both sides.
//! - [`reload`]: files re-read when they change, without dropping sessions.
//! - [`frontend`]: one front-end tied together on a kernel side (the eBPF data path, or
//!   plain sockets without privileges), with reloads and an orderly stop.
//! - [`daemon`]: `robustifier run`: the front-end as a process (privileges, signals).
//! - [`privs`]: the switch to an unprivileged user after the privileged start.
//! - [`supervise`]: background tasks restarted with a backoff when they die.
//! - [`ha`]: VRRPv3 at run time: raw sockets, virtual addresses, tracking, handoff.
//! - [`vrrp`]: VRRPv3 packets and state machine as pure functions, for virtual IP failover.
//! - [`logging`]: log lines on stderr, as text or JSON.
//! - [`prometheus`]: metrics in Prometheus's text format.
//! - [`events`]: events and alarms (back-ends, pools, VRRP, reloads), kept, logged as JSON
//!   lines and reported by `robustifier alarms`.
//! - [`manager`]: the cluster manager's journal of configuration versions.
//! - [`notify`]: readiness, reloads and the watchdog for systemd (`Type=notify`).
#![forbid(unsafe_code)]
#![allow(
    rustdoc::private_intra_doc_links,
    reason = "module docs map the crate's private modules too; `cargo doc --document-private-items` renders them"
)]

pub mod agent;
pub mod agent_wire;
mod architecture;
pub mod backend;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod directory;
pub mod events;
pub mod front;
pub mod frontend;
pub mod ha;
pub mod health;
pub mod install_update;
pub mod lines;
pub(crate) mod load_writer;
pub mod logging;
pub mod manager;
pub mod notify;
pub mod pop3;
pub mod privs;
pub mod prometheus;
pub mod release;
pub(crate) mod reload;
pub mod route;
pub mod sasl;
pub mod service;
pub mod session_core;
pub mod smtp;
pub mod snmp;
pub mod stats;
pub mod stream;
pub(crate) mod supervise;
mod sync;
pub(crate) mod tls;
pub mod vrrp;
pub mod wait;
