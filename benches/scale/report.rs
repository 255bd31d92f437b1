//! Targets checked against the numbers, printed as met / NOT met, and the
//! same (with every raw figure) as JSON.

use serde_json::{json, Map, Value};

/// One target of issue 22's list, checked.
pub struct Check {
    /// The item of the list it belongs to (1–6).
    pub item: u8,
    pub what: String,
    /// The target, in words.
    pub goal: String,
    /// What was measured, in words (with its spread where there is one).
    pub value: String,
    /// `None`: measured, but no target to meet (a reported figure).
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Results {
    pub checks: Vec<Check>,
    /// Every raw figure, by part, for the JSON.
    pub figures: Map<String, Value>,
    pub notes: Vec<String>,
}

impl Results {
    pub fn check(
        &mut self,
        item: u8,
        what: impl Into<String>,
        goal: impl Into<String>,
        value: impl Into<String>,
        met: Option<bool>,
    ) {
        let check = Check {
            item,
            what: what.into(),
            goal: goal.into(),
            value: value.into(),
            met,
        };
        eprintln!("  {}: {} ({})", check.what, check.value, verdict(check.met));
        self.checks.push(check);
    }

    pub fn figure(&mut self, part: &str, key: &str, value: Value) {
        let entry = self
            .figures
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = entry {
            map.insert(key.to_owned(), value);
        }
    }

    pub fn print(&self) {
        println!();
        println!("| # | what | target | measured | |");
        println!("|---|---|---|---|---|");
        for c in &self.checks {
            println!(
                "| {} | {} | {} | {} | {} |",
                c.item,
                c.what,
                c.goal,
                c.value,
                verdict(c.met)
            );
        }
        for note in &self.notes {
            println!("note: {note}");
        }
    }

    pub fn to_json(&self, meta: Value) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                json!({
                    "item": c.item,
                    "what": c.what,
                    "goal": c.goal,
                    "value": c.value,
                    "met": c.met,
                })
            })
            .collect();
        json!({
            "meta": meta,
            "checks": checks,
            "figures": self.figures,
            "notes": self.notes,
        })
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "reported",
    }
}

/// Median, min and max of `values` (0s when empty).
pub fn spread(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    (median, v[0], v[v.len() - 1])
}

/// `median (min..max)` with `digits` decimals.
pub fn show(values: &[f64], digits: usize) -> String {
    let (m, lo, hi) = spread(values);
    if values.len() < 2 {
        return format!("{m:.digits$}");
    }
    format!("{m:.digits$} ({lo:.digits$}..{hi:.digits$})")
}

/// The `q` quantile of `samples` in ms (nearest rank), 0 when empty.
pub fn quantile_ms(samples: &[std::time::Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}
