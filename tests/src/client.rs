//! A plain TCP client for tests: connect (optionally from a given source address), read the
//! greeting, send lines, and return everything the server said.

use std::{
    io::{BufRead, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use socket2::{Domain, Socket, Type};

use crate::Netns;

/// Connects to `to` from `from` (or the default source) within `timeout`.
pub fn connect(
    to: SocketAddr,
    from: Option<IpAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if let Some(src) = from {
        socket.bind(&SocketAddr::new(src, 0).into())?;
    }
    socket.connect_timeout(&to.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(stream)
}

/// Reads the greeting, then for each line sends it and reads one reply line. Returns the
/// lines received, without CRLF.
pub fn dialogue(
    to: SocketAddr,
    from: Option<IpAddr>,
    lines: &[&str],
) -> std::io::Result<Vec<String>> {
    let stream = connect(to, from, Duration::from_secs(2))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut got = Vec::new();
    let mut read_one = |got: &mut Vec<String>| -> std::io::Result<bool> {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(false);
        }
        got.push(line.trim_end().to_owned());
        Ok(true)
    };
    if !read_one(&mut got)? {
        return Ok(got);
    }
    for l in lines {
        writer.write_all(format!("{l}\r\n").as_bytes())?;
        if !read_one(&mut got)? {
            break;
        }
    }
    Ok(got)
}

/// Reads one SMTP reply (all its lines) and returns its last line; a closed connection is
/// an `UnexpectedEof` error.
pub fn smtp_reply(r: &mut impl BufRead) -> std::io::Result<String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.trim_end().to_owned());
        }
    }
}

/// An SMTP session of raw command lines from `from` (or the default source): reads the
/// greeting, then sends each line and reads its whole reply (multi-line replies such as
/// EHLO's included). Returns the last line of every reply; stops early when the server
/// closes the connection.
pub fn smtp_dialogue(
    to: SocketAddr,
    from: Option<IpAddr>,
    lines: &[String],
) -> std::io::Result<Vec<String>> {
    let stream = connect(to, from, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut got = Vec::new();
    match smtp_reply(&mut r) {
        Ok(l) => got.push(l),
        Err(_) => return Ok(got),
    }
    for l in lines {
        if w.write_all(format!("{l}\r\n").as_bytes()).is_err() {
            break;
        }
        match smtp_reply(&mut r) {
            Ok(reply) => got.push(reply),
            Err(_) => break,
        }
    }
    Ok(got)
}

/// One SMTP session sending one message: the last line of every reply, in order
/// (greeting, EHLO, MAIL, each RCPT, DATA, end of data, QUIT). Stops at the first reply
/// that is not positive, so a deflected session shows where it was turned away.
pub fn send_mail(
    to: SocketAddr,
    from: Option<IpAddr>,
    sender: &str,
    rcpts: &[&str],
    body: &str,
) -> std::io::Result<Vec<String>> {
    let stream = connect(to, from, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut r = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut got = vec![smtp_reply(&mut r)?];
    let positive = |l: &String| l.starts_with('2') || l.starts_with('3');
    if !positive(&got[0]) {
        return Ok(got);
    }
    let mut step =
        |w: &mut TcpStream, line: String, got: &mut Vec<String>| -> std::io::Result<bool> {
            w.write_all(line.as_bytes())?;
            let reply = smtp_reply(&mut r)?;
            let ok = positive(&reply);
            got.push(reply);
            Ok(ok)
        };
    if !step(&mut w, "EHLO client.lab\r\n".into(), &mut got)?
        || !step(&mut w, format!("MAIL FROM:<{sender}>\r\n"), &mut got)?
    {
        return Ok(got);
    }
    for rc in rcpts {
        if !step(&mut w, format!("RCPT TO:<{rc}>\r\n"), &mut got)? {
            return Ok(got);
        }
    }
    if !step(&mut w, "DATA\r\n".into(), &mut got)? {
        return Ok(got);
    }
    let mut data = body.replace("\r\n", "\n").replace('\n', "\r\n");
    if !data.ends_with("\r\n") {
        data.push_str("\r\n");
    }
    data.push_str(".\r\n");
    if !step(&mut w, data, &mut got)? {
        return Ok(got);
    }
    let _ = step(&mut w, "QUIT\r\n".into(), &mut got);
    Ok(got)
}

/// The first line a server at `to` says to a client in `ns` (its greeting, or the shed
/// reply), or `connect failed: ...`: what a client sees of whoever holds an address.
pub fn greeting(ns: &Netns, to: SocketAddr) -> String {
    ns.enter(move || dialogue(to, None, &["QUIT"]))
        .expect("enter the client namespace")
        .map(|lines| lines.first().cloned().unwrap_or_default())
        .unwrap_or_else(|e| format!("connect failed: {e}"))
}

/// [`send_mail`] from a client in `ns` with the default source address; an I/O error
/// fails the test.
pub fn send_mail_in(
    ns: &Netns,
    to: SocketAddr,
    sender: &str,
    rcpts: &[&str],
    body: &str,
) -> Vec<String> {
    ns.enter(|| send_mail(to, None, sender, rcpts, body))
        .expect("enter the client namespace")
        .unwrap_or_else(|e| panic!("SMTP session to {to}: {e}"))
}

/// The reply to the end of data in a [`send_mail`] transcript (the one after DATA's 354),
/// if the session got that far.
pub fn end_of_data(r: &[String]) -> Option<&str> {
    let i = r.iter().position(|l| l.starts_with("354"))?;
    r.get(i + 1).map(String::as_str)
}

/// The reply to the end of data was 250: the back-end has the message.
pub fn accepted(r: &[String]) -> bool {
    end_of_data(r).is_some_and(|l| l.starts_with("250"))
}
