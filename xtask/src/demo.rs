//! `cargo xtask demo`: the main job at this stage. A lab with a client, two front-ends and
//! four back-end hosts; front-end A runs Robustifier with XDP and steering; the client
//! connects to the SMTP and POP3 virtual IPs with real clients, a block-listed source
//! tries and is dropped in XDP; then the counters and load records are shown.

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::Context as _;
use robustifier_lab::{
    Lab, Plan, client,
    topology::{VIP_POP, VIP_SMTP, VIP_SMTP_V6, internal_v4, public_v4},
};

use crate::{
    lab, setup,
    util::{cargo, root},
};

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    cargo(&["build", "-p", "robustifier"])?;
    // A demo interrupted earlier may have left its lab behind.
    lab::down("rbdemo");
    let prefix = format!("rbdemo{}", std::process::id());
    println!(
        "\n== lab {prefix}: client, fe-a, fe-b, be1..be4 on two bridges (198.18.0.0/24 public, 198.18.1.0/24 back-end)"
    );
    let mut lab = Lab::up(&prefix, Plan::FULL)?;
    let blocked = public_v4(66);
    lab.client
        .ns
        .ip(&["addr", "add", &format!("{blocked}/24"), "dev", "eth0"])?;

    let backends: Vec<String> = (0..4)
        .map(|j| {
            format!(
                "{{ name = \"be{}\", address = \"{}:25\" }}",
                j + 1,
                internal_v4(11 + j as u8)
            )
        })
        .collect();
    let config = format!(
        r#"[frontend]
name = "fe-a.lab"
interface = "pub0"
pin_dir = "{pin}"

[flood]
syn_rate_per_sec = 50
syn_burst = 100
block = ["{blocked}/32"]

[[service]]
name = "smtp"
protocol = "smtp"
port = 25
vips = ["{VIP_SMTP}", "{VIP_SMTP_V6}"]

[[service]]
name = "pop3"
protocol = "pop3"
port = 110
vips = ["{VIP_POP}"]

[[pool]]
name = "mx"
backend = [{backends}]
"#,
        pin = lab.pin_dir(0).display(),
        backends = backends.join(", ")
    );
    println!(
        "\n== front-end A: robustifier run (config {})",
        lab.log_dir.join("fea.toml").display()
    );
    let daemon = lab.start_frontend(0, &config)?;
    for line in daemon
        .log_text()
        .lines()
        .filter(|l| !l.contains(" INFO ") && !l.contains(" WARN "))
    {
        println!("   {line}");
    }
    let fe = lab.frontend(0).ns.clone();
    fe.ip(&["addr", "add", &format!("{VIP_SMTP}/32"), "dev", "pub0"])?;
    fe.ip(&["addr", "add", &format!("{VIP_POP}/32"), "dev", "pub0"])?;
    fe.ip(&[
        "addr",
        "add",
        &format!("{VIP_SMTP_V6}/128"),
        "dev",
        "pub0",
        "nodad",
    ])?;
    println!(
        "   VIPs {VIP_SMTP}, {VIP_SMTP_V6} (SMTP) and {VIP_POP} (POP3) added on fe-a after start: the proxy binds none of them"
    );

    let c = lab.client.ns.clone();
    println!("\n== client: swaks --server {VIP_SMTP} --quit-after CONNECT");
    let out = c
        .command("swaks")
        .args([
            "--server",
            &VIP_SMTP.to_string(),
            "--quit-after",
            "CONNECT",
            "--timeout",
            "5",
        ])
        .output()?;
    print_indented(&String::from_utf8_lossy(&out.stdout));
    println!("\n== client: swaks -6 --server {VIP_SMTP_V6} --quit-after CONNECT");
    let out = c
        .command("swaks")
        .args([
            "-6",
            "--server",
            &VIP_SMTP_V6.to_string(),
            "--quit-after",
            "CONNECT",
            "--timeout",
            "5",
        ])
        .output()?;
    print_indented(&String::from_utf8_lossy(&out.stdout));
    println!("\n== client: POP3 to {VIP_POP}:110");
    let pop =
        c.enter(|| client::dialogue(SocketAddr::new(VIP_POP.into(), 110), None, &["QUIT"]))??;
    print_indented(&pop.join("\n"));
    println!("\n== client from block-listed {blocked}: connect to {VIP_SMTP}:25");
    let tried = c.enter(move || {
        client::connect(
            SocketAddr::new(VIP_SMTP.into(), 25),
            Some(blocked.into()),
            Duration::from_secs(1),
        )
    })?;
    println!(
        "   {}",
        match tried {
            Ok(_) => "connected (unexpected!)".to_owned(),
            Err(e) => format!("no connection ({e}): SYN dropped in XDP"),
        }
    );

    println!(
        "\n== robustifier maps --pin-dir {}",
        lab.pin_dir(0).display()
    );
    let maps = Command::new(root().join("target/debug/robustifier"))
        .args(["maps", "--pin-dir"])
        .arg(lab.pin_dir(0))
        .output()
        .context("robustifier maps")?;
    print_indented(&String::from_utf8_lossy(&maps.stdout));
    println!(
        "\n== bpftool map dump pinned {}/rb_backends (first record)",
        lab.pin_dir(0).display()
    );
    let dump = Command::new("bpftool")
        .args(["map", "lookup", "pinned"])
        .arg(lab.pin_dir(0).join("rb_backends"))
        .args(["key", "0", "0", "0", "0"])
        .output()?;
    print_indented(&String::from_utf8_lossy(&dump.stdout));

    lab.down()?;
    println!("\n== lab {prefix} removed");
    Ok(())
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}
