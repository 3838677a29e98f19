//! What a scenario measures (a [`Metric`] with its raw baseline and its goal from issue #8), and
//! how the results are printed: an aligned table, or one JSON object per line.

use serde_json::json;

/// The goal a metric is held to. Ratios are `value / baseline`.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    /// No goal: shown for information.
    None,
    /// `value / baseline <= x` (times, latencies).
    RatioAtMost(f64),
    /// `value / baseline >= x` (rates).
    RatioAtLeast(f64),
    /// `value <= x * baseline + plus` (same unit as the value).
    RatioPlus(f64, f64),
    /// `value - baseline <= x`.
    OverheadAtMost(f64),
    /// `value <= x`.
    AtMost(f64),
    /// `value >= x`.
    AtLeast(f64),
}

#[derive(Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: Option<f64>,
    pub goal: Goal,
}

impl Metric {
    pub fn new(name: &str, value: f64, unit: &'static str) -> Metric {
        Metric {
            name: name.to_owned(),
            value,
            unit,
            baseline: None,
            goal: Goal::None,
        }
    }

    pub fn baseline(mut self, b: f64) -> Metric {
        self.baseline = Some(b);
        self
    }

    pub fn goal(mut self, g: Goal) -> Metric {
        self.goal = g;
        self
    }

    pub fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b != 0.0).map(|b| self.value / b)
    }

    /// `None` when the metric has no goal (or its goal needs a baseline it lacks).
    pub fn met(&self) -> Option<bool> {
        let v = self.value;
        match (self.goal, self.baseline) {
            (Goal::None, _) => None,
            (Goal::RatioAtMost(x), Some(_)) => self.ratio().map(|r| r <= x),
            (Goal::RatioAtLeast(x), Some(_)) => self.ratio().map(|r| r >= x),
            (Goal::RatioPlus(x, plus), Some(b)) => Some(v <= x * b + plus),
            (Goal::OverheadAtMost(x), Some(b)) => Some(v - b <= x),
            (Goal::AtMost(x), _) => Some(v <= x),
            (Goal::AtLeast(x), _) => Some(v >= x),
            (_, None) => None,
        }
    }

    pub fn goal_text(&self) -> String {
        let u = self.unit;
        match self.goal {
            Goal::None => "—".into(),
            Goal::RatioAtMost(x) => format!("≤ {x}×"),
            Goal::RatioAtLeast(x) => format!("≥ {x}×"),
            Goal::RatioPlus(x, plus) => format!("≤ {x}× + {plus} {u}"),
            Goal::OverheadAtMost(x) => format!("+≤ {x} {u}"),
            Goal::AtMost(x) => format!("≤ {x} {u}"),
            Goal::AtLeast(x) => format!("≥ {x} {u}"),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "metric": self.name,
            "value": round(self.value),
            "unit": self.unit,
            "baseline": self.baseline.map(round),
            "ratio": self.ratio().map(round),
            "goal": self.goal_text(),
            "met": self.met(),
        })
    }
}

fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        x.round()
    } else {
        (x * 1000.0).round() / 1000.0
    }
}

fn num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        // Thousands separators make rates readable.
        let s = format!("{:.0}", x);
        let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

pub fn table(metrics: &[Metric]) -> String {
    let mut rows = vec![[
        "metric".to_owned(),
        "agentd".to_owned(),
        "baseline".to_owned(),
        "ratio".to_owned(),
        "goal".to_owned(),
        "met".to_owned(),
    ]];
    for m in metrics {
        rows.push([
            m.name.clone(),
            format!("{} {}", num(m.value), m.unit),
            m.baseline
                .map(|b| format!("{} {}", num(b), m.unit))
                .unwrap_or_else(|| "—".into()),
            m.ratio()
                .map(|r| format!("{r:.2}×"))
                .unwrap_or_else(|| "—".into()),
            m.goal_text(),
            match m.met() {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "—".into(),
            },
        ]);
    }
    aligned(&rows)
}

/// `rows` as a Markdown table, the first row its header, each column as wide as its widest cell.
fn aligned(rows: &[[String; 6]]) -> String {
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    out
}

/// Whether a figure of this build is the baseline's, within the noise, or beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Same,
    Faster,
    Slower,
}

impl Verdict {
    fn text(self) -> &'static str {
        match self {
            Verdict::Same => "same",
            Verdict::Faster => "faster",
            Verdict::Slower => "slower",
        }
    }
}

/// The smallest difference taken for more than noise, as a fraction: a few rounds that happen
/// to agree closely see less spread than the machine really has.
pub const NOISE_FLOOR: f64 = 0.05;

/// One metric measured in every round against this build (`ours`) and the baseline (`theirs`).
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub ours: Vec<f64>,
    pub theirs: Vec<f64>,
}

impl Figure {
    /// Rates (a unit per second) are better higher; times, sizes and counts lower.
    fn higher_is_better(&self) -> bool {
        self.unit.ends_with("/s")
    }

    /// Medians of this build's and the baseline's rounds.
    pub fn medians(&self) -> (f64, f64) {
        (median(&self.ours), median(&self.theirs))
    }

    /// This build's median over the baseline's; 1 when both are 0.
    pub fn ratio(&self) -> Option<f64> {
        let (ours, theirs) = self.medians();
        if theirs != 0.0 {
            Some(ours / theirs)
        } else if ours == 0.0 {
            Some(1.0)
        } else {
            None
        }
    }

    /// The larger spread between rounds of one executable, `(max - min) / median`, but at least
    /// [`NOISE_FLOOR`].
    pub fn noise(&self) -> f64 {
        [&self.ours, &self.theirs]
            .into_iter()
            .map(|v| spread(v))
            .fold(NOISE_FLOOR, f64::max)
    }

