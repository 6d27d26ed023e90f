//! Which back-ends may take a new session, and which is best: the rules shared by routing
//! (per session) and by the capacity writer (per service, for the kernel).
//!
//! A back-end is eligible for a user group of share `s` when it is up, has weight, and
//! every load figure is under `s` times its threshold; the session limit counts too. So as
//! load rises the group with the smallest share is deflected first, and a group of share
//! 1.0 is served until the hard limits. A back-end over any threshold is marked overloaded
//! and stays out until every figure is under 90 % of its threshold (hysteresis).

use robustifier_common::{BACKEND_UP, BackendLoad};

use crate::config::balance::Thresholds;

/// Fraction of a threshold a figure must fall under to clear the overloaded mark.
pub const HYSTERESIS: f64 = 0.9;

fn ratios(l: &BackendLoad, t: &Thresholds) -> [f64; 4] {
    [
        f64::from(l.mail_queue) / f64::from(t.mail_queue),
        f64::from(l.disk_permille) / f64::from(t.disk_permille),
        f64::from(l.run_queue_milli) / f64::from(t.run_queue_milli),
        f64::from(l.response_us) / f64::from(t.response_us),
    ]
}

/// Any figure at or over its threshold.
pub fn over(l: &BackendLoad, t: &Thresholds) -> bool {
    ratios(l, t).iter().any(|r| *r >= 1.0)
}

/// Every figure under the hysteresis mark.
pub fn clear(l: &BackendLoad, t: &Thresholds) -> bool {
    ratios(l, t).iter().all(|r| *r < HYSTERESIS)
}

/// May this back-end take a new session of a group with `share`?
pub fn eligible(
    l: &BackendLoad,
    t: &Thresholds,
    share: f64,
    active: u32,
    overloaded: bool,
) -> bool {
    l.state == BACKEND_UP
        && l.weight > 0
        && !overloaded
        && ratios(l, t).iter().all(|r| *r < share)
        && f64::from(active) < share * f64::from(t.sessions)
}

/// Lower is better: the load figures and the session count relative to their limits,
/// divided by the weight (relative to the default 100).
pub fn score(l: &BackendLoad, t: &Thresholds, active: u32) -> f64 {
    let sum: f64 = ratios(l, t).iter().sum::<f64>() + f64::from(active) / f64::from(t.sessions);
    sum / (f64::from(l.weight.max(1)) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(mq: u32, disk: u32) -> BackendLoad {
        BackendLoad {
            state: BACKEND_UP,
            weight: 100,
            mail_queue: mq,
            disk_permille: disk,
            ..Default::default()
        }
    }

    #[test]
    fn smaller_shares_are_deflected_first() {
        let t = Thresholds {
            mail_queue: 1000,
            ..Thresholds::default()
        };
        let l = load(600, 0);
        assert!(eligible(&l, &t, 1.0, 0, false), "premium");
        assert!(eligible(&l, &t, 0.8, 0, false), "regular");
        assert!(!eligible(&l, &t, 0.5, 0, false), "bulk");
        assert!(
            !eligible(&load(1000, 0), &t, 1.0, 0, false),
            "at the threshold nobody"
        );
    }

    #[test]
    fn hysteresis_band() {
        let t = Thresholds {
            disk_permille: 900,
            ..Thresholds::default()
        };
        assert!(over(&load(0, 900), &t));
        assert!(
            !over(&load(0, 850), &t) && !clear(&load(0, 850), &t),
            "inside the band"
        );
        assert!(clear(&load(0, 800), &t));
    }

    #[test]
    fn session_limit_scales_with_share() {
        let t = Thresholds {
            sessions: 10,
            ..Thresholds::default()
        };
        assert!(eligible(&load(0, 0), &t, 1.0, 9, false));
        assert!(!eligible(&load(0, 0), &t, 1.0, 10, false));
        assert!(!eligible(&load(0, 0), &t, 0.5, 5, false));
    }

    #[test]
    fn score_prefers_light_and_heavy_weights() {
        let t = Thresholds::default();
        assert!(score(&load(10, 0), &t, 0) < score(&load(100, 0), &t, 0));
        let mut heavy = load(100, 0);
        heavy.weight = 1000;
        assert!(score(&heavy, &t, 0) < score(&load(100, 0), &t, 0));
    }
}
