//! The kernel half of a front-end, seen from user space: load the embedded object, pin its
//! maps (reusing pins left by an earlier run), attach the programs, and keep the maps in
//! step with the configuration.
//!
//! Invariant: programs are attached through bpf links owned by [`DataPath`], so they are
//! detached when it is dropped (graceful stop) or when the process dies; the pinned maps,
//! and with them counters and load records, outlive both until `robustifier unload`. The
//! one exception is a binary upgrade's brief hand-over of the XDP link (see
//! [`succession`]), pinned until the successor holds it.

mod bpffs;
mod error;
mod snapshot;
mod succession;
mod sync;
mod tables;

use std::{os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, SockMap},
    programs::{SkLookup, Xdp, XdpMode as AyaXdpMode, sk_lookup::SkLookupLinkId, xdp::XdpLinkId},
};
use robustifier_common::{MAP_LISTENERS, PINNED_MAPS, PROG_STEER, PROG_XDP, listener_slot};
use tracing::{info, warn};

pub use bpffs::{ensure_bpffs, remove_pins};
pub use error::DataPathError;
pub use snapshot::{BackendRow, ServiceRow, Snapshot, XdpCounters};
pub use succession::{XDP_LINK_PIN, clear_stale_pin};
pub use sync::backend_address;
pub use tables::{MapView, Tables};

use crate::config::XdpMode;

/// The kernel object built by `build.rs` from `ebpf/robustifier-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/robustifier"));

pub struct DataPath {
    ebpf: Ebpf,
    pub tables: Tables,
    listeners: SockMap<MapData>,
    xdp_link: Option<(String, XdpLinkId)>,
    /// The XDP link pinned for a successor process, until it takes it or gives up.
    xdp_passed: Option<(String, aya::programs::links::PinnedLink)>,
    steer_link: Option<SkLookupLinkId>,
    _logger: Option<std::thread::JoinHandle<()>>,
}

impl DataPath {
    /// Loads the programs into the kernel and opens (or creates and pins) the maps under
    /// `pin_dir`. Nothing is attached yet.
    pub fn load(pin_dir: &Path) -> Result<DataPath, DataPathError> {
        ensure_bpffs(pin_dir)?;
        let paths: Vec<(&str, std::path::PathBuf)> =
            PINNED_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(DataPathError::Load)?;
        let logger = start_logger(&mut ebpf);
        for name in [PROG_XDP, PROG_STEER] {
            // The verifier gives up with EAGAIN when a signal arrives while it works (a
            // child exiting, say); like libbpf, try again a few times.
            let mut attempt = 0;
            loop {
                let program = ebpf
                    .program_mut(name)
                    .ok_or(DataPathError::MissingProgram(name))?;
                let result = match program {
                    aya::programs::Program::Xdp(p) => p.load(),
                    aya::programs::Program::SkLookup(p) => p.load(),
                    _ => return Err(DataPathError::MissingProgram(name)),
                };
                match result {
                    Ok(()) => break,
                    Err(e) if attempt < 5 && interrupted(&e) => {
                        attempt += 1;
                        warn!(
                            program = name,
                            attempt, "verifier interrupted; loading again"
                        );
                    }
                    Err(source) => return Err(DataPathError::Program { name, source }),
                }
            }
        }
        let tables = Tables::from_ebpf(&mut ebpf)?;
        let listeners = ebpf
            .take_map(MAP_LISTENERS)
            .ok_or(DataPathError::MissingMap(MAP_LISTENERS))
            .and_then(|m| {
                SockMap::try_from(m).map_err(|source| DataPathError::Map {
                    name: MAP_LISTENERS,
                    source,
                })
            })?;
        Ok(DataPath {
            ebpf,
            tables,
            listeners,
            xdp_link: None,
            xdp_passed: None,
            steer_link: None,
            _logger: logger,
        })
    }

