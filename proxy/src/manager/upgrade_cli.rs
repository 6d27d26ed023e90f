//! `robustifier cluster upgrade`: the operator's side of a package rollout.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use base64::Engine as _;
use tokio::io::AsyncReadExt as _;

use super::{
    client::Client,
    upgrade::{CHUNK, MAX_PACKAGE, Rollout, RolloutState, StepState, UpgradeStatus},
    wire::Request,
};

const TIMEOUT: Duration = Duration::from_secs(60);

pub async fn upgrade(
    c: &mut Client,
    package: Option<PathBuf>,
    wait: bool,
    timeout: u64,
    status: bool,
    json: bool,
) -> anyhow::Result<()> {
    let Some(package) = package.filter(|_| !status) else {
        let v = c.call(&Request::UpgradeStatus, TIMEOUT).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", render_status(&serde_json::from_value(v)?));
        }
        return Ok(());
    };
    let (sha256, version) = upload(c, &package).await?;
    let v = c
        .call(
            &Request::Upgrade {
                sha256: sha256.clone(),
                timeout_secs: timeout,
            },
            TIMEOUT,
        )
        .await?;
    let rollout: Rollout = serde_json::from_value(v)?;
    println!(
        "rollout {} of {version} ({sha256}) started over {} members",
        rollout.id,
        rollout.steps.len()
    );
    if !wait {
        return Ok(());
    }
    let mut shown = String::new();
    // Each member's turn and a rollback, with room to spare: the manager's timeouts end
    // every step before this.
    let steps = u32::try_from(rollout.steps.len()).unwrap_or(u32::MAX);
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(timeout).saturating_mul(steps.saturating_add(2))
        + Duration::from_secs(60);
    loop {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "rollout {} still running; see `cluster upgrade --status`",
            rollout.id
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s: UpgradeStatus =
            serde_json::from_value(c.call(&Request::UpgradeStatus, TIMEOUT).await?)?;
        let r = s
            .rollout
            .filter(|r| r.id == rollout.id)
            .context("the rollout is gone from the manager")?;
        let now = render_rollout(&r);
        if now != shown {
            print!("{now}");
            shown = now;
        }
        let busy = r
            .steps
            .iter()
            .any(|s| matches!(s.state, StepState::Installing | StepState::RollingBack));
        let settled = !busy && !r.steps.iter().any(|s| s.state == StepState::Pending);
        match r.state {
            RolloutState::Done => return Ok(()),
            // The members after the one that failed stay as they are.
            RolloutState::Stopped if !busy => anyhow::bail!("rollout stopped: {}", r.message),
            RolloutState::Running if settled => {
                let away: Vec<&str> = r
                    .steps
                    .iter()
                    .filter(|s| s.state == StepState::Away)
                    .map(|s| s.member.as_str())
                    .collect();
                println!(
                    "every member present runs {}; upgraded when they return: {}",
                    r.version,
                    away.join(", ")
                );
                return Ok(());
            }
            _ => {}
        }
    }
}

/// Sends the package in chunks; its SHA-256 and the version the manager read from it.
async fn upload(c: &mut Client, path: &PathBuf) -> anyhow::Result<(String, String)> {
    let shown = path.display().to_string();
    let size = std::fs::metadata(path)
        .with_context(|| shown.clone())?
        .len();
    anyhow::ensure!(
        size <= MAX_PACKAGE,
        "{shown}: {size} bytes, over {MAX_PACKAGE}"
    );
    let hashed = path.clone();
    let sha256 = tokio::task::spawn_blocking(move || crate::install_update::sha256_file(&hashed))
        .await?
        .with_context(|| shown.clone())?;
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| shown.clone())?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    let mut version = String::new();
    while offset < size || offset == 0 {
        let mut n = 0;
        while n < buf.len() {
            let got = file.read(&mut buf[n..]).await?;
            if got == 0 {
                break;
            }
            n += got;
        }
        let v = c
            .call(
                &Request::PackageChunk {
                    sha256: sha256.clone(),
                    total: size,
                    offset,
                    data: base64::engine::general_purpose::STANDARD.encode(&buf[..n]),
                },
                TIMEOUT,
            )
            .await?;
        offset += n as u64;
        if let Some(v) = v["version"].as_str() {
            version = v.to_owned();
        }
        if n == 0 {
            break;
        }
    }
    anyhow::ensure!(
        !version.is_empty(),
        "the manager did not take the whole package"
    );
    println!("uploaded {shown}: version {version}, {size} bytes, sha256 {sha256}");
    Ok((sha256, version))
}

pub fn render_status(s: &UpgradeStatus) -> String {
    let mut out = format!(
        "{:<16} {:<10} {:<6} {}\n",
        "MEMBER", "REACHABLE", "READY", "RELEASE"
    );
    for m in &s.members {
        out.push_str(&format!(
            "{:<16} {:<10} {:<6} {}\n",
            m.name,
            if m.connected { "yes" } else { "no" },
            if m.ready { "yes" } else { "no" },
            if m.release.is_empty() {
                "-"
            } else {
                &m.release
            }
        ));
    }
    match &s.rollout {
        Some(r) => out.push_str(&render_rollout(r)),
        None => out.push_str("no rollout yet\n"),
    }
    out
}

pub fn render_rollout(r: &Rollout) -> String {
    let mut out = format!(
        "rollout {} of {} by {}: {:?}{}\n",
        r.id,
        r.version,
        r.by,
        r.state,
        if r.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.message)
        }
    );
    for s in &r.steps {
        out.push_str(&format!(
            "  {:<16} {:<12} {}\n",
            s.member,
            format!("{:?}", s.state),
            s.message
        ));
    }
    out
}
