//! Software updates through the manager: an operator's package, stored and rolled over
//! the members one at a time.
//!
//! The operator uploads a Debian package in chunks (bounded, hashed as it comes); the
//! manager keeps it as `STATE/packages/SHA256.deb` with the version its control file
//! names. A rollout then sends it to one member at a time and waits until that member's
//! front-end reports the package's version and is ready; only then the next. A member
//! that fails (the installer says so, or the timeout passes) is sent the package the
//! manager last installed on it, as a rollback, and the rollout stops there: no other
//! member is touched. A member that is away when its turn comes is passed over and
//! upgraded when it returns. Every step is in the audit trail, and the rollout's state in
//! `STATE/upgrade.json` (written atomically), so a manager restarted mid-rollout goes on.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::wire::{Reply, Request, UpdateStage};
use crate::{
    install_update::{hex, valid_sha256, valid_version, write_atomic},
    release,
    sync::lock,
};

/// The largest package accepted.
pub const MAX_PACKAGE: u64 = 512 << 20;
/// The largest chunk (before base64), well within a wire line.
pub const CHUNK: usize = 4 << 20;
/// The default time a member has to come back ready on the new version.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// How often the rollout looks at the members besides when something happens.
const TICK: Duration = Duration::from_millis(500);
/// The Debian package's name that a member can install.
const PACKAGE: &str = "robustifier";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("{0:?} is not a SHA-256 in lower-case hex")]
    BadHash(String),
    #[error("a package of {0} bytes is over the limit of {MAX_PACKAGE} bytes")]
    TooLarge(u64),
    #[error("chunk at {offset}: the upload is at {expected}")]
    OutOfOrder { offset: u64, expected: u64 },
    #[error("chunk not base64: {0}")]
    Encoding(#[from] base64::DecodeError),
    #[error("a chunk of {0} bytes is over {CHUNK} or past the package's end")]
    ChunkSize(usize),
    #[error("the package's SHA-256 is {got}, not {want}: refused")]
    HashMismatch { got: String, want: String },
    #[error("not a {PACKAGE} package: {0}")]
    NotPackage(String),
    #[error("no package {0} was uploaded")]
    Unknown(String),
    #[error("rollout {0} is running; wait for it or see `cluster upgrade --status`")]
    Busy(u64),
    #[error("timeout {0} s is not between 1 s and a day")]
    BadTimeout(u64),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// An uploaded package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub version: String,
    pub size: u64,
    pub by: String,
    pub uploaded_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Running,
    /// Every member runs the package.
    Done,
    /// A member failed: the rollout went no further.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Its turn has not come.
    Pending,
    /// Its turn came while it was away: it gets the package when it returns.
    Away,
    /// Sent the package; waiting for it to run it, ready.
    Installing,
    /// Failed, and sent its previous package back.
    RollingBack,
    Done,
    RolledBack,
    /// Failed and could not be put back (no previous package, or that failed too).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub member: String,
    pub state: StepState,
    /// Unix ms when it was sent the package (or its rollback); 0: not yet.
    pub started_ms: u64,
    pub finished_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub sha256: String,
    pub version: String,
    pub by: String,
    pub started_ms: u64,
    pub timeout_secs: u64,
    pub state: RolloutState,
    pub message: String,
    pub steps: Vec<Step>,
}

/// What `STATE/upgrade.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpgradeState {
    /// The last rollout (running or finished).
    pub rollout: Option<Rollout>,
    /// Uploaded packages, by SHA-256.
    pub packages: BTreeMap<String, Package>,
    /// The package the manager last installed on each member (what a rollback sends).
    pub installed: BTreeMap<String, String>,
}

/// `cluster upgrade --status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeStatus {
    pub rollout: Option<Rollout>,
    /// Each configured member's front-end release (empty: not known).
    pub members: Vec<MemberView>,
}

/// A member as the rollout sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub name: String,
    pub connected: bool,
    /// The release its front-end reports.
    pub release: String,
    /// Its front-end is ready (every supervised task runs).
    pub ready: bool,
}

/// What the rollout needs of the manager: its members, and its audit trail.
pub trait Cluster: Send + Sync {
    /// The configured members, in order.
    fn members(&self) -> Vec<MemberView>;
    fn audit(&self, who: &str, action: &str, what: &str, error: Option<&str>);
}

/// A package to send a member: its session streams the file, then asks it to install.
#[derive(Debug, Clone)]
pub struct Order {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub version: String,
    pub rollback: bool,
}

