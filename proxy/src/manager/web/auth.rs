//! Who may use the web interface: one-time login links an operator asks for with its
//! certificate (`robustifier cluster web`), exchanged for a session cookie.
//!
//! Tokens and session ids are 32 random octets. Only their SHA-256 is kept as the key of
//! the tables, so that looking one up takes no time that depends on how much of a guess
//! was right. Everything is in memory: a manager restart logs everyone out.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use ring::rand::{SecureRandom as _, SystemRandom};

use crate::sync::lock;

/// A login link is good for this long, once.
pub const LOGIN_VALID: Duration = Duration::from_secs(60);
/// A session ends after this long without a request...
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// ...and after this long in any case.
pub const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// Bounds on what a flood of logins can make the manager hold.
const MAX_LOGINS: usize = 1024;
const MAX_SESSIONS: usize = 1024;

/// The session cookie's name: with `__Host-`, browsers take it only from this host over
/// HTTPS, for the whole site, never for a parent domain.
pub const COOKIE: &str = "__Host-robustifier_session";
/// The header every POST must carry with the session's CSRF token: a form of another site
/// cannot set it, and a script of another site may not send it without a CORS preflight
/// that this server never grants.
pub const CSRF_HEADER: &str = "x-robustifier-csrf";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no random numbers: {0}")]
    Random(String),
    #[error(
        "this login link is unknown, used already or expired; ask for a new one with `robustifier cluster web`"
    )]
    BadToken,
    #[error("not logged in, or the session expired")]
    NoSession,
    #[error("the request lacks the session's {CSRF_HEADER} header")]
    Csrf,
    #[error("too many {0} at once; try again later")]
    Full(&'static str),
}

type Key = [u8; 32];

struct Login {
    name: String,
    expires: Instant,
}

struct Session {
    name: String,
    csrf: String,
    created: Instant,
    last: Instant,
}

impl Session {
    fn alive(&self, now: Instant) -> bool {
        now.duration_since(self.last) < SESSION_IDLE
            && now.duration_since(self.created) < SESSION_MAX
    }
}

/// A session as a request sees it: the operator, and the token its POSTs must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub csrf: String,
}

/// A new session: the cookie's value, and the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub cookie: String,
    pub operator: Operator,
}

pub struct Auth {
    logins: Mutex<HashMap<Key, Login>>,
    sessions: Mutex<HashMap<Key, Session>>,
    random: SystemRandom,
}

fn key(token: &str) -> Key {
    let mut k = [0; 32];
    k.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    k
}

impl Default for Auth {
    fn default() -> Auth {
        Auth::new()
    }
}

impl Auth {
    pub fn new() -> Auth {
        Auth {
            logins: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            random: SystemRandom::new(),
        }
    }

    fn random(&self) -> Result<String, AuthError> {
        let mut b = [0u8; 32];
        self.random
            .fill(&mut b)
            .map_err(|e| AuthError::Random(e.to_string()))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
    }

    /// A one-time login token for operator `name`, valid [`LOGIN_VALID`] from `now`.
    pub fn issue_login(&self, name: &str, now: Instant) -> Result<String, AuthError> {
        let token = self.random()?;
        let mut logins = lock(&self.logins);
        logins.retain(|_, l| now < l.expires);
        if logins.len() >= MAX_LOGINS {
            return Err(AuthError::Full("login links"));
        }
        logins.insert(
            key(&token),
            Login {
                name: name.to_owned(),
                expires: now + LOGIN_VALID,
            },
        );
        Ok(token)
    }

