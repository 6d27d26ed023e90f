//! Figures over repetitions, the machine they were measured on, and the two report files.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::{Deserialize, Serialize};

/// The system every ratio is taken for.
pub const SUT: &str = "robustifier";

/// One measured quantity of one system in one case, over all repetitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub scenario: String,
    pub case: String,
    pub metric: String,
    pub unit: String,
    pub system: String,
    /// Whether smaller is better (for the wording of ratios only).
    pub lower_is_better: bool,
    pub values: Vec<f64>,
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub hostname: String,
    pub haproxy: String,
    pub nginx: String,
    pub keepalived: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let first_line = |prog: &str, arg: &str| {
            std::process::Command::new(prog)
                .arg(arg)
                .output()
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                    s.push_str(&String::from_utf8_lossy(&o.stderr));
                    s.lines().next().unwrap_or_default().trim().to_owned()
                })
                .unwrap_or_default()
        };
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            haproxy: first_line("haproxy", "-v"),
            nginx: first_line("nginx", "-v"),
            keepalived: first_line("keepalived", "--version"),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub mode: String,
    pub command: String,
    pub started_unix: u64,
    pub duration_s: f64,
    pub machine: Machine,
    pub notes: Vec<String>,
    /// Scenarios that failed, with the error (the others still report).
    pub failures: BTreeMap<String, String>,
    pub figures: Vec<Figure>,
    /// Robustifier / rival for every figure both have.
    #[serde(default)]
    pub ratios: Vec<Ratio>,
    /// How this run's figures and ratios compare with the previous run of the same mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<crate::compare::Agreement>,
}

/// Robustifier / one rival for one (scenario, case, metric). Where both were measured in
/// every repetition, the ratio is taken per repetition (the two ran minutes apart at most,
/// on the same load, so slow drifts of a shared machine cancel) and summarised by the
/// geometric mean of those ratios (the mean of ratios that treats 0.5 and 2 alike) with
/// their min-max; otherwise it is the ratio of the medians alone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ratio {
    pub scenario: String,
    pub case: String,
    pub metric: String,
    pub rival: String,
    pub lower_is_better: bool,
    /// Whether `values` are per-repetition ratios (else one ratio of medians).
    pub paired: bool,
    pub values: Vec<f64>,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// The geometric mean of `values` (reports written before it have 0 here).
    #[serde(default)]
    pub geomean: f64,
}

impl Ratio {
    fn of(ours: &Figure, theirs: &Figure) -> Option<Ratio> {
        let paired = ours.values.len() == theirs.values.len() && ours.values.len() > 1;
        let mut values: Vec<f64> = if paired {
            ours.values
                .iter()
                .zip(&theirs.values)
                .filter(|(_, t)| **t != 0.0)
                .map(|(o, t)| o / t)
                .collect()
        } else if theirs.median != 0.0 {
            vec![ours.median / theirs.median]
        } else {
            vec![]
        };
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let r = Ratio {
            scenario: ours.scenario.clone(),
            case: ours.case.clone(),
            metric: ours.metric.clone(),
            rival: theirs.system.clone(),
            lower_is_better: ours.lower_is_better,
            paired: paired && values.len() > 1,
            min: sorted[0],
            median: median(&sorted),
            max: sorted[sorted.len() - 1],
            geomean: geomean(&values),
            values: std::mem::take(&mut values),
        };
        Some(r)
    }

    /// The central value: the geometric mean of paired ratios, else the median (a report
    /// written before the geometric mean was kept has only that).
    pub fn central(&self) -> f64 {
        if self.values.len() > 1 && self.geomean > 0.0 {
            self.geomean
        } else {
            self.median
        }
    }

    /// `geometric mean [min-max]` of paired ratios (just the ratio for a single value).
    pub fn text(&self) -> String {
        if self.values.len() > 1 {
            format!(
                "{} [{}-{}]",
                ratio_text(self.central()),
                ratio_text(self.min),
                ratio_text(self.max)
            )
        } else {
            ratio_text(self.median)
        }
    }
}

