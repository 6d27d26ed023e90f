//! The control socket on disk: bound safely (never looser than 0600, never replacing
//! anything but a stale socket) and asked one request at a time.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use tokio::net::UnixListener;
use tracing::info;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: another daemon is serving it")]
    InUse { path: PathBuf },
    #[error("control socket {path}: {what} is in the way; remove it if it is not needed")]
    NotASocket { path: PathBuf, what: String },
    #[error("control socket {path}: {reason}")]
    Reply { path: PathBuf, reason: String },
}

/// Binds the socket. Only a stale socket (one nobody accepts on: its daemon died) is
/// replaced; a live socket means another daemon runs, and anything else at the path (a
/// file, a directory, a symlink, wherever it points) is an error and left alone.
///
/// The socket never exists with looser permissions than 0600: it is bound inside a
/// private directory (0700) made for the purpose, restricted there, and then linked into
/// place; a link never replaces nor follows what is at the path, so a daemon that took
/// the path meanwhile keeps it.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _};
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
            what: "no file name".into(),
        });
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io)?;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
        Ok(m) if m.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ControlError::InUse {
                        path: path.to_owned(),
                    });
                }
                // Nobody accepts: the socket of a daemon that died.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    info!(path = %path.display(), "replacing a stale control socket");
                    std::fs::remove_file(path).map_err(io)?;
                }
                Err(e) => return Err(io(e)),
            }
        }
        Ok(m) => {
            let t = m.file_type();
            let what = if t.is_symlink() {
                "a symbolic link"
            } else if t.is_dir() {
                "a directory"
            } else if t.is_file() {
                "a regular file"
            } else {
                "not a socket"
            };
            return Err(ControlError::NotASocket {
                path: path.to_owned(),
                what: what.into(),
            });
        }
    }
    let mut private_name = std::ffi::OsString::from(".");
    private_name.push(name);
    private_name.push(format!(".{}.tmp", std::process::id()));
    let private = dir.join(private_name);
    // A leftover of this pid (a crash between mkdir and cleanup) is ours to clear.
    let _ = std::fs::remove_file(private.join("s"));
    let _ = std::fs::remove_dir(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        // Only root may release addresses.
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::hard_link(&staged, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                std::io::Error::new(e.kind(), "another daemon bound it at the same time")
            } else {
                e
            }
        })?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound.map_err(io)
}

/// Sends one request and returns the text after `ok`; an `error` reply is an error.
pub fn request(path: &Path, line: &str, timeout: Duration) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format!("{line}\n").as_bytes())
        .map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    let reply = reply.trim_end();
    if let Some(text) = reply.strip_prefix("ok ") {
        Ok(text.to_owned())
    } else {
        Err(ControlError::Reply {
            path: path.to_owned(),
            reason: reply.strip_prefix("error ").unwrap_or(reply).to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("rb-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn is_socket(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
    }

    #[tokio::test]
    async fn binds_0600_and_replaces_only_a_stale_socket() {
        let d = dir("stale");
        let path = d.join("control.sock");
        let l = bind(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "no staging directory left behind"
        );
        // Live: another daemon serves it.
        assert!(matches!(bind(&path), Err(ControlError::InUse { .. })));
        drop(l);
        // Stale: the daemon is gone, the file is still there.
        assert!(is_socket(&path));
        let l = bind(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(l);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[tokio::test]
    async fn never_replaces_or_follows_anything_else() {
        let d = dir("other");
        let path = d.join("control.sock");

        std::fs::write(&path, "precious").unwrap();
        let e = bind(&path).unwrap_err();
        assert!(
            matches!(&e, ControlError::NotASocket { what, .. } if what == "a regular file"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        std::fs::remove_file(&path).unwrap();

        std::fs::create_dir(&path).unwrap();
        let e = bind(&path).unwrap_err();
        assert!(
            matches!(&e, ControlError::NotASocket { what, .. } if what == "a directory"),
            "{e}"
        );
        std::fs::remove_dir(&path).unwrap();

        // A symlink, whether to a stale socket, a file or nowhere, stays as it is.
        let stale = d.join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let target = d.join("target");
        std::fs::write(&target, "target").unwrap();
        for to in [&stale, &target, &d.join("missing")] {
            std::os::unix::fs::symlink(to, &path).unwrap();
            let e = bind(&path).unwrap_err();
            assert!(
                matches!(&e, ControlError::NotASocket { what, .. } if what == "a symbolic link"),
                "{e}"
            );
            assert_eq!(std::fs::read_link(&path).unwrap(), *to);
            std::fs::remove_file(&path).unwrap();
        }
        assert!(is_socket(&stale), "the link's target is untouched");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "target");
        assert!(
            !d.join("missing").exists(),
            "nothing created through the link"
        );
        std::fs::remove_dir_all(d).unwrap();
    }
}
