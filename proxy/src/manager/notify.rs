//! SNMP notifications from the manager for the members' alarms.
//!
//! A front-end whose member reaches the manager leaves its alarms' notifications to the
//! manager; one cut off sends them itself and marks those events `notified`
//! ([`crate::events::Event::notified`]). The manager sends a notification for each alarm
//! event it stores that is not so marked: when it arrives, or when the member reconnects
//! and ships what happened meanwhile. Each raise and clear is thus sent once, by the
//! manager or by the front-end, and none is lost while the two cannot talk.
//!
//! The destinations are the head version's `[[monitor.snmp]]`, the same as the members'
//! (their secret files must be readable at the same paths on the manager's host). For
//! SNMPv3 traps the manager is the authoritative engine under its own snmpEngineID (from
//! its name, as a front-end's is from its own) with its engine boots kept in its state
//! folder; a configured `engine_id` is the front-ends'.

use std::{path::Path, sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

use super::core::Manager;
use crate::{
    config::snmp::{Destination, Security},
    supervise::{Registry, Supervisor},
};

/// When the head's destinations could not be read, they are tried again after this.
const RETRY: Duration = Duration::from_secs(30);

/// The destinations as the manager uses them: its own engine and boots file for v3 traps.
pub fn for_manager(destinations: Vec<Destination>, state_dir: &Path) -> Vec<Destination> {
    destinations
        .into_iter()
        .enumerate()
        .map(|(i, mut d)| {
            if let Security::V3(v3) = &mut d.security {
                v3.engine_id = None;
                if v3.engine_boots_file.is_some() {
                    v3.engine_boots_file = Some(state_dir.join(format!("snmp-engine-boots-{i}")));
                }
            }
            d
        })
        .collect()
}

/// Runs until `stop`: the notification senders of the head version's destinations,
/// started again when a commit changes them. `ready` is told once the first ones listen
/// for alarms, so the manager serves members only after that.
pub async fn run(
    manager: Arc<Manager>,
    name: String,
    state_dir: std::path::PathBuf,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut head = manager.watch_head();
    let mut current: Option<(Vec<Destination>, CancellationToken, TaskTracker)> = None;
    loop {
        let known = manager.snmp_destinations();
        let retry = known.is_err();
        match known {
            Ok((version, wanted)) => {
                let wanted = for_manager(wanted, &state_dir);
                if current.as_ref().map(|(d, _, _)| d) != Some(&wanted) {
                    if let Some((_, old_stop, tracker)) = current.take() {
                        old_stop.cancel();
                        tracker.close();
                        tracker.wait().await;
                    }
                    info!(
                        version,
                        destinations = wanted.len(),
                        "manager SNMP destinations"
                    );
                    let (child, tracker) = (stop.child_token(), TaskTracker::new());
                    let supervisor =
                        Supervisor::new(tracker.clone(), child.clone(), Registry::default());
                    let prepared = crate::snmp::prepare(&name, &wanted);
                    let source = Arc::clone(&manager);
                    crate::snmp::start(
                        &prepared,
                        move || source.subscribe_alarms(),
                        |e| e.alarm.is_some() && !e.notified,
                        &supervisor,
                    );
                    current = Some((wanted, child, tracker));
                }
            }
            Err(e) => warn!(error = %e, "the head version's SNMP destinations are unknown"),
        }
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            () = stop.cancelled() => break,
            r = head.changed() => if r.is_err() { break },
            () = tokio::time::sleep(RETRY), if retry => {}
        }
    }
    if let Some((_, old_stop, tracker)) = current {
        old_stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
