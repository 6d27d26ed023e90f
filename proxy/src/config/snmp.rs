//! `[[monitor.snmp]]`: the SNMP managers told of every alarm raised and cleared.
//!
//! Secrets (the v2c community, the v3 keys) live in files only, so the configuration can be
//! shown, diffed and kept in version control; each file is read and its length checked at
//! load, and read again when the front-end starts sending.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSnmp {
    /// `host:port` of the manager (IPv6 as `[addr]:port`); the usual port is 162.
    pub target: String,
    /// "2c" or "3".
    pub version: String,
    /// v2c: file holding the community.
    pub community_file: Option<String>,
    /// v3: the USM user.
    pub user: Option<String>,
    /// v3: "sha" (HMAC-SHA-96), "sha224", "sha256", "sha384" or "sha512".
    pub auth: Option<String>,
    pub auth_key_file: Option<String>,
    /// v3: "aes" (AES-128-CFB); none: authenticated, not encrypted.
    #[serde(rename = "priv")]
    pub privacy: Option<String>,
    pub priv_key_file: Option<String>,
    /// v3 traps: this front-end's snmpEngineID in hex (5 to 32 octets); by default one
    /// made of the placeholder enterprise number and the front-end's name.
    pub engine_id: Option<String>,
    /// v3 traps: file keeping snmpEngineBoots across restarts (written by the front-end).
    pub engine_boots_file: Option<String>,
    /// Informs (acknowledged, retried) instead of traps.
    pub inform: Option<bool>,
}

/// One manager, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub target: SocketAddr,
    /// Informs instead of traps.
    pub inform: bool,
    pub security: Security,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    V2c { community_file: PathBuf },
    V3(V3),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3 {
    pub user: String,
    pub auth: Auth,
    pub auth_key_file: PathBuf,
    /// None: authNoPriv.
    pub privacy: Option<Privacy>,
    pub engine_id: Option<Vec<u8>>,
    /// Required for traps, where this front-end is the authoritative engine.
    pub engine_boots_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Privacy {
    Aes128 { key_file: PathBuf },
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = match &self.security {
            Security::V2c { .. } => "v2c".to_owned(),
            Security::V3(v3) => format!("v3 user {}", v3.user),
        };
        let what = if self.inform { "informs" } else { "traps" };
        write!(f, "{} ({version}, {what})", self.target)
    }
}

/// Shortest v3 key passphrase (RFC 3414 section 11.2; net-snmp refuses shorter ones).
pub const MIN_KEY: usize = 8;
/// Longest secret accepted: far beyond any real one, short enough to stay out of memory
/// trouble when a wrong file is named.
pub const MAX_SECRET: usize = 256;

