//! The systems under comparison, each started in a lab namespace in the foreground with its
//! own config, pid and log files, pinned to [`SUT_CPU`], and ended by pid with the lab.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use robustifier_lab::{
    Lab, Netns,
    topology::{VIP_SMTP, internal_v4, public_v4},
    wait_port,
};

use crate::procs::{self, LOAD_CPU, SUT_CPU};

/// The front-end's own public address, where the rivals listen.
pub fn fe_addr(port: u16) -> SocketAddr {
    SocketAddr::new(public_v4(1).into(), port)
}
pub const HAPROXY_PORT: u16 = 2525;
pub const HAPROXY_LEASTCONN_PORT: u16 = 2527;
pub const HAPROXY_SPLICE_PORT: u16 = 2528;
pub const NGINX_PORT: u16 = 2526;
pub const AUTH_HTTP: &str = "127.0.0.1:9080";
/// The POP3 relays of the bulk scenario (their own HAProxy and nginx instances).
pub const HAPROXY_POP3_PORT: u16 = 1110;
pub const HAPROXY_POP3_SPLICE_PORT: u16 = 1111;
pub const NGINX_POP3_PORT: u16 = 1112;
pub const AUTH_HTTP_POP3: &str = "127.0.0.1:9081";

pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP_SMTP.into(), 25)
}

/// Starts `args` in `ns` through `taskset -c cpu`; returns its pid (nsenter and taskset
/// exec, so the daemon's pid is the program's).
pub fn spawn_pinned(
    lab: &mut Lab,
    ns: &Netns,
    name: &str,
    cpu: usize,
    args: &[&str],
) -> anyhow::Result<i32> {
    let cpu = cpu.to_string();
    let mut argv = vec!["taskset", "-c", cpu.as_str()];
    argv.extend_from_slice(args);
    let d = lab.spawn(ns, name, &argv)?;
    Ok(d.pid().as_raw())
}

/// Waits until `addr` listens in `ns`; on failure the error carries the log of the
/// process started as `name`.
fn wait_started(lab: &Lab, ns: &Netns, addr: SocketAddr, name: &str) -> anyhow::Result<()> {
    wait_port(ns, addr).map_err(|e| {
        let log =
            std::fs::read_to_string(lab.log_dir.join(format!("{name}.log"))).unwrap_or_default();
        anyhow::anyhow!("{name} did not start: {e}\n{log}")
    })
}

/// A plain smtp-sink (no dumps) on back-end `i`, pinned to the load CPU.
pub fn sink(lab: &mut Lab, i: usize, extra: &[&str]) -> anyhow::Result<SocketAddr> {
    let addr = SocketAddr::new(internal_v4(11 + i as u8).into(), 25);
    let ns = lab.backends[i].ns.clone();
    let a = addr.to_string();
    let mut args = vec!["smtp-sink", "-u", "nobody"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[a.as_str(), "4096"]);
    spawn_pinned(lab, &ns, &format!("sink{i}"), LOAD_CPU, &args)?;
    wait_port(&ns, addr)?;
    Ok(addr)
}

