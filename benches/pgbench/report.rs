//! Medians over the runs, the table, the five performance targets checked
//! against the numbers, and the same as JSON.

use serde_json::{json, Value};

use super::proxy::{ChurnMemory, IdleMemory};
use super::runner::Figures;
use super::{Kind, Workload};

/// The performance targets (select-only, TPC-B, churn, latency, memory).
const SELECT_VS_DIRECT: f64 = 0.80;
const SELECT_VS_PGBOUNCER: f64 = 1.30;
const TPCB_VS_DIRECT: f64 = 0.97;
const CHURN_VS_DIRECT: f64 = 2.0;
const CHURN_VS_PGBOUNCER: f64 = 1.0;
const ADDED_P50_US: f64 = 50.0;
const ADDED_P99_US: f64 = 150.0;
const IDLE_KIB_PER_SESSION: f64 = 64.0;
/// "Flat" RSS over churn: the last sample at most this far above the first
/// one taken after the warm-up tenth (allocator arenas settle, then stay).
const CHURN_FLAT_KIB: i64 = 4 * 1024;

/// Every run of one workload against one target.
pub struct Series {
    pub workload: Workload,
    pub target: &'static str,
    pub kind: Kind,
    pub tls: bool,
    pub runs: Vec<Figures>,
    pub errors: Vec<String>,
}

impl Series {
    fn median(&self, f: impl Fn(&Figures) -> Option<f64>) -> Option<f64> {
        let mut v: Vec<f64> = self.runs.iter().filter_map(f).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        })
    }

    pub fn tps(&self) -> Option<f64> {
        self.median(|f| Some(f.tps))
    }
    fn p50(&self) -> Option<f64> {
        self.median(|f| f.p50_us)
    }
    fn p99(&self) -> Option<f64> {
        self.median(|f| f.p99_us)
    }
    fn conn_ms(&self) -> Option<f64> {
        self.median(|f| f.conn_ms)
    }
    fn spread(&self) -> Option<(f64, f64)> {
        let tps = self.runs.iter().map(|f| f.tps);
        let min = tps.clone().reduce(f64::min)?;
        Some((min, tps.reduce(f64::max)?))
    }
}

/// Connect latency through one target, µs.
pub struct Connects {
    /// The target, and for TLS how the handshakes went.
    pub target: String,
    pub count: usize,
    pub p50_us: f64,
    pub p99_us: f64,
}

pub struct Report<'a> {
    pub series: &'a [Series],
    pub connects: &'a [Connects],
    pub idle: Option<&'a IdleMemory>,
    pub churn: Option<&'a ChurnMemory>,
    pub roles_left: usize,
}

