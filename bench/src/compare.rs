//! Do two runs agree? Each figure and each ratio of one run set against the same one of an
//! earlier run, judged by their spreads (min-max over repetitions): the bar for
//! "stable enough" is that two runs agree within their spread.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::report::{Report, label};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Each run's median lies inside the other run's min-max.
    Agree,
    /// The two min-max ranges overlap, but a median lies outside the other range.
    Overlap,
    /// The ranges are disjoint: the runs disagree.
    Differ,
}

/// A median with its min and max.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    fn contains(&self, x: f64) -> bool {
        // A hair of tolerance: figures are printed and re-read with rounding.
        let eps = 1e-9 * self.max.abs().max(self.min.abs()).max(1.0);
        x >= self.min - eps && x <= self.max + eps
    }

    fn overlaps(&self, o: &Spread) -> bool {
        self.contains(o.min) || self.contains(o.max) || o.contains(self.min)
    }
}

pub fn verdict(a: &Spread, b: &Spread) -> Verdict {
    if a.contains(b.median) && b.contains(a.median) {
        Verdict::Agree
    } else if a.overlaps(b) {
        Verdict::Overlap
    } else {
        Verdict::Differ
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// "ratio" (Robustifier / rival) or "figure" (one system's own measurement).
    pub kind: String,
    pub label: String,
    /// The rival (for a ratio) or the system (for a figure).
    pub system: String,
    pub previous: Spread,
    pub current: Spread,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Agreement {
    /// When the run compared against started (unix seconds).
    pub previous_started_unix: u64,
    pub rows: Vec<Row>,
}

/// Every figure and ratio present in both runs, previous against current.
pub fn compare(previous: &Report, current: &Report) -> Agreement {
    // (kind, label, system or rival, spread) of every ratio and figure of a report.
    let entries = |r: &Report| -> Vec<(&'static str, String, String, Spread)> {
        let ratios = r.ratios.iter().map(|x| {
            let l = label(&x.scenario, &x.case, &x.metric);
            (
                "ratio",
                l,
                x.rival.clone(),
                spread(x.min, x.central(), x.max),
            )
        });
        let figures = r.figures.iter().map(|x| {
            let l = label(&x.scenario, &x.case, &x.metric);
            (
                "figure",
                l,
                x.system.clone(),
                spread(x.min, x.median, x.max),
            )
        });
        ratios.chain(figures).collect()
    };
    let before = entries(previous);
    let rows = entries(current)
        .into_iter()
        .filter_map(|(kind, label, system, current)| {
            let (.., previous) = before
                .iter()
                .find(|(k, l, s, _)| *k == kind && *l == label && *s == system)?;
            Some(Row {
                kind: kind.into(),
                label,
                system,
                previous: *previous,
                current,
                verdict: verdict(previous, &current),
            })
        })
        .collect();
    Agreement {
        previous_started_unix: previous.started_unix,
        rows,
    }
}

fn spread(min: f64, median: f64, max: f64) -> Spread {
    Spread { min, median, max }
}

impl Agreement {
    /// (agree, overlap, differ) among rows of `kind`.
    pub fn counts(&self, kind: &str) -> (usize, usize, usize) {
        let of = |v: Verdict| {
            self.rows
                .iter()
                .filter(|r| r.kind == kind && r.verdict == v)
                .count()
        };
        (
            of(Verdict::Agree),
            of(Verdict::Overlap),
            of(Verdict::Differ),
        )
    }

    /// One line per kind with the counts.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for kind in ["ratio", "figure"] {
            let (a, o, d) = self.counts(kind);
            let _ = writeln!(
                s,
                "agreement with the previous run: {kind}s: {a} agree (each median inside the \
                 other run's min-max), {o} overlap, {d} differ"
            );
        }
        s
    }

    /// A markdown section: the counts, then every row that does not agree.
    pub fn markdown(&self) -> String {
        let mut s = String::from("\n## Agreement with the previous run\n\n");
        let _ = writeln!(
            s,
            "Against the run started at unix time {}: \"agree\" = each run's median lies inside \
             the other's min-max; \"overlap\" = the ranges overlap; \"differ\" = disjoint.\n",
            self.previous_started_unix
        );
        for line in self.summary().lines() {
            let _ = writeln!(s, "- {line}");
        }
        let odd: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| r.verdict != Verdict::Agree)
            .collect();
        if !odd.is_empty() {
            let _ = writeln!(
                s,
                "\n| kind | figure | system / rival | previous | current | verdict |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|");
            for r in odd {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.4} [{:.4}-{:.4}] | {:.4} [{:.4}-{:.4}] | {:?} |",
                    r.kind,
                    r.label,
                    r.system,
                    r.previous.median,
                    r.previous.min,
                    r.previous.max,
                    r.current.median,
                    r.current.min,
                    r.current.max,
                    r.verdict
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_spreads() {
        let a = spread(1.0, 2.0, 3.0);
        assert_eq!(verdict(&a, &spread(1.5, 2.5, 4.0)), Verdict::Agree);
        assert_eq!(verdict(&a, &spread(2.5, 3.5, 4.0)), Verdict::Overlap);
        assert_eq!(verdict(&a, &spread(3.5, 4.0, 5.0)), Verdict::Differ);
        // Symmetric, and a single-valued spread agrees only with a range holding it.
        assert_eq!(verdict(&spread(3.5, 4.0, 5.0), &a), Verdict::Differ);
        assert_eq!(verdict(&spread(2.0, 2.0, 2.0), &a), Verdict::Agree);
    }

    fn report(ours: &[f64], theirs: &[f64]) -> Report {
        use crate::report::{Metric, SUT, Samples, ratios};
        const M: Metric = Metric {
            name: "cpu",
            unit: "us",
            lower_is_better: true,
        };
        let mut s = Samples::default();
        for (o, t) in ours.iter().zip(theirs) {
            s.add("cost", "1k", M, SUT, *o);
            s.add("cost", "1k", M, "haproxy", *t);
        }
        let figures = s.into_figures();
        Report {
            ratios: ratios(&figures),
            figures,
            ..Report::default()
        }
    }

    #[test]
    fn a_slower_machine_moves_figures_but_not_ratios() {
        let before = report(&[10.0, 11.0, 12.0], &[20.0, 22.0, 24.0]);
        // The whole machine a third slower: every figure differs, the ratio agrees.
        let after = report(&[15.0, 16.5, 18.0], &[30.0, 33.0, 36.0]);
        let a = compare(&before, &after);
        assert_eq!(a.counts("ratio"), (1, 0, 0));
        assert_eq!(a.counts("figure"), (0, 0, 2));
        assert!(
            a.markdown()
                .contains("| figure | cost / 1k / cpu | haproxy |")
        );
    }
}
