//! Prometheus metrics: every metric rolemint exports, described once, and
//! the small typed functions the rest of the code calls to record them.
//!
//! One process-wide recorder ([`handle`]): `metrics` has a single global
//! recorder, and installing a second one fails, so a process that runs
//! several servers (the tests do) shares one registry, installed on first
//! use behind a `OnceLock`.
//!
//! The exporter keeps every histogram sample until an upkeep folds it into
//! its buckets. Scrapes run one ([`render`]), and so does a thread every
//! [`UPKEEP_EVERY`] ([`keep_up`]): without it, a proxy nobody scrapes
//! kept a few samples per session for ever (a 20-connections-a-second soak
//! grew the heap by ~1 KiB a second, all of it samples).
//!
//! Labels are bounded by construction: the functions take `&'static str`
//! for results and reasons, and template or database names, which come from
//! the config. Never an identity, a token or a role name: those are
//! unbounded, and an identity in a label is a privacy leak in every
//! dashboard.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric: name, kind, unit, help text.
#[derive(Debug, Clone, Copy)]
pub struct Described {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

pub const SESSIONS_ACTIVE: &str = "rolemint_sessions_active";
pub const CONNECTIONS: &str = "rolemint_connections_total";
pub const AUTH: &str = "rolemint_auth_total";
pub const MINT_DURATION: &str = "rolemint_mint_duration_seconds";
pub const BACKEND_LOGIN_DURATION: &str = "rolemint_backend_login_duration_seconds";
pub const CONNECT_DURATION: &str = "rolemint_connect_duration_seconds";
pub const REVOCATIONS: &str = "rolemint_revocations_total";
pub const REVOCATIONS_PENDING: &str = "rolemint_revocations_pending";
pub const REVOCATION_OLDEST_PENDING: &str = "rolemint_revocation_oldest_pending_seconds";
pub const ROLES_RETAINED: &str = "rolemint_roles_retained";
pub const REAPER_RUNS: &str = "rolemint_reaper_runs_total";
pub const ROLES_REAPED: &str = "rolemint_roles_reaped_total";
pub const CANCEL_REQUESTS: &str = "rolemint_cancel_requests_total";
pub const RELAY_BYTES: &str = "rolemint_relay_bytes_total";
pub const ADMIN_POOL_CONNECTIONS: &str = "rolemint_admin_pool_connections";
pub const MANAGED_ROLES: &str = "rolemint_managed_roles";
pub const CONFIG_RELOADS: &str = "rolemint_config_reloads_total";
pub const BUILD_INFO: &str = "rolemint_build_info";
pub const ADMIN_REQUESTS: &str = "rolemint_admin_requests_total";
pub const AUDIT_LINES_DROPPED: &str = "rolemint_audit_lines_dropped_total";
pub const AUDIT_WRITE_ERRORS: &str = "rolemint_audit_write_errors_total";
pub const AUDIT_LINES_SUPPRESSED: &str = "rolemint_audit_lines_suppressed_total";
pub const WARM_POOL_READY: &str = "rolemint_warm_pool_ready";
pub const RELAY_THREAD_SESSIONS: &str = "rolemint_relay_thread_sessions";
pub const RELAY_THREAD_BUSY: &str = "rolemint_relay_thread_busy_ratio";
pub const WARM_POOL_CLAIMS: &str = "rolemint_warm_pool_claims_total";
pub const ACCESS_REQUESTS: &str = "rolemint_access_requests_total";
pub const ACCESS_WEBHOOK: &str = "rolemint_access_webhook_total";
pub const KERNEL_SPLICED: &str = "rolemint_kernel_spliced_sessions_total";
pub const QUOTA_REFUSALS: &str = "rolemint_quota_refusals_total";

/// Every metric rolemint exports. The README's table and the Grafana
/// dashboard are checked against this list.
pub const ALL: &[Described] = &[
    d(SESSIONS_ACTIVE, Kind::Gauge, None, "Sessions spliced to a backend now, by role template."),
    d(CONNECTIONS, Kind::Counter, None, "Client connections accepted, by result (ok, too_many, shutting_down, tls_required, protocol_error, refused)."),
    d(AUTH, Kind::Counter, None, "Token and policy decisions, by result (ok, failed), reason and issuer (the configured issuer that vouched; none before one did)."),
    d(MINT_DURATION, Kind::Histogram, Some(Unit::Seconds), "Time to mint a role: admin connection, creation statements, commit."),
    d(BACKEND_LOGIN_DURATION, Kind::Histogram, Some(Unit::Seconds), "Time to log in to the backend as the minted role (SCRAM)."),
    d(CONNECT_DURATION, Kind::Histogram, Some(Unit::Seconds), "Time from accepting a client to its first ReadyForQuery."),
    d(REVOCATIONS, Kind::Counter, None, "Revocation attempts, by result (ok, retry, failed)."),
    d(REVOCATIONS_PENDING, Kind::Gauge, None, "Leases whose role is waiting to be dropped."),
    d(REVOCATION_OLDEST_PENDING, Kind::Gauge, Some(Unit::Seconds), "Age of the oldest revocation still pending; alert when it grows."),
    d(ROLES_RETAINED, Kind::Gauge, None, "Roles left NOLOGIN because they own objects; an operator decides."),
    d(REAPER_RUNS, Kind::Counter, None, "Orphan sweeps run."),
    d(ROLES_REAPED, Kind::Counter, None, "Orphaned minted roles dropped by the reaper."),
    d(CANCEL_REQUESTS, Kind::Counter, None, "CancelRequests received, by result (forwarded, unknown, failed)."),
    d(RELAY_BYTES, Kind::Counter, Some(Unit::Bytes), "Bytes spliced, by direction (client_to_backend, backend_to_client)."),
    d(ADMIN_POOL_CONNECTIONS, Kind::Gauge, None, "Admin connections to the backend, by database and state (idle, busy)."),
    d(MANAGED_ROLES, Kind::Gauge, None, "Members of rolemint_managed in the catalog: the catalog-growth guard."),
    d(CONFIG_RELOADS, Kind::Counter, None, "Config reloads (SIGHUP), by result (ok, failed)."),
    d(BUILD_INFO, Kind::Gauge, None, "Always 1; the version label names the running build."),
    d(ADMIN_REQUESTS, Kind::Counter, None, "Admin HTTP requests, by route template and status code."),
    d(AUDIT_LINES_DROPPED, Kind::Counter, None, "Audit lines dropped because the writer fell behind (the queue was full)."),
    d(AUDIT_WRITE_ERRORS, Kind::Counter, None, "Audit lines that could not be written (disk full, file removed)."),
    d(AUDIT_LINES_SUPPRESSED, Kind::Counter, None, "Pre-authentication audit lines left out by [audit] pre_auth_lines_per_second (a flood of refusals)."),
    d(WARM_POOL_READY, Kind::Gauge, None, "Pooled roles ready to be claimed (logged in, idle), by role template."),
    d(RELAY_THREAD_SESSIONS, Kind::Gauge, None, "Sessions spliced on each relay thread now, by thread index."),
    d(RELAY_THREAD_BUSY, Kind::Gauge, None, "Share of the last 250 ms each relay thread spent running rather than waiting for events, by thread index."),
    d(KERNEL_SPLICED, Kind::Counter, None, "Sessions whose bytes the kernel forwarded (proxy.kernel_splice), by template."),
    d(QUOTA_REFUSALS, Kind::Counter, None, "Sessions, credential leases and tokens refused by a quota, by quota (sessions, credential_leases, mints_per_minute, principals, tokens per principal; template_leases_per_principal, template_leases of a template's own caps, whose name is in the audit line)."),
    d(WARM_POOL_CLAIMS, Kind::Counter, None, "Sessions of a pooled template, by template and result (hit, miss: the pool was empty, fallback: the entry could not be used)."),
    d(ACCESS_REQUESTS, Kind::Counter, None, "Access request steps, by step (created, approved, approval, denied, revoked, expired, ended, refused)."),
    d(ACCESS_WEBHOOK, Kind::Counter, None, "Access request webhook deliveries, by result (delivered, failed, dropped)."),
];

const fn d(name: &'static str, kind: Kind, unit: Option<Unit>, help: &'static str) -> Described {
    Described {
        name,
        kind,
        unit,
        help,
    }
}

/// Histogram buckets, in seconds: a mint is about a millisecond on a LAN,
/// a login a few, a connect the sum; the top buckets catch a stalled
/// backend before the timeouts end it.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes: what waits in between is bounded by the traffic of this long.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The upkeep thread's name (what `top -H` shows).
const UPKEEP_THREAD: &str = "rolemint-metric";

/// The process-wide Prometheus handle; installs the recorder, describes
/// every metric, sets `rolemint_build_info` and starts [`keep_up`] on
/// first call.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Every histogram rolemint has measures seconds. Only an empty
        // bucket list is refused; ours is not, but a summary beats a panic.
        let builder = PrometheusBuilder::new()
            .set_buckets(DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Someone else installed a recorder first (an embedding
            // program): rolemint's metrics go there, and /metrics shows
            // only what this handle sees.
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe_all();
        zero_counters();
        metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        let upkept = handle.clone();
        keep_up(move || upkept.run_upkeep(), UPKEEP_EVERY);
        handle
    })
}

