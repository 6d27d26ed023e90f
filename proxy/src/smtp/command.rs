//! SMTP client commands (RFC 5321 4.1.1 and the extensions named on each item), parsed
//! from one command line (without its CRLF) into a typed [`Command`].
//!
//! Invariant: parsing never panics on any input, and every input that is not returned as a
//! [`Command`] yields a [`CommandError`] whose [`CommandError::reply`] is the exact reply
//! the client must get. A [`Command`] holds only validated values: paths obey RFC 5321
//! 4.1.2 and 4.5.3.1, parameters are known and well-formed, and no string in it can carry
//! NUL, CR, LF or another control character, so a command can be re-serialised to a
//! back-end without smuggling anything along.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::reply::Reply;

/// RFC 5321 4.5.3.1.1.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2.
pub const MAX_DOMAIN: usize = 255;
/// RFC 1035 2.3.4, which RFC 5321 domains inherit.
const MAX_LABEL: usize = 63;
/// RFC 3461 4.4.
const MAX_ENVID: usize = 100;
/// RFC 3461 4.2.
const MAX_ORCPT: usize = 500;

/// A mailbox. `domain` is `None` only for the special recipient `<postmaster>`
/// (RFC 5321 4.1.1.3), which every server must accept without a domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The local part as it is meant: a quoted local part is stored without its quotes and
    /// backslash escapes, so `"joe"@x` and `joe@x` are the same address.
    pub local: String,
    /// The domain or address literal, lower-cased (domains are case-insensitive, RFC 5321
    /// 2.4), so that routing can compare it as a plain string.
    pub domain: Option<String>,
}

impl Address {
    /// Whether the address needs SMTPUTF8 (RFC 6531 3.3).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.as_deref().is_none_or(str::is_ascii)
    }

    /// A login name as an address, when it has the `user@domain` form: the key under
    /// which routing maps and user groups know a user.
    pub fn parse_user(user: &str) -> Option<Address> {
        let (local, domain) = user.split_once('@')?;
        Some(Address {
            local: local.to_owned(),
            domain: Some(domain.to_ascii_lowercase()),
        })
    }

    /// `postmaster` is the one local part compared case-insensitively (RFC 5321 4.5.1).
    pub fn is_postmaster(&self) -> bool {
        self.local.eq_ignore_ascii_case("postmaster")
    }
}

impl fmt::Display for Address {
    /// The RFC 5321 form, quoting the local part when it is not a dot-string.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for ch in self.local.chars() {
                if ch == '"' || ch == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{ch}")?;
            }
            f.write_str("\"")?;
        }
        match &self.domain {
            Some(d) => write!(f, "@{d}"),
            None => Ok(()),
        }
    }
}

/// One parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// RFC 5321 4.1.1.1. The argument is kept as sent (trimmed): clients send all sorts of
    /// names here and judging them is policy, not syntax.
    Helo(String),
    Ehlo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    /// RFC 3030 2: a chunk of exactly `size` octets follows the command line.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    /// RFC 5321 4.1.1.9: any argument is ignored.
    Noop,
    Quit,
    Help(Option<String>),
    Vrfy(String),
    Expn(String),
    /// RFC 3207.
    StartTls,
    /// RFC 4954 4: mechanism upper-cased; the initial response is base64 or `=`.
    Auth {
        mechanism: String,
        initial_response: Option<String>,
    },
}

/// `MAIL FROM:<reverse-path> [parameters]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailFrom {
    /// `None` is the null reverse-path `<>` of bounces (RFC 5321 4.5.5).
    pub reverse_path: Option<Address>,
    /// RFC 1870 declared size; values beyond `u64` saturate.
    pub size: Option<u64>,
    /// RFC 6152.
    pub body: Option<Body>,
    /// RFC 6531 3.4.
    pub smtputf8: bool,
    /// RFC 4954 5: the xtext-encoded `AUTH=` mailbox or `<>`, as sent.
    pub auth: Option<String>,
    /// RFC 3461 4.3.
    pub ret: Option<Ret>,
    /// RFC 3461 4.4, xtext as sent.
    pub envid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Headers,
}

/// `RCPT TO:<forward-path> [parameters]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub forward_path: Address,
    /// RFC 3461 4.1.
    pub notify: Option<Notify>,
    /// RFC 3461 4.2: `addr-type;xtext`, as sent.
    pub orcpt: Option<String>,
}

impl RcptTo {
    /// A non-ASCII recipient is only allowed in a transaction whose MAIL carried SMTPUTF8
    /// (RFC 6531 3.4); the parser cannot know that, so the session asks here.
    pub fn check_utf8(&self, transaction_smtputf8: bool) -> Result<(), CommandError> {
        if transaction_smtputf8 || self.forward_path.is_ascii() {
            Ok(())
        } else {
            Err(CommandError::Utf8NotPermitted)
        }
    }
}

/// RFC 3461 4.1: `NEVER`, or any non-empty combination of the three others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    Never,
    On {
        success: bool,
        failure: bool,
        delay: bool,
    },
}

