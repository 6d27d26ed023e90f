//! A plain TCP client for tests: connect (optionally from a given source address), read the
//! greeting, send lines, and return everything the server said.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use socket2::{Domain, Socket, Type};

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