/// Runs `upkeep` every `every`, on a thread of its own for the life of the
/// process: the first metric can be recorded before any runtime exists,
/// and the upkeep is a short walk over the histograms that never waits on
/// I/O. A process that cannot start the thread still drains its
/// histograms on every scrape.
fn keep_up(upkeep: impl Fn() + Send + 'static, every: Duration) {
    let started = std::thread::Builder::new()
        .name(UPKEEP_THREAD.into())
        .spawn(move || loop {
            std::thread::sleep(every);
            upkeep();
        });
    if let Err(e) = started {
        tracing::warn!(
            "metrics: cannot start the upkeep thread ({e}); histograms drain on scrapes only"
        );
    }
}

/// Every counter whose labels are known before anything happens, at 0:
/// a series that appears only at its first event is invisible to
/// `increase(...)` and `rate(...)` until then, so an alert on the first
/// reaped role or the first dropped audit line would never fire.
fn zero_counters() {
    for name in [
        REAPER_RUNS,
        ROLES_REAPED,
        AUDIT_LINES_DROPPED,
        AUDIT_WRITE_ERRORS,
        AUDIT_LINES_SUPPRESSED,
    ] {
        metrics::counter!(name).increment(0);
    }
    use ConnectionResult as C;
    let results = [
        C::Ok,
        C::TooMany,
        C::ShuttingDown,
        C::TlsRequired,
        C::ProtocolError,
        C::Refused,
    ];
    for result in results {
        metrics::counter!(CONNECTIONS, "result" => result.as_str()).increment(0);
    }
    use RevocationResult as R;
    for result in [R::Ok, R::Retry, R::Failed] {
        metrics::counter!(REVOCATIONS, "result" => result.as_str()).increment(0);
    }
    for direction in [Direction::ClientToBackend, Direction::BackendToClient] {
        metrics::counter!(RELAY_BYTES, "direction" => direction.as_str()).increment(0);
    }
    for result in ["forwarded", "unknown", "failed"] {
        metrics::counter!(CANCEL_REQUESTS, "result" => result).increment(0);
    }
    for result in ["ok", "failed"] {
        metrics::counter!(CONFIG_RELOADS, "result" => result).increment(0);
    }
    for quota in [
        "sessions",
        "credential_leases",
        "mints_per_minute",
        "principals",
        "tokens",
        "template_leases_per_principal",
        "template_leases",
    ] {
        metrics::counter!(QUOTA_REFUSALS, "quota" => quota).increment(0);
    }
    for step in ACCESS_STEPS {
        metrics::counter!(ACCESS_REQUESTS, "step" => *step).increment(0);
    }
    for result in ["delivered", "failed", "dropped"] {
        metrics::counter!(ACCESS_WEBHOOK, "result" => result).increment(0);
    }
}

