//! The server certificate's end, watched: an alarm when it ends within
//! [`CERTIFICATE_WARNING_DAYS`], cleared once a new one is installed. Checked at the start,
//! after each reload and twice a day.

use std::{path::PathBuf, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{
    events::{CERTIFICATE_WARNING_DAYS, Events, Kind},
    supervise::Supervisor,
};

const EVERY: Duration = Duration::from_secs(12 * 3600);

/// The certificate file in force (none without `[tls]`) and where its state goes.
#[derive(Clone)]
pub struct Watch {
    file: Arc<ArcSwapOption<PathBuf>>,
    events: Events,
}

impl Watch {
    pub fn new(file: Option<PathBuf>, events: Events) -> Watch {
        Watch {
            file: Arc::new(ArcSwapOption::from(file.map(Arc::new))),
            events,
        }
    }

    /// A reload changed (or kept) the file: check it now.
    pub fn set(&self, file: Option<PathBuf>) {
        self.file.store(file.map(Arc::new));
        self.check();
    }

    /// Raises or clears the alarm for the file in force. A file that cannot be read is the
    /// reload's to refuse; here it is only logged.
    pub fn check(&self) {
        let Some(file) = self.file.load_full() else {
            return;
        };
        let end = match crate::tls::not_after(&file) {
            Ok(end) => end,
            Err(e) => {
                warn!(error = %e, "certificate end not read");
                return;
            }
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let days_left = (end - now).div_euclid(86_400);
        let name = file.display().to_string();
        if days_left <= CERTIFICATE_WARNING_DAYS {
            self.events.emit(Kind::CertificateExpiring {
                file: name,
                days_left,
            });
        } else if self
            .events
            .alarms()
            .iter()
            .any(|a| a.key == format!("certificate_expiring:{name}"))
        {
            self.events.emit(Kind::CertificateValid { file: name });
        }
    }

    /// Checks twice a day until `stop`.
    pub fn spawn(&self, supervisor: &Supervisor, stop: &CancellationToken) {
        let (me, stop) = (self.clone(), stop.clone());
        supervisor.spawn("certificate watch", move || me.clone().run(stop.clone()));
    }

    async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.check(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate ending in `days` days, written to `path`.
    fn certificate(path: &std::path::Path, days: i64) {
        let mut params = rcgen::CertificateParams::new(vec!["mx.test".to_owned()]).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(path, params.self_signed(&key).unwrap().pem()).unwrap();
    }

    #[test]
    fn an_ending_certificate_raises_an_alarm_until_a_new_one_is_in_force() {
        let dir = std::env::temp_dir().join(format!("rb-certwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (old, new) = (dir.join("old.pem"), dir.join("new.pem"));
        certificate(&old, 10);
        certificate(&new, 400);
        let events = Events::default();
        let watch = Watch::new(Some(old.clone()), events.clone());
        watch.check();
        let alarms = events.alarms();
        assert_eq!(alarms.len(), 1, "{alarms:?}");
        assert_eq!(
            alarms[0].key,
            format!("certificate_expiring:{}", old.display())
        );
        let last = events.recent(1).pop().unwrap();
        assert!(
            matches!(
                last.kind,
                Kind::CertificateExpiring {
                    days_left: 9 | 10,
                    ..
                }
            ),
            "{last:?}"
        );
        assert_eq!(alarms[0].severity, crate::events::Severity::Warning);

        // The same file again: no second alarm. A new file: cleared.
        watch.check();
        assert_eq!(events.alarms().len(), 1);
        std::fs::copy(&new, &old).unwrap();
        watch.set(Some(old.clone()));
        assert!(events.alarms().is_empty());
        assert!(matches!(
            events.recent(1).pop().unwrap().kind,
            Kind::CertificateValid { .. }
        ));
        // A certificate within a week is major.
        certificate(&old, 3);
        watch.check();
        assert_eq!(events.alarms()[0].severity, crate::events::Severity::Major);
        let _ = std::fs::remove_dir_all(dir);
    }
}