/// Routes so the client reaches the back-ends through the front-end's kernel (the "direct"
/// baseline: forwarding, no proxy).
pub fn route_direct(lab: &Lab) -> anyhow::Result<()> {
    lab.client
        .ns
        .ip(&["route", "add", "198.18.1.0/24", "via", "198.18.0.1"])?;
    lab.frontend(0)
        .ns
        .sh("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
    for b in &lab.backends {
        b.ns.ip(&["route", "add", "198.18.0.0/24", "via", "198.18.1.1"])?;
    }
    Ok(())
}

/// Robustifier's configuration: SMTP on the VIP over `backends`, no identity header
/// (like the rivals), limits high enough for the memory scenario.
pub fn robustifier_config(
    lab: &Lab,
    fe: usize,
    backends: usize,
    extra_top: &str,
    extra_pool: &str,
) -> String {
    let list: Vec<String> = (0..backends)
        .map(|j| {
            format!(
                "{{ name = \"be{}\", address = \"{}:25\" }}",
                j + 1,
                internal_v4(11 + j as u8)
            )
        })
        .collect();
    // `ROBUSTIFIER_BENCH_RUNTIME=multi` measures the other runtime layout (the default is
    // the proxy's own, as an operator would run it).
    let runtime = std::env::var("ROBUSTIFIER_BENCH_RUNTIME")
        .map(|r| format!("runtime = \"{r}\"\n"))
        .unwrap_or_default();
    format!(
        r#"{extra_top}
[frontend]
name = "{name}"
interface = "pub0"
pin_dir = "{pin}"
{runtime}
[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["{VIP_SMTP}"]
pool = "mx"
max_connections = 30000
max_per_client = 30000

[[pool]]
name = "mx"
identity = "none"
backend = [{list}]
{extra_pool}
[pool.health]
interval_ms = 200
timeout_ms = 3000
rise = 2
fall = 2
"#,
        name = lab.frontend(fe).name,
        pin = lab.pin_dir(fe).display(),
        list = list.join(", ")
    )
}

/// Starts Robustifier on front-end 0 as an operator pinning it would (`taskset -c SUT_CPU`:
/// it chooses its runtime for that one CPU), adds the VIP; returns its pid.
pub fn start_robustifier(lab: &mut Lab, config: &str) -> anyhow::Result<i32> {
    start_robustifier_at(lab, config, vip())
}

/// [`start_robustifier`] for a configuration whose service listens on `addr` (its VIP is
/// added to front-end 0 and probed from the client).
pub fn start_robustifier_at(lab: &mut Lab, config: &str, addr: SocketAddr) -> anyhow::Result<i32> {
    let pid = procs::started_on(SUT_CPU, || lab.start_frontend(0, config))??
        .pid()
        .as_raw();
    // Every thread, whatever started it, stays on the CPU under test.
    procs::pin_pid(pid, SUT_CPU)?;
    lab.frontend(0)
        .ns
        .ip(&["addr", "add", &format!("{}/32", addr.ip()), "dev", "pub0"])?;
    wait_port(&lab.client.ns, addr)?;
    Ok(pid)
}

/// `robustifier maps --json` of front-end 0.
pub fn maps(lab: &Lab) -> anyhow::Result<serde_json::Value> {
    let out = robustifier_lab::netns::run(
        std::process::Command::new(robustifier_lab::robustifier_bin())
            .args(["maps", "--json", "--pin-dir"])
            .arg(lab.pin_dir(0)),
    )?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// HAProxy 2.6 in TCP mode on front-end 0: roundrobin on [`HAPROXY_PORT`], leastconn on
/// [`HAPROXY_LEASTCONN_PORT`], roundrobin with splice on [`HAPROXY_SPLICE_PORT`], over
/// `backends`. Returns its pid.
pub fn start_haproxy(lab: &mut Lab, backends: usize, bind_any: bool) -> anyhow::Result<i32> {
    start_haproxy_on(lab, 0, backends, bind_any, "")
}

/// [`start_haproxy`] on front-end `fe`, with `server_opts` on every server line (e.g.
/// `maxconn 4`; a session over it waits in the queue for 5 s at most).
pub fn start_haproxy_on(
    lab: &mut Lab,
    fe: usize,
    backends: usize,
    bind_any: bool,
    server_opts: &str,
) -> anyhow::Result<i32> {
    let dir = lab.log_dir.clone();
    let name = format!("haproxy-{}", lab.frontend(fe).name);
    let servers: String = (0..backends)
        .map(|j| {
            format!(
                "  server be{} {}:25 {server_opts}\n",
                j + 1,
                internal_v4(11 + j as u8)
            )
        })
        .collect();
    let (rr, lc, sp) = if bind_any {
        (
            "*:25".to_owned(),
            format!("*:{HAPROXY_LEASTCONN_PORT}"),
            format!("*:{HAPROXY_SPLICE_PORT}"),
        )
    } else {
        (
            fe_addr(HAPROXY_PORT).to_string(),
            fe_addr(HAPROXY_LEASTCONN_PORT).to_string(),
            fe_addr(HAPROXY_SPLICE_PORT).to_string(),
        )
    };
    let conf = format!(
        "global\n  maxconn 9200\n  maxpipes 200\n  nbthread 1\n  pidfile {pid}\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  timeout queue 5s\n\
         frontend rr\n  bind {rr}\n  default_backend rr\n\
         frontend lc\n  bind {lc}\n  default_backend lc\n\
         frontend sp\n  bind {sp}\n  option splice-auto\n  default_backend rr\n\
         backend rr\n  balance roundrobin\n{servers}\
         backend lc\n  balance leastconn\n{servers}",
        pid = dir.join(format!("{name}.pid")).display(),
    );
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, conf)?;
    let ns = lab.frontend(fe).ns.clone();
    let p = path.to_string_lossy().into_owned();
    let pid = spawn_pinned(lab, &ns, &name, SUT_CPU, &["haproxy", "-db", "-f", &p])?;
    let probe = if bind_any {
        SocketAddr::new(lab.frontend(fe).v4.into(), 25)
    } else {
        fe_addr(HAPROXY_PORT)
    };
    wait_started(lab, &ns, probe, &name)?;
    Ok(pid)
}

/// A second HAProxy on front-end 0, `name`, relaying TCP to the single `server`: plainly
/// on `port`, with splice(2) on `splice_port`. Returns its pid.
pub fn start_haproxy_relay(
    lab: &mut Lab,
    name: &str,
    port: u16,
    splice_port: u16,
    server: SocketAddr,
) -> anyhow::Result<i32> {
    let dir = lab.log_dir.clone();
    let conf = format!(
        "global\n  maxconn 1000\n  maxpipes 200\n  nbthread 1\n  pidfile {pid}\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend plain\n  bind {plain}\n  default_backend be\n\
         frontend sp\n  bind {sp}\n  option splice-auto\n  default_backend be\n\
         backend be\n  server be1 {server}\n",
        pid = dir.join(format!("{name}.pid")).display(),
        plain = fe_addr(port),
        sp = fe_addr(splice_port),
    );
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, conf)?;
    let ns = lab.frontend(0).ns.clone();
    let p = path.to_string_lossy().into_owned();
    let pid = spawn_pinned(lab, &ns, name, SUT_CPU, &["haproxy", "-db", "-f", &p])?;
    wait_started(lab, &ns, fe_addr(port), name)?;
    Ok(pid)
}

/// nginx 1.22's mail proxy (SMTP) on front-end 0 in front of `upstream`, with its
/// auth_http responder; returns the pids to account (master, worker, responder).
pub fn start_nginx(lab: &mut Lab, upstream: SocketAddr) -> anyhow::Result<Vec<i32>> {
    start_nginx_mail(lab, "nginx", "smtp", NGINX_PORT, AUTH_HTTP, upstream)
}

/// nginx's mail proxy on front-end 0 speaking `protocol` ("smtp", "pop3") on `port`, as
/// its own instance `name` (directory, logs), sending every login to `upstream` through
/// its own auth_http responder on `auth_http`; returns the pids to account (master, worker,
/// responder).
pub fn start_nginx_mail(
    lab: &mut Lab,
    name: &str,
    protocol: &str,
    port: u16,
    auth_http: &str,
    upstream: SocketAddr,
) -> anyhow::Result<Vec<i32>> {
    nginx_mail(lab, name, protocol, port, auth_http, upstream, false)
}

/// [`start_nginx`] with nginx daemonising itself, as its binary upgrade needs: a master
/// whose parent never changes takes itself for the new binary of an upgrade still under
/// way and ignores USR2 (so it never upgrades under `daemon off`). The lab does not own
/// that master: the caller ends it by the pid in `DIR/nginx.pid` (the first pid returned).
pub fn start_nginx_daemon(lab: &mut Lab, upstream: SocketAddr) -> anyhow::Result<Vec<i32>> {
    nginx_mail(lab, "nginx", "smtp", NGINX_PORT, AUTH_HTTP, upstream, true)
}

fn nginx_mail(
    lab: &mut Lab,
    name: &str,
    protocol: &str,
    port: u16,
    auth_http: &str,
    upstream: SocketAddr,
    daemon: bool,
) -> anyhow::Result<Vec<i32>> {
    let dir = lab.log_dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let ns = lab.frontend(0).ns.clone();
    let exe = auth_http_bin();
    anyhow::ensure!(
        exe.exists(),
        "{} is missing (`cargo xtask bench` compiles it)",
        exe.display()
    );
    let exe = exe.to_string_lossy().into_owned();
    let up = upstream.to_string();
    let responder_name = format!("auth-http-{name}");
    let responder = spawn_pinned(
        lab,
        &ns,
        &responder_name,
        SUT_CPU,
        &[&exe, "--listen", auth_http, "--upstream", &up],
    )?;
    wait_started(lab, &ns, auth_http.parse()?, &responder_name)?;
    let conf = format!(
        "load_module /usr/lib/nginx/modules/ngx_mail_module.so;\n\
         user nobody nogroup;\nworker_processes 1;\ndaemon {daemon};\nmaster_process on;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nworker_rlimit_nofile 19000;\n\
         events {{ worker_connections 18000; }}\n\
         mail {{\n  server_name mx.bench.invalid;\n  auth_http {auth_http}/auth;\n\
         smtp_auth none;\n  xclient off;\n  pop3_auth plain;\n  proxy_pass_error_message on;\n\
         server {{ listen {listen}; protocol {protocol}; }}\n}}\n",
        d = dir.display(),
        listen = fe_addr(port),
        daemon = if daemon { "on" } else { "off" },
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let d = dir.to_string_lossy().into_owned();
    let p = path.to_string_lossy().into_owned();
    let e = format!("{d}/startup.log");
    // By its full path: a binary upgrade executes argv[0] as it stands.
    let nginx = robustifier_lab::privileged::which("nginx")
        .map_or_else(|| "nginx".to_owned(), |p| p.to_string_lossy().into_owned());
    let master = spawn_pinned(
        lab,
        &ns,
        name,
        SUT_CPU,
        &[&nginx, "-e", &e, "-p", &d, "-c", &p],
    )?;
    wait_started(lab, &ns, fe_addr(port), name)?;
    let master = if daemon {
        let pid_file = dir.join("nginx.pid");
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no pid in {}", pid_file.display()))?
    } else {
        master
    };
    let mut pids = procs::tree(master);
    pids.push(responder);
    Ok(pids)
}

/// The auth_http responder program (`bench/responder/auth_http.rs`), which `cargo xtask
/// bench` compiles optimised next to the proxy under test.
pub fn auth_http_bin() -> std::path::PathBuf {
    robustifier_lab::robustifier_bin().with_file_name("bench-auth-http")
}

/// A back-end for idle sessions: greets every connection and holds it, answering any line
/// with 250 and QUIT with 221 (enough for health probes). One thread polls every socket
/// (smtp-sink stops greeting after a few hundred open sessions).
pub fn serve_greeter(listen: SocketAddr) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    let l = TcpListener::bind(listen)?;
    l.set_nonblocking(true)?;
    let mut conns: Vec<std::net::TcpStream> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(l.as_raw_fd())
            .chain(conns.iter().map(|c| c.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n <= 0 {
            continue;
        }
        for i in (1..fds.len()).rev() {
            if fds[i].revents == 0 {
                continue;
            }
            let c = &mut conns[i - 1];
            let keep = match c.read(&mut buf) {
                Ok(0) => false,
                Ok(k) => {
                    let text = String::from_utf8_lossy(&buf[..k]).to_ascii_uppercase();
                    let quit = text.contains("QUIT");
                    let lines = text.matches('\n').count().max(1);
                    let mut out = "250 ok\r\n".repeat(lines - usize::from(quit));
                    if quit {
                        out.push_str("221 bye\r\n");
                    }
                    c.write_all(out.as_bytes()).is_ok() && !quit
                }
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            };
            if !keep {
                conns.swap_remove(i - 1);
            }
        }
        if fds[0].revents != 0 {
            loop {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.write_all(b"220 greeter.bench.invalid ESMTP\r\n");
                        if c.set_nonblocking(true).is_ok() {
                            conns.push(c);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // Out of descriptors: wait for the client side to let go.
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(50));
                        break;
                    }
                }
            }
        }
    }
}