impl Report<'_> {
    fn find(&self, workload: Workload, kind: Kind, tls: bool) -> Option<&Series> {
        self.series
            .iter()
            .find(|s| s.workload == workload && s.kind == kind && s.tls == tls)
    }

    /// A series' median tps over another's, when both have one.
    fn ratio(&self, workload: Workload, of: (Kind, bool), over: (Kind, bool)) -> Option<f64> {
        let a = self.find(workload, of.0, of.1)?.tps()?;
        let b = self.find(workload, over.0, over.1)?.tps()?;
        (b > 0.0).then(|| a / b)
    }

    /// p50 / p99 of rolemint minus direct's, µs, at one client.
    fn added_latency(&self, kind: Kind, tls: bool) -> Option<(f64, f64)> {
        let ours = self.find(Workload::Latency, kind, tls)?;
        let base = self.find(Workload::Latency, Kind::Direct, tls)?;
        Some((ours.p50()? - base.p50()?, ours.p99()? - base.p99()?))
    }

    pub fn print(&self) {
        self.print_table();
        self.print_connects();
        self.print_memory();
        self.print_targets();
    }

    fn print_table(&self) {
        let header = [
            "mode",
            "target",
            "tps",
            "min..max",
            "vs direct",
            "vs pgbouncer",
            "p50 ms",
            "p99 ms",
            "conn ms",
        ];
        let ms = |us: Option<f64>| us.map_or("-".into(), |u| format!("{:.3}", u / 1000.0));
        let x = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
        let mut lines = Vec::new();
        for s in self.series {
            let Some(tps) = s.tps() else {
                lines.push((
                    s.workload,
                    vec![s.workload.label().into(), s.target.into(), "FAILED".into()],
                ));
                continue;
            };
            let spread = s
                .spread()
                .map_or("-".into(), |(a, b)| format!("{a:.0}..{b:.0}"));
            let vs_direct = self.ratio(s.workload, (s.kind, s.tls), (Kind::Direct, s.tls));
            let vs_bouncer = if s.tls {
                None
            } else {
                self.ratio(s.workload, (s.kind, s.tls), (Kind::PgBouncer, false))
            };
            lines.push((
                s.workload,
                vec![
                    s.workload.label().into(),
                    s.target.into(),
                    format!("{tps:.0}"),
                    spread,
                    x(vs_direct),
                    x(vs_bouncer),
                    ms(s.p50()),
                    ms(s.p99()),
                    s.conn_ms().map_or("-".into(), |c| format!("{c:.3}")),
                ],
            ));
        }
        let mut widths = header.map(str::len);
        for (_, line) in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.len());
            }
        }
        let print = |cells: &[String]| {
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i > 0 {
                    out.push_str(" | ");
                }
                // Text left, numbers right.
                if i < 2 {
                    out.push_str(&format!("{cell:<w$}"));
                } else {
                    out.push_str(&format!("{cell:>w$}"));
                }
            }
            println!("{}", out.trim_end());
        };
        println!();
        print(&header.map(String::from));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        println!("{}", rule.join("-|-"));
        let mut previous = None;
        for (workload, line) in &lines {
            if previous.is_some_and(|p| p != *workload) {
                println!();
            }
            previous = Some(*workload);
            print(line);
        }
        println!();
        println!(
            "medians of the runs; tps and vs columns: higher is better; +tls rows (sslmode=require) \
             are compared with direct+tls, the others with direct (sslmode=disable)"
        );
    }

    fn print_connects(&self) {
        if self.connects.is_empty() {
            return;
        }
        println!();
        println!("connect latency (TCP connect to first ReadyForQuery, one at a time):");
        for c in self.connects {
            println!(
                "  {:<30} p50 {:>8.3} ms   p99 {:>8.3} ms   ({} connections)",
                c.target,
                c.p50_us / 1000.0,
                c.p99_us / 1000.0,
                c.count
            );
        }
    }

    fn print_memory(&self) {
        println!();
        if let Some(idle) = self.idle {
            println!(
                "proxy RSS: {} KiB before, {} KiB with {} idle sessions: {:.1} KiB per session",
                idle.before_kib,
                idle.after_kib,
                idle.sessions,
                idle.per_session_kib()
            );
        }
        if let Some(churn) = self.churn {
            let samples: Vec<String> = churn
                .samples
                .iter()
                .map(|(n, kib)| format!("{n}:{kib}"))
                .collect();
            println!(
                "proxy RSS over {} churned sessions (sessions:KiB): {}",
                churn.sessions,
                samples.join(" ")
            );
        }
        println!(
            "roles left in rolemint_managed after the churn: {}",
            self.roles_left
        );
    }

    fn print_targets(&self) {
        let verdict = |v: Option<bool>| match v {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let x = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
        let sel = self.ratio(
            Workload::SelectOnly,
            (Kind::Rolemint, false),
            (Kind::Direct, false),
        );
        let sel_b = self.ratio(
            Workload::SelectOnly,
            (Kind::Rolemint, false),
            (Kind::PgBouncer, false),
        );
        let sel_tls = self.ratio(
            Workload::SelectOnly,
            (Kind::Rolemint, true),
            (Kind::Direct, true),
        );
        let tpcb = self.ratio(
            Workload::TpcB,
            (Kind::Rolemint, false),
            (Kind::Direct, false),
        );
        let churn = self.ratio(
            Workload::Churn,
            (Kind::Rolemint, false),
            (Kind::Direct, false),
        );
        let churn_b = self.ratio(
            Workload::Churn,
            (Kind::Rolemint, false),
            (Kind::PgBouncer, false),
        );
        let kernel = |w| {
            (
                self.ratio(w, (Kind::RolemintKernel, false), (Kind::Direct, false)),
                self.ratio(w, (Kind::RolemintKernel, false), (Kind::PgBouncer, false)),
            )
        };
        let (sel_k, sel_k_b) = kernel(Workload::SelectOnly);
        let (tpcb_k, _) = kernel(Workload::TpcB);
        let added_k = self.added_latency(Kind::RolemintKernel, false);
        let churn_pool = self.ratio(
            Workload::Churn,
            (Kind::RolemintPool, false),
            (Kind::Direct, false),
        );
        let churn_pool_b = self.ratio(
            Workload::Churn,
            (Kind::RolemintPool, false),
            (Kind::PgBouncer, false),
        );
        let added = self.added_latency(Kind::Rolemint, false);
        println!();
        println!("targets:");
        println!(
            "  1. select-only: {} vs direct (>= {SELECT_VS_DIRECT:.2}x: {}), {} vs pgbouncer (>= {SELECT_VS_PGBOUNCER:.2}x: {}); with TLS {} vs direct+tls",
            x(sel),
            verdict(sel.map(|r| r >= SELECT_VS_DIRECT)),
            x(sel_b),
            verdict(sel_b.map(|r| r >= SELECT_VS_PGBOUNCER)),
            x(sel_tls),
        );
        println!(
            "     kernel splice: {} vs direct (>= {SELECT_VS_DIRECT:.2}x: {}), {} vs pgbouncer (>= {SELECT_VS_PGBOUNCER:.2}x: {})",
            x(sel_k),
            verdict(sel_k.map(|r| r >= SELECT_VS_DIRECT)),
            x(sel_k_b),
            verdict(sel_k_b.map(|r| r >= SELECT_VS_PGBOUNCER)),
        );
        println!(
            "  2. tpc-b: {} vs direct (>= {TPCB_VS_DIRECT:.2}x: {}); kernel splice {} ({})",
            x(tpcb),
            verdict(tpcb.map(|r| r >= TPCB_VS_DIRECT)),
            x(tpcb_k),
            verdict(tpcb_k.map(|r| r >= TPCB_VS_DIRECT)),
        );
        println!(
            "  3. churn: {} vs direct (>= {CHURN_VS_DIRECT:.1}x: {}), {} vs pgbouncer (>= {CHURN_VS_PGBOUNCER:.1}x: {}), {} roles left",
            x(churn),
            verdict(churn.map(|r| r >= CHURN_VS_DIRECT)),
            x(churn_b),
            verdict(churn_b.map(|r| r >= CHURN_VS_PGBOUNCER)),
            self.roles_left,
        );
        println!(
            "     with a warm pool: {} vs direct (>= {CHURN_VS_DIRECT:.1}x: {}), {} vs pgbouncer (>= {CHURN_VS_PGBOUNCER:.1}x: {})",
            x(churn_pool),
            verdict(churn_pool.map(|r| r >= CHURN_VS_DIRECT)),
            x(churn_pool_b),
            verdict(churn_pool_b.map(|r| r >= CHURN_VS_PGBOUNCER)),
        );
        match added {
            Some((p50, p99)) => println!(
                "  4. added latency at 1 client: p50 {p50:+.0} µs (<= {ADDED_P50_US:.0}: {}), p99 {p99:+.0} µs (<= {ADDED_P99_US:.0}: {})",
                verdict(Some(p50 <= ADDED_P50_US)),
                verdict(Some(p99 <= ADDED_P99_US)),
            ),
            None => println!("  4. added latency: not measured"),
        }
        if let Some((p50, p99)) = added_k {
            println!(
                "     kernel splice: p50 {p50:+.0} µs ({}), p99 {p99:+.0} µs ({})",
                verdict(Some(p50 <= ADDED_P50_US)),
                verdict(Some(p99 <= ADDED_P99_US)),
            );
        }
        let idle = self.idle.map(IdleMemory::per_session_kib);
        let growth = self.churn.map(ChurnMemory::growth_kib);
        println!(
            "  5. memory: {} KiB per idle session (<= {IDLE_KIB_PER_SESSION:.0}: {}), RSS {} KiB over the churn after warm-up (flat, <= {CHURN_FLAT_KIB}: {})",
            idle.map_or("-".into(), |k| format!("{k:.1}")),
            verdict(idle.map(|k| k <= IDLE_KIB_PER_SESSION)),
            growth.map_or("-".into(), |g| format!("{g:+}")),
            verdict(growth.map(|g| g <= CHURN_FLAT_KIB)),
        );
    }

    pub fn to_json(&self, meta: Value) -> Value {
        let series: Vec<Value> = self
            .series
            .iter()
            .map(|s| {
                json!({
                    "workload": s.workload.key(),
                    "target": s.target,
                    "tls": s.tls,
                    "tps_median": s.tps(),
                    "tps_runs": s.runs.iter().map(|f| f.tps).collect::<Vec<_>>(),
                    "transactions_runs": s.runs.iter().map(|f| f.transactions).collect::<Vec<_>>(),
                    "p50_us": s.p50(),
                    "p99_us": s.p99(),
                    "conn_ms": s.conn_ms(),
                    "vs_direct": self.ratio(s.workload, (s.kind, s.tls), (Kind::Direct, s.tls)),
                    "vs_pgbouncer": if s.tls { None } else {
                        self.ratio(s.workload, (s.kind, s.tls), (Kind::PgBouncer, false))
                    },
                    "failed_transactions": s.runs.iter().map(|f| f.failed).sum::<u64>(),
                    "errors": s.errors,
                })
            })
            .collect();
        let connects: Vec<Value> = self
            .connects
            .iter()
            .map(|c| json!({"target": c.target, "count": c.count, "p50_us": c.p50_us, "p99_us": c.p99_us}))
            .collect();
        json!({
            "meta": meta,
            "series": series,
            "connect_latency": connects,
            "idle_memory": self.idle.map(|i| json!({
                "sessions": i.sessions,
                "rss_before_kib": i.before_kib,
                "rss_after_kib": i.after_kib,
                "kib_per_session": i.per_session_kib(),
            })),
            "churn_memory": self.churn.map(|c| json!({
                "sessions": c.sessions,
                "samples": c.samples.iter().map(|(n, k)| json!({"sessions": n, "rss_kib": k})).collect::<Vec<_>>(),
                "growth_kib": c.growth_kib(),
            })),
            "roles_left": self.roles_left,
            "added_latency_us": self.added_latency(Kind::Rolemint, false).map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
            "added_latency_tls_us": self.added_latency(Kind::Rolemint, true).map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
            "added_latency_kernel_us": self.added_latency(Kind::RolemintKernel, false).map(|(p50, p99)| json!({"p50": p50, "p99": p99})),
        })
    }
}
