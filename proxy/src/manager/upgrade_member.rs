//! A member's side of a package update: the chunks the manager sends are written to
//! `UPDATE_DIR/incoming.deb` (hashed as they come), then the request
//! `UPDATE_DIR/incoming.json` is renamed into place for `robustifier install-update`, which
//! runs as root (see [`crate::install_update`]), and its `result.json` is awaited.
//!
//! The member never installs anything itself: it holds no privilege beyond the update
//! folder, and the root side checks the hash again.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use base64::Engine as _;

use crate::install_update::{
    INCOMING_DEB, INCOMING_JSON, RESULT_JSON, UpdateRequest, UpdateResult, hex, valid_sha256,
    valid_version, write_atomic,
};

/// How often `result.json` is looked for, and for how long (a `dpkg -i` and a binary
/// upgrade that drains take minutes at most).
const RESULT_EVERY: Duration = Duration::from_millis(300);
const RESULT_WITHIN: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error("{0:?} is not a SHA-256")]
    BadHash(String),
    #[error("{0:?} is not a Debian version")]
    BadVersion(String),
    #[error("a chunk at {offset} of package {sha256}, which is at {expected}")]
    OutOfOrder {
        sha256: String,
        offset: u64,
        expected: u64,
    },
    #[error("chunk not base64: {0}")]
    Encoding(#[from] base64::DecodeError),
    #[error("package {0}: not received whole")]
    Incomplete(String),
    #[error("package received with SHA-256 {got}, not {want}")]
    HashMismatch { got: String, want: String },
    #[error("an update is waiting for the installer already ({0})")]
    Busy(PathBuf),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

struct Receiving {
    dir: PathBuf,
    sha256: String,
    total: u64,
    received: u64,
    file: std::fs::File,
    hash: ring::digest::Context,
}

/// The package being received, if any.
#[derive(Default)]
pub struct Receiver {
    current: Option<Receiving>,
}

impl Receiver {
    /// Takes a chunk into `dir/incoming.deb` (a chunk at offset 0 starts a package).
    pub fn chunk(
        &mut self,
        dir: &Path,
        sha256: &str,
        total: u64,
        offset: u64,
        data: &str,
    ) -> Result<(), UpdateError> {
        if !valid_sha256(sha256) {
            return Err(UpdateError::BadHash(sha256.to_owned()));
        }
        if offset == 0 {
            self.current = None;
            let request = dir.join(INCOMING_JSON);
            if request.exists() {
                return Err(UpdateError::Busy(request));
            }
            std::fs::create_dir_all(dir).map_err(|e| UpdateError::Io(dir.to_owned(), e))?;
            let path = dir.join(INCOMING_DEB);
            let file = std::fs::File::create(&path).map_err(|e| UpdateError::Io(path, e))?;
            self.current = Some(Receiving {
                dir: dir.to_owned(),
                sha256: sha256.to_owned(),
                total,
                received: 0,
                file,
                hash: ring::digest::Context::new(&ring::digest::SHA256),
            });
        }
        let r = match self.current.as_mut() {
            Some(r) if r.sha256 == sha256 && r.received == offset && r.total == total => r,
            other => {
                let expected = other.map_or(0, |r| r.received);
                self.current = None;
                return Err(UpdateError::OutOfOrder {
                    sha256: sha256.to_owned(),
                    offset,
                    expected,
                });
            }
        };
        let bytes = base64::engine::general_purpose::STANDARD.decode(data)?;
        if r.received + bytes.len() as u64 > r.total {
            self.current = None;
            return Err(UpdateError::Incomplete(sha256.to_owned()));
        }
        r.file
            .write_all(&bytes)
            .map_err(|e| UpdateError::Io(r.dir.join(INCOMING_DEB), e))?;
        r.hash.update(&bytes);
        r.received += bytes.len() as u64;
        Ok(())
    }

    /// The package is whole: checks it and writes the request for the installer. Returns
    /// the folder, where the result will appear.
    pub fn install(
        &mut self,
        version: &str,
        sha256: &str,
        rollback: bool,
    ) -> Result<PathBuf, UpdateError> {
        if !valid_version(version) {
            return Err(UpdateError::BadVersion(version.to_owned()));
        }
        let r = match self.current.take() {
            Some(r) if r.sha256 == sha256 && r.received == r.total => r,
            _ => return Err(UpdateError::Incomplete(sha256.to_owned())),
        };
        let got = hex(r.hash.finish().as_ref());
        if got != sha256 {
            let _ = std::fs::remove_file(r.dir.join(INCOMING_DEB));
            return Err(UpdateError::HashMismatch {
                got,
                want: sha256.to_owned(),
            });
        }
        r.file
            .sync_all()
            .map_err(|e| UpdateError::Io(r.dir.join(INCOMING_DEB), e))?;
        // The last result is of the last request: it goes before the new request appears.
        let result = r.dir.join(RESULT_JSON);
        if let Err(e) = std::fs::remove_file(&result)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            return Err(UpdateError::Io(result, e));
        }
        let request = UpdateRequest {
            version: version.to_owned(),
            sha256: sha256.to_owned(),
            rollback,
        };
        let path = r.dir.join(INCOMING_JSON);
        let bytes =
            serde_json::to_vec(&request).map_err(|e| UpdateError::Io(path.clone(), e.into()))?;
        write_atomic(&path, &bytes).map_err(|e| UpdateError::Io(path, e))?;
        Ok(r.dir)
    }
}