/// Why a command line was refused; [`CommandError::reply`] gives the reply to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    #[error("command unrecognized")]
    Unrecognized,
    #[error("bad parameters: {0}")]
    BadParameters(&'static str),
    #[error("bad address syntax: {0}")]
    BadAddress(&'static str),
    #[error("command not implemented")]
    NotImplemented,
    /// The keyword, upper-cased; it passed the esmtp-keyword syntax, so it is safe to echo.
    #[error("unknown parameter {0}")]
    UnknownParameter(String),
    #[error("non-ASCII address without SMTPUTF8")]
    Utf8NotPermitted,
}

impl CommandError {
    /// The reply RFC 5321 4.2.2/4.3.2 and RFC 3463 prescribe for this error.
    pub fn reply(&self) -> Reply {
        match self {
            Self::Syntax(why) => Reply::new(500, Some((5, 5, 2)), format!("Syntax error: {why}")),
            Self::Unrecognized => Reply::new(500, Some((5, 5, 2)), "Command unrecognized"),
            Self::BadParameters(why) => Reply::new(
                501,
                Some((5, 5, 4)),
                format!("Syntax error in parameters: {why}"),
            ),
            Self::BadAddress(why) => {
                Reply::new(501, Some((5, 1, 3)), format!("Bad address syntax: {why}"))
            }
            Self::NotImplemented => Reply::new(502, Some((5, 5, 1)), "Command not implemented"),
            // RFC 5321 4.1.1.11: an unrecognised MAIL/RCPT parameter gets 555.
            Self::UnknownParameter(k) => {
                Reply::new(555, Some((5, 5, 4)), format!("Unsupported parameter {k}"))
            }
            // RFC 6531 3.7.1 / RFC 5248: X.6.7 for a non-ASCII address not permitted.
            Self::Utf8NotPermitted => {
                Reply::new(553, Some((5, 6, 7)), "Non-ASCII address requires SMTPUTF8")
            }
        }
    }
}

/// Verbs that exist but that a client may not use through the proxy. XCLIENT and XFORWARD
/// in particular would let a client forge the identity the proxy vouches for to back-ends.
const REFUSED_VERBS: &[&str] = &[
    "XCLIENT", "XFORWARD", "TURN", "ATRN", "ETRN", "SEND", "SOML", "SAML", "BURL",
];

impl Command {
    /// Parses one command line, without its CRLF.
    pub fn parse(line: &[u8]) -> Result<Self, CommandError> {
        // RFC 5321 2.3.8: CR and LF appear only together, as the line end; NUL and the
        // other controls have no place in a command and would confuse back-end logs.
        if let Some(&b) = line.iter().find(|&&b| b < 0x20 || b == 0x7f) {
            return Err(CommandError::Syntax(match b {
                0 => "NUL character in command",
                b'\r' => "bare CR in command",
                b'\n' => "bare LF in command",
                _ => "control character in command",
            }));
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| CommandError::Syntax("command is not valid UTF-8"))?;
        // The C1 controls (U+0080..U+009F, NEL among them) are as unwelcome as the C0 ones
        // in anything replayed to a back-end or written to its logs.
        if line.chars().any(char::is_control) {
            return Err(CommandError::Syntax("control character in command"));
        }
        let line = line.trim_end_matches(' ');
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim_start_matches(' ')),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "HELO" => Ok(Self::Helo(required(args, "HELO requires a domain")?)),
            "EHLO" => Ok(Self::Ehlo(required(args, "EHLO requires a domain")?)),
            "MAIL" => parse_mail(args).map(Self::Mail),
            "RCPT" => parse_rcpt(args).map(Self::Rcpt),
            "DATA" => no_args(args, Self::Data),
            "BDAT" => parse_bdat(args),
            "RSET" => no_args(args, Self::Rset),
            "NOOP" => Ok(Self::Noop),
            "QUIT" => no_args(args, Self::Quit),
            "HELP" => Ok(Self::Help((!args.is_empty()).then(|| args.to_owned()))),
            "VRFY" => Ok(Self::Vrfy(required(args, "VRFY requires an argument")?)),
            "EXPN" => Ok(Self::Expn(required(args, "EXPN requires an argument")?)),
            "STARTTLS" => no_args(args, Self::StartTls),
            "AUTH" => parse_auth(args),
            v if REFUSED_VERBS.contains(&v) => Err(CommandError::NotImplemented),
            _ => Err(CommandError::Unrecognized),
        }
    }
}

fn required(args: &str, why: &'static str) -> Result<String, CommandError> {
    if args.is_empty() {
        Err(CommandError::BadParameters(why))
    } else {
        Ok(args.to_owned())
    }
}

fn no_args(args: &str, cmd: Command) -> Result<Command, CommandError> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::BadParameters(
            "this command takes no arguments",
        ))
    }
}