/// The steps of [`access_request`].
pub const ACCESS_STEPS: &[&str] = &[
    "created", "approval", "approved", "denied", "revoked", "expired", "ended", "refused",
];

/// One access request step (see `control/requests.rs`).
pub fn access_request(step: &'static str) {
    installed();
    metrics::counter!(ACCESS_REQUESTS, "step" => step).increment(1);
}

/// One webhook delivery's end.
pub fn webhook(result: &'static str) {
    installed();
    metrics::counter!(ACCESS_WEBHOOK, "result" => result).increment(1);
}

/// Makes sure the recorder is installed before a metric is recorded:
/// whatever records first (a session, a test) must not record into the
/// no-op recorder `metrics` starts with.
fn installed() {
    handle();
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    let h = handle();
    // Histograms are drained into their buckets on upkeep; doing it here
    // keeps every scrape current without a background task.
    h.run_upkeep();
    h.render()
}

fn describe_all() {
    for m in ALL {
        let (name, help) = (m.name, m.help);
        match (m.kind, m.unit) {
            (Kind::Counter, Some(u)) => metrics::describe_counter!(name, u, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
}

/// How a client connection went, as far as the listener is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionResult {
    Ok,
    TooMany,
    ShuttingDown,
    TlsRequired,
    ProtocolError,
    Refused,
}

impl ConnectionResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionResult::Ok => "ok",
            ConnectionResult::TooMany => "too_many",
            ConnectionResult::ShuttingDown => "shutting_down",
            ConnectionResult::TlsRequired => "tls_required",
            ConnectionResult::ProtocolError => "protocol_error",
            ConnectionResult::Refused => "refused",
        }
    }
}