struct Upload {
    path: PathBuf,
    file: std::fs::File,
    total: u64,
    received: u64,
    hash: ring::digest::Context,
}

/// A member's session's receiver of orders.
struct Link {
    id: u64,
    orders: mpsc::Sender<Order>,
}

pub struct Upgrades {
    dir: PathBuf,
    file: PathBuf,
    state: Mutex<UpgradeState>,
    uploads: Mutex<HashMap<String, Upload>>,
    links: Mutex<HashMap<String, Link>>,
    /// The last stage each member reported for a package: (sha256, stage, message).
    reports: Mutex<HashMap<String, (String, UpdateStage, String)>>,
    wake: Notify,
}

impl Upgrades {
    pub fn open(state_dir: &Path) -> Result<Upgrades, UpgradeError> {
        let dir = state_dir.join("packages");
        std::fs::create_dir_all(&dir).map_err(|e| UpgradeError::Io(dir.clone(), e))?;
        let file = state_dir.join("upgrade.json");
        let state = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| UpgradeError::Io(file.clone(), std::io::Error::other(e)))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UpgradeState::default(),
            Err(e) => return Err(UpgradeError::Io(file, e)),
        };
        Ok(Upgrades {
            dir,
            file,
            state: Mutex::new(state),
            uploads: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            reports: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        })
    }

    fn package_path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.deb"))
    }

    fn save(&self, state: &UpgradeState) {
        let r = serde_json::to_vec_pretty(state)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&self.file, &b));
        if let Err(e) = r {
            tracing::error!(file = %self.file.display(), error = %e, "rollout state not written");
        }
    }

    /// An operator's request about packages, or `None` when it is not one.
    pub fn operator(&self, cluster: &dyn Cluster, who: &str, request: &Request) -> Option<Reply> {
        let by = format!("operator {who}");
        Some(match request {
            Request::PackageChunk {
                sha256,
                total,
                offset,
                data,
            } => match self.chunk(who, sha256, *total, *offset, data) {
                Ok((_, Some(p))) => {
                    cluster.audit(
                        &by,
                        "upload",
                        &format!("package {} {sha256} ({} bytes)", p.version, p.size),
                        None,
                    );
                    Reply::ok(serde_json::json!({ "received": total, "version": p.version }))
                }
                Ok((received, None)) => Reply::ok(serde_json::json!({ "received": received })),
                Err(e) => {
                    if matches!(
                        e,
                        UpgradeError::HashMismatch { .. } | UpgradeError::NotPackage(_)
                    ) {
                        cluster.audit(
                            &by,
                            "upload",
                            &format!("package {sha256}"),
                            Some(&e.to_string()),
                        );
                    }
                    Reply::error(e.to_string())
                }
            },
            Request::Upgrade {
                sha256,
                timeout_secs,
            } => {
                let r = self.start(cluster, who, sha256, *timeout_secs);
                let what = match &r {
                    Ok(r) => format!("rollout {} of {} {sha256}", r.id, r.version),
                    Err(_) => format!("package {sha256}"),
                };
                cluster.audit(
                    &by,
                    "upgrade",
                    &what,
                    r.as_ref().err().map(|e| e.to_string()).as_deref(),
                );
                match r {
                    Ok(r) => Reply::ok(r),
                    Err(e) => Reply::error(e.to_string()),
                }
            }
            Request::UpgradeStatus => Reply::ok(self.status(cluster)),
            _ => return None,
        })
    }

    /// Takes one chunk of an upload; the package once it is whole.
    fn chunk(
        &self,
        who: &str,
        sha256: &str,
        total: u64,
        offset: u64,
        data: &str,
    ) -> Result<(u64, Option<Package>), UpgradeError> {
        if !valid_sha256(sha256) {
            return Err(UpgradeError::BadHash(sha256.to_owned()));
        }
        if total > MAX_PACKAGE {
            return Err(UpgradeError::TooLarge(total));
        }
        // Base64 of at most CHUNK bytes, checked before decoding.
        if data.len() > CHUNK.div_ceil(3) * 4 {
            return Err(UpgradeError::ChunkSize(data.len() / 4 * 3));
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(data)?;
        let mut uploads = lock(&self.uploads);
        if offset == 0 {
            let path = self.dir.join(format!("{sha256}.part"));
            let file =
                std::fs::File::create(&path).map_err(|e| UpgradeError::Io(path.clone(), e))?;
            uploads.insert(
                sha256.to_owned(),
                Upload {
                    path,
                    file,
                    total,
                    received: 0,
                    hash: ring::digest::Context::new(&ring::digest::SHA256),
                },
            );
        }
        let up = uploads.get_mut(sha256).ok_or(UpgradeError::OutOfOrder {
            offset,
            expected: 0,
        })?;
        if up.received != offset || up.total != total {
            return Err(UpgradeError::OutOfOrder {
                offset,
                expected: up.received,
            });
        }
        if up.received + bytes.len() as u64 > total {
            return Err(UpgradeError::ChunkSize(bytes.len()));
        }
        up.file
            .write_all(&bytes)
            .map_err(|e| UpgradeError::Io(up.path.clone(), e))?;
        up.hash.update(&bytes);
        up.received += bytes.len() as u64;
        if up.received < total {
            return Ok((up.received, None));
        }
        let Some(up) = uploads.remove(sha256) else {
            return Ok((total, None));
        };
        drop(uploads);
        let got = hex(up.hash.finish().as_ref());
        let done = (|| {
            if got != sha256 {
                return Err(UpgradeError::HashMismatch {
                    got,
                    want: sha256.to_owned(),
                });
            }
            up.file
                .sync_all()
                .map_err(|e| UpgradeError::Io(up.path.clone(), e))?;
            let version = control_version(&up.path)?;
            let path = self.package_path(sha256);
            std::fs::rename(&up.path, &path).map_err(|e| UpgradeError::Io(path, e))?;
            Ok(Package {
                version,
                size: total,
                by: who.to_owned(),
                uploaded_ms: super::core::now_ms(),
            })
        })();
        match done {
            Ok(p) => {
                let mut state = lock(&self.state);
                state.packages.insert(sha256.to_owned(), p.clone());
                self.save(&state);
                Ok((total, Some(p)))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&up.path);
                Err(e)
            }
        }
    }

    fn start(
        &self,
        cluster: &dyn Cluster,
        who: &str,
        sha256: &str,
        timeout_secs: u64,
    ) -> Result<Rollout, UpgradeError> {
        if !(1..=86_400).contains(&timeout_secs) {
            return Err(UpgradeError::BadTimeout(timeout_secs));
        }
        let mut state = lock(&self.state);
        // A rollout that only waits for members to return gives way to a new one.
        if let Some(r) = state.rollout.as_ref().filter(|r| {
            r.state == RolloutState::Running
                && r.steps.iter().any(|s| {
                    matches!(
                        s.state,
                        StepState::Pending | StepState::Installing | StepState::RollingBack
                    )
                })
        }) {
            return Err(UpgradeError::Busy(r.id));
        }
        let package = state
            .packages
            .get(sha256)
            .filter(|_| self.package_path(sha256).is_file())
            .ok_or_else(|| UpgradeError::Unknown(sha256.to_owned()))?
            .clone();
        let rollout = Rollout {
            id: state.rollout.as_ref().map_or(1, |r| r.id + 1),
            sha256: sha256.to_owned(),
            version: package.version,
            by: who.to_owned(),
            started_ms: super::core::now_ms(),
            timeout_secs,
            state: RolloutState::Running,
            message: String::new(),
            steps: cluster
                .members()
                .into_iter()
                .map(|m| Step {
                    member: m.name,
                    state: StepState::Pending,
                    started_ms: 0,
                    finished_ms: 0,
                    message: String::new(),
                })
                .collect(),
        };
        state.rollout = Some(rollout.clone());
        self.save(&state);
        drop(state);
        self.wake.notify_one();
        Ok(rollout)
    }

    pub fn status(&self, cluster: &dyn Cluster) -> UpgradeStatus {
        UpgradeStatus {
            rollout: lock(&self.state).rollout.clone(),
            members: cluster.members(),
        }
    }

    /// A member's session takes packages from the returned receiver (replacing an older
    /// session's).
    pub fn attach(&self, member: &str, id: u64) -> mpsc::Receiver<Order> {
        let (tx, rx) = mpsc::channel(2);
        lock(&self.links).insert(member.to_owned(), Link { id, orders: tx });
        self.wake.notify_one();
        rx
    }

    pub fn detach(&self, member: &str, id: u64) {
        let mut links = lock(&self.links);
        if links.get(member).is_some_and(|l| l.id == id) {
            links.remove(member);
        }
    }

    /// A member's progress with a package.
    pub fn progress(&self, member: &str, sha256: &str, stage: UpdateStage, message: &str) {
        tracing::info!(member, sha256, ?stage, message, "member update progress");
        lock(&self.reports).insert(
            member.to_owned(),
            (sha256.to_owned(), stage, message.to_owned()),
        );
        self.wake.notify_one();
    }

    fn send(&self, member: &str, order: Order) -> Result<(), String> {
        let links = lock(&self.links);
        let link = links
            .get(member)
            .ok_or_else(|| format!("member {member} is not connected"))?;
        lock(&self.reports).remove(member);
        link.orders
            .try_send(order)
            .map_err(|e| format!("member {member}'s session is busy or gone: {e}"))
    }

    /// One look at the running rollout: moves it on as far as it can go now.
    pub fn step(&self, cluster: &dyn Cluster) {
        let members: HashMap<String, MemberView> = cluster
            .members()
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect();
        let mut state = lock(&self.state);
        let installed = state.installed.clone();
        let packages = state.packages.clone();
        let Some(r) = state
            .rollout
            .as_mut()
            .filter(|r| r.state == RolloutState::Running)
        else {
            return;
        };
        let before = r.clone();
        let now = super::core::now_ms();
        let timeout_ms = r.timeout_secs.saturating_mul(1000);
        let mut audits: Vec<(String, String, Option<String>)> = Vec::new();
        let mut newly_installed: Vec<String> = Vec::new();
        let sha = r.sha256.clone();
        let version = r.version.clone();
        // At most one member is busy; it is looked at first.
        if let Some(s) = r
            .steps
            .iter_mut()
            .find(|s| matches!(s.state, StepState::Installing | StepState::RollingBack))
        {
            let view = members.get(&s.member).cloned().unwrap_or_default();
            let report = lock(&self.reports).get(&s.member).cloned();
            match s.state {
                StepState::Installing => {
                    let failed = report
                        .as_ref()
                        .filter(|(h, stage, _)| *h == sha && *stage == UpdateStage::Failed)
                        .map(|(_, _, m)| m.clone());
                    if view.connected && view.ready && release::runs(&version, &view.release) {
                        s.state = StepState::Done;
                        s.finished_ms = now;
                        s.message = format!("runs {}", view.release);
                        newly_installed.push(s.member.clone());
                        audits.push((
                            format!("member {} runs {version}", s.member),
                            "upgraded".into(),
                            None,
                        ));
                    } else if let Some(why) = failed.or_else(|| {
                        (now.saturating_sub(s.started_ms) >= timeout_ms).then(|| {
                            format!(
                                "not ready on {version} within {} s (reports {:?}, ready {})",
                                r.timeout_secs, view.release, view.ready
                            )
                        })
                    }) {
                        audits.push((
                            format!("member {} to {version}", s.member),
                            "upgrade failed".into(),
                            Some(why.clone()),
                        ));
                        r.state = RolloutState::Stopped;
                        r.message = format!("member {} failed: {why}", s.member);
                        let previous = installed
                            .get(&s.member)
                            .filter(|p| **p != sha)
                            .and_then(|p| packages.get(p).map(|pk| (p.clone(), pk.clone())))
                            .filter(|(p, _)| self.package_path(p).is_file());
                        match previous {
                            Some((p, pk)) => {
                                let order = Order {
                                    path: self.package_path(&p),
                                    size: pk.size,
                                    sha256: p.clone(),
                                    version: pk.version.clone(),
                                    rollback: true,
                                };
                                match self.send(&s.member, order) {
                                    Ok(()) => {
                                        s.state = StepState::RollingBack;
                                        s.started_ms = now;
                                        s.message =
                                            format!("{why}; rolling back to {}", pk.version);
                                        // Still running: the rollback is watched.
                                        r.state = RolloutState::Running;
                                    }
                                    Err(e) => {
                                        s.state = StepState::Failed;
                                        s.finished_ms = now;
                                        s.message = format!("{why}; rollback not sent: {e}");
                                    }
                                }
                            }
                            None => {
                                s.state = StepState::Failed;
                                s.finished_ms = now;
                                s.message =
                                    format!("{why}; no previous package recorded to roll back to");
                            }
                        }
                        if s.state == StepState::Failed {
                            audits.push((
                                format!("member {}", s.member),
                                "rollback".into(),
                                Some(s.message.clone()),
                            ));
                        }
                    }
                }
                StepState::RollingBack => {
                    let back_sha = installed.get(&s.member).cloned().unwrap_or_default();
                    let back_version = packages
                        .get(&back_sha)
                        .map(|p| p.version.clone())
                        .unwrap_or_default();
                    let failed = report
                        .as_ref()
                        .filter(|(h, stage, _)| *h == back_sha && *stage == UpdateStage::Failed)
                        .map(|(_, _, m)| m.clone());
                    // The front-end that refused the update may still run the old version:
                    // rolled back once the installer put the old package back, too.
                    let reinstalled = report.as_ref().is_some_and(|(h, stage, _)| {
                        *h == back_sha && *stage == UpdateStage::Installed
                    });
                    if reinstalled
                        && view.connected
                        && view.ready
                        && release::runs(&back_version, &view.release)
                    {
                        s.state = StepState::RolledBack;
                        s.finished_ms = now;
                        s.message = format!("{}; runs {} again", s.message, view.release);
                        audits.push((
                            format!("member {} to {back_version}", s.member),
                            "rollback".into(),
                            None,
                        ));
                        r.state = RolloutState::Stopped;
                    } else if let Some(why) = failed.or_else(|| {
                        (now.saturating_sub(s.started_ms) >= timeout_ms)
                            .then(|| format!("not ready on {back_version} in time"))
                    }) {
                        s.state = StepState::Failed;
                        s.finished_ms = now;
                        s.message = format!("{}; rollback failed: {why}", s.message);
                        audits.push((
                            format!("member {} to {back_version}", s.member),
                            "rollback".into(),
                            Some(why),
                        ));
                        r.state = RolloutState::Stopped;
                    }
                }
                _ => {}
            }
        }
        let busy = r
            .steps
            .iter()
            .any(|s| matches!(s.state, StepState::Installing | StepState::RollingBack));
        if r.state == RolloutState::Running && !busy {
            // The next member: one that is pending, or one back from away.
            for s in r
                .steps
                .iter_mut()
                .filter(|s| matches!(s.state, StepState::Pending | StepState::Away))
            {
                let view = members.get(&s.member).cloned().unwrap_or_default();
                if view.connected && release::runs(&version, &view.release) {
                    s.state = StepState::Done;
                    s.finished_ms = now;
                    s.message = format!("already runs {}", view.release);
                    newly_installed.push(s.member.clone());
                    continue;
                }
                let linked = lock(&self.links).contains_key(&s.member);
                if !(view.connected && linked) {
                    if s.state == StepState::Pending {
                        s.state = StepState::Away;
                        s.message = "away: upgraded when it returns".into();
                        audits.push((
                            format!("member {}", s.member),
                            "upgrade deferred".into(),
                            None,
                        ));
                    }
                    continue;
                }
                let order = Order {
                    path: self.package_path(&sha),
                    size: packages.get(&sha).map_or(0, |p| p.size),
                    sha256: sha.clone(),
                    version: version.clone(),
                    rollback: false,
                };
                match self.send(&s.member, order) {
                    Ok(()) => {
                        s.state = StepState::Installing;
                        s.started_ms = now;
                        s.message = format!("sent {version}");
                        audits.push((
                            format!("member {} to {version}", s.member),
                            "upgrade sent".into(),
                            None,
                        ));
                        break;
                    }
                    Err(e) => {
                        s.state = StepState::Away;
                        s.message = e;
                    }
                }
            }
            if r.steps.iter().all(|s| s.state == StepState::Done) {
                r.state = RolloutState::Done;
                r.message = format!("every member runs {version}");
                audits.push((
                    format!("rollout {} of {version}", r.id),
                    "upgrade done".into(),
                    None,
                ));
            }
        }
        let changed = *r != before;
        for m in newly_installed {
            state.installed.insert(m, sha.clone());
        }
        if changed {
            self.save(&state);
        }
        drop(state);
        for (what, action, error) in audits {
            cluster.audit("manager", &action, &what, error.as_deref());
        }
    }

    /// Moves rollouts on until `stop`: at every member report, and every [`TICK`].
    pub async fn drive(self: Arc<Self>, cluster: Arc<dyn Cluster>, stop: CancellationToken) {
        loop {
            self.step(cluster.as_ref());
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

/// The version in a package's control file, which must be this software's.
fn control_version(deb: &Path) -> Result<String, UpgradeError> {
    let out = std::process::Command::new("dpkg-deb")
        .arg("-f")
        .arg(deb)
        .args(["Package", "Version"])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| UpgradeError::NotPackage(format!("dpkg-deb: {e}")))?;
    if !out.status.success() {
        return Err(UpgradeError::NotPackage(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let (package, version) = (field("Package"), field("Version"));
    if package != PACKAGE {
        return Err(UpgradeError::NotPackage(format!("package {package:?}")));
    }
    if !valid_version(&version) {
        return Err(UpgradeError::NotPackage(format!("version {version:?}")));
    }
    Ok(version)
}

#[cfg(test)]
mod tests;
