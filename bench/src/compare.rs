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
    let mut rows = Vec::new();
    for r in &current.ratios {
        if let Some(p) = previous.ratios.iter().find(|p| {
            p.scenario == r.scenario && p.case == r.case && p.metric == r.metric && p.rival == r.rival
        }) {
            let (a, b) = (spread(p.min, p.median, p.max), spread(r.min, r.median, r.max));
            rows.push(Row {
                kind: "ratio".into(),
                label: label(&r.scenario, &r.case, &r.metric),
                system: r.rival.clone(),
                previous: a,
                current: b,
                verdict: verdict(&a, &b),
            });
        }
    }
    for f in &current.figures {
        if let Some(p) = previous.figures.iter().find(|p| {
            p.scenario == f.scenario && p.case == f.case && p.metric == f.metric && p.system == f.system
        }) {
            let (a, b) = (spread(p.min, p.median, p.max), spread(f.min, f.median, f.max));
            rows.push(Row {
                kind: "figure".into(),
                label: label(&f.scenario, &f.case, &f.metric),
                system: f.system.clone(),
                previous: a,
                current: b,
                verdict: verdict(&a, &b),
            });
        }
    }
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
        (of(Verdict::Agree), of(Verdict::Overlap), of(Verdict::Differ))
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
}
