//! Reading command lines with a hard length limit, so a client cannot make the proxy
//! buffer more than the protocol allows (RFC 5321 4.5.3.1.4: 512 octets for a command
//! line; we allow up to 1000 as for text lines).

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _};

pub const MAX_LINE: usize = 1000;

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line without its CRLF (or bare LF).
    Complete(Vec<u8>),
    /// Longer than the limit; the rest of it, up to the next LF, has been discarded.
    TooLong,
    /// The peer closed the connection.
    Eof,
}

/// Reads one line of at most `max` octets (CRLF excluded) without ever holding more.
pub async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, max: usize) -> std::io::Result<Line> {
    read_line_into(r, max, Vec::new()).await
}

/// [`read_line`] into `spare`, a line given back by the caller (emptied first): a session
/// reading command after command reuses one allocation.
pub async fn read_line_into<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    spare: Vec<u8>,
) -> std::io::Result<Line> {
    let mut line = spare;
    line.clear();
    let mut too_long = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if !too_long {
            if line.len() + n > max + 2 {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        r.consume(n);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            // The check above allows for a CRLF; a line ended by a bare LF could still be
            // one octet over.
            if line.len() > max {
                return Ok(Line::TooLong);
            }
            return Ok(Line::Complete(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut r = tokio::io::BufReader::with_capacity(8, input);
        let mut out = Vec::new();
        loop {
            let l = read_line(&mut r, max).await.unwrap();
            let eof = l == Line::Eof;
            out.push(l);
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_crlf_and_bare_lf() {
        let got = lines(b"NOOP\r\nQUIT\n", 100).await;
        assert_eq!(
            got,
            [
                Line::Complete(b"NOOP".to_vec()),
                Line::Complete(b"QUIT".to_vec()),
                Line::Eof
            ]
        );
    }

    #[tokio::test]
    async fn overlong_line_is_discarded_not_buffered() {
        let mut input = vec![b'a'; 5000];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let got = lines(&input, 100).await;
        assert_eq!(
            got,
            [Line::TooLong, Line::Complete(b"NOOP".to_vec()), Line::Eof]
        );
    }

    #[tokio::test]
    async fn line_at_the_limit_is_accepted() {
        let mut input = vec![b'b'; 100];
        input.extend_from_slice(b"\r\n");
        assert_eq!(lines(&input, 100).await[0], Line::Complete(vec![b'b'; 100]));
    }

    #[tokio::test]
    async fn line_over_the_limit_ended_by_bare_lf_is_too_long() {
        // Found by the smtp_reply fuzz target: max + 1 octets and a bare LF fit the
        // buffer bound that allows for a CRLF.
        assert_eq!(
            lines(b"I50-ok\nNOOP\r\n", 5).await,
            [Line::TooLong, Line::Complete(b"NOOP".to_vec()), Line::Eof]
        );
        let mut input = vec![b'c'; 101];
        input.push(b'\n');
        assert_eq!(lines(&input, 100).await[0], Line::TooLong);
        let mut input = vec![b'c'; 100];
        input.push(b'\n');
        assert_eq!(lines(&input, 100).await[0], Line::Complete(vec![b'c'; 100]));
    }

    #[tokio::test]
    async fn unterminated_line_ends_in_eof() {
        assert_eq!(lines(b"QUI", 100).await, [Line::Eof]);
    }
}