/// `ok`, `retry` (a transient failure, tried again) or `failed` (for good).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevocationResult {
    Ok,
    Retry,
    Failed,
}

impl RevocationResult {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationResult::Ok => "ok",
            RevocationResult::Retry => "retry",
            RevocationResult::Failed => "failed",
        }
    }
}

/// Which way relayed bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToBackend => "client_to_backend",
            Direction::BackendToClient => "backend_to_client",
        }
    }
}

pub fn connection(result: ConnectionResult) {
    installed();
    metrics::counter!(CONNECTIONS, "result" => result.as_str()).increment(1);
}

/// `reason` is a fixed word (`bad_token`, `expired`, `not_allowed`, ...),
/// never the verifier's message: that may quote a claim. `issuer` is the
/// name of the configured issuer entry that vouched for the identity
/// (`local`, `static`, an `[[auth.issuers]]` name): bounded by the config,
/// so a dashboard can tell one identity provider's failures from another's.
/// `None` (label `none`) before any issuer vouched: an `iss` a token merely
/// claims is never a label. The identity itself never is either.
pub fn auth(ok: bool, reason: &'static str, issuer: Option<&str>) {
    installed();
    let result = if ok { "ok" } else { "failed" };
    let issuer = issuer.unwrap_or("none").to_owned();
    metrics::counter!(AUTH, "result" => result, "reason" => reason, "issuer" => issuer)
        .increment(1);
}

pub fn mint_duration(d: Duration) {
    installed();
    metrics::histogram!(MINT_DURATION).record(d.as_secs_f64());
}

pub fn backend_login_duration(d: Duration) {
    installed();
    metrics::histogram!(BACKEND_LOGIN_DURATION).record(d.as_secs_f64());
}

pub fn connect_duration(d: Duration) {
    installed();
    metrics::histogram!(CONNECT_DURATION).record(d.as_secs_f64());
}

/// A session was spliced; `template` is a configured template name.
pub fn session_started(template: &str) {
    installed();
    metrics::gauge!(SESSIONS_ACTIVE, "template" => template.to_owned()).increment(1.0);
}

pub fn session_ended(template: &str) {
    installed();
    metrics::gauge!(SESSIONS_ACTIVE, "template" => template.to_owned()).decrement(1.0);
}

/// Ready entries of a pooled template (see `warm_pool.rs`).
pub fn warm_pool_ready(template: &str, n: usize) {
    installed();
    metrics::gauge!(WARM_POOL_READY, "template" => template.to_owned()).set(n as f64);
}

/// A session of a pooled template: `hit`, `miss` or `fallback`.
pub fn kernel_spliced(template: &str) {
    installed();
    metrics::counter!(KERNEL_SPLICED, "template" => template.to_owned()).increment(1);
}

pub fn warm_pool_claim(template: &str, result: &'static str) {
    installed();
    metrics::counter!(WARM_POOL_CLAIMS, "template" => template.to_owned(), "result" => result)
        .increment(1);
}

pub fn revocation(result: RevocationResult) {
    installed();
    metrics::counter!(REVOCATIONS, "result" => result.as_str()).increment(1);
}

/// Pending revocations and the age of the oldest.
pub fn set_revocations_pending(n: usize, oldest: Duration) {
    installed();
    metrics::gauge!(REVOCATIONS_PENDING).set(n as f64);
    metrics::gauge!(REVOCATION_OLDEST_PENDING).set(oldest.as_secs_f64());
}

pub fn roles_retained(n: usize) {
    installed();
    metrics::gauge!(ROLES_RETAINED).set(n as f64);
}

pub fn reaper_run() {
    installed();
    metrics::counter!(REAPER_RUNS).increment(1);
}

pub fn roles_reaped(n: u64) {
    installed();
    metrics::counter!(ROLES_REAPED).increment(n);
}

/// `result`: `forwarded`, `unknown` or `failed`.
pub fn cancel_request(result: &'static str) {
    installed();
    metrics::counter!(CANCEL_REQUESTS, "result" => result).increment(1);
}

/// The sessions spliced on relay thread `thread` now (see
/// `relay_threads.rs`), looked up once per thread so that a session's start
/// and end are an atomic add each, with no label to format. Counted up and
/// down, not set, so that a start and an end on two threads at once cannot
/// leave a stale count behind.
pub fn relay_thread_sessions(thread: usize) -> metrics::Gauge {
    installed();
    metrics::gauge!(RELAY_THREAD_SESSIONS, "thread" => thread.to_string())
}

