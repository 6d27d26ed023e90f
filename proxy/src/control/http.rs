//! The front-end's HTTP endpoint: `/metrics` (Prometheus) and `/ready` (for service
//! managers and load balancers in front). Every request carries the bearer token from
//! `monitor.metrics_token_file` (Prometheus: `authorization: { credentials_file: ... }`),
//! unless the operator turned authentication off; anything else gets 401.

use std::{path::Path, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::frontend::Command;

/// The content type of Prometheus's text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a scrape waits for the front-end's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The bearer token, read once at start (the file may be readable by root only).
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl Token {
    pub fn from_file(path: &Path) -> std::io::Result<Token> {
        let text = std::fs::read_to_string(path)?;
        let token = text.trim();
        if token.len() < 16 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: a token is one line of at least 16 printable characters",
                    path.display()
                ),
            ));
        }
        Ok(Token(token.as_bytes().into()))
    }

    /// Whether `headers` carry this token, compared in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (given.as_bytes(), &self.0[..]);
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

#[derive(Clone)]
struct Endpoint {
    token: Option<Token>,
    commands: mpsc::Sender<Command>,
}

/// Serves until `stop`. `token` is `None` only when the configuration says
/// `metrics_insecure_no_auth = true`.
pub async fn serve(
    listener: std::net::TcpListener,
    token: Option<Token>,
    commands: mpsc::Sender<Command>,
    stop: CancellationToken,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "metrics endpoint not served");
            return;
        }
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .with_state(Endpoint { token, commands });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "metrics endpoint failed");
    }
}

/// 401 with the challenge for a bearer token.
pub fn unauthorized() -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, "a bearer token is required\n").into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn admitted(e: &Endpoint, headers: &HeaderMap) -> bool {
    e.token.as_ref().is_none_or(|t| t.admits(headers))
}

/// Asks the front-end; `None` when it is stopping or does not answer in time.
async fn ask<T>(e: &Endpoint, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
    let (done, answer) = oneshot::channel();
    e.commands.send(command(done)).await.ok()?;
    tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .ok()?
        .ok()
}

async fn metrics(State(e): State<Endpoint>, headers: HeaderMap) -> Response {
    if !admitted(&e, &headers) {
        return unauthorized();
    }
    match ask(&e, |done| Command::Metrics { done }).await {
        Some(text) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], text).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the front-end is stopping\n",
        )
            .into_response(),
    }
}

async fn ready(State(e): State<Endpoint>, headers: HeaderMap) -> Response {
    if !admitted(&e, &headers) {
        return unauthorized();
    }
    // Answering at all means the configuration is applied and the data path attached:
    // the front-end serves only after both. Ready also needs every background task up.
    match ask(&e, |done| Command::Status { done }).await {
        Some(s) if s.ready => {
            (StatusCode::OK, format!("ready: version {}\n", s.version)).into_response()
        }
        Some(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: a background task is restarting\n",
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: stopping\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        let t = Token(b"0123456789abcdef".as_slice().into());
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(t.admits(&with("Bearer 0123456789abcdef")));
        assert!(!t.admits(&with("Bearer 0123456789abcde")));
        assert!(!t.admits(&with("Bearer 0123456789abcdefg")));
        assert!(!t.admits(&with("Basic 0123456789abcdef")));
        assert!(!t.admits(&HeaderMap::new()));
    }

    #[test]
    fn short_or_multi_line_tokens_are_refused() {
        let dir = std::env::temp_dir().join(format!("rb-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("t");
        for bad in ["short", "0123456789abcdef 0123", ""] {
            std::fs::write(&f, bad).unwrap();
            assert!(Token::from_file(&f).is_err(), "{bad:?}");
        }
        std::fs::write(&f, "0123456789abcdef\n").unwrap();
        assert!(Token::from_file(&f).is_ok());
        let _ = std::fs::remove_dir_all(dir);
    }
}
