//! An operator's connection to the manager: one request, one reply.

use std::{path::Path, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadHalf, WriteHalf};

use super::{
    tls,
    wire::{self, Reply, Request, WireError},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("manager: {0}")]
    Wire(#[from] WireError),
    /// The manager refused the request; nothing changed.
    #[error("{0}")]
    Refused(String),
    #[error("manager did not answer within {0:?}")]
    Timeout(Duration),
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Client {
    r: BufReader<ReadHalf<Box<dyn Io>>>,
    w: WriteHalf<Box<dyn Io>>,
}

impl Client {
    /// Connects to the manager at `addr` with the operator's certificate.
    pub async fn connect(
        addr: &str,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Client, ClientError> {
        let config = tls::client_config(ca, cert, key)?;
        let stream = tls::connect(addr, config, CONNECT_TIMEOUT).await?;
        let boxed: Box<dyn Io> = Box::new(stream);
        let (r, w) = tokio::io::split(boxed);
        Ok(Client {
            r: BufReader::new(r),
            w,
        })
    }

    /// Sends `request` and returns the reply's value, or the manager's refusal.
    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<serde_json::Value, ClientError> {
        wire::write(&mut self.w, request).await?;
        let reply: Reply = tokio::time::timeout(timeout, wire::read(&mut self.r))
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        if reply.ok {
            Ok(reply.value)
        } else {
            Err(ClientError::Refused(reply.error))
        }
    }
}
