//! Bulk relay, POP3 side: RETR of 10 MiB messages from Dovecot through each proxy, a few
//! sessions at a time (our own client, [`crate::pop3`]). Figures: proxy CPU-seconds per GB
//! retrieved and throughput, as for the SMTP case in [`super::bulk`].
//!
//! The lab's mail host (Postfix and Dovecot) runs on the one back-end, pinned to the load
//! CPU; the messages are written straight into its users' Maildirs (and removed at the end).

use std::{
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use robustifier_lab::{
    Lab,
    mail::{MailHost, Make, PORT_POP3, PORT_POP3_PROXY, Users},
    topology::VIP_POP,
};

use super::bulk::{CPU, SCENARIO, SIZE, THROUGHPUT};
use crate::{Ctx, pop3, procs, rivals, smtp};

const CASE: &str = "POP3 RETR 10 MiB";
/// Sessions at a time (one mailbox each).
const CONCURRENCY: usize = 4;
/// Messages a session retrieves at most (and a mailbox holds).
const PER_SESSION: usize = 2;
/// A run of the client ends with an error after this long.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn user(i: usize) -> (String, String) {
    (format!("bulk{i}@bench.test"), format!("bulk{i}-pw"))
}

/// Removes the messages written into the Maildirs when the case ends (they are large; the
/// rest of the lab's log directory stays).
struct Mailboxes(Vec<PathBuf>);

