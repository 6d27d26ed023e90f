//! The shed listener: when the kernel finds a service out of capacity for a client's class
//! it hands the connection here, and the client gets the protocol's temporary failure at
//! once, without anything being parsed: SMTP `421 4.3.2` (RFC 5321 3.8, RFC 3463),
//! POP3 `-ERR [SYS/TEMP]` (RFC 3206). Both make a well-behaved client retry later.

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::config::Protocol;

pub fn reply(protocol: Protocol, hostname: &str) -> String {
    match protocol {
        Protocol::Smtp => {
            format!("421 4.3.2 {hostname} Service temporarily overloaded, try again later\r\n")
        }
        Protocol::Pop3 => {
            "-ERR [SYS/TEMP] Service temporarily overloaded, try again later\r\n".into()
        }
    }
}

pub async fn answer(stream: TcpStream, protocol: Protocol, hostname: &str) {
    say(stream, &reply(protocol, hostname)).await;
}

/// The permanent refusal for a connection that did not come from a client network (this
/// host's own loopback): RFC 5321 3.1's `554` greeting, RFC 3206's `[SYS/PERM]`.
pub fn local_reply(protocol: Protocol, hostname: &str) -> String {
    match protocol {
        Protocol::Smtp => {
            format!("554 5.7.1 {hostname} Connections from this host are not served\r\n")
        }
        Protocol::Pop3 => "-ERR [SYS/PERM] Connections from this host are not served\r\n".into(),
    }
}

/// A connection whose client address would reach back-ends as this host's own: the
/// back-ends may trust loopback (Postfix's `mynetworks` does by default), so it gets no
/// session and no identity.
pub async fn refuse_local(stream: TcpStream, protocol: Protocol, hostname: &str) {
    say(stream, &local_reply(protocol, hostname)).await;
}

async fn say(mut stream: TcpStream, line: &str) {
    // Bounded: a client that does not read must not hold the task.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_temporary_failures() {
        assert!(reply(Protocol::Smtp, "mx").starts_with("421 4.3.2 mx "));
        assert!(reply(Protocol::Pop3, "mx").starts_with("-ERR [SYS/TEMP] "));
        assert!(reply(Protocol::Smtp, "mx").ends_with("\r\n"));
    }
}