/// The geometric mean of positive `values` (0 when there are none or one is not positive).
fn geomean(values: &[f64]) -> f64 {
    if values.is_empty() || values.iter().any(|v| *v <= 0.0) {
        return 0.0;
    }
    (values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp()
}

/// Every Robustifier / rival ratio of `figures`.
pub fn ratios(figures: &[Figure]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for ours in figures.iter().filter(|f| f.system == SUT) {
        for theirs in figures.iter().filter(|f| {
            f.system != SUT
                && f.scenario == ours.scenario
                && f.case == ours.case
                && f.metric == ours.metric
        }) {
            out.extend(Ratio::of(ours, theirs));
        }
    }
    out
}

/// Collects samples per (scenario, case, metric, system) in the order they are recorded.
#[derive(Default)]
pub struct Samples {
    rows: Vec<(Key, Vec<f64>)>,
}

#[derive(Clone, PartialEq, Eq)]
struct Key {
    scenario: String,
    case: String,
    metric: String,
    unit: String,
    system: String,
    lower_is_better: bool,
}

/// What a sample is: scenario, case, metric (with unit and direction).
#[derive(Clone, Copy)]
pub struct Metric<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub lower_is_better: bool,
}

impl Samples {
    pub fn add(&mut self, scenario: &str, case: &str, metric: Metric, system: &str, value: f64) {
        if !value.is_finite() {
            return;
        }
        let key = Key {
            scenario: scenario.into(),
            case: case.into(),
            metric: metric.name.into(),
            unit: metric.unit.into(),
            system: system.into(),
            lower_is_better: metric.lower_is_better,
        };
        match self.rows.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(value),
            None => self.rows.push((key, vec![value])),
        }
    }

    pub fn into_figures(self) -> Vec<Figure> {
        self.rows
            .into_iter()
            .map(|(k, values)| {
                let mut sorted = values.clone();
                sorted.sort_by(f64::total_cmp);
                Figure {
                    scenario: k.scenario,
                    case: k.case,
                    metric: k.metric,
                    unit: k.unit,
                    system: k.system,
                    lower_is_better: k.lower_is_better,
                    min: sorted[0],
                    median: median(&sorted),
                    max: sorted[sorted.len() - 1],
                    values,
                }
            })
            .collect()
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn num(x: f64) -> String {
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// A ratio with enough digits to tell 0.003 from 0.
fn ratio_text(r: f64) -> String {
    if r != 0.0 && r.abs() < 0.1 {
        format!("{r:.1e}")
    } else {
        format!("{r:.2}")
    }
}

/// The head-line label of a figure or ratio: "scenario / case / metric".
pub fn label(scenario: &str, case: &str, metric: &str) -> String {
    format!("{scenario} / {case} / {metric}")
}

impl Report {
    /// The ratio of Robustifier to `rival` for the group `f` belongs to.
    fn ratio(&self, f: &Figure, rival: &str) -> Option<&Ratio> {
        self.ratios.iter().find(|r| {
            r.scenario == f.scenario && r.case == f.case && r.metric == f.metric && r.rival == rival
        })
    }

    /// Groups of figures of one (scenario, case, metric), in first-recorded order.
    fn groups(&self) -> Vec<Vec<&Figure>> {
        let mut out: Vec<Vec<&Figure>> = Vec::new();
        for f in &self.figures {
            match out.iter_mut().find(|g| {
                g[0].scenario == f.scenario && g[0].case == f.case && g[0].metric == f.metric
            }) {
                Some(g) => g.push(f),
                None => out.push(vec![f]),
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "# Robustifier benchmark ({} mode)\n\n`{}` on {} x {}, kernel {}; {}; {}; {}. \
             System under test on CPU 0, load generators and sinks on CPU 1. \
             Cells: median [min-max] over repetitions; ratio = Robustifier / rival, taken per \
             repetition where both ran in every one (geometric mean [min-max] of those), else \
             on medians (for \"lower is better\" metrics, below 1 means Robustifier is better).\n",
            self.mode,
            self.command,
            m.nproc,
            m.cpu_model,
            m.kernel,
            m.haproxy,
            m.nginx,
            m.keepalived
        );
        let mut scenario = String::new();
        for g in self.groups() {
            let f0 = g[0];
            if f0.scenario != scenario {
                scenario = f0.scenario.clone();
                let _ = writeln!(s, "\n## {scenario}\n");
                let _ = writeln!(
                    s,
                    "| case | metric | system | median [min-max] | n | Robustifier / system |"
                );
                let _ = writeln!(s, "|---|---|---|---|---|---|");
            }
            for f in &g {
                let r = if f.system == SUT {
                    "-".to_owned()
                } else {
                    self.ratio(f, &f.system).map_or("n/a".into(), Ratio::text)
                };
                let dir = if f.lower_is_better {
                    "lower better"
                } else {
                    "higher better"
                };
                let _ = writeln!(
                    s,
                    "| {} | {} ({}, {dir}) | {} | {} [{}-{}] | {} | {r} |",
                    f.case,
                    f.metric,
                    f.unit,
                    f.system,
                    num(f.median),
                    num(f.min),
                    num(f.max),
                    f.values.len()
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        if let Some(a) = &self.agreement {
            s.push_str(&a.markdown());
        }
        if !self.failures.is_empty() {
            let _ = writeln!(s, "\n## Failed scenarios\n");
            for (k, v) in &self.failures {
                let _ = writeln!(s, "- {k}: {}", v.lines().next().unwrap_or_default());
            }
        }
        let _ = writeln!(s, "\nRun time: {:.0} s.", self.duration_s);
        s
    }

    /// One line per (scenario, case, metric): Robustifier's median and its ratio to each rival.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<9} {:<22} {:<44} {:>10}  ratios (Robustifier / rival)",
            "scenario", "case", "metric", "ours"
        );
        for g in self.groups() {
            let f0 = g[0];
            let Some(ours) = g.iter().find(|f| f.system == SUT) else {
                continue;
            };
            let ratios: Vec<String> = g
                .iter()
                .filter(|f| f.system != SUT)
                .map(|f| {
                    self.ratio(f, &f.system)
                        .map_or(format!("{} n/a", f.system), |r| {
                            format!("{} {}", f.system, r.text())
                        })
                })
                .collect();
            let _ = writeln!(
                s,
                "{:<9} {:<22} {:<44} {:>10}  {}",
                f0.scenario,
                f0.case,
                format!("{} ({})", f0.metric, f0.unit),
                num(ours.median),
                ratios.join(", ")
            );
        }
        if let Some(a) = &self.agreement {
            s.push_str(&a.summary());
        }
        for (k, v) in &self.failures {
            let _ = writeln!(s, "FAILED {k}: {}", v.lines().next().unwrap_or_default());
        }
        s
    }

    pub fn read(path: &Path) -> anyhow::Result<Report> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut r: Report =
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        // Reports written before ratios were stored get them from their figures.
        if r.ratios.is_empty() {
            r.ratios = ratios(&r.figures);
        }
        Ok(r)
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Metric = Metric {
        name: "cpu",
        unit: "us",
        lower_is_better: true,
    };

    #[test]
    fn figures_have_min_median_max_and_ratios() {
        let mut s = Samples::default();
        for v in [3.0, 1.0, 2.0] {
            s.add("cost", "1k", M, SUT, v);
        }
        for v in [4.0, 8.0] {
            s.add("cost", "1k", M, "haproxy", v);
        }
        let figures = s.into_figures();
        let r = Report {
            ratios: ratios(&figures),
            figures,
            ..Report::default()
        };
        assert_eq!(r.figures[0].median, 2.0);
        assert_eq!(r.figures[0].min, 1.0);
        assert_eq!(r.figures[1].median, 6.0);
        assert!(r.summary().contains("haproxy 0.33"));
        assert!(r.markdown().contains("| 0.33 |"));
        assert!(!r.ratios[0].paired);
    }

    #[test]
    fn ratios_are_paired_per_repetition_when_both_ran_in_each() {
        let mut s = Samples::default();
        // A machine that slows down run by run: the paired ratio stays put.
        for (ours, theirs) in [(1.0, 2.0), (2.0, 4.0), (4.0, 8.0)] {
            s.add("cost", "1k", M, SUT, ours);
            s.add("cost", "1k", M, "nginx", theirs);
        }
        let figures = s.into_figures();
        let r = ratios(&figures);
        assert_eq!(r.len(), 1);
        assert!(r[0].paired);
        assert_eq!((r[0].min, r[0].median, r[0].max), (0.5, 0.5, 0.5));
        assert_eq!(r[0].text(), "0.50 [0.50-0.50]");
    }

    #[test]
    fn paired_ratios_are_summarised_by_their_geometric_mean() {
        let mut s = Samples::default();
        // Twice as good, then twice as bad, then equal: the geometric mean says equal, where
        // an arithmetic mean would say 1.17.
        for (ours, theirs) in [(1.0, 2.0), (4.0, 2.0), (3.0, 3.0)] {
            s.add("cost", "1k", M, SUT, ours);
            s.add("cost", "1k", M, "nginx", theirs);
        }
        let r = ratios(&s.into_figures());
        assert!((r[0].geomean - 1.0).abs() < 1e-12, "{}", r[0].geomean);
        assert_eq!(r[0].text(), "1.00 [0.50-2.00]");
    }
}
