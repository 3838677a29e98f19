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
