//! The manager's web interface: a plain HTTPS client for what the API refuses, and
//! Debian's chromium, headless over the DevTools protocol, for what an operator sees and
//! does. The manager, members and fake front-ends are `support::cluster`'s: processes of
//! the built binary on loopback, each member before a control socket this test answers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a step that fails fails the test"
)]

mod support;

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use support::{
    PATIENCE,
    cluster::{Answers, Cluster, text, wait_until},
};

/// The certificates, the manager running with its web interface, and `members` each with
/// its fake front-end (not started), which reports virtual routers, fe2 a back-end's load
/// record, and statistics.
fn cluster(tag: &str, members: &[&str]) -> Cluster {
    let answers = Answers {
        router: Some(router),
        backends: Some(load_record),
        stats: Some(fake_minutes),
    };
    Cluster::init(support::tempdir(tag), members, &[], Some(answers))
        .with_web()
        .started()
}

/// fe2's load record of its back-end mx1 (fe1 reports none, as an older release would).
fn load_record(name: &str) -> &'static str {
    if name != "fe2" {
        return "";
    }
    r#"{"pool":"mx","name":"mx1","state":"up","overloaded":false,"weight":100,"active_sessions":3,"response_us":1500,"run_queue_milli":520,"mail_queue":7,"disk_permille":431}"#
}

/// A fake front-end's statistics: the three minutes before `now` (its start), service
/// smtp with 2, 4 and 6 sessions (12 in all), those after `since`.
fn fake_minutes(now: u64, since: u64) -> String {
    let minutes: Vec<serde_json::Value> = (1..=3u64)
        .map(|i| (now - 4 + i, 2 * i))
        .filter(|(m, _)| *m > since)
        .map(|(m, n)| {
            serde_json::json!({
                "minute": m,
                "services": { "smtp": { "sessions": n, "messages": n, "recipients": n } },
                "pools": { "mx": { "sessions": n, "messages": n, "recipients": n } },
            })
        })
        .collect();
    serde_json::to_string(&minutes).unwrap()
}

/// One virtual router of a fake front-end: fe1 (198.18.0.1) is the master of
/// 198.18.0.10, the others back it up.
fn router(name: &str) -> String {
    let (me, state) = match name {
        "fe1" => ("198.18.0.1", "master"),
        _ => ("198.18.0.2", "backup"),
    };
    serde_json::json!({
        "vrid": 51, "family": "ipv4", "interface": "eth0", "state": state,
        "priority": 100, "configured_priority": 100, "primary": me,
        "master": "198.18.0.1", "vips": ["198.18.0.10"],
        "advert_interval_cs": 100, "master_adver_interval_cs": 100,
        "released": false, "draining": false, "failing": [], "last_transition": null,
    })
    .to_string()
}

// --- HTTPS without a browser ---