/// The secret in `path`: its text without the trailing newline an editor adds.
pub fn read_secret(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

fn secret(base: &Path, key: &str, value: &str, min: usize) -> Result<PathBuf, (String, String)> {
    let path = super::readable(base, key, value)?;
    let text = read_secret(&path).map_err(|e| {
        (
            key.to_owned(),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if text.contains('\n') {
        return Err((
            key.to_owned(),
            format!("{} must hold one line", path.display()),
        ));
    }
    if !(min..=MAX_SECRET).contains(&text.len()) {
        return Err((
            key.to_owned(),
            format!(
                "{} holds {} bytes: must be {min} to {MAX_SECRET}",
                path.display(),
                text.len()
            ),
        ));
    }
    Ok(path)
}

pub(super) fn destination(
    base: &Path,
    i: usize,
    raw: RawSnmp,
) -> Result<Destination, (String, String)> {
    let k = |field: &str| format!("monitor.snmp[{i}].{field}");
    let target = raw.target.parse().map_err(|_| {
        (
            k("target"),
            format!("{:?} is not an address:port", raw.target),
        )
    })?;
    let inform = raw.inform.unwrap_or(false);
    let v3_only = [
        ("user", raw.user.is_some()),
        ("auth", raw.auth.is_some()),
        ("auth_key_file", raw.auth_key_file.is_some()),
        ("priv", raw.privacy.is_some()),
        ("priv_key_file", raw.priv_key_file.is_some()),
        ("engine_id", raw.engine_id.is_some()),
        ("engine_boots_file", raw.engine_boots_file.is_some()),
    ];
    let security = match raw.version.as_str() {
        "2c" => {
            if let Some((field, _)) = v3_only.iter().find(|(_, set)| *set) {
                return Err((k(field), "is for version \"3\"".into()));
            }
            let file = raw.community_file.ok_or_else(|| {
                (
                    k("community_file"),
                    "missing: version \"2c\" needs the community's file".into(),
                )
            })?;
            Security::V2c {
                community_file: secret(base, &k("community_file"), &file, 1)?,
            }
        }
        "3" => {
            if raw.community_file.is_some() {
                return Err((k("community_file"), "is for version \"2c\"".into()));
            }
            let user = raw
                .user
                .ok_or_else(|| (k("user"), "missing: version \"3\" needs a user".into()))?;
            if !(1..=32).contains(&user.len()) {
                return Err((k("user"), "must be 1 to 32 bytes".into()));
            }
            let auth = match raw.auth.as_deref() {
                Some("sha") => Auth::Sha1,
                Some("sha224") => Auth::Sha224,
                Some("sha256") => Auth::Sha256,
                Some("sha384") => Auth::Sha384,
                Some("sha512") => Auth::Sha512,
                Some(other) => {
                    return Err((
                        k("auth"),
                        format!(
                            "{other:?} is not one of \"sha\", \"sha224\", \"sha256\", \"sha384\", \"sha512\""
                        ),
                    ));
                }
                None => {
                    return Err((
                        k("auth"),
                        "missing: notifications are always authenticated".into(),
                    ));
                }
            };
            let auth_key_file = raw.auth_key_file.ok_or_else(|| {
                (
                    k("auth_key_file"),
                    "missing: the authentication key's file".into(),
                )
            })?;
            let auth_key_file = secret(base, &k("auth_key_file"), &auth_key_file, MIN_KEY)?;
            let privacy = match (raw.privacy.as_deref(), raw.priv_key_file) {
                (None, None) => None,
                (Some("aes"), Some(f)) => Some(Privacy::Aes128 {
                    key_file: secret(base, &k("priv_key_file"), &f, MIN_KEY)?,
                }),
                (Some("aes"), None) => {
                    return Err((k("priv_key_file"), "missing: the privacy key's file".into()));
                }
                (None, Some(_)) => {
                    return Err((k("priv"), "missing: \"aes\" with priv_key_file".into()));
                }
                (Some(other), _) => {
                    return Err((k("priv"), format!("{other:?} is not \"aes\" (AES-128)")));
                }
            };
            let engine_id = raw
                .engine_id
                .map(|h| engine_id(&h).map_err(|e| (k("engine_id"), e)))
                .transpose()?;
            let engine_boots_file = match (inform, raw.engine_boots_file) {
                (true, Some(_)) => {
                    return Err((
                        k("engine_boots_file"),
                        "is for traps: with informs the manager's engine is the authoritative one"
                            .into(),
                    ));
                }
                (true, None) => None,
                (false, None) => {
                    return Err((
                        k("engine_boots_file"),
                        "missing: v3 traps need a file that keeps snmpEngineBoots across restarts"
                            .into(),
                    ));
                }
                (false, Some(f)) => Some(boots_file(base, &k("engine_boots_file"), &f)?),
            };
            if inform && engine_id.is_some() {
                return Err((
                    k("engine_id"),
                    "is for traps: with informs the manager's engine ID is discovered".into(),
                ));
            }
            Security::V3(V3 {
                user,
                auth,
                auth_key_file,
                privacy,
                engine_id,
                engine_boots_file,
            })
        }
        other => {
            return Err((k("version"), format!("{other:?} is not \"2c\" or \"3\"")));
        }
    };
    Ok(Destination {
        target,
        inform,
        security,
    })
}

/// An snmpEngineID in hex, `0x` optional: 5 to 32 octets (RFC 3411).
fn engine_id(hex: &str) -> Result<Vec<u8>, String> {
    let digits = hex.strip_prefix("0x").unwrap_or(hex);
    if !digits.len().is_multiple_of(2) || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{hex:?} is not an even number of hex digits"));
    }
    let bytes: Vec<u8> = (0..digits.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&digits[i..i + 2], 16).ok())
        .collect();
    if !(5..=32).contains(&bytes.len()) {
        return Err(format!("{} octets: must be 5 to 32", bytes.len()));
    }
    Ok(bytes)
}

/// The boots file: its folder must exist; the file itself is created at the first start,
/// and one that exists must hold a number.
fn boots_file(base: &Path, key: &str, value: &str) -> Result<PathBuf, (String, String)> {
    let path = base.join(value);
    let folder = path.parent().unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err((
            key.to_owned(),
            format!("folder {} does not exist", folder.display()),
        ));
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            read_boots(&text).map_err(|e| (key.to_owned(), format!("{}: {e}", path.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err((
                key.to_owned(),
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    }
    Ok(path)
}

/// snmpEngineBoots as the boots file holds it: one decimal number.
pub fn read_boots(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("{:?} is not a number of boots", text.trim()))
}
