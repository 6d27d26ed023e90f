//! The duplicate check of an interrupted move ([`crate::agent_wire::Op::Find`]): the source
//! asks the target's agents whether their MTA queues the message it may have handed over;
//! a target's agent looks for it in its own queue. Postfix only: the messages of
//! `postqueue -j` from the same sender whose header (`postcat -h -q ID`) carries the move
//! token; other makes answer "unknown", and the source then sends the message again.

use std::{sync::Arc, time::Duration};

use tokio::process::Command;
use tracing::warn;

use super::{journal::Aim, postfix, submit::TOKEN_HEADER};
use crate::{
    agent::{Mta, Options, queue::run},
    agent_wire::{Endpoint, FindReply, FindRequest},
};

/// Time for one target agent's answer.
const FIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages of the same sender whose header is read, at most.
const MAX_CANDIDATES: usize = 2_000;

/// `Some(true)` if one of `aim`'s target agents has a message from `sender` carrying
/// `token`, `Some(false)` if each said no, `None` if one could not say (or none is known).
pub async fn already_there(o: &Arc<Options>, aim: &Aim, token: &str, sender: &str) -> Option<bool> {
    if aim.target_agents.is_empty() {
        return None;
    }
    let request = FindRequest {
        token: token.to_owned(),
        sender: sender.to_owned(),
    };
    let mut unsure = false;
    for &address in &aim.target_agents {
        let agent = Endpoint {
            address,
            key: o.key,
        };
        match crate::health::agent_client::find_moved(agent, &request, FIND_TIMEOUT).await {
            Ok(FindReply::Found(id)) => {
                tracing::info!(%address, %token, queue_id = %id, "the target already has the message");
                return Some(true);
            }
            Ok(FindReply::Missing) => {}
            Ok(FindReply::Unknown(why)) => {
                warn!(%address, %token, %why, "a target's agent cannot tell whether it has the message");
                unsure = true;
            }
            Err(e) => {
                warn!(%address, %token, error = %e, "cannot ask a target's agent whether it has the message");
                unsure = true;
            }
        }
    }
    (!unsure).then_some(false)
}

/// The reply to a find command whose argument is `arg` (a [`FindRequest`]).
pub async fn answer(o: &Options, arg: &str) -> FindReply {
    let req: FindRequest = match serde_json::from_str(arg) {
        Ok(r) => r,
        Err(e) => return FindReply::Unknown(format!("not a find request: {e}")),
    };
    if o.mta != Mta::Postfix {
        return FindReply::Unknown("finding moved mail is built for Postfix only".into());
    }
    let queue = match postfix::list(o).await {
        Ok(q) => q,
        Err(e) => return FindReply::Unknown(e.to_string()),
    };
    for m in queue
        .iter()
        .filter(|m| m.sender == req.sender)
        .take(MAX_CANDIDATES)
    {
        let mut cmd = Command::new("postcat");
        if let Some(dir) = &o.mta_config {
            cmd.arg("-c").arg(dir);
        }
        cmd.args(["-h", "-q"]).arg(&m.id);
        match run(&mut cmd).await {
            Ok((header, _)) if carries(&header, &req.token) => {
                return FindReply::Found(m.id.clone());
            }
            Ok(_) => {}
            // Delivered or deleted since the listing: not this one.
            Err(crate::agent::queue::QueueError::Failed { .. }) => {}
            Err(e) => return FindReply::Unknown(e.to_string()),
        }
    }
    FindReply::Missing
}

/// Whether a message header (as `postcat -h` prints it) has the move header with `token`.
pub fn carries(header: &str, token: &str) -> bool {
    header.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case(TOKEN_HEADER) && value.trim() == token
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_found_in_its_own_header_only() {
        let h = "Received: from x\n\tby y\nX-Robustifier-Move: be1.lab/4F1A2B\nSubject: X-Robustifier-Move: be1.lab/OTHER\n";
        assert!(carries(h, "be1.lab/4F1A2B"));
        assert!(
            !carries(h, "be1.lab/OTHER"),
            "a header's value is not a header"
        );
        assert!(!carries(h, "be1.lab/4F1A2"), "the whole token");
        assert!(carries("x-robustifier-move:  t/1  \n", "t/1"));
    }

    #[tokio::test]
    async fn other_makes_and_bad_requests_cannot_tell() {
        let mut o = Options {
            mta: Mta::Exim,
            mta_config: None,
            spool: std::env::temp_dir(),
            state_file: None,
            key: None,
            state_dir: None,
        };
        let arg = r#"{"token":"h/1","sender":"s@example.test"}"#;
        assert!(matches!(answer(&o, arg).await, FindReply::Unknown(_)));
        o.mta = Mta::Postfix;
        assert!(matches!(answer(&o, "{").await, FindReply::Unknown(_)));
        // No agent to ask: the source cannot tell either.
        let aim = Aim {
            pool: "p".into(),
            targets: vec![],
            target_agents: vec![],
        };
        assert_eq!(already_there(&Arc::new(o), &aim, "h/1", "s").await, None);
    }

    /// A target agent that answers with the key: found, missing, and one that does not
    /// answer at all.
    #[tokio::test]
    async fn the_source_asks_each_target_agent() {
        use crate::agent_wire::{AgentKey, CHALLENGE_MAGIC, Op, random_nonce};
        use tokio::io::{AsyncWriteExt as _, BufReader};
        let key = AgentKey::from_secret(b"the shared agent key").unwrap();
        async fn fake(key: AgentKey, reply: FindReply) -> std::net::SocketAddr {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let (tcp, _) = l.accept().await.unwrap();
                    let mut s = BufReader::new(tcp);
                    let c = random_nonce().unwrap();
                    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, c);
                    s.write_all(format!("{CHALLENGE_MAGIC} challenge={b64}\n").as_bytes())
                        .await
                        .unwrap();
                    let line = match crate::lines::read_line(&mut s, 1 << 16).await.unwrap() {
                        crate::lines::Line::Complete(l) => String::from_utf8(l).unwrap(),
                        _ => continue,
                    };
                    let cmd = key.check_command(&c, &line).unwrap();
                    assert_eq!(cmd.op, Op::Find);
                    let req: FindRequest = serde_json::from_str(&cmd.arg).unwrap();
                    assert_eq!(req.token, "h/1");
                    let json = serde_json::to_string(&reply).unwrap();
                    s.write_all(key.seal_reply(&c, &cmd.nonce, Op::Find, &json).as_bytes())
                        .await
                        .unwrap();
                }
            });
            addr
        }
        let found = fake(key, FindReply::Found("T1".into())).await;
        let missing = fake(key, FindReply::Missing).await;
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = silent.local_addr().unwrap();
        drop(silent);
        let o = Arc::new(Options {
            mta: Mta::Postfix,
            mta_config: None,
            spool: std::env::temp_dir(),
            state_file: None,
            key: Some(key),
            state_dir: None,
        });
        let ask = |agents: Vec<std::net::SocketAddr>| {
            let o = Arc::clone(&o);
            async move {
                let aim = Aim {
                    pool: "p".into(),
                    targets: vec![],
                    target_agents: agents,
                };
                already_there(&o, &aim, "h/1", "s@example.test").await
            }
        };
        assert_eq!(ask(vec![missing, found]).await, Some(true));
        assert_eq!(ask(vec![missing]).await, Some(false));
        assert_eq!(ask(vec![missing, dead]).await, None, "one could not say");
        assert_eq!(ask(vec![dead, found]).await, Some(true));
    }
}
