//! The manager's web interface: `robustifier manager --web-listen ADDR`, over HTTPS with
//! the manager's own certificate.
//!
//! - [`auth`]: one-time login links (asked for with an operator certificate), sessions,
//!   the CSRF header.
//! - [`api`]: the JSON API under `/api/`, answered by the same [`Manager::operator`] as
//!   the operator's commands.
//! - [`assets`]: the pages, scripts and style sheet, built into the binary.

pub mod api;
pub mod assets;
pub mod auth;

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use rustls::{
    ServerConfig,
    pki_types::{PrivateKeyDer, pem::PemObject as _},
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::core::Manager;

/// A browser has this long to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on handshakes in progress at once.
const MAX_HANDSHAKES: usize = 256;

/// What the manager needs to hand out login links: the sessions' keeper and where the
/// interface is reached.
pub struct Links {
    pub auth: Arc<auth::Auth>,
    /// `https://ADDR`, without a trailing slash.
    pub base: String,
}

impl Links {
    /// A one-time login link for operator `name`.
    pub fn login_link(&self, name: &str) -> Result<String, auth::AuthError> {
        let token = self.auth.issue_login(name, std::time::Instant::now())?;
        Ok(format!("{}/login#{token}", self.base))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(transparent)]
    Files(#[from] crate::tls::TlsError),
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// HTTPS with the manager's certificate; browsers present none.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, WebError> {
    let chain = crate::tls::certs(cert)?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(crate::tls::pem(key))?;
    let mut config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(crate::tls::TlsError::Provider)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|source| crate::tls::TlsError::KeyPair {
            certificate: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds the web interface's address; the manager learns it to form login links.
pub async fn bind(address: SocketAddr) -> Result<(TcpListener, Links), WebError> {
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| WebError::Listen(address, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| WebError::Listen(address, e))?;
    Ok((
        listener,
        Links {
            auth: Arc::new(auth::Auth::new()),
            base: format!("https://{bound}"),
        },
    ))
}

/// Serves the interface until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    manager: Arc<Manager>,
    auth: Arc<auth::Auth>,
    stop: CancellationToken,
) {
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "web interface: no local address");
            return;
        }
    };
    info!(address = %local, "manager web interface: https://{local}/");
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(handshakes(
        listener,
        TlsAcceptor::from(tls),
        tx,
        stop.clone(),
    ));
    let app = api::router(Arc::new(api::Web::new(manager, auth)));
    if let Err(e) = axum::serve(TlsListener { rx, local }, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "manager web interface failed");
    }
}

/// Accepts connections and runs each TLS handshake in a task of its own, so that a slow
/// client holds up no other.
async fn handshakes(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "web interface: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%peer, "web interface: too many handshakes; closing this connection");
            continue;
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => warn!(%peer, error = %e, "web interface: TLS handshake failed"),
                Err(_) => warn!(%peer, "web interface: TLS handshake timed out"),
            }
        });
    }
}

/// Connections whose handshake is done, as axum takes them.
struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The acceptor stopped: so does the server, by its graceful shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::{testing::TestDir, wire::Request};

    #[tokio::test]
    async fn operators_get_login_links_only_when_the_interface_serves() {
        let dir = TestDir::new("web-links");
        let manager = Manager::open(&dir.join("state"), dir.path()).unwrap();
        let off = manager.operator("alice", Request::WebLogin).await;
        assert!(!off.ok && off.error.contains("--web-listen"), "{off:?}");

        let links = Links {
            auth: Arc::new(auth::Auth::new()),
            base: "https://198.18.0.1:8443".into(),
        };
        let auth = links.auth.clone();
        manager.enable_web(Box::new(move |who| {
            links.login_link(who).map_err(|e| e.to_string())
        }));
        let on = manager.operator("alice", Request::WebLogin).await;
        assert!(on.ok, "{on:?}");
        let link = on.value.as_str().unwrap();
        let token = link
            .strip_prefix("https://198.18.0.1:8443/login#")
            .unwrap_or_else(|| panic!("{link}"));
        let session = auth.exchange(token, std::time::Instant::now()).unwrap();
        assert_eq!(session.operator.name, "alice", "the link is alice's");

        let audit = manager
            .operator(
                "alice",
                Request::Audit {
                    verify: false,
                    since: 1,
                    limit: 10,
                },
            )
            .await;
        let entries = audit.value.to_string();
        assert!(
            entries.contains("operator alice") && entries.contains("web login"),
            "{entries}"
        );
    }
}
