//! Least privilege for `robustifier run`.
//!
//! The daemon starts as root because loading and attaching BPF programs, pinning maps and
//! binding the listeners into the steering map need it. Once that is done it switches, for
//! the rest of its life, to an unprivileged user that keeps only [`KEPT`]:
//!
//! - `CAP_NET_ADMIN`: VRRP adds and removes the virtual addresses over netlink on every
//!   transition;
//! - `CAP_NET_RAW`: the VRRP sockets are raw sockets bound to an interface, and every
//!   takeover opens a packet socket (gratuitous ARP) or a raw ICMPv6 socket (unsolicited NA).
//!
//! Nothing else is needed afterwards: map lookups and updates go through map descriptors
//! opened while privileged (the kernel checks privilege when a map or program is created,
//! not when it is used), the pinned maps and the control socket's directory are handed to
//! the user before the switch so that they can be reopened, and a reload never binds a port
//! (new services take a restart). The bounding set is cut to [`KEPT`], the ambient and
//! inheritable sets are emptied and `no_new_privs` is set, so no exec can gain more.
//!
//! The switch happens while the process has one thread besides threads that need no
//! privilege (the kernel log forwarder): credentials are per thread in Linux, and threads
//! created later (the tokio runtime) inherit the dropped ones. glibc applies
//! `setgroups`/`setresgid`/`setresuid` to every thread; a thread other than the caller has
//! no keep-capabilities flag, so the kernel clears its capabilities at the uid change.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Uid, User};
use tracing::info;

/// The user the daemon switches to when the configuration names none.
pub const DEFAULT_USER: &str = "robustifier";

/// The capabilities the daemon keeps after the switch (see the module comment for why).
pub const KEPT: [Capability; 2] = [Capability::CAP_NET_ADMIN, Capability::CAP_NET_RAW];

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("frontend.user {0:?}: no such user (create it, e.g. `cargo xtask setup`)")]
    NoSuchUser(String),
    #[error("looking up user {user:?}: {source}")]
    Lookup {
        user: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what}: {source}")]
    Caps {
        what: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("handing {path} to the daemon's user: {source}")]
    Chown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("after the switch: {0}")]
    Verify(String),
}

/// The account the daemon runs as after the privileged start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// The account to switch to: the configured user, which must exist, or else
/// [`DEFAULT_USER`] if it exists. `None`: stay root (no such user here).
pub fn account(configured: Option<&str>) -> Result<Option<Account>, PrivError> {
    let name = configured.unwrap_or(DEFAULT_USER);
    let found = User::from_name(name).map_err(|source| PrivError::Lookup {
        user: name.to_owned(),
        source,
    })?;
    match (found, configured) {
        (Some(u), _) => Ok(Some(Account {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
        })),
        (None, Some(name)) => Err(PrivError::NoSuchUser(name.to_owned())),
        (None, None) => Ok(None),
    }
}

fn kept() -> HashSet<Capability> {
    KEPT.into_iter().collect()
}