/// How busy relay thread `thread` was over its last sample, 0 to 1.
pub fn relay_thread_busy(thread: usize) -> metrics::Gauge {
    installed();
    metrics::gauge!(RELAY_THREAD_BUSY, "thread" => thread.to_string())
}

pub fn relay_bytes(direction: Direction, n: u64) {
    installed();
    metrics::counter!(RELAY_BYTES, "direction" => direction.as_str()).increment(n);
}

/// Admin connections of a configured database; `state` is `idle` or `busy`.
pub fn admin_pool(database: &str, state: &'static str, n: usize) {
    installed();
    metrics::gauge!(ADMIN_POOL_CONNECTIONS, "database" => database.to_owned(), "state" => state)
        .set(n as f64);
}

pub fn managed_roles(n: u64) {
    installed();
    metrics::gauge!(MANAGED_ROLES).set(n as f64);
}

pub fn config_reload(ok: bool) {
    installed();
    let result = if ok { "ok" } else { "failed" };
    metrics::counter!(CONFIG_RELOADS, "result" => result).increment(1);
}

/// Sets `rolemint_build_info{version}` (done by [`handle`] too).
pub fn build_info() {
    installed();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// One admin HTTP request; `route` is the matched route template
/// (`/v1/sys/leases/lookup/{*prefix}`), never the raw path.
pub fn admin_request(route: &str, status: u16) {
    installed();
    metrics::counter!(ADMIN_REQUESTS, "route" => route.to_owned(), "status" => status.to_string())
        .increment(1);
}

/// A per-principal quota refused a session or a credential lease.
pub fn quota_refused(quota: &'static str) {
    installed();
    metrics::counter!(QUOTA_REFUSALS, "quota" => quota).increment(1);
}

pub fn audit_line_dropped() {
    installed();
    metrics::counter!(AUDIT_LINES_DROPPED).increment(1);
}

pub fn audit_line_suppressed() {
    installed();
    metrics::counter!(AUDIT_LINES_SUPPRESSED).increment(1);
}

pub fn audit_write_error() {
    installed();
    metrics::counter!(AUDIT_WRITE_ERRORS).increment(1);
}

/// Whether `name` is a metric rolemint exports; histogram series
/// (`_bucket`, `_sum`, `_count`) count as their histogram.
pub fn is_described(name: &str) -> bool {
    ALL.iter().any(|m| {
        m.name == name
            || (m.kind == Kind::Histogram
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(m.name)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upkeep runs again and again without a scrape, and the process's
    /// recorder starts it.
    #[test]
    fn histograms_are_drained_without_a_scrape() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        let runs = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&runs);
        keep_up(
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
            },
            Duration::from_millis(10),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::Relaxed) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the upkeep ran {runs:?} times"
            );
            std::thread::sleep(Duration::from_millis(10));
        }

        handle();
        // The test's own thread above has the same name: the recorder's
        // makes two. A new thread names itself once it runs.
        let upkeeps = || {
            let names: Vec<String> = std::fs::read_dir("/proc/self/task")
                .expect("/proc/self/task")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect();
            (names.iter().filter(|n| *n == UPKEEP_THREAD).count(), names)
        };
        while upkeeps().0 < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "threads: {:?}",
                upkeeps().1
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::BTreeSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("rolemint_"), "{}", m.name);
            assert!(
                m.name.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'),
                "{}",
                m.name
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            if m.unit == Some(Unit::Seconds) {
                assert!(m.name.ends_with("_seconds"), "{}", m.name);
            }
            assert!(!m.help.is_empty());
        }
    }

    #[test]
    fn recorded_metrics_render_with_help_text() {
        connection(ConnectionResult::Ok);
        mint_duration(Duration::from_millis(2));
        let text = render();
        assert!(text.contains("# HELP rolemint_connections_total"), "{text}");
        assert!(
            text.contains("rolemint_connections_total{result=\"ok\"}"),
            "{text}"
        );
        assert!(
            text.contains("rolemint_mint_duration_seconds_bucket{le=\"0.0025\"}"),
            "{text}"
        );
        assert!(text.contains("rolemint_build_info{version=\""), "{text}");
    }

    #[test]
    fn histogram_series_count_as_described() {
        assert!(is_described("rolemint_mint_duration_seconds_bucket"));
        assert!(is_described("rolemint_sessions_active"));
        assert!(!is_described("rolemint_sessions_active_bucket"));
        assert!(!is_described("rolemint_nothing"));
    }
}
