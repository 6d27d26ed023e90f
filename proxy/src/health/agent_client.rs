//! Polls a back-end's `robustifier agent`: connect, read its one report line, close. The
//! line is `robustifier-agent/1` followed by `key=value` fields (see `crate::agent`).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{io::BufReader, net::TcpStream, time::timeout};

use super::board::AgentReport;
use crate::front::lines::{Line, read_line};

pub const MAGIC: &str = "robustifier-agent/1";

pub async fn poll(addr: SocketAddr, limit: Duration) -> Result<AgentReport, String> {
    let line = timeout(limit, async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut r = BufReader::new(tcp);
        match read_line(&mut r, 1024).await.map_err(|e| e.to_string())? {
            Line::Complete(l) => Ok(String::from_utf8_lossy(&l).into_owned()),
            _ => Err("no report".to_owned()),
        }
    })
    .await
    .map_err(|_| "timed out".to_owned())??;
    parse(&line)
}

/// Parses a report line; unknown fields are ignored (newer agents may add some).
pub fn parse(line: &str) -> Result<AgentReport, String> {
    let mut words = line.split_ascii_whitespace();
    if words.next() != Some(MAGIC) {
        return Err(format!("not an agent report: {line:?}"));
    }
    let mut r = AgentReport {
        run_queue_milli: 0,
        mail_queue: 0,
        disk_permille: 0,
        weight: None,
        drain: false,
        at: Instant::now(),
    };
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            continue;
        };
        let num = || v.parse::<u32>().map_err(|_| format!("bad {k}={v}"));
        match k {
            "runq" => {
                let q: f64 = v.parse().map_err(|_| format!("bad runq={v}"))?;
                r.run_queue_milli = (q * 1000.0).round().clamp(0.0, u32::MAX as f64) as u32;
            }
            "mailq" => r.mail_queue = num()?,
            "disk_permille" => r.disk_permille = num()?.min(1000),
            "weight" => r.weight = Some(num()?.min(65535)),
            "drain" => r.drain = v == "1",
            _ => {}
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reports() {
        let r = parse(
            "robustifier-agent/1 runq=0.52 mailq=12 disk_permille=431 weight=50 drain=1 future=x",
        )
        .unwrap();
        assert_eq!(
            (
                r.run_queue_milli,
                r.mail_queue,
                r.disk_permille,
                r.weight,
                r.drain
            ),
            (520, 12, 431, Some(50), true)
        );
        assert!(parse("HTTP/1.1 200 OK").is_err());
        assert!(parse("robustifier-agent/1 mailq=lots").is_err());
    }
}