    /// Exchanges a login token for a session; the token is gone afterwards, whether it
    /// was still good or not.
    pub fn exchange(&self, token: &str, now: Instant) -> Result<NewSession, AuthError> {
        let login = lock(&self.logins).remove(&key(token));
        let Some(login) = login.filter(|l| now < l.expires) else {
            return Err(AuthError::BadToken);
        };
        let cookie = self.random()?;
        let csrf = self.random()?;
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.alive(now));
        if sessions.len() >= MAX_SESSIONS {
            return Err(AuthError::Full("sessions"));
        }
        sessions.insert(
            key(&cookie),
            Session {
                name: login.name.clone(),
                csrf: csrf.clone(),
                created: now,
                last: now,
            },
        );
        Ok(NewSession {
            cookie,
            operator: Operator {
                name: login.name,
                csrf,
            },
        })
    }

    /// The session of a request's cookie; a request keeps its session alive. With
    /// `csrf` (a POST's header, or none when it lacks one), that must be the session's.
    pub fn check(
        &self,
        cookie: Option<&str>,
        csrf: Option<Option<&str>>,
        now: Instant,
    ) -> Result<Operator, AuthError> {
        let cookie = cookie.ok_or(AuthError::NoSession)?;
        let mut sessions = lock(&self.sessions);
        let k = key(cookie);
        let Some(s) = sessions.get_mut(&k) else {
            return Err(AuthError::NoSession);
        };
        if !s.alive(now) {
            sessions.remove(&k);
            return Err(AuthError::NoSession);
        }
        if let Some(given) = csrf
            && given.is_none_or(|g| key(g) != key(&s.csrf))
        {
            return Err(AuthError::Csrf);
        }
        s.last = now;
        Ok(Operator {
            name: s.name.clone(),
            csrf: s.csrf.clone(),
        })
    }

    /// Ends the session of `cookie`.
    pub fn logout(&self, cookie: &str) {
        lock(&self.sessions).remove(&key(cookie));
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` of a new session: never readable by scripts, never sent over plain
/// HTTP or with a request another site started.
pub fn set_cookie(value: &str) -> String {
    format!("{COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(auth: &Auth, now: Instant) -> NewSession {
        let token = auth.issue_login("alice", now).unwrap();
        auth.exchange(&token, now).unwrap()
    }

    #[test]
    fn a_login_token_works_once() {
        let auth = Auth::new();
        let now = Instant::now();
        let token = auth.issue_login("alice", now).unwrap();
        assert_eq!(token.len(), 43, "32 octets in base64url");
        let s = auth.exchange(&token, now).unwrap();
        assert_eq!(s.operator.name, "alice");
        assert_eq!(auth.exchange(&token, now), Err(AuthError::BadToken));
        assert_eq!(auth.exchange("made-up", now), Err(AuthError::BadToken));
    }

    #[test]
    fn a_login_token_expires_after_a_minute() {
        let auth = Auth::new();
        let now = Instant::now();
        let token = auth.issue_login("alice", now).unwrap();
        let late = now + LOGIN_VALID;
        assert_eq!(auth.exchange(&token, late), Err(AuthError::BadToken));
        let token = auth.issue_login("alice", now).unwrap();
        assert!(auth.exchange(&token, late - Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn sessions_need_their_cookie_and_end_idle_or_old() {
        let auth = Auth::new();
        let now = Instant::now();
        let s = session(&auth, now);
        assert_eq!(auth.check(None, None, now), Err(AuthError::NoSession));
        assert_eq!(
            auth.check(Some("forged"), None, now),
            Err(AuthError::NoSession)
        );
        let op = auth.check(Some(&s.cookie), None, now).unwrap();
        assert_eq!(op, s.operator);
        // Idle: each request moves the idle deadline on...
        let mut t = now;
        for _ in 0..3 {
            t += SESSION_IDLE - Duration::from_secs(1);
            assert!(auth.check(Some(&s.cookie), None, t).is_ok());
        }
        // ...but not after a pause of the idle time.
        assert_eq!(
            auth.check(Some(&s.cookie), None, t + SESSION_IDLE),
            Err(AuthError::NoSession)
        );
        // Absolute: busy sessions end too.
        let s = session(&auth, now);
        let mut t = now;
        while t < now + SESSION_MAX - SESSION_IDLE {
            t += SESSION_IDLE / 2;
            assert!(auth.check(Some(&s.cookie), None, t).is_ok());
        }
        assert_eq!(
            auth.check(Some(&s.cookie), None, now + SESSION_MAX),
            Err(AuthError::NoSession)
        );
    }

    #[test]
    fn a_post_needs_the_sessions_csrf_header() {
        let auth = Auth::new();
        let now = Instant::now();
        let s = session(&auth, now);
        let other = session(&auth, now);
        let c = Some(s.cookie.as_str());
        assert_eq!(auth.check(c, Some(None), now), Err(AuthError::Csrf));
        assert_eq!(auth.check(c, Some(Some("")), now), Err(AuthError::Csrf));
        assert_eq!(
            auth.check(c, Some(Some(&other.operator.csrf)), now),
            Err(AuthError::Csrf),
            "another session's token"
        );
        assert!(auth.check(c, Some(Some(&s.operator.csrf)), now).is_ok());
    }

    #[test]
    fn logout_ends_the_session() {
        let auth = Auth::new();
        let now = Instant::now();
        let s = session(&auth, now);
        auth.logout(&s.cookie);
        assert_eq!(
            auth.check(Some(&s.cookie), None, now),
            Err(AuthError::NoSession)
        );
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(
            cookie("a=1; __Host-robustifier_session=xyz; b=2", COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie("a=1; robustifier_session=xyz", COOKIE), None);
        let set = set_cookie("v");
        for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(attr), "{set}");
        }
    }
}