impl Drop for Mailboxes {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Writes `count` messages of [`SIZE`] bytes on the wire (LF in the file, as Maildir
/// keeps them; Dovecot sends CRLF) into the Maildir of each of `users` users.
fn fill(host: &MailHost, users: usize, count: usize) -> anyhow::Result<Mailboxes> {
    let wire = smtp::message(SIZE);
    let wire = &wire[..wire.len() - 3]; // no ".\r\n": the file holds the message only
    let lines = wire.windows(2).filter(|w| w == b"\r\n").count();
    let file: Vec<u8> = String::from_utf8_lossy(wire)
        .replace("\r\n", "\n")
        .into_bytes();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let mut out = Mailboxes(Vec::new());
    for u in 0..users {
        let cur = host.maildir(&user(u).0).join("cur");
        for m in 0..count {
            // S= and W= (size in the file and with CRLF) spare Dovecot reading it to count.
            let name = format!(
                "{}.M{m}P{}.bench,S={},W={}:2,S",
                now.as_secs(),
                std::process::id(),
                file.len(),
                file.len() + lines
            );
            let path = cur.join(name);
            std::fs::write(&path, &file).with_context(|| format!("writing {}", path.display()))?;
            out.0.push(path.clone());
            std::os::unix::fs::chown(
                &path,
                Some(host.layout.mail_uid.as_raw()),
                Some(host.layout.mail_gid.as_raw()),
            )?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(out)
}

/// Robustifier on front-end 0 with only a POP3 service on the POP VIP, relayed to
/// Dovecot's PROXY v2 listener on back-end 1.
fn robustifier_config(lab: &Lab, backend: SocketAddr) -> String {
    format!(
        r#"[frontend]
name = "{name}"
interface = "pub0"
pin_dir = "{pin}"

[[service]]
name = "pop3"
protocol = "pop3"
port = 110
vips = ["{VIP_POP}"]
pool = "pop"
# The rivals relay logins in clear too: the same work for each.
plaintext_auth = true
max_connections = 1000
max_per_client = 1000

[[pool]]
name = "pop"
identity = "proxy"
backend = [{{ name = "be1-pop3", address = "{backend}" }}]
[pool.health]
interval_ms = 200
timeout_ms = 3000
rise = 2
fall = 2
"#,
        name = lab.frontend(0).name,
        pin = lab.pin_dir(0).display(),
    )
}

/// Retrieves `n` messages through `to`: [`CONCURRENCY`] threads (one mailbox each) in the
/// client namespace, sessions of up to `per_session` messages each. Returns the wall time in
/// seconds and the bytes retrieved.
fn retrieve(lab: &Lab, to: SocketAddr, n: usize, per_session: usize) -> anyhow::Result<(f64, u64)> {
    let threads = CONCURRENCY.min(n);
    let t = Instant::now();
    let deadline = t + RUN_LIMIT;
    let bytes = lab.client.ns.enter(|| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|i| {
                    s.spawn(move || -> anyhow::Result<u64> {
                        let (name, password) = user(i);
                        let mut left = n / threads + usize::from(i < n % threads);
                        let mut bytes = 0;
                        while left > 0 {
                            anyhow::ensure!(
                                Instant::now() < deadline,
                                "{name}: over {RUN_LIMIT:?} with {left} messages left"
                            );
                            let k = left.min(per_session);
                            bytes +=
                                pop3::retr_session(to, &name, &password, k, smtp::Timeouts::NORMAL)
                                    .with_context(|| format!("{name} through {to}"))?;
                            left -= k;
                        }
                        Ok(bytes)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("client thread panicked"))?
                })
                .sum::<anyhow::Result<u64>>()
        })
    })??;
    Ok((t.elapsed().as_secs_f64(), bytes))
}

pub fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let s = ctx.sizes;
    let n = s.bulk_pop3_messages;
    let mut lab = super::lab("bp", 1, 1)?;
    let users = (0..CONCURRENCY.min(n)).fold(Users::new(), |u, i| {
        let (a, p) = user(i);
        u.with(&a, &p)
    });
    let host = MailHost::start(&mut lab, 0, Make::Postfix, &users).context("mail host")?;
    for pid in host.processes() {
        procs::pin_pid(pid, procs::LOAD_CPU)?;
    }
    let per_session = PER_SESSION.min(n.div_ceil(CONCURRENCY));
    let _mail = fill(&host, CONCURRENCY.min(n), per_session)?;
    let dovecot = SocketAddr::new(IpAddr::V4(host.v4()), PORT_POP3);
    rivals::route_direct(&lab)?;
    let cfg = robustifier_config(&lab, SocketAddr::new(host.v4().into(), PORT_POP3_PROXY));
    let rob = rivals::start_robustifier_at(&mut lab, &cfg, SocketAddr::new(VIP_POP.into(), 110))?;
    let hap = rivals::start_haproxy_relay(
        &mut lab,
        "haproxy-pop3",
        rivals::HAPROXY_POP3_PORT,
        rivals::HAPROXY_POP3_SPLICE_PORT,
        dovecot,
    )?;
    let ngx = rivals::start_nginx_mail(
        &mut lab,
        "nginx-pop3",
        "pop3",
        rivals::NGINX_POP3_PORT,
        rivals::AUTH_HTTP_POP3,
        dovecot,
    )?;
    let systems: Vec<(&str, SocketAddr, Vec<i32>)> = vec![
        ("direct", dovecot, vec![]),
        (
            "haproxy",
            rivals::fe_addr(rivals::HAPROXY_POP3_PORT),
            procs::tree(hap),
        ),
        (
            "haproxy-splice",
            rivals::fe_addr(rivals::HAPROXY_POP3_SPLICE_PORT),
            procs::tree(hap),
        ),
        ("nginx", rivals::fe_addr(rivals::NGINX_POP3_PORT), ngx),
        (
            "robustifier",
            SocketAddr::new(VIP_POP.into(), 110),
            procs::tree(rob),
        ),
    ];
    // Every mailbox once (Dovecot indexes it at the first login), then each system.
    let warm = CONCURRENCY.min(n) * per_session;
    retrieve(&lab, dovecot, warm, per_session).context("first retrieval")?;
    for (name, addr, _) in &systems {
        retrieve(&lab, *addr, CONCURRENCY.min(n), 1)
            .with_context(|| format!("warm-up of {name}"))?;
    }
    for rep in 0..s.reps {
        for (name, addr, pids) in super::shuffled(&systems) {
            let cpu0 = procs::cpu_us(&pids);
            let (secs, bytes) =
                retrieve(&lab, addr, n, per_session).with_context(|| name.to_owned())?;
            let cpu = (procs::cpu_us(&pids) - cpu0) / 1e6;
            let gb = bytes as f64 / 1e9;
            if !pids.is_empty() {
                ctx.add(SCENARIO, CASE, CPU, name, cpu / gb);
            }
            ctx.add(SCENARIO, CASE, THROUGHPUT, name, gb * 1000.0 / secs);
        }
        println!(
            "bench: bulk POP3: repetition {} of {} done",
            rep + 1,
            s.reps
        );
    }
    ctx.note(format!(
        "bulk POP3: {threads} concurrent sessions (our client, one mailbox each), each USER/PASS, \
         RETR of up to {per_session} message(s) of 10 MiB from Dovecot's Maildir (no DELE), \
         QUIT. direct is kernel forwarding to Dovecot's port 110; HAProxy (TCP mode, with and \
         without splice) and nginx mail (protocol pop3, pop3_auth plain, default proxy_buffer; \
         its auth_http responder, counted with it, answers every login with Dovecot's \
         address and nginx replays USER/PASS there) go to port 110; Robustifier's POP3 \
         service replays the login to Dovecot's PROXY v2 listener (10110) and then relays. \
         Dovecot and the client share the load CPU.",
        threads = CONCURRENCY.min(n),
    ));
    Ok(())
}