/// One HTTP/1.1 answer: the status, the headers (names in lower case) and the body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Cluster {
    /// A request to the web interface over TLS that trusts only the cluster's CA, as the
    /// manager's certificate names itself.
    fn https(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        use std::io::Read as _;
        let name = rustls::pki_types::ServerName::try_from(
            robustifier::manager::pki::MANAGER_NAME.to_owned(),
        )
        .unwrap();
        let conn = rustls::ClientConnection::new(self.tls_without_certificate(), name).unwrap();
        let tcp = std::net::TcpStream::connect(("127.0.0.1", self.web_port())).unwrap();
        tcp.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        tls.write_all(request.as_bytes()).unwrap();
        let mut raw = Vec::new();
        // The server closes after the answer; a close without close_notify still leaves
        // the whole answer read.
        let _ = tls.read_to_end(&mut raw);
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        let body = if head.to_lowercase().contains("transfer-encoding: chunked") {
            unchunk(body)
        } else {
            body.to_owned()
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// `cluster web`: a login link.
    fn login_link(&self) -> String {
        let out = self.cli(&["web"]);
        assert!(out.status.success(), "{}", text(&out));
        let link = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert!(
            link.starts_with(&format!("https://127.0.0.1:{}/login#", self.web_port())),
            "{link}"
        );
        link
    }
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn token_of(link: &str) -> String {
    link.split_once('#').unwrap().1.to_owned()
}

#[test]
fn the_api_needs_a_session_its_csrf_header_and_a_fresh_token() {
    let c = cluster("api", &["fe1"]);
    c.commit_ok(&c.config(1, "", ""), 0, &[]);

    // Nothing but the login page without a session.
    for path in [
        "/api/status",
        "/api/alarms",
        "/api/logs",
        "/api/journal",
        "/app.js",
    ] {
        let a = c.https("GET", path, &[], "");
        assert_eq!(a.status, 401, "{path}: {}", a.body);
    }
    let a = c.https("GET", "/", &[], "");
    assert_eq!((a.status, a.header("location")), (303, Some("/login")));
    assert_eq!(c.https("GET", "/login", &[], "").status, 200);
    let a = c.https("POST", "/api/confirm", &[], "");
    assert_eq!(a.status, 401, "{}", a.body);

    // A made-up token, then a good one once.
    let json = [("Content-Type", "application/json")];
    let a = c.https("POST", "/api/login", &json, r#"{"token":"made-up"}"#);
    assert_eq!(a.status, 401, "{}", a.body);
    let token = token_of(&c.login_link());
    let body = format!(r#"{{"token":"{token}"}}"#);
    let a = c.https("POST", "/api/login", &json, &body);
    assert_eq!(a.status, 200, "{}", a.body);
    let set = a.header("set-cookie").unwrap().to_owned();
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    let csrf = a.json()["csrf"].as_str().unwrap().to_owned();
    assert_eq!(a.json()["name"], "alice");
    let again = c.https("POST", "/api/login", &json, &body);
    assert_eq!(again.status, 401, "a used token: {}", again.body);

    // With the session: answers, with the security headers.
    let a = c.https("GET", "/api/status", &[("Cookie", &cookie)], "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["head"], 1);
    assert_eq!(a.header("x-frame-options"), Some("DENY"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    let csp = a.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // A POST without the CSRF header, or with another value, changes nothing.
    let commit = serde_json::json!({ "base": 1, "text": c.config(2, "", ""), "comment": "csrf" })
        .to_string();
    for headers in [
        vec![
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/json"),
        ],
        vec![
            ("Cookie", cookie.as_str()),
            ("Content-Type", "application/json"),
            ("X-Robustifier-Csrf", "guessed"),
        ],
    ] {
        let a = c.https("POST", "/api/commit", &headers, &commit);
        assert_eq!(a.status, 403, "{}", a.body);
    }
    assert_eq!(c.head(), 1, "a refused POST committed nothing");
    let with = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/json"),
        ("X-Robustifier-Csrf", csrf.as_str()),
    ];
    let a = c.https("POST", "/api/commit", &with, &commit);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(c.head(), 2);
    let log = c.log();
    assert_eq!(log[1]["author"], "alice (web)", "{log:?}");

    // A trace of what nothing names is an empty answer, not an error.
    let a = c.https("GET", "/api/trace?id=x", &[("Cookie", &cookie)], "");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["messages"], serde_json::json!([]), "{}", a.body);

    // Logged out, the cookie is worth nothing.
    assert_eq!(c.https("POST", "/api/logout", &with, "{}").status, 200);
    let a = c.https("GET", "/api/status", &[("Cookie", &cookie)], "");
    assert_eq!(a.status, 401, "{}", a.body);
}

// --- in chromium ---

fn screenshots() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/web-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn shoot(tab: &headless_chrome::Tab, name: &str) {
    use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Evaluates `js` in the page and returns its value as a string.
fn eval(tab: &headless_chrome::Tab, js: &str) -> String {
    let v = tab.evaluate(js, true).unwrap();
    match v.value {
        Some(serde_json::Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// Opens one of the interface's pages and waits until it has drawn its data.
fn open(tab: &headless_chrome::Tab, page: &str) {
    eval(
        tab,
        &format!(
            "document.getElementById('page-{page}').removeAttribute('data-loaded'); \
             location.hash = '#{page}'; 'ok'"
        ),
    );
    tab.wait_for_element(&format!("#page-{page}[data-loaded]"))
        .unwrap_or_else(|e| panic!("page {page}: {e}"));
}

#[test]
fn an_operator_works_the_cluster_from_chromium() {
    use headless_chrome::{Browser, LaunchOptions, protocol::cdp::types::Event};

    let mut c = cluster("chromium", &["fe1", "fe2"]);
    c.start_member("fe1");
    c.start_member("fe2");
    c.commit_ok(&c.config(1, "", ""), 0, &["--comment", "first"]);
    c.wait_applied(1);
    // fe1's back-end goes down: an alarm raised on fe1, merged at the manager.
    c.fakes["fe1"].emit(1);
    wait_until("fe1's event merged", || {
        let out = c.cli(&["logs", "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("backend_down")
    });

    let profile = c.dir.join("chromium-profile");
    let browser = Browser::new(LaunchOptions {
        headless: true,
        // Root in a container has no user namespaces for chromium's sandbox.
        sandbox: false,
        path: Some(PathBuf::from("/usr/bin/chromium")),
        // The cluster's own CA, which this throw-away profile does not trust.
        ignore_certificate_errors: true,
        window_size: Some((1400, 1000)),
        user_data_dir: Some(profile),
        idle_browser_timeout: PATIENCE * 4,
        ..LaunchOptions::default()
    })
    .unwrap();
    let tab = browser.new_tab().unwrap();
    tab.set_default_timeout(PATIENCE);

    // Everything the page reports as wrong: console errors, exceptions, failed loads and
    // answers of 400 and above.
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    tab.enable_log().unwrap();
    tab.enable_runtime().unwrap();
    let p = problems.clone();
    tab.add_event_listener(Arc::new(move |event: &Event| {
        let problem = match event {
            Event::LogEntryAdded(e) => {
                let level = format!("{:?}", e.params.entry.level);
                (level == "Error" || level == "Warning").then(|| {
                    format!(
                        "log {level}: {} {:?}",
                        e.params.entry.text, e.params.entry.url
                    )
                })
            }
            Event::RuntimeExceptionThrown(e) => {
                Some(format!("exception: {:?}", e.params.exception_details.text))
            }
            Event::RuntimeConsoleAPICalled(e) => {
                let kind = format!("{:?}", e.params.Type);
                (kind == "Error" || kind == "Warning")
                    .then(|| format!("console {kind}: {:?}", e.params.args))
            }
            _ => None,
        };
        if let Some(problem) = problem {
            p.lock().unwrap().push(problem);
        }
    }))
    .unwrap();
    let p = problems.clone();
    tab.register_response_handling(
        "status",
        Box::new(move |r, _| {
            if r.response.status >= 400 {
                p.lock()
                    .unwrap()
                    .push(format!("{} answered {}", r.response.url, r.response.status));
            }
        }),
    )
    .unwrap();
    let p = problems.clone();
    tab.register_loading_failed_handling(
        "failed",
        Box::new(move |r, f| {
            p.lock()
                .unwrap()
                .push(format!("{} failed: {}", r.response.url, f.error_text));
        }),
    )
    .unwrap();

    // The link logs in and opens the overview.
    let link = c.login_link();
    tab.navigate_to(&link).unwrap();
    tab.wait_for_element("#page-overview[data-loaded]").unwrap();
    assert_eq!(
        eval(&tab, "document.getElementById('who').textContent"),
        "alice"
    );
    let href = eval(&tab, "location.href");
    assert!(
        !href.contains(&token_of(&link)),
        "the token stayed in {href}"
    );
    // The watch on the page sees problems: a console error and a 404, then forgotten.
    assert!(
        problems.lock().unwrap().is_empty(),
        "{:#?}",
        problems.lock().unwrap()
    );
    eval(&tab, "console.error('probe'); fetch('/no-such-page'); 'ok'");
    wait_until("the probes seen", || {
        let p = problems.lock().unwrap();
        p.iter().any(|l| l.contains("probe")) && p.iter().any(|l| l.contains("/no-such-page"))
    });
    problems.lock().unwrap().clear();

    // The members and their versions are those of `cluster status --json`.
    let shown: Vec<Vec<String>> = serde_json::from_str(&eval(
        &tab,
        "JSON.stringify([...document.querySelectorAll('#members tbody tr')].map(tr => \
         [tr.dataset.member, tr.cells[2].textContent, tr.cells[3].textContent, tr.cells[4].textContent]))",
    ))
    .unwrap();
    let status = c.status();
    let expected: Vec<Vec<String>> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            vec![
                m["name"].as_str().unwrap().to_owned(),
                m["desired"].to_string(),
                m["applied"].to_string(),
                m["release"].as_str().unwrap().to_owned(),
            ]
        })
        .collect();
    assert_eq!(shown, expected);
    assert_eq!(shown.len(), 2);
    // The back-end fe1 reported down (from its alarm), fe2's load record, and the chart.
    tab.wait_for_element("#backends tbody td.bad").unwrap();
    wait_until("fe2's load record shown", || {
        eval(
            &tab,
            "[...document.querySelectorAll('#backends tbody tr')].map(tr => [...tr.cells].map(td => td.textContent).join(' ')).join('|')",
        )
        .contains("fe2 mx mx1 up 100 3 1.5 0.52 7 43.1")
    });
    tab.wait_for_element("#traffic-chart svg rect.bar").unwrap();
    // Each member's virtual router, and who is master of the address.
    wait_until("the virtual routers shown", || {
        let vips = eval(
            &tab,
            "[...document.querySelectorAll('#vips tbody tr')].map(tr => [...tr.cells].map(td => td.textContent).join(' ')).join('|')",
        );
        vips == "fe1 51 ipv4 master 100/100 198.18.0.1 (this member) 198.18.0.10|\
                 fe2 51 ipv4 backup 100/100 198.18.0.1 198.18.0.10"
    });
    shoot(&tab, "overview");

    // The alarm on the alarms page.
    open(&tab, "alarms");
    tab.wait_for_element("#alarms tr[data-alarm='fe1 backend_down:mx1']")
        .unwrap();
    shoot(&tab, "alarms");

    // The merged log, filtered by kind.
    open(&tab, "logs");
    let rows = |tab: &headless_chrome::Tab| {
        eval(
            tab,
            "[...document.querySelectorAll('#log-entries tbody tr')].map(tr => tr.textContent).join('|')",
        )
    };
    assert!(rows(&tab).contains("mx1"), "{}", rows(&tab));
    // Filtered by kind and text, and following: fe1's mx1 goes, fe2's mx2 comes.
    eval(
        &tab,
        "document.getElementById('logs-kind').value = 'backend_down'; \
         document.getElementById('logs-text').value = 'MX2'; \
         document.getElementById('logs-follow').checked = true; \
         document.getElementById('logs-apply').click(); 'ok'",
    );
    wait_until("the filter leaves nothing yet", || rows(&tab).is_empty());
    c.fakes["fe2"].emit(2);
    wait_until("the followed log shows fe2's event", || {
        rows(&tab).contains("mx2")
    });
    assert!(!rows(&tab).contains("mx1"), "{}", rows(&tab));
    shoot(&tab, "logs");

    // A commit from the editor, with a comment.
    open(&tab, "editor");
    let new_text = serde_json::to_string(&c.config(7, "", "")).unwrap();
    eval(
        &tab,
        &format!(
            "document.getElementById('editor-text').value = {new_text}; \
             document.getElementById('editor-comment').value = 'weight 7 from the web'; \
             document.getElementById('editor-commit').click(); 'ok'"
        ),
    );
    tab.wait_for_element("#editor-result.good").unwrap();
    shoot(&tab, "editor");
    c.wait_applied(2);
    let log = c.log();
    assert_eq!(log[1]["author"], "alice (web)");
    assert_eq!(log[1]["comment"], "weight 7 from the web");
    for (name, fake) in &c.fakes {
        let last = fake.reloads().last().cloned().unwrap();
        assert!(
            last.file.as_deref().unwrap_or("").contains("weight = 7"),
            "{name} applied: {last:?}"
        );
    }
    let out = c.cli(&["audit"]);
    let audit = text(&out);
    assert!(
        audit.lines().any(|l| l.contains("operator alice (web)")
            && l.contains("commit")
            && l.contains("version 2")),
        "{audit}"
    );

    // The journal shows it, and its diff.
    open(&tab, "journal");
    tab.wait_for_element("#versions tr[data-version='2']")
        .unwrap();
    eval(
        &tab,
        "document.querySelector(\"#versions tr[data-version='2'] button.diff\").click(); 'ok'",
    );
    tab.wait_for_element("#journal-view span.change").unwrap();
    let diff = eval(&tab, "document.getElementById('journal-view').textContent");
    let cli = c.cli(&["diff", "1", "2"]);
    assert_eq!(
        diff,
        String::from_utf8_lossy(&cli.stdout),
        "the journal's diff is the CLI's"
    );
    assert!(diff.contains("mx1"), "{diff}");
    shoot(&tab, "journal");

    // A rollback to version 1 happens only once confirmed in the page.
    eval(
        &tab,
        "document.querySelector(\"#versions tr[data-version='1'] button.rollback\").click(); 'ok'",
    );
    tab.wait_for_element("#versions tr[data-version='1'] button.confirm-rollback")
        .unwrap();
    assert_eq!(c.head(), 2, "no rollback before it is confirmed");
    eval(
        &tab,
        "document.querySelector(\"#versions tr[data-version='1'] button.confirm-rollback\").click(); 'ok'",
    );
    tab.wait_for_element("#versions tr[data-version='3']")
        .unwrap();
    c.wait_applied(3);
    assert_eq!(c.log()[2]["author"], "alice (web)");
    for (name, fake) in &c.fakes {
        let last = fake.reloads().last().cloned().unwrap();
        assert!(
            last.file.as_deref().unwrap_or("").contains("weight = 1"),
            "{name} applied: {last:?}"
        );
    }

    // A commit to confirm: the overview offers the confirmation, which keeps it.
    open(&tab, "editor");
    eval(&tab, "document.getElementById('editor-load').click(); 'ok'");
    wait_until("the editor is on version 3", || {
        eval(&tab, "document.getElementById('editor-base').textContent") == "3"
    });
    let confirm_text = serde_json::to_string(&c.config(9, "", "")).unwrap();
    eval(
        &tab,
        &format!(
            "document.getElementById('editor-result').className = ''; \
             document.getElementById('editor-text').value = {confirm_text}; \
             document.getElementById('editor-confirm').checked = true; \
             document.getElementById('editor-minutes').value = '10'; \
             document.getElementById('editor-commit').click(); 'ok'"
        ),
    );
    tab.wait_for_element("#editor-result.good").unwrap();
    assert!(
        !c.status()["pending"].is_null(),
        "version 4 awaits confirmation"
    );
    open(&tab, "overview");
    tab.wait_for_element("#pending:not([hidden]) #pending-confirm")
        .unwrap();
    shoot(&tab, "overview-pending");
    eval(
        &tab,
        "document.getElementById('pending-confirm').click(); 'ok'",
    );
    wait_until("version 4 confirmed", || c.status()["pending"].is_null());
    assert_eq!(c.head(), 4);
    let audit = text(&c.cli(&["audit"]));
    for action in ["rollback", "confirm"] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains("operator alice (web)") && l.contains(action)),
            "{action}: {audit}"
        );
    }

    // A message fe1 relayed, traced by its Message-ID: the front-end's record.
    c.fakes["fe1"]
        .events
        .emit(robustifier::events::Kind::MessageRelayed(Box::new(
            robustifier::events::Relayed {
                session: "s-web-1".into(),
                client: "198.18.2.7:40000".into(),
                service: "smtp".into(),
                helo: Some("client.example".into()),
                mail_from: "a@client.example".into(),
                rcpt_count: 1,
                rcpts: vec!["bob@example.test".into()],
                pool: "mx".into(),
                backend: "mx1".into(),
                route_reason: "default pool".into(),
                size: 1234,
                message_id: Some("<web-trace@client.example>".into()),
                queue_id: Some("4WEBQ1".into()),
            },
        )));
    wait_until("the record merged", || {
        text(&c.cli(&["trace", "<web-trace@client.example>", "--json"])).contains("4WEBQ1")
    });
    open(&tab, "trace");
    eval(
        &tab,
        "document.getElementById('trace-id').value = '<web-trace@client.example>'; \
         document.getElementById('trace-show').click(); 'ok'",
    );
    tab.wait_for_element("#trace-result section.traced")
        .unwrap();
    let traced = eval(&tab, "document.getElementById('trace-result').innerText");
    for want in [
        "4WEBQ1",
        "s-web-1",
        "198.18.2.7:40000",
        "back-end mx1",
        "fe1",
    ] {
        assert!(traced.contains(want), "{want} in {traced}");
    }
    shoot(&tab, "trace");

    // The members' statistics, charted: fe1 and fe2 each shipped 12 sessions.
    wait_until("both members' minutes stored", || {
        text(&c.cli(&["stats", "--json"])).lines().count() == 6
    });
    open(&tab, "stats");
    eval(&tab, "document.getElementById('stats-show').click(); 'ok'");
    tab.wait_for_element("#stats-table tbody tr").unwrap();
    let rows = eval(
        &tab,
        "Array.from(document.querySelectorAll('#stats-table tbody tr')).map(r => r.innerText.split('\\t').slice(0, 3).join(' ')).sort().join(';')",
    );
    assert_eq!(rows, "fe1 smtp 12;fe2 smtp 12", "{rows}");
    let bars = eval(
        &tab,
        "String(document.querySelectorAll('#stats-chart rect.bar').length)",
    );
    assert_eq!(bars, "3", "three minutes, three bars");
    shoot(&tab, "stats");

    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:#?}");
}