    /// Attaches the XDP program to `iface`; returns the mode it runs in.
    pub fn attach_xdp(
        &mut self,
        iface: &str,
        mode: XdpMode,
    ) -> Result<&'static str, DataPathError> {
        let prog: &mut Xdp = self.program(PROG_XDP)?;
        let attach = |prog: &mut Xdp, flags| prog.attach(iface, flags);
        let (link, used) = match mode {
            XdpMode::Native => attach(prog, AyaXdpMode::Driver).map(|l| (l, "native")),
            XdpMode::Generic => attach(prog, AyaXdpMode::Skb).map(|l| (l, "generic")),
            XdpMode::Auto => attach(prog, AyaXdpMode::Driver)
                .map(|l| (l, "native"))
                .or_else(|e| {
                    warn!(iface, error = %e, "native XDP refused, falling back to generic mode");
                    attach(prog, AyaXdpMode::Skb).map(|l| (l, "generic"))
                }),
        }
        .map_err(|source| DataPathError::Attach {
            name: PROG_XDP,
            target: iface.to_owned(),
            source,
        })?;
        info!(iface, program = PROG_XDP, mode = used, "XDP attached");
        self.xdp_link = Some((iface.to_owned(), link));
        Ok(used)
    }

    /// Attaches the steering program to the network namespace this process runs in.
    pub fn attach_steering(&mut self) -> Result<(), DataPathError> {
        let netns = std::fs::File::open("/proc/self/ns/net").map_err(DataPathError::Netns)?;
        let prog: &mut SkLookup = self.program(PROG_STEER)?;
        let link = prog
            .attach(netns.as_fd())
            .map_err(|source| DataPathError::Attach {
                name: PROG_STEER,
                target: "network namespace".to_owned(),
                source,
            })?;
        info!(
            program = PROG_STEER,
            "sk_lookup steering attached to this network namespace"
        );
        self.steer_link = Some(link);
        Ok(())
    }

    /// Makes `socket` the listener for `(service_id, slot)` and address `family`.
    pub fn register_listener<S: std::os::fd::AsRawFd>(
        &mut self,
        service_id: u32,
        slot: u32,
        family: u32,
        socket: &S,
    ) -> Result<(), DataPathError> {
        self.listeners
            .set(listener_slot(service_id, slot, family), socket, 0)
            .map_err(|source| DataPathError::Map {
                name: MAP_LISTENERS,
                source,
            })
    }

    /// Runs the XDP program once over `packet` (BPF_PROG_TEST_RUN) and returns its verdict;
    /// counters and buckets move as for a real packet. For fixtures and diagnostics.
    pub fn run_xdp(&self, packet: &[u8]) -> Result<u32, DataPathError> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let prog: &Xdp = self
            .ebpf
            .program(PROG_XDP)
            .and_then(|p| p.try_into().ok())
            .ok_or(DataPathError::MissingProgram(PROG_XDP))?;
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        };
        prog.test_run(opts)
            .map(|r| r.return_value)
            .map_err(|source| DataPathError::Program {
                name: PROG_XDP,
                source,
            })
    }

    /// Detaches both programs now (instead of at drop), so that a draining daemon stops
    /// taking connections while it finishes the ones it has.
    pub fn detach(&mut self) {
        if let Some((iface, link)) = self.xdp_link.take() {
            if let Ok(p) = self.program::<Xdp>(PROG_XDP)
                && let Err(e) = p.detach(link)
            {
                warn!(iface, error = %e, "XDP detach failed");
            }
            info!(iface, "XDP detached");
        }
        if let Some(link) = self.steer_link.take() {
            if let Ok(p) = self.program::<SkLookup>(PROG_STEER)
                && let Err(e) = p.detach(link)
            {
                warn!(error = %e, "steering detach failed");
            }
            info!("steering detached");
        }
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, DataPathError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program>,
    {
        let p = self
            .ebpf
            .program_mut(name)
            .ok_or(DataPathError::MissingProgram(name))?;
        p.try_into()
            .map_err(|_| DataPathError::MissingProgram(name))
    }
}

/// A load that failed only because the verifier was interrupted (EAGAIN).
fn interrupted(e: &aya::programs::ProgramError) -> bool {
    match e {
        aya::programs::ProgramError::LoadError { io_error, .. } => {
            io_error.raw_os_error() == Some(nix::libc::EAGAIN)
        }
        _ => false,
    }
}

/// Forwards the programs' aya-log records into tracing, from a thread of its own that
/// waits on the log ring buffer. The logger must live as long as the programs (dropping it
/// closes the log map), so the thread owns it for the life of the process.
fn start_logger(ebpf: &mut Ebpf) -> Option<std::thread::JoinHandle<()>> {
    let mut logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "kernel log forwarding unavailable");
            return None;
        }
    };
    std::thread::Builder::new()
        .name("ebpf-log".into())
        .spawn(move || {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            use std::{panic, time::Duration};
            // A record that makes the decoder panic must not end kernel log forwarding for
            // the life of the process: log it, back off (doubling, up to 30 s), go on.
            let mut backoff = Duration::from_millis(500);
            loop {
                let mut fds = [PollFd::new(logger.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(1000u16)).is_err() {
                    std::thread::sleep(Duration::from_secs(1));
                }
                if panic::catch_unwind(panic::AssertUnwindSafe(|| logger.flush())).is_err() {
                    tracing::error!(restart_in = ?backoff, "kernel log forwarding panicked; restarting");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        })
        .ok()
}
