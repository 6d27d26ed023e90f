//! A reload: the configuration file read again and what can change while running applied.

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{
    backend::PoolSet,
    config::{self, Config, ConfigError},
    health,
    load_writer::{self, LoadMaps},
    supervise::Supervisor,
};

/// Re-reads the configuration. Back-ends removed from it drain gracefully (no new
/// sessions, running ones finish) and come back if restored; back-ends it adds to a
/// running pool get the next load map ids, their probes and agent polls, and take new
/// sessions at once; routing maps and certificates reload on their own when their files
/// change. Other changes (new pools, services, settings) take a restart and are logged by
/// name; a bad file changes nothing.
pub(super) fn reload(
    running: &Config,
    pools: &PoolSet,
    maps: &dyn LoadMaps,
    stop: &CancellationToken,
    background: &Supervisor,
) -> Result<(), ConfigError> {
    let new = Config::load(&running.file).inspect_err(|e| {
        error!(error = %e, "reload: configuration refused; nothing changed");
    })?;
    let board = &pools.board;
    let done = board.reconcile(&new);
    // The records of added, removed and restored back-ends now, so routing (which reads
    // the map) need not wait for the writer's next round to see the change.
    if !done.added.is_empty() || !done.changed.is_empty() {
        let now = load_writer::monotonic_ns();
        match maps.tables() {
            Ok(mut tables) => {
                for slot in done.added.iter().chain(&done.changed) {
                    load_writer::publish(tables.as_mut(), board, slot, now);
                }
            }
            Err(e) => error!(error = %e, "reload: cannot open the load maps"),
        }
    }
    if !done.added.is_empty() {
        for slot in &done.added {
            health::spawn_checks(pools, board, slot, stop, background);
        }
        let added: Vec<String> = done
            .added
            .iter()
            .map(|s| format!("{} (id {})", s.backend.name, s.backend.id))
            .collect();
        info!(backends = ?added, "reload: back-ends added");
    }
    if !done.overflow.is_empty() {
        warn!(backends = ?done.overflow, "reload: the load map is full ({} ids; removed back-ends keep theirs): these back-ends take a restart to be used", robustifier_common::MAX_BACKENDS);
    }
    for what in config::diff::restart_needed(running, &new) {
        warn!(change = %what, "reload: takes a restart");
    }
    info!("reload: configuration applied");
    Ok(())
}
