//! nginx's auth_http responder for `cargo xtask bench`: every request is answered "OK, go to
//! the upstream". One thread, one request per connection (nginx speaks HTTP/1.0 to it).
//!
//! A program of its own, with the standard library only, which `cargo xtask bench` compiles
//! with `rustc -O` into the target directory next to the proxy under test: nginx's figures
//! then include an optimised responder (a debug build of it cost nginx several times the
//! CPU of the responder itself), and its CPU is read apart from nginx's.
//!
//! Usage: bench-auth-http --listen ADDR --upstream IP:PORT

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let (Some(listen), Some(upstream)) = (arg("--listen"), arg("--upstream")) else {
        eprintln!("usage: bench-auth-http --listen ADDR --upstream IP:PORT");
        std::process::exit(2);
    };
    let upstream: SocketAddr = match upstream.parse() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("--upstream {upstream}: {e}");
            std::process::exit(2);
        }
    };
    let l = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("--listen {listen}: {e}");
            std::process::exit(1);
        }
    };
    let answer = format!(
        "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {}\r\nAuth-Port: {}\r\n\r\n",
        upstream.ip(),
        upstream.port()
    );
    let mut got = Vec::with_capacity(4096);
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 4096];
        got.clear();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = c.write_all(answer.as_bytes());
    }
}