fn caps_err(what: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivError {
    move |source| PrivError::Caps { what, source }
}

fn sys_err(what: &'static str) -> impl FnOnce(nix::Error) -> PrivError {
    move |source| PrivError::Sys { what, source }
}

/// First step, before any thread exists: what every later thread inherits and no exec can
/// undo. The bounding set drops to [`KEPT`], ambient and inheritable sets are emptied and
/// `no_new_privs` is set. The permitted and effective sets stay whole for the start.
pub fn restrict_inherited() -> Result<(), PrivError> {
    let kept = kept();
    for cap in caps::all() {
        if !kept.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("dropping from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clearing the inheritable set"))?;
    nix::sys::prctl::set_no_new_privs().map_err(sys_err("PR_SET_NO_NEW_PRIVS"))?;
    Ok(())
}

/// Makes `path` the account's (owner and group), without following a symbolic link, so the
/// daemon can reopen or remove it after the switch. Mode bits stay as they are.
pub fn hand_over(path: &Path, account: &Account) -> Result<(), PrivError> {
    std::os::unix::fs::lchown(path, Some(account.uid.as_raw()), Some(account.gid.as_raw())).map_err(
        |source| PrivError::Chown {
            path: path.to_owned(),
            source,
        },
    )
}

/// Lets every user pass through the directory `dir` (search permission, not listing):
/// systemd mounts /sys/fs/bpf with mode 0700, and the daemon user must reach its own pin
/// directory below it to open the pinned maps and to pin the XDP link for an upgrade. The
/// pinned objects keep their own modes (0600, the daemon user's).
pub fn allow_search(dir: &Path) -> Result<(), PrivError> {
    use std::os::unix::fs::PermissionsExt as _;
    let chmod = |source| PrivError::Chown {
        path: dir.to_owned(),
        source,
    };
    let mode = std::fs::metadata(dir).map_err(chmod)?.permissions().mode();
    if mode & 0o001 == 0 {
        let wider = std::fs::Permissions::from_mode((mode | 0o001) & 0o7777);
        std::fs::set_permissions(dir, wider).map_err(chmod)?;
        info!(dir = %dir.display(), "search permission granted on the bpffs root for the daemon user");
    }
    Ok(())
}

/// Switches every thread of the process to `account`, keeping [`KEPT`] in the calling
/// thread's permitted and effective sets, and checks the result. Call after
/// [`restrict_inherited`] and before starting threads that need capabilities.
pub fn switch(account: &Account) -> Result<(), PrivError> {
    // Without it the uid change would clear the permitted set, and capabilities cannot be
    // regained once the uid is not 0.
    nix::sys::prctl::set_keepcaps(true).map_err(sys_err("PR_SET_KEEPCAPS"))?;
    nix::unistd::setgroups(&[account.gid]).map_err(sys_err("setgroups"))?;
    nix::unistd::setresgid(account.gid, account.gid, account.gid).map_err(sys_err("setresgid"))?;
    nix::unistd::setresuid(account.uid, account.uid, account.uid).map_err(sys_err("setresuid"))?;
    let kept = kept();
    caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("setting the permitted set"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(caps_err("setting the effective set"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys_err("PR_SET_KEEPCAPS"))?;
    verify(account)?;
    info!(
        user = %account.name,
        uid = account.uid.as_raw(),
        gid = account.gid.as_raw(),
        capabilities = ?KEPT,
        "privileges dropped"
    );
    Ok(())
}

/// Every thread runs as `account` with no capability outside [`KEPT`], and the calling
/// thread holds exactly [`KEPT`].
fn verify(account: &Account) -> Result<(), PrivError> {
    let kept = kept();
    for set in [CapSet::Permitted, CapSet::Effective, CapSet::Bounding] {
        let now = caps::read(None, set).map_err(caps_err("reading capabilities"))?;
        if now != kept {
            return Err(PrivError::Verify(format!("{set:?} set is {now:?}")));
        }
    }
    let tasks = std::fs::read_dir("/proc/self/task")
        .map_err(|e| PrivError::Verify(format!("/proc/self/task: {e}")))?;
    let allowed = KEPT.iter().fold(0u64, |m, c| m | c.bitmask());
    for task in tasks.flatten() {
        let meta = task
            .metadata()
            .map_err(|e| PrivError::Verify(format!("thread {:?}: {e}", task.file_name())))?;
        let status = std::fs::read_to_string(task.path().join("status"))
            .map_err(|e| PrivError::Verify(format!("thread {:?}: {e}", task.file_name())))?;
        let state = ThreadCreds::parse(&status).ok_or_else(|| {
            PrivError::Verify(format!("thread {:?}: unreadable status", task.file_name()))
        })?;
        if state.uids.iter().any(|u| *u != account.uid.as_raw())
            || state.gids.iter().any(|g| *g != account.gid.as_raw())
            || meta.uid() != account.uid.as_raw()
            || (state.permitted | state.effective | state.ambient | state.bounding) & !allowed != 0
        {
            return Err(PrivError::Verify(format!(
                "thread {:?} still holds {state:?}",
                task.file_name()
            )));
        }
    }
    Ok(())
}

/// A thread's credentials as `/proc/<pid>/task/<tid>/status` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCreds {
    /// Real, effective, saved and file-system user ids.
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl ThreadCreds {
    pub fn parse(status: &str) -> Option<ThreadCreds> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let ids = |name: &str| -> Option<Vec<u32>> {
            field(name)?
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect()
        };
        let mask = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
        Some(ThreadCreds {
            uids: ids("Uid")?,
            gids: ids("Gid")?,
            inheritable: mask("CapInh")?,
            permitted: mask("CapPrm")?,
            effective: mask("CapEff")?,
            bounding: mask("CapBnd")?,
            ambient: mask("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }
}

/// The mask of [`KEPT`] as `/proc/<pid>/status` prints capability sets.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0u64, |m, c| m | c.bitmask())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\trobustifier\nUmask:\t0022\nUid:\t998\t998\t998\t998\nGid:\t997\t997\t997\t997\nGroups:\t997 \nNoNewPrivs:\t1\nCapInh:\t0000000000000000\nCapPrm:\t0000000000003000\nCapEff:\t0000000000003000\nCapBnd:\t0000000000003000\nCapAmb:\t0000000000000000\n";

    #[test]
    fn status_is_parsed() {
        let c = ThreadCreds::parse(STATUS).expect("parses");
        assert_eq!(c.uids, vec![998; 4]);
        assert_eq!(c.gids, vec![997; 4]);
        assert_eq!(c.permitted, 0x3000);
        assert_eq!(c.effective, 0x3000);
        assert_eq!(c.bounding, 0x3000);
        assert_eq!(c.ambient, 0);
        assert!(c.no_new_privs);
    }

    #[test]
    fn kept_set_is_net_admin_and_net_raw() {
        // CAP_NET_ADMIN is 12, CAP_NET_RAW 13.
        assert_eq!(kept_mask(), (1 << 12) | (1 << 13));
    }

    #[test]
    fn a_configured_user_that_does_not_exist_is_an_error() {
        let e = account(Some("robustifier-no-such-user")).expect_err("missing user");
        assert!(matches!(e, PrivError::NoSuchUser(_)), "{e}");
        assert_eq!(
            account(Some("root")).expect("root exists").map(|a| a.uid),
            Some(Uid::from_raw(0))
        );
    }
}