/// RFC 3030 2: `BDAT SP chunk-size [SP end-marker]`.
fn parse_bdat(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or(CommandError::BadParameters("BDAT requires a chunk size"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::BadParameters("expected BDAT size [LAST]")),
    };
    if words.next().is_some() {
        return Err(CommandError::BadParameters("expected BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

/// RFC 4954 4: `AUTH SP sasl-mech [SP initial-response]`.
fn parse_auth(args: &str) -> Result<Command, CommandError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .filter(|m| {
            (1..=20).contains(&m.len())
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or(CommandError::BadParameters(
            "AUTH requires a SASL mechanism",
        ))?
        .to_ascii_uppercase();
    let initial_response = match words.next() {
        None => None,
        Some(r) if r == "=" || is_base64(r) => Some(r.to_owned()),
        Some(_) => {
            return Err(CommandError::BadParameters(
                "initial response is not base64",
            ));
        }
    };
    if words.next().is_some() {
        return Err(CommandError::BadParameters("too many AUTH arguments"));
    }
    Ok(Command::Auth {
        mechanism,
        initial_response,
    })
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len() - body.len() <= 2
        && !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Strips `FROM:` / `TO:` (case-insensitive, RFC 5321 2.4). A space after the colon is
/// tolerated as Postfix and Exim do: many clients send one.
fn strip_keyword<'a>(
    args: &'a str,
    keyword: &str,
    usage: &'static str,
) -> Result<&'a str, CommandError> {
    match args.get(..keyword.len()) {
        Some(k) if k.eq_ignore_ascii_case(keyword) => {
            Ok(args[keyword.len()..].trim_start_matches(' '))
        }
        _ => Err(CommandError::BadParameters(usage)),
    }
}

fn parse_mail(args: &str) -> Result<MailFrom, CommandError> {
    let rest = strip_keyword(args, "FROM:", "expected MAIL FROM:<address>")?;
    let (reverse_path, rest) = parse_path(rest, PathKind::Reverse)?;
    let mut mail = MailFrom {
        reverse_path,
        ..MailFrom::default()
    };
    let mut seen = Vec::new();
    for (keyword, value) in parameters(rest)? {
        if seen.contains(&keyword) {
            return Err(CommandError::BadParameters("duplicate parameter"));
        }
        match (keyword.as_str(), value) {
            // RFC 1870 6: size-value = 1*20DIGIT.
            ("SIZE", Some(v))
                if (1..=20).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                mail.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            ("SIZE", _) => return Err(CommandError::BadParameters("SIZE needs a number")),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => mail.body = Some(Body::SevenBit),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => {
                mail.body = Some(Body::EightBitMime);
            }
            ("BODY", _) => {
                return Err(CommandError::BadParameters("BODY must be 7BIT or 8BITMIME"));
            }
            ("SMTPUTF8", None) => mail.smtputf8 = true,
            ("SMTPUTF8", Some(_)) => {
                return Err(CommandError::BadParameters("SMTPUTF8 takes no value"));
            }
            ("AUTH", Some(v)) if is_xtext(v) => mail.auth = Some(v.to_owned()),
            ("AUTH", _) => return Err(CommandError::BadParameters("AUTH= needs an xtext mailbox")),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("FULL") => mail.ret = Some(Ret::Full),
            ("RET", Some(v)) if v.eq_ignore_ascii_case("HDRS") => mail.ret = Some(Ret::Headers),
            ("RET", _) => return Err(CommandError::BadParameters("RET must be FULL or HDRS")),
            ("ENVID", Some(v)) if v.len() <= MAX_ENVID && is_xtext(v) => {
                mail.envid = Some(v.to_owned());
            }
            ("ENVID", _) => return Err(CommandError::BadParameters("ENVID must be xtext")),
            _ => return Err(CommandError::UnknownParameter(keyword)),
        }
        seen.push(keyword);
    }
    // RFC 6531 3.4: a non-ASCII reverse-path needs SMTPUTF8 on this very command.
    if !mail.smtputf8 && !mail.reverse_path.as_ref().is_none_or(Address::is_ascii) {
        return Err(CommandError::Utf8NotPermitted);
    }
    Ok(mail)
}

fn parse_rcpt(args: &str) -> Result<RcptTo, CommandError> {
    let rest = strip_keyword(args, "TO:", "expected RCPT TO:<address>")?;
    let (path, rest) = parse_path(rest, PathKind::Forward)?;
    let forward_path = path.ok_or(CommandError::BadAddress("null forward-path"))?;
    let mut rcpt = RcptTo {
        forward_path,
        notify: None,
        orcpt: None,
    };
    let mut seen = Vec::new();
    for (keyword, value) in parameters(rest)? {
        if seen.contains(&keyword) {
            return Err(CommandError::BadParameters("duplicate parameter"));
        }
        match (keyword.as_str(), value) {
            ("NOTIFY", Some(v)) => rcpt.notify = Some(parse_notify(v)?),
            ("ORCPT", Some(v)) if is_orcpt(v) => rcpt.orcpt = Some(v.to_owned()),
            ("NOTIFY" | "ORCPT", _) => {
                return Err(CommandError::BadParameters("malformed DSN parameter"));
            }
            _ => return Err(CommandError::UnknownParameter(keyword)),
        }
        seen.push(keyword);
    }
    Ok(rcpt)
}

/// RFC 3461 4.1: `NEVER` alone, or a comma list of SUCCESS, FAILURE, DELAY.
fn parse_notify(v: &str) -> Result<Notify, CommandError> {
    const BAD: CommandError =
        CommandError::BadParameters("NOTIFY must be NEVER or SUCCESS,FAILURE,DELAY");
    if v.eq_ignore_ascii_case("NEVER") {
        return Ok(Notify::Never);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    for item in v.split(',') {
        let flag = match item.to_ascii_uppercase().as_str() {
            "SUCCESS" => &mut success,
            "FAILURE" => &mut failure,
            "DELAY" => &mut delay,
            _ => return Err(BAD),
        };
        if *flag {
            return Err(BAD);
        }
        *flag = true;
    }
    Ok(Notify::On {
        success,
        failure,
        delay,
    })
}

/// RFC 3461 4: xtext = *(xchar / "+" 2HEXDIG), xchar = "!".."~" except "+" and "=".
fn is_xtext(v: &str) -> bool {
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
                if !(b.get(i + 1).copied().is_some_and(hex)
                    && b.get(i + 2).copied().is_some_and(hex))
                {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            c if (b'!'..=b'~').contains(&c) => i += 1,
            _ => return false,
        }
    }
    true
}

/// RFC 3461 4.2: `addr-type ";" xtext` with addr-type an atom.
fn is_orcpt(v: &str) -> bool {
    let Some((kind, addr)) = v.split_once(';') else {
        return false;
    };
    v.len() <= MAX_ORCPT
        && !kind.is_empty()
        && kind.chars().all(is_atext)
        && !addr.is_empty()
        && is_xtext(addr)
}

/// RFC 5321 4.1.2: `esmtp-param *(SP esmtp-param)`, keyword upper-cased. Extra spaces are
/// tolerated; the syntax of keyword and value is not negotiable.
fn parameters(rest: &str) -> Result<Vec<(String, Option<&str>)>, CommandError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(CommandError::BadAddress(
            "garbage after the closing bracket",
        ));
    }
    let mut out = Vec::new();
    for param in rest.split(' ').filter(|p| !p.is_empty()) {
        let (keyword, value) = match param.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (param, None),
        };
        let keyword_ok = keyword
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
            && keyword
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !keyword_ok {
            return Err(CommandError::BadParameters("malformed parameter keyword"));
        }
        // esmtp-value = 1*(%d33-60 / %d62-126), UTF-8 allowed by RFC 6531 4.3.
        if value.is_some_and(|v| v.is_empty() || v.contains('=')) {
            return Err(CommandError::BadParameters("malformed parameter value"));
        }
        out.push((keyword.to_ascii_uppercase(), value));
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PathKind {
    /// MAIL: `<>` allowed.
    Reverse,
    /// RCPT: `<postmaster>` without domain allowed.
    Forward,
}

/// Parses `"<" [ A-d-l ":" ] Mailbox ">"` (RFC 5321 4.1.2) at the start of `s` and
/// returns the address (or `None` for `<>`) and what follows the `>`.
fn parse_path(s: &str, kind: PathKind) -> Result<(Option<Address>, &str), CommandError> {
    let mut c = Cursor { s, pos: 0 };
    if !c.eat('<') {
        return Err(CommandError::BadAddress(
            "address must be in angle brackets",
        ));
    }
    if c.eat('>') {
        return match kind {
            PathKind::Reverse => Ok((None, c.rest())),
            PathKind::Forward => Err(CommandError::BadAddress("null forward-path")),
        };
    }
    // RFC 5321 4.1.2: a source route must be accepted and SHOULD be ignored (C.).
    if c.peek() == Some('@') {
        loop {
            if !c.eat('@') {
                return Err(CommandError::BadAddress("malformed source route"));
            }
            parse_domain(&mut c)?;
            if c.eat(':') {
                break;
            }
            if !c.eat(',') {
                return Err(CommandError::BadAddress("malformed source route"));
            }
        }
    }
    let local = if c.peek() == Some('"') {
        parse_quoted(&mut c)?
    } else {
        parse_dot_string(&mut c)?
    };
    if local.len() > MAX_LOCAL_PART {
        return Err(CommandError::BadAddress("local part longer than 64 octets"));
    }
    let domain = if c.eat('@') {
        Some(parse_domain(&mut c)?)
    } else if kind == PathKind::Forward && local.eq_ignore_ascii_case("postmaster") {
        None
    } else {
        return Err(CommandError::BadAddress("address has no domain"));
    };
    if !c.eat('>') {
        return Err(CommandError::BadAddress("missing closing angle bracket"));
    }
    Ok((Some(Address { local, domain }), c.rest()))
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let ch = self.peek()?;
        self.pos += ch.len_utf8();
        Some(ch)
    }

    fn eat(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.pos += want.len_utf8();
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.bump();
        }
        &self.s[start..self.pos]
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
}

/// RFC 5322 atext, plus UTF8-non-ascii (RFC 6531 3.3); whether UTF-8 is allowed is
/// decided once the whole command is known.
fn is_atext(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(ch) || !ch.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// `Dot-string = Atom *("." Atom)`.
fn parse_dot_string(c: &mut Cursor<'_>) -> Result<String, CommandError> {
    let s = c.take_while(|ch| is_atext(ch) || ch == '.');
    if s.is_empty() {
        return Err(CommandError::BadAddress("empty local part"));
    }
    if !is_dot_string(s) {
        return Err(CommandError::BadAddress("misplaced dot in local part"));
    }
    Ok(s.to_owned())
}

/// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE`; returns the unescaped content.
fn parse_quoted(c: &mut Cursor<'_>) -> Result<String, CommandError> {
    c.eat('"');
    let mut out = String::new();
    loop {
        match c.bump() {
            None => return Err(CommandError::BadAddress("unterminated quoted local part")),
            Some('"') => return Ok(out),
            // quoted-pairSMTP = "\" %d32-126.
            Some('\\') => match c.bump() {
                Some(ch @ ' '..='~') => out.push(ch),
                _ => return Err(CommandError::BadAddress("bad escape in quoted local part")),
            },
            // qtextSMTP = %d32-33 / %d35-91 / %d93-126, plus UTF-8 (RFC 6531 3.3).
            Some(ch) if (' '..='~').contains(&ch) || !ch.is_ascii() => out.push(ch),
            Some(_) => {
                return Err(CommandError::BadAddress(
                    "bad character in quoted local part",
                ));
            }
        }
    }
}

/// `Domain / address-literal`, returned lower-cased.
fn parse_domain(c: &mut Cursor<'_>) -> Result<String, CommandError> {
    if c.eat('[') {
        let literal = c.take_while(|ch| ch != ']' && ch != '>' && ch != ' ');
        if !c.eat(']') {
            return Err(CommandError::BadAddress("unterminated address literal"));
        }
        check_address_literal(literal)?;
        // A general address literal has no length of its own: the domain's bound applies.
        if literal.len() + 2 > MAX_DOMAIN {
            return Err(CommandError::BadAddress("domain longer than 255 octets"));
        }
        return Ok(format!("[{}]", literal.to_ascii_lowercase()));
    }
    let domain =
        c.take_while(|ch| ch.is_alphanumeric() || ch == '-' || ch == '.' || !ch.is_ascii());
    if domain.is_empty() {
        return Err(CommandError::BadAddress("empty domain"));
    }
    if domain.len() > MAX_DOMAIN {
        return Err(CommandError::BadAddress("domain longer than 255 octets"));
    }
    // sub-domain = Let-dig [Ldh-str]: no empty label, no hyphen at either end;
    // RFC 6531 3.3 adds U-labels, whose full IDNA validation is the back-end's job.
    let label_ok =
        |l: &str| !l.is_empty() && l.len() <= MAX_LABEL && !l.starts_with('-') && !l.ends_with('-');
    if !domain.split('.').all(label_ok) {
        return Err(CommandError::BadAddress("malformed domain"));
    }
    // Lower-casing may lengthen a U-label (U+0130 takes 2 octets, its lower case 3): the
    // bounds hold for the domain as stored and re-sent, not only as received.
    let lower = domain.to_lowercase();
    if lower.len() > MAX_DOMAIN || !lower.split('.').all(label_ok) {
        return Err(CommandError::BadAddress("domain too long when lower-cased"));
    }
    Ok(lower)
}

/// RFC 5321 4.1.3: IPv4, `IPv6:` or `tag:content` general literals.
fn check_address_literal(lit: &str) -> Result<(), CommandError> {
    let bad = CommandError::BadAddress("malformed address literal");
    if let Some(v6) = lit.get(..5).filter(|p| p.eq_ignore_ascii_case("IPv6:")) {
        return lit[v6.len()..]
            .parse::<Ipv6Addr>()
            .map(drop)
            .map_err(|_| bad);
    }
    if lit.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return lit.parse::<Ipv4Addr>().map(drop).map_err(|_| bad);
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent; dcontent = %d33-90 / %d94-126.
    let Some((tag, content)) = lit.split_once(':') else {
        return Err(bad);
    };
    let tag_ok = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tag.ends_with('-');
    let content_ok = !content.is_empty()
        && content
            .bytes()
            .all(|b| (33..=90).contains(&b) || (94..=126).contains(&b));
    if tag_ok && content_ok {
        Ok(())
    } else {
        Err(bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(line: &str) -> Result<Command, CommandError> {
        Command::parse(line.as_bytes())
    }

    fn addr(local: &str, domain: &str) -> Address {
        Address {
            local: local.into(),
            domain: Some(domain.into()),
        }
    }

    fn mail(line: &str) -> MailFrom {
        match p(line) {
            Ok(Command::Mail(m)) => m,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn rcpt(line: &str) -> RcptTo {
        match p(line) {
            Ok(Command::Rcpt(r)) => r,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn code(line: &[u8]) -> (u16, Option<(u8, u16, u16)>) {
        let r = Command::parse(line).unwrap_err().reply();
        (r.code, r.enhanced)
    }

    #[test]
    fn simple_verbs_any_case() {
        assert_eq!(p("data"), Ok(Command::Data));
        assert_eq!(p("RsEt"), Ok(Command::Rset));
        assert_eq!(p("QUIT  "), Ok(Command::Quit));
        assert_eq!(p("NOOP anything at all"), Ok(Command::Noop));
        assert_eq!(p("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(p("HELP"), Ok(Command::Help(None)));
        assert_eq!(p("help mail"), Ok(Command::Help(Some("mail".into()))));
        assert_eq!(p("VRFY joe"), Ok(Command::Vrfy("joe".into())));
        assert_eq!(p("EXPN staff"), Ok(Command::Expn("staff".into())));
        assert_eq!(
            p("EHLO client.example.com"),
            Ok(Command::Ehlo("client.example.com".into()))
        );
        assert_eq!(
            p("HELO [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]".into()))
        );
    }

    #[test]
    fn argument_rules() {
        assert_eq!(code(b"EHLO"), (501, Some((5, 5, 4))));
        assert_eq!(code(b"HELO   "), (501, Some((5, 5, 4))));
        assert_eq!(code(b"VRFY"), (501, Some((5, 5, 4))));
        assert_eq!(code(b"DATA now"), (501, Some((5, 5, 4))));
        assert_eq!(code(b"QUIT please"), (501, Some((5, 5, 4))));
        assert_eq!(code(b"STARTTLS x"), (501, Some((5, 5, 4))));
    }

    #[test]
    fn unknown_and_refused_verbs() {
        assert_eq!(code(b"FOO"), (500, Some((5, 5, 2))));
        assert_eq!(code(b""), (500, Some((5, 5, 2))));
        assert_eq!(code(b"MAILFROM:<a@b>"), (500, Some((5, 5, 2))));
        assert_eq!(code(b"XCLIENT ADDR=192.0.2.1"), (502, Some((5, 5, 1))));
        assert_eq!(code(b"xforward NAME=x"), (502, Some((5, 5, 1))));
        assert_eq!(code(b"ETRN example.org"), (502, Some((5, 5, 1))));
    }

    #[test]
    fn nul_cr_and_controls_are_refused() {
        assert_eq!(
            Command::parse(b"NOOP\0"),
            Err(CommandError::Syntax("NUL character in command"))
        );
        assert_eq!(
            Command::parse(b"MAIL FROM:<a@b>\rRSET"),
            Err(CommandError::Syntax("bare CR in command"))
        );
        assert_eq!(
            Command::parse(b"RSET\nQUIT"),
            Err(CommandError::Syntax("bare LF in command"))
        );
        assert_eq!(code(b"RCPT TO:<a@b>\tNOTIFY=NEVER"), (500, Some((5, 5, 2))));
        assert_eq!(code(b"EHLO \xff\xfe"), (500, Some((5, 5, 2))));
    }

    #[test]
    fn mail_from_paths() {
        assert_eq!(mail("MAIL FROM:<>").reverse_path, None);
        assert_eq!(
            mail("mail from:<Joe@Example.ORG>").reverse_path,
            Some(addr("Joe", "example.org"))
        );
        // Tolerated like Postfix: a space after the colon.
        assert_eq!(
            mail("MAIL FROM: <a@b.c>").reverse_path,
            Some(addr("a", "b.c"))
        );
        // RFC 5321 4.1.2: source routes are accepted and ignored.
        assert_eq!(
            mail("MAIL FROM:<@relay.one,@relay.two:user@x.org>").reverse_path,
            Some(addr("user", "x.org"))
        );
        assert_eq!(
            mail(r#"MAIL FROM:<"john \"j\" doe"@x.org>"#).reverse_path,
            Some(addr(r#"john "j" doe"#, "x.org"))
        );
        assert_eq!(
            mail("MAIL FROM:<\"joe\"@x.org>").reverse_path,
            Some(addr("joe", "x.org"))
        );
        assert_eq!(
            mail("MAIL FROM:<a@[192.0.2.1]>").reverse_path,
            Some(addr("a", "[192.0.2.1]"))
        );
        assert_eq!(
            mail("MAIL FROM:<a@[IPv6:2001:DB8::1]>").reverse_path,
            Some(addr("a", "[ipv6:2001:db8::1]"))
        );
        assert_eq!(
            mail("MAIL FROM:<a@[x-tag:stuff]>").reverse_path,
            Some(addr("a", "[x-tag:stuff]"))
        );
    }

    #[test]
    fn malformed_paths() {
        let bad_address = (501, Some((5, 1, 3)));
        for line in [
            "MAIL FROM:a@b.c",
            "MAIL FROM:<a@b.c",
            "MAIL FROM:a@b.c>",
            "MAIL FROM:<a>",
            "MAIL FROM:<@b.c>",
            "MAIL FROM:<a@>",
            "MAIL FROM:<.a@b.c>",
            "MAIL FROM:<a..b@b.c>",
            "MAIL FROM:<a.@b.c>",
            "MAIL FROM:<a@b..c>",
            "MAIL FROM:<a@-b.c>",
            "MAIL FROM:<a@b-.c>",
            "MAIL FROM:<a@b.c.>",
            "MAIL FROM:<a b@c.d>",
            "MAIL FROM:<\"unterminated@c.d>",
            "MAIL FROM:<a@[300.0.0.1]>",
            "MAIL FROM:<a@[IPv6:zz::1]>",
            "MAIL FROM:<a@[192.0.2.1>",
            "MAIL FROM:<a@b.c>junk",
            "MAIL FROM:<a@b.c>>",
            "MAIL FROM:<postmaster>",
            "RCPT TO:<>",
            "RCPT TO:<a@b.c",
            "RCPT TO:joe@b.c",
            "RCPT TO:<joe>",
            "MAIL FROM:<@a:b@c.d",
            "MAIL FROM:<@a;b@c.d>",
        ] {
            assert_eq!(code(line.as_bytes()), bad_address, "{line}");
        }
        let long_local = format!("MAIL FROM:<{}@b.c>", "l".repeat(65));
        assert_eq!(code(long_local.as_bytes()), bad_address);
        let ok_local = format!("MAIL FROM:<{}@b.c>", "l".repeat(64));
        assert!(p(&ok_local).is_ok());
        let long_label = format!("MAIL FROM:<a@{}.c>", "d".repeat(64));
        assert_eq!(code(long_label.as_bytes()), bad_address);
        let long_domain = format!("MAIL FROM:<a@{}c>", "d.".repeat(128));
        assert_eq!(code(long_domain.as_bytes()), bad_address);
        assert_eq!(code(b"MAIL <a@b.c>"), (501, Some((5, 5, 4))));
        assert_eq!(code(b"RCPT <a@b.c>"), (501, Some((5, 5, 4))));
        assert_eq!(code(b"MAIL"), (501, Some((5, 5, 4))));
    }

    #[test]
    fn mail_parameters() {
        let m = mail("MAIL FROM:<a@b.c> SIZE=12345 BODY=8bitmime RET=HDRS ENVID=QQ314159 AUTH=<>");
        assert_eq!(m.size, Some(12345));
        assert_eq!(m.body, Some(Body::EightBitMime));
        assert_eq!(m.ret, Some(Ret::Headers));
        assert_eq!(m.envid.as_deref(), Some("QQ314159"));
        assert_eq!(m.auth.as_deref(), Some("<>"));
        assert!(!m.smtputf8);
        let m = mail("MAIL FROM:<a@b.c>  body=7BIT   ret=full auth=e+2Bmc@x.org");
        assert_eq!((m.body, m.ret), (Some(Body::SevenBit), Some(Ret::Full)));
        assert_eq!(m.auth.as_deref(), Some("e+2Bmc@x.org"));
        assert_eq!(
            mail("MAIL FROM:<a@b.c> SIZE=99999999999999999999").size,
            Some(u64::MAX)
        );
    }

    #[test]
    fn bad_mail_parameters() {
        let bad = (501, Some((5, 5, 4)));
        for line in [
            "MAIL FROM:<a@b.c> SIZE=",
            "MAIL FROM:<a@b.c> SIZE",
            "MAIL FROM:<a@b.c> SIZE=12k",
            "MAIL FROM:<a@b.c> SIZE=123456789012345678901",
            "MAIL FROM:<a@b.c> BODY=BINARYMIME",
            "MAIL FROM:<a@b.c> SMTPUTF8=yes",
            "MAIL FROM:<a@b.c> RET=ALL",
            "MAIL FROM:<a@b.c> AUTH=a+zz@b",
            "MAIL FROM:<a@b.c> ENVID=a=b",
            "MAIL FROM:<a@b.c> SIZE=1 SIZE=2",
            "MAIL FROM:<a@b.c> -SIZE=1",
            "MAIL FROM:<a@b.c> SI_ZE=1",
        ] {
            assert_eq!(code(line.as_bytes()), bad, "{line}");
        }
        let long_envid = format!("MAIL FROM:<a@b.c> ENVID={}", "e".repeat(101));
        assert_eq!(code(long_envid.as_bytes()), bad);
        assert_eq!(
            p("MAIL FROM:<a@b.c> X-FOO=1"),
            Err(CommandError::UnknownParameter("X-FOO".into()))
        );
        assert_eq!(code(b"MAIL FROM:<a@b.c> HOLDFOR"), (555, Some((5, 5, 4))));
        // A DSN parameter on the wrong command is just unknown there.
        assert_eq!(
            code(b"MAIL FROM:<a@b.c> NOTIFY=NEVER"),
            (555, Some((5, 5, 4)))
        );
        assert_eq!(code(b"RCPT TO:<a@b.c> SIZE=1"), (555, Some((5, 5, 4))));
    }

    #[test]
    fn rcpt_to_and_dsn() {
        assert_eq!(
            rcpt("RCPT TO:<User@Example.Org>").forward_path,
            addr("User", "example.org")
        );
        let pm = rcpt("rcpt to:<PostMaster>");
        assert_eq!(pm.forward_path.domain, None);
        assert!(pm.forward_path.is_postmaster());
        let r = rcpt("RCPT TO:<a@b.c> NOTIFY=success,DELAY ORCPT=rfc822;a+40b.c");
        assert_eq!(
            r.notify,
            Some(Notify::On {
                success: true,
                failure: false,
                delay: true
            })
        );
        assert_eq!(r.orcpt.as_deref(), Some("rfc822;a+40b.c"));
        assert_eq!(
            rcpt("RCPT TO:<a@b.c> NOTIFY=NEVER").notify,
            Some(Notify::Never)
        );
        for line in [
            "RCPT TO:<a@b.c> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<a@b.c> NOTIFY=SUCCESS,SUCCESS",
            "RCPT TO:<a@b.c> NOTIFY=",
            "RCPT TO:<a@b.c> NOTIFY=SOMETIMES",
            "RCPT TO:<a@b.c> ORCPT=rfc822",
            "RCPT TO:<a@b.c> ORCPT=rfc822;",
            "RCPT TO:<a@b.c> ORCPT=;a@b",
            "RCPT TO:<a@b.c> ORCPT",
        ] {
            assert_eq!(code(line.as_bytes()), (501, Some((5, 5, 4))), "{line}");
        }
    }

    #[test]
    fn smtputf8_addresses() {
        assert_eq!(
            code("MAIL FROM:<jöe@bücher.example>".as_bytes()),
            (553, Some((5, 6, 7)))
        );
        let m = mail("MAIL FROM:<jöe@Bücher.example> SMTPUTF8");
        assert!(m.smtputf8);
        assert_eq!(m.reverse_path, Some(addr("jöe", "bücher.example")));
        let r = rcpt("RCPT TO:<用户@例子.广告>");
        assert_eq!(r.check_utf8(false), Err(CommandError::Utf8NotPermitted));
        assert_eq!(r.check_utf8(true), Ok(()));
        assert_eq!(rcpt("RCPT TO:<a@b.c>").check_utf8(false), Ok(()));
    }

    #[test]
    fn bdat_and_auth() {
        assert_eq!(
            p("BDAT 1000"),
            Ok(Command::Bdat {
                size: 1000,
                last: false
            })
        );
        assert_eq!(
            p("bdat 0 last"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        for line in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST more",
            "BDAT 99999999999999999999",
        ] {
            assert_eq!(code(line.as_bytes()), (501, Some((5, 5, 4))), "{line}");
        }
        assert_eq!(
            p("AUTH plain AGpvZQBzZWNyZXQ="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("AGpvZQBzZWNyZXQ=".into())
            })
        );
        assert_eq!(
            p("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial_response: None
            })
        );
        assert!(
            matches!(p("AUTH EXTERNAL ="), Ok(Command::Auth { initial_response: Some(r), .. }) if r == "=")
        );
        for line in [
            "AUTH",
            "AUTH PL@IN",
            "AUTH PLAIN not*base64",
            "AUTH PLAIN a b",
            "AUTH PLAIN ===",
            "AUTH ABCDEFGHIJKLMNOPQRSTU",
        ] {
            assert_eq!(code(line.as_bytes()), (501, Some((5, 5, 4))), "{line}");
        }
    }

    #[test]
    fn address_display_requotes() {
        assert_eq!(addr("joe", "x.org").to_string(), "joe@x.org");
        assert_eq!(addr("john doe", "x.org").to_string(), "\"john doe\"@x.org");
        assert_eq!(addr("a\"b\\", "x.org").to_string(), "\"a\\\"b\\\\\"@x.org");
        let pm = Address {
            local: "postmaster".into(),
            domain: None,
        };
        assert_eq!(pm.to_string(), "postmaster");
        // Round trip through the parser.
        for a in [
            addr("john doe", "x.org"),
            addr("a\"b\\", "x.org"),
            addr("", "x.org"),
        ] {
            assert_eq!(rcpt(&format!("RCPT TO:<{a}>")).forward_path, a);
        }
    }

    #[test]
    fn replies_are_single_lines_without_client_text() {
        let r = Command::parse(b"MAIL FROM:<a@b.c> X-EVIL=1")
            .unwrap_err()
            .reply();
        assert_eq!(r.to_string(), "555 5.5.4 Unsupported parameter X-EVIL\r\n");
        let r = Command::parse(b"\0").unwrap_err().reply();
        assert_eq!(
            r.to_string(),
            "500 5.5.2 Syntax error: NUL character in command\r\n"
        );
    }

    fn near_valid() -> impl Strategy<Value = Vec<u8>> {
        let verb = prop_oneof![
            Just("MAIL FROM:"),
            Just("RCPT TO:"),
            Just("mail from: "),
            Just("BDAT ")
        ];
        let body = prop::collection::vec(
            prop_oneof![
                Just("a"),
                Just("."),
                Just("@"),
                Just("<"),
                Just(">"),
                Just("\""),
                Just("\\"),
                Just(" "),
                Just("["),
                Just("]"),
                Just(":"),
                Just("="),
                Just("é"),
                Just("SIZE"),
                Just("+2B"),
                Just("-"),
                Just("1"),
                Just("\r"),
                Just("\0"),
            ],
            0..24,
        );
        (verb, body).prop_map(|(v, b)| format!("{v}{}", b.concat()).into_bytes())
    }

    proptest! {
        #[test]
        fn never_panics_and_replies_are_one_line(
            line in prop_oneof![prop::collection::vec(any::<u8>(), 0..300), near_valid()],
        ) {
            match Command::parse(&line) {
                Ok(Command::Mail(m)) => {
                    if let Some(a) = m.reverse_path {
                        prop_assert!(a.domain.is_some());
                        prop_assert!(!a.to_string().contains(['\r', '\n', '\0']));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let r = e.reply().to_string();
                    prop_assert!(r.ends_with("\r\n"));
                    prop_assert_eq!(r.matches("\r\n").count(), 1);
                }
            }
        }
    }

    // Found by the smtp_command fuzz target: an address literal had no length bound, so a
    // "domain" of any length reached routing and the back-end.
    #[test]
    fn long_address_literal_is_refused() {
        let literal = format!("tag:{}", "o".repeat(260));
        let line = format!("RCPT TO:<a@[{literal}]>");
        assert_eq!(
            Command::parse(line.as_bytes()),
            Err(CommandError::BadAddress("domain longer than 255 octets"))
        );
        let fits = format!("RCPT TO:<a@[tag:{}]>", "o".repeat(249));
        assert!(Command::parse(fits.as_bytes()).is_ok());
    }

    // Lower-casing U+0130 turns 2 octets into 3: a domain that fits as sent must still
    // fit as stored.
    #[test]
    fn domain_that_grows_when_lower_cased_is_refused() {
        let label = "\u{130}".repeat(30); // 60 octets, 90 lower-cased
        let line = format!("MAIL FROM:<a@{label}.example> SMTPUTF8");
        assert_eq!(
            Command::parse(line.as_bytes()),
            Err(CommandError::BadAddress("domain too long when lower-cased"))
        );
    }

    // Found by the pop3_command fuzz target (the same hole was here): C1 controls such as
    // NEL passed the byte check.
    #[test]
    fn c1_control_characters_are_refused() {
        for line in [
            "HELO a\u{85}b",
            "RCPT TO:<a\u{9e}@example.org>",
            "VRFY \u{80}",
        ] {
            assert_eq!(
                Command::parse(line.as_bytes()),
                Err(CommandError::Syntax("control character in command")),
                "{line:?}"
            );
        }
    }
}
