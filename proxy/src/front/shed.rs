//! The shed listener: when the kernel finds a service out of capacity for a client's class
//! it hands the connection here, and the client gets the protocol's temporary failure at
//! once, without anything being parsed: SMTP `421 4.3.2` (RFC 5321 3.8, RFC 3463),
//! POP3 `-ERR [SYS/TEMP]` (RFC 3206). Both make a well-behaved client retry later.

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::{config::Protocol, stream::LastWords};

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
    // The reply and the FIN in one segment: a flood of refused connections costs one
    // segment each, not two.
    let taken = stream.send_last(line.as_bytes());
    if taken == line.len() {
        return;
    }
    // Bounded: a client that does not read must not hold the task.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let _ = stream.write_all(&line.as_bytes()[taken..]).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shed_connection_gets_the_whole_reply_and_its_end() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        answer(server, Protocol::Smtp, "mx").await;
        let mut got = String::new();
        client.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, reply(Protocol::Smtp, "mx"));
    }

    #[test]
    fn replies_are_temporary_failures() {
        assert!(reply(Protocol::Smtp, "mx").starts_with("421 4.3.2 mx "));
        assert!(reply(Protocol::Pop3, "mx").starts_with("-ERR [SYS/TEMP] "));
        assert!(reply(Protocol::Smtp, "mx").ends_with("\r\n"));
    }
}
