//! The lab's RADIUS directory: FreeRADIUS (`freeradius -f`) with a configuration of our
//! own under the lab's log folder, in a lab namespace on a lab address. One client (the
//! front-ends' addresses) with the lab's secret and `require_message_authenticator = yes`;
//! the `files` module's users file accepts each lab mailbox on its name alone
//! (`Auth-Type := Accept`) with its routes as reply attributes, and rejects every other
//! name.
//!
//! | attribute | holds | used by |
//! |---|---|---|
//! | Reply-Message | the SMTP pool (be1, be2, be3) | SMTP recipients |
//! | Filter-Id | the submission pool (sub-be1, sub-be2) | submission users |
//! | Framed-Pool | the POP3 pool (pop-be1, pop-be2, pop-be3) | POP3 users |

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;

use crate::{Daemon, Lab, Netns, cluster::BACKENDS, process::Signal};

/// The shared secret of the lab's client.
pub const SECRET: &str = "lab-radius-secret-7f3c";
pub const PORT: u16 = 1812;

/// One user of the users file: its name and reply attributes (`Reply-Message`, ...).
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub reply: Vec<(String, String)>,
}

impl User {
    pub fn new(name: &str, reply: &[(&str, &str)]) -> User {
        User {
            name: name.to_owned(),
            reply: reply
                .iter()
                .map(|(a, v)| ((*a).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// The lab cluster's mailboxes with their pools (see the module's table).
pub fn lab_users() -> Vec<User> {
    let mut users = Vec::new();
    for (j, (_, mailboxes)) in BACKENDS.iter().enumerate() {
        let n = j + 1;
        for (address, _) in mailboxes.iter() {
            let smtp = format!("be{n}");
            let pop = format!("pop-be{n}");
            let sub = format!("sub-be{n}");
            let mut reply = vec![
                ("Reply-Message", smtp.as_str()),
                ("Framed-Pool", pop.as_str()),
            ];
            // The lab has submission pools for be1 and be2 only.
            if n <= 2 {
                reply.push(("Filter-Id", sub.as_str()));
            }
            users.push(User::new(address, &reply));
        }
    }
    users
}

/// A FreeRADIUS server of the lab; ended (by pid) when dropped.
pub struct FreeRadius {
    pub address: SocketAddr,
    /// The secret, in a file for `secret_file`.
    pub secret_file: PathBuf,
    conf_dir: PathBuf,
    ns: Netns,
    log: PathBuf,
    daemon: Option<Daemon>,
    paused: bool,
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl FreeRadius {
    /// Writes the configuration under `lab`'s log folder (in `name`/) and starts FreeRADIUS
    /// in `ns`, listening on `ip`:1812, answering `clients` with [`SECRET`].
    pub fn start(
        lab: &Lab,
        ns: &Netns,
        name: &str,
        ip: IpAddr,
        clients: &[IpAddr],
        users: &[User],
    ) -> anyhow::Result<FreeRadius> {
        let dir = lab.log_dir.join(name);
        for sub in ["log", "run"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let d = dir.display();
        let mut conf = format!(
            r#"# FreeRADIUS for the lab's directory tests: written by tests/src/directory/radius.rs.
prefix = /usr
localstatedir = {d}
logdir = {d}/log
run_dir = {d}/run
raddbdir = {d}
confdir = {d}
libdir = /usr/lib/freeradius
dictdir = /usr/share/freeradius
pidfile = {d}/run/radiusd.pid
name = freeradius
max_request_time = 5
cleanup_delay = 1
# Answered requests are kept for cleanup_delay and count against max_requests: the bench's
# cache-miss case asks well over a thousand a second, and at the default (1024) FreeRADIUS
# dropped the rest ("Dropping request (1025 is too many)").
max_requests = 16384
hostname_lookups = no
log {{
	destination = stdout
	auth = yes
}}
security {{
	allow_core_dumps = no
	max_attributes = 200
	# Unknown names are answered at once: the tests' lookups have a deadline.
	reject_delay = 0
	status_server = no
}}
thread pool {{
	start_servers = 1
	max_servers = 4
	min_spare_servers = 1
	max_spare_servers = 4
	max_requests_per_server = 0
}}
modules {{
	files {{
		filename = {d}/users
	}}
}}
"#
        );
        for (i, c) in clients.iter().enumerate() {
            conf.push_str(&format!(
                "client lab{i} {{\n\tipaddr = {c}\n\tsecret = {}\n\trequire_message_authenticator = yes\n}}\n",
                quoted(SECRET)
            ));
        }
        conf.push_str(&format!(
            r#"server default {{
	listen {{
		type = auth
		ipaddr = {ip}
		port = {PORT}
	}}
	authorize {{
		files
	}}
	authenticate {{
	}}
	# FreeRADIUS 3.2.1 (Debian 12) signs a reply with a Message-Authenticator only when
	# the policy asks for one; the front-end trusts no reply without it.
	post-auth {{
		update reply {{
			&Message-Authenticator := 0x00
		}}
		Post-Auth-Type REJECT {{
			update reply {{
				&Message-Authenticator := 0x00
			}}
		}}
	}}
}}
"#
        ));
        std::fs::write(dir.join("radiusd.conf"), conf)?;
        let mut text = String::new();
        for u in users {
            text.push_str(&format!("{} Auth-Type := Accept\n", quoted(&u.name)));
            let lines: Vec<String> = u
                .reply
                .iter()
                .map(|(a, v)| format!("\t{a} := {}", quoted(v)))
                .collect();
            text.push_str(&lines.join(",\n"));
            text.push_str("\n\n");
        }
        text.push_str("DEFAULT Auth-Type := Reject\n");
        std::fs::write(dir.join("users"), text)?;
        let secret_file = dir.join("secret");
        std::fs::write(&secret_file, format!("{SECRET}\n"))?;
        let mut server = FreeRadius {
            address: SocketAddr::new(ip, PORT),
            secret_file,
            conf_dir: dir.clone(),
            ns: ns.clone(),
            log: lab.log_dir.join(format!("{name}.log")),
            daemon: None,
            paused: false,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts FreeRADIUS again (after [`FreeRadius::stop`]) and waits until it serves.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let mut cmd = self.ns.command("freeradius");
        cmd.arg("-f")
            .arg("-l")
            .arg("stdout")
            .arg("-d")
            .arg(&self.conf_dir);
        let mut daemon = Daemon::spawn("freeradius", cmd, self.log.clone())?;
        daemon
            .wait_for_log("Ready to process requests", Duration::from_secs(20))
            .context("FreeRADIUS did not come up")?;
        self.daemon = Some(daemon);
        Ok(())
    }

    /// Ends FreeRADIUS (by its pid): requests meet a closed port.
    pub fn stop(&mut self) {
        self.resume();
        if let Some(mut d) = self.daemon.take() {
            let _ = d.stop();
        }
    }

    /// Freezes FreeRADIUS (SIGSTOP): requests go unanswered, as with a hung server.
    pub fn pause(&mut self) {
        if let Some(d) = &self.daemon {
            let _ = nix::sys::signal::kill(d.pid(), Signal::SIGSTOP);
            self.paused = true;
        }
    }

    pub fn resume(&mut self) {
        if let Some(d) = &self.daemon
            && self.paused
        {
            let _ = nix::sys::signal::kill(d.pid(), Signal::SIGCONT);
        }
        self.paused = false;
    }

    /// What this server logged (all runs).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FreeRadius {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `[[directory]]` TOML for a RADIUS directory `name` asking `servers` for `attribute`.
pub fn directory_toml(
    name: &str,
    servers: &[SocketAddr],
    secret_file: &std::path::Path,
    attribute: &str,
    extra: &str,
) -> String {
    let servers: Vec<String> = servers.iter().map(|s| quoted(&s.to_string())).collect();
    format!(
        "[[directory]]\nname = {}\n{extra}\n[directory.radius]\nservers = [{}]\nsecret_file = {}\nattribute = {}\n",
        quoted(name),
        servers.join(", "),
        quoted(&secret_file.display().to_string()),
        quoted(attribute),
    )
}
