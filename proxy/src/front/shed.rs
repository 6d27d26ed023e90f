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

pub async fn answer(mut stream: TcpStream, protocol: Protocol, hostname: &str) {
    let _ = stream.write_all(reply(protocol, hostname).as_bytes()).await;
    let _ = stream.shutdown().await;
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