/// Starts [`serve_greeter`] (through this executable) on back-end `i` port 25.
pub fn greeter(lab: &mut Lab, i: usize) -> anyhow::Result<SocketAddr> {
    let addr = SocketAddr::new(internal_v4(11 + i as u8).into(), 25);
    let ns = lab.backends[i].ns.clone();
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    let a = addr.to_string();
    spawn_pinned(
        lab,
        &ns,
        &format!("greeter{i}"),
        LOAD_CPU,
        &[&exe, "bench-greeter", "--listen", &a],
    )?;
    wait_port(&ns, addr)?;
    Ok(addr)
}

/// HAProxy in master-worker mode for reloads: roundrobin on [`HAPROXY_PORT`] of front-end 0
/// over `backends`, a master CLI socket for `reload`. The master stays in the foreground
/// (its pid is the lab's process) and re-executes itself on each reload.
pub struct HaproxyMaster {
    pub pid: i32,
    pub config: std::path::PathBuf,
    pub master_socket: std::path::PathBuf,
}

/// The configuration of [`start_haproxy_master`]; `last_weight` is the weight of the last
/// server (a reload that changes it applies something real).
pub fn haproxy_master_config(backends: usize, last_weight: u32) -> String {
    let servers: String = (0..backends)
        .map(|j| {
            let weight = if j + 1 == backends { last_weight } else { 100 };
            format!(
                "  server be{} {}:25 weight {weight}\n",
                j + 1,
                internal_v4(11 + j as u8)
            )
        })
        .collect();
    format!(
        "global\n  maxconn 9200\n  nbthread 1\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend rr\n  bind {rr}\n  default_backend rr\n\
         backend rr\n  balance roundrobin\n{servers}",
        rr = fe_addr(HAPROXY_PORT),
    )
}

/// Starts [`HaproxyMaster`] with [`haproxy_master_config`] (last server's weight 100).
pub fn start_haproxy_master(lab: &mut Lab, backends: usize) -> anyhow::Result<HaproxyMaster> {
    let dir = lab.log_dir.clone();
    let name = "haproxy-master";
    let config = dir.join(format!("{name}.cfg"));
    let master_socket = dir.join(format!("{name}.sock"));
    std::fs::write(&config, haproxy_master_config(backends, 100))?;
    let ns = lab.frontend(0).ns.clone();
    let c = config.to_string_lossy().into_owned();
    let s = master_socket.to_string_lossy().into_owned();
    let pid = spawn_pinned(
        lab,
        &ns,
        name,
        SUT_CPU,
        &["haproxy", "-W", "-db", "-S", &s, "-f", &c],
    )?;
    wait_started(lab, &ns, fe_addr(HAPROXY_PORT), name)?;
    Ok(HaproxyMaster {
        pid,
        config,
        master_socket,
    })
}

/// Sends `command` to HAProxy's master CLI socket; its answer.
pub fn haproxy_master_command(socket: &std::path::Path, command: &str) -> anyhow::Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| anyhow::anyhow!("{}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("{command}\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