/// Waits for the installer's `result.json` of `version` in `dir`: whether it installed
/// it, and its word.
pub async fn result(dir: PathBuf, version: String) -> (bool, String) {
    let file = dir.join(RESULT_JSON);
    let deadline = tokio::time::Instant::now() + RESULT_WITHIN;
    while tokio::time::Instant::now() < deadline {
        if let Ok(bytes) = tokio::fs::read(&file).await
            && let Ok(r) = serde_json::from_slice::<UpdateResult>(&bytes)
            && r.version == version
        {
            return match r.ok {
                true => (true, format!("installed {version}")),
                false => (false, r.error.unwrap_or_else(|| "installer failed".into())),
            };
        }
        tokio::time::sleep(RESULT_EVERY).await;
    }
    (
        false,
        format!(
            "no result from the installer within {RESULT_WITHIN:?} ({} waits)",
            dir.join(INCOMING_JSON).display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn sha(b: &[u8]) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
    }

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("rb-member-update-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn chunks_make_the_package_then_the_request() {
        let d = dir("ok");
        let mut r = Receiver::default();
        let h = sha(b"abcdef");
        r.chunk(&d, &h, 6, 0, &b64(b"abc")).unwrap();
        assert!(
            !d.join(INCOMING_JSON).exists(),
            "no request before the package is whole"
        );
        r.chunk(&d, &h, 6, 3, &b64(b"def")).unwrap();
        std::fs::write(d.join(RESULT_JSON), b"{}").unwrap();
        r.install("0.1.0+x", &h, true).unwrap();
        assert_eq!(std::fs::read(d.join(INCOMING_DEB)).unwrap(), b"abcdef");
        let req: UpdateRequest =
            serde_json::from_slice(&std::fs::read(d.join(INCOMING_JSON)).unwrap()).unwrap();
        assert_eq!(
            req,
            UpdateRequest {
                version: "0.1.0+x".into(),
                sha256: h.clone(),
                rollback: true
            }
        );
        assert!(!d.join(RESULT_JSON).exists(), "the old result went");
        // A second package while the first waits for the installer is refused.
        assert!(matches!(
            r.chunk(&d, &h, 6, 0, &b64(b"abc")),
            Err(UpdateError::Busy(_))
        ));
    }

    #[test]
    fn a_bad_hash_or_order_writes_no_request() {
        let d = dir("bad");
        let mut r = Receiver::default();
        r.chunk(&d, &sha(b"other"), 3, 0, &b64(b"abc")).unwrap();
        assert!(matches!(
            r.install("1.0", &sha(b"other"), false),
            Err(UpdateError::HashMismatch { .. })
        ));
        assert!(!d.join(INCOMING_JSON).exists());
        let h = sha(b"abcdef");
        r.chunk(&d, &h, 6, 0, &b64(b"abc")).unwrap();
        assert!(matches!(
            r.chunk(&d, &h, 6, 4, &b64(b"ef")),
            Err(UpdateError::OutOfOrder { .. })
        ));
        assert!(matches!(
            r.install("1.0", &h, false),
            Err(UpdateError::Incomplete(_))
        ));
        assert!(!d.join(INCOMING_JSON).exists());
    }
}