    /// `Slower` when this build's median is worse than the baseline's by more than the noise
    /// (`ratio > 1 + noise` for times, `ratio < 1 / (1 + noise)` for rates), `Faster` for the
    /// mirror image, `Same` otherwise (and when a ratio cannot be formed, a baseline of 0).
    pub fn verdict(&self) -> Verdict {
        let Some(r) = self.ratio() else {
            return Verdict::Same;
        };
        let worse = if self.higher_is_better() { 1.0 / r } else { r };
        let band = 1.0 + self.noise();
        if worse > band {
            Verdict::Slower
        } else if worse < 1.0 / band {
            Verdict::Faster
        } else {
            Verdict::Same
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let (ours, theirs) = self.medians();
        json!({
            "metric": self.name,
            "unit": self.unit,
            "value": round(ours),
            "baseline_agentd": round(theirs),
            "rounds": self.ours.iter().copied().map(round).collect::<Vec<_>>(),
            "baseline_rounds": self.theirs.iter().copied().map(round).collect::<Vec<_>>(),
            "ratio": self.ratio().map(round),
            "noise": round(self.noise()),
            "verdict": self.verdict().text(),
        })
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn spread(v: &[f64]) -> f64 {
    let m = median(v);
    if m == 0.0 {
        return 0.0;
    }
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    (max - min) / m.abs()
}

/// The figures of a comparison, in the order the metrics were first reported: `ours` and
/// `theirs` hold one list of metrics per round. A metric missing on one side (its scenario
/// failed in every round there) is left out.
pub fn compare(ours: &[Vec<Metric>], theirs: &[Vec<Metric>]) -> Vec<Figure> {
    let values = |rounds: &[Vec<Metric>], name: &str| -> Vec<f64> {
        rounds
            .iter()
            .flatten()
            .filter(|m| m.name == name)
            .map(|m| m.value)
            .collect()
    };
    let mut figures: Vec<Figure> = Vec::new();
    for m in ours.iter().flatten() {
        if figures.iter().any(|f| f.name == m.name) {
            continue;
        }
        let theirs = values(theirs, &m.name);
        if theirs.is_empty() {
            continue;
        }
        figures.push(Figure {
            name: m.name.clone(),
            unit: m.unit,
            ours: values(ours, &m.name),
            theirs,
        });
    }
    figures
}

pub fn comparison_table(figures: &[Figure]) -> String {
    let mut rows = vec![[
        "metric".to_owned(),
        "this agentd".to_owned(),
        "baseline agentd".to_owned(),
        "ratio".to_owned(),
        "noise".to_owned(),
        "verdict".to_owned(),
    ]];
    for f in figures {
        let (ours, theirs) = f.medians();
        rows.push([
            f.name.clone(),
            format!("{} {}", num(ours), f.unit),
            format!("{} {}", num(theirs), f.unit),
            f.ratio()
                .map(|r| format!("{r:.2}×"))
                .unwrap_or_else(|| "—".into()),
            format!("±{:.0}%", f.noise() * 100.0),
            f.verdict().text().to_owned(),
        ]);
    }
    aligned(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(unit: &'static str, ours: &[f64], theirs: &[f64]) -> Figure {
        Figure {
            name: "m".into(),
            unit,
            ours: ours.to_vec(),
            theirs: theirs.to_vec(),
        }
    }

    #[test]
    fn a_difference_within_the_rounds_spread_is_the_same() {
        // The baseline's rounds spread 20 %; 10 % slower is within it.
        let f = figure("ms", &[11.0, 11.0, 11.0], &[9.0, 10.0, 11.0]);
        assert!((f.noise() - 0.2).abs() < 1e-9);
        assert_eq!(f.verdict(), Verdict::Same);
    }

    #[test]
    fn a_time_beyond_the_noise_is_slower_or_faster() {
        let slower = figure("ms", &[12.0, 12.1, 12.2], &[10.0, 10.1, 10.2]);
        assert_eq!(slower.verdict(), Verdict::Slower);
        let faster = figure("ms", &[10.0, 10.1, 10.2], &[12.0, 12.1, 12.2]);
        assert_eq!(faster.verdict(), Verdict::Faster);
    }

    #[test]
    fn a_rate_is_better_higher() {
        let fewer = figure("ev/s", &[800.0, 800.0], &[1000.0, 1000.0]);
        assert_eq!(fewer.verdict(), Verdict::Slower);
        let more = figure("jobs/s", &[1200.0], &[1000.0]);
        assert_eq!(more.verdict(), Verdict::Faster);
    }

    #[test]
    fn the_floor_holds_when_the_rounds_agree() {
        let f = figure("ms", &[10.4, 10.4], &[10.0, 10.0]);
        assert_eq!(f.noise(), NOISE_FLOOR);
        assert_eq!(f.verdict(), Verdict::Same);
    }

    #[test]
    fn zeros_compare_as_the_same() {
        assert_eq!(figure("", &[0.0], &[0.0]).verdict(), Verdict::Same);
        assert_eq!(figure("", &[3.0], &[0.0]).ratio(), None);
    }

    #[test]
    fn figures_pair_metrics_by_name_across_rounds() {
        let round = |v: f64| vec![Metric::new("a", v, "ms"), Metric::new("b", v, "ms")];
        let theirs = vec![
            vec![Metric::new("a", 1.0, "ms")],
            vec![Metric::new("a", 3.0, "ms")],
        ];
        let figures = compare(&[round(2.0), round(4.0)], &theirs);
        assert_eq!(figures.len(), 1, "b has no baseline");
        assert_eq!(figures[0].ours, [2.0, 4.0]);
        assert_eq!(figures[0].medians(), (3.0, 2.0));
    }
}
