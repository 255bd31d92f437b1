//! The warm pool: roles minted ahead, with a backend already logged in as
//! each, so a connection of a template with `warm_pool = N` costs the
//! client's handshake and one small admin round trip instead of a mint and
//! a SCRAM login.
//!
//! ```text
//! filler: render ─► mint (as a session's, comment kind "warm") ─► backend login ─► NOLOGIN PASSWORD NULL ─► ready
//! claim:  take (out of the pool first) ─► probe ─► LOGIN, VALID UNTIL now+TTL, lease comment ─┬─► forward startup ─► splice
//!                                              └─► SET the client's startup parameters ────────┘
//! ```
//!
//! What stays true, and why:
//! - **One role per session, never reused.** [`WarmPool::take`] removes an
//!   entry before anything else is done with it; whatever happens after,
//!   its role goes to a session's lease or to the revoker, never back.
//! - **Nobody else logs in as a pooled role.** Once its backend is in, the
//!   role is `NOLOGIN` with no password (`PASSWORD NULL`); the password
//!   rolemint minted it with is dropped with the login. A claim gives it
//!   `LOGIN` back only so the catalog sees a live lease (`catalog.rs`):
//!   with no password there is still nothing to log in with.
//! - **The TTL runs from the claim**: the claim sets `VALID UNTIL` and the
//!   lease comment (identity, lease id, issue time) exactly as a mint
//!   writes them. Before it, a pooled role's `VALID UNTIL` is its pool
//!   lifetime plus a margin, so PostgreSQL refuses it by itself even if
//!   rolemint dies.
//! - **Nothing is left behind.** Entries past `warm_lifetime`, entries of a
//!   template that a reload removed, shrank or changed, and entries whose
//!   backend went away (PostgreSQL restarted: any byte or EOF from an idle
//!   pooled backend means it is done) are handed to the revoker and
//!   replaced. At shutdown every unclaimed role is handed to the revoker
//!   before it drains. After a SIGKILL the pooled backends close with the
//!   process; the roles are then members of `rolemint_managed` with no
//!   backend and an issue time in their comment, and the reaper drops them
//!   once `mint.reap_grace` has passed (or at their `VALID UNTIL`).
//!   While a fill is between its mint and its login, [`WarmPool::holds`]
//!   tells the reaper the role is ours.
//!
//! Sizes: `warm_pool` entries **per database** of the template, each one
//! backend connection on PostgreSQL. Identity-dependent parts cannot be
//! rendered ahead: config validation refuses a pooled template whose name
//! template or `session_settings` use `{{identity}}`, `{{groups}}` or
//! `{{issuer}}`. The client's startup parameters (`application_name`, ...)
//! are applied at claim time with one `SET` batch, whose ParameterStatus
//! answers replace the pooled login's; a client that sends `options` is
//! served by the normal path. Settings applied by `SET` are session values,
//! not startup values: a client's `RESET ALL` returns them to the server's
//! defaults rather than to what it sent at startup.
//!
//! The filler ([`Filler::run`]) is one task: it refills after each claim
//! (woken by it) and at least once a second, with at most
//! [`MAX_CONCURRENT_FILLS`] fills in flight, and backs off per template and
//! database when fills fail (the backend is down), logging the 1st, 2nd,
//! 4th, 8th... failure of a streak only.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres_protocol::escape::{escape_identifier, escape_literal};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RoleTemplate};
use crate::lease::end::EndReason;
use crate::lease::registry::{self, LeaseKind};
use crate::lease::revoker::Revoker;
use crate::pg::backend::{self, BackendError, Login};
use crate::pg::{AdminClient, LeaseComment, MintError, NameTemplate, PreparedMint};
use crate::tls::BackendStream;

/// Fills in flight at once, all templates together (each holds an admin
/// connection for its mint and its seal, which sessions need too).
pub const MAX_CONCURRENT_FILLS: usize = 4;
/// How often the filler looks at the pool when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);
/// First wait after a failed fill; doubled per failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between fills of a failing template and database.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A pooled role's `VALID UNTIL` is its lifetime plus at least this: the
/// filler retires it first, and a claim that began in time has finished.
const MIN_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Which pool: a template and one of its databases.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub template: String,
    pub database: String,
}

/// A role minted ahead, and its backend, logged in and idle.
pub struct Entry {
    pub role: String,
    pub key: Key,
    /// The logged-in backend, stopped at ReadyForQuery.
    pub login: Login,
    /// After this the entry is not claimed but retired.
    retire_at: Instant,
    /// The template definition it was minted from (see [`fingerprint`]): a
    /// reload that changes it retires the entry.
    fingerprint: u64,
}

// No password is held (it is dropped after the login) and the backend key
// is a secret: Debug shows the role and where it belongs only.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("role", &self.role)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The pooled entries of every template, and the roles being filled.
#[derive(Debug, Default)]
pub struct WarmPool {
    state: Mutex<State>,
    /// Wakes the filler after a claim.
    claimed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Ready entries per pool, oldest first.
    ready: HashMap<Key, VecDeque<Entry>>,
    /// Roles whose fill is in flight (mint to seal), by name: so the reaper
    /// does not take a role between its mint and its login for an orphan.
    filling: HashMap<String, Key>,
    /// Set at shutdown: nothing is claimed or added any more.
    closed: bool,
}

impl WarmPool {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a ready entry of `template` for `database` out of the pool:
    /// from here on it belongs to the caller alone, who binds it to a lease
    /// or hands its role to the revoker. Wakes the filler to replace it.
    pub fn take(&self, template: &str, database: &str) -> Option<Entry> {
        let key = Key {
            template: template.to_owned(),
            database: database.to_owned(),
        };
        let now = Instant::now();
        let entry = {
            let mut state = self.lock();
            if state.closed {
                return None;
            }
            let queue = state.ready.get_mut(&key)?;
            // Oldest first, so entries are used before they age out; one
            // too old is left for the filler to retire.
            let at = queue.iter().position(|e| e.retire_at > now)?;
            queue.remove(at)
        };
        self.claimed.notify_one();
        entry
    }

    /// Whether `role` is a pooled role of this instance, ready or being
    /// filled: the reaper's "held" question.
    pub fn holds(&self, role: &str) -> bool {
        let state = self.lock();
        state.filling.contains_key(role)
            || state
                .ready
                .values()
                .any(|q| q.iter().any(|e| e.role == role))
    }

    /// Ready entries of `template`, all databases together.
    pub fn ready(&self, template: &str) -> usize {
        self.lock()
            .ready
            .iter()
            .filter(|(k, _)| k.template == template)
            .map(|(_, q)| q.len())
            .sum()
    }

    /// Ready plus filling entries of one pool.
    fn count(&self, key: &Key) -> usize {
        let state = self.lock();
        state.ready.get(key).map_or(0, VecDeque::len)
            + state.filling.values().filter(|k| *k == key).count()
    }
}

/// What the filler should keep: one per template and database with
/// `warm_pool > 0`.
#[derive(Debug, Clone)]
pub struct Want {
    pub key: Key,
    pub size: usize,
    pub template: RoleTemplate,
    pub lifetime: Duration,
    pub fingerprint: u64,
}

/// The pools `config` asks for.
pub fn wants(config: &Config) -> Vec<Want> {
    let mut wants = Vec::new();
    for (name, t) in &config.roles {
        if t.warm_pool == 0 {
            continue;
        }
        for database in &t.databases {
            wants.push(Want {
                key: Key {
                    template: name.clone(),
                    database: database.clone(),
                },
                size: t.warm_pool.min(crate::config::MAX_WARM_POOL),
                template: t.clone(),
                lifetime: t.warm_lifetime,
                fingerprint: fingerprint(t),
            });
        }
    }
    wants
}

/// What a pooled role was made of: creation statements, settings, name
/// template, owner, revocation. Entries minted from another definition are
/// retired after a reload.
fn fingerprint(t: &RoleTemplate) -> u64 {
    let mut h = DefaultHasher::new();
    t.creation_statements.hash(&mut h);
    t.session_settings.hash(&mut h);
    t.warm_name_template().hash(&mut h);
    t.owner.hash(&mut h);
    t.revocation_statements.hash(&mut h);
    h.finish()
}

/// Whether a client's forwarded startup parameters can be applied to a
/// pooled backend with `SET`: every plain allowed setting can; `options`
/// (several `-c` settings in PostgreSQL's own syntax) goes the normal way.
pub fn can_claim(forward: &[(String, String)]) -> bool {
    forward
        .iter()
        .all(|(name, _)| name != "options" && crate::pg::backend::params::is_allowed(name))
}

/// The `SET` batch of a client's startup parameters; `None` when there are
/// none. Names are checked against the allow list again and quoted; values
/// are escaped literals.
pub fn settings_sql(forward: &[(String, String)]) -> Option<String> {
    let sql: Vec<String> = forward
        .iter()
        .filter(|(name, _)| name != "options" && crate::pg::backend::params::is_allowed(name))
        .map(|(name, value)| {
            format!(
                "SET {} = {}",
                escape_identifier(&name.to_ascii_lowercase()),
                escape_literal(value)
            )
        })
        .collect();
    (!sql.is_empty()).then(|| sql.join("; "))
}

/// Why a claim failed; the session falls back to a normal mint.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("the pooled backend is gone")]
    Dead,
    #[error("binding the lease: {0}")]
    Bind(#[from] MintError),
    #[error("applying the startup parameters: {0}")]
    Settings(#[from] BackendError),
}

/// The lease a claim binds an entry to.
#[derive(Debug)]
pub struct Claim<'a> {
    pub lease_id: &'a str,
    pub identity: &'a str,
    pub issuer: &'a str,
    pub ttl: Duration,
    pub forward: &'a [(String, String)],
}

/// An entry bound to a session's lease.
#[derive(Debug)]
pub struct Claimed {
    pub role: String,
    pub login: Login,
    pub issued_at: SystemTime,
    pub expires_at: SystemTime,
}

/// Binds `entry` to a session: the lease in the catalog (`LOGIN`, `VALID
/// UNTIL` now + TTL, the session's comment; one admin round trip) and the
/// client's startup parameters on the backend (one `SET` batch), side by
/// side. The caller bounds it and, on any error, hands the role to the
/// revoker.
pub async fn claim(
    admin_client: &AdminClient,
    mut entry: Entry,
    c: &Claim<'_>,
) -> Result<Claimed, ClaimError> {
    if is_dead(&mut entry.login.stream) {
        return Err(ClaimError::Dead);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    // Whole seconds, as VALID UNTIL gets them (and as a mint computes it).
    let issued_at = UNIX_EPOCH + Duration::from_secs(now);
    let expires_at = UNIX_EPOCH + Duration::from_secs(now.saturating_add(c.ttl.as_secs()));
    let comment = LeaseComment {
        lease_id: c.lease_id.to_owned(),
        identity: c.identity.to_owned(),
        issuer: c.issuer.to_owned(),
        template: entry.key.template.clone(),
        database: entry.key.database.clone(),
        expires_at: crate::pg::rfc3339(expires_at),
        instance: admin_client.instance().to_owned(),
        issued_at: crate::pg::rfc3339(issued_at),
        kind: LeaseKind::of_lease_id(c.lease_id).comment_word().to_owned(),
    };
    let bind = admin_client.claim_warm(&entry.role, &entry.key.database, expires_at, &comment);
    let settings = async {
        match settings_sql(c.forward) {
            Some(sql) => backend::apply_settings(&mut entry.login, &sql).await,
            None => Ok(()),
        }
    };
    let (bound, set) = tokio::join!(bind, settings);
    bound?;
    set?;
    Ok(Claimed {
        role: entry.role,
        login: entry.login,
        issued_at,
        expires_at,
    })
}

/// Whether an idle pooled backend has said anything or closed: it never
/// should (a FATAL from `pg_terminate_backend`, a server shutting down, an
/// EOF), so either means it is done. One poll of a one-byte read, with a
/// waker that does nothing: it never waits and needs no task of its own.
/// A live backend's read is pending; whatever else comes back (a byte, EOF,
/// an error) ends the entry.
fn is_dead(stream: &mut BackendStream) -> bool {
    struct Ignore;
    impl Wake for Ignore {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Ignore));
    let mut cx = Context::from_waker(&waker);
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    !Pin::new(stream).poll_read(&mut cx, &mut buf).is_pending()
}

/// How a fill ended: the entry, or what to tell the revoker.
enum Filled {
    /// Boxed: an entry holds a whole backend login.
    Ready(Box<Entry>),
    /// The mint itself failed or timed out: the role may exist, or come
    /// to exist until `settle` has passed.
    /// `settle`: `None` when the mint never reached PostgreSQL (nothing to
    /// revoke).
    MintFailed {
        error: String,
        settle: Option<Duration>,
    },
    /// The role exists; logging in or sealing it failed.
    Failed { error: String },
}

/// What the filler needs from the server. Borrowed, so that this module
/// never needs the server's state type.
pub struct Filler<'a> {
    pub pool: &'a WarmPool,
    pub admin_client: &'a Arc<AdminClient>,
    pub revoker: &'a Revoker,
    /// The config the server started with: backend and timeouts.
    pub config: &'a Config,
    pub backend_tls: Option<&'a Arc<rustls::ClientConfig>>,
    /// The pools the current config asks for (templates are reloadable).
    pub wants: &'a (dyn Fn() -> Vec<Want> + Send + Sync),
    /// The server's shutdown: every unclaimed role is then revoked.
    pub stop: &'a CancellationToken,
}

/// Failures of one pool in a row, and when it may be filled again.
#[derive(Debug)]
struct Backoff {
    failures: u32,
    delay: Duration,
    next: Instant,
}

impl Filler<'_> {
    /// Keeps every pool full until the shutdown, then hands every unclaimed
    /// role to the revoker.
    pub async fn run(self) {
        let mut fills: JoinSet<Filled> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, (Key, String, Duration)> = HashMap::new();
        let mut backoff: HashMap<Key, Backoff> = HashMap::new();
        let mut published: HashMap<String, usize> = HashMap::new();
        let concurrency = MAX_CONCURRENT_FILLS
            .min(self.config.backend.admin_pool_size.div_ceil(2))
            .max(1);
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let wants = (self.wants)();
            self.retire(&wants);
            self.publish(&wants, &mut published);
            let now = Instant::now();
            for want in &wants {
                if backoff.get(&want.key).is_some_and(|b| b.next > now) {
                    continue;
                }
                let mut deficit = want.size.saturating_sub(self.pool.count(&want.key));
                while deficit > 0 && fills.len() < concurrency {
                    deficit -= 1;
                    match self.start_fill(want, &mut fills) {
                        Ok((id, role, settle)) => {
                            in_flight.insert(id, (want.key.clone(), role, settle));
                        }
                        Err(e) => {
                            // Rendering failed: no role exists.
                            fail(&mut backoff, &want.key, &e.to_string());
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = self.pool.claimed.notified() => {}
                Some(done) = fills.join_next_with_id(), if !fills.is_empty() => {
                    self.finish(done, &mut in_flight, &mut backoff, &wants);
                }
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        self.shut_down(fills, in_flight).await;
        for template in published.keys() {
            crate::observe::metrics::warm_pool_ready(template, 0);
        }
    }

    /// Renders one fill and spawns it; the role's name is known (and held)
    /// before any SQL is sent.
    fn start_fill(
        &self,
        want: &Want,
        fills: &mut JoinSet<Filled>,
    ) -> Result<(tokio::task::Id, String, Duration), MintError> {
        let names = NameTemplate::parse(want.template.warm_name_template())
            .map_err(|e| MintError::Config(format!("roles.{}: {e}", want.key.template)))?;
        let margin = MIN_EXPIRY_MARGIN.max(2 * self.config.admin_operation_timeout());
        let prepared = self.admin_client.render_warm(
            &want.key.template,
            &want.template,
            &want.key.database,
            want.lifetime + margin,
            &names,
            &warm_lease_id(&want.key.template),
        )?;
        let role = prepared.role.name.clone();
        let settle = prepared.settle_time(self.admin_client.statement_timeout());
        self.pool
            .lock()
            .filling
            .insert(role.clone(), want.key.clone());
        let job = Fill {
            admin_client: Arc::clone(self.admin_client),
            backend: self.config.backend.clone(),
            backend_tls: self.backend_tls.cloned(),
            mint_timeout: self.config.admin_operation_timeout(),
            key: want.key.clone(),
            retire_at: Instant::now() + want.lifetime,
            fingerprint: want.fingerprint,
        };
        let handle = fills.spawn(job.run(prepared));
        Ok((handle.id(), role, settle))
    }

    /// A fill came back: into the pool, or its role to the revoker.
    fn finish(
        &self,
        done: Result<(tokio::task::Id, Filled), tokio::task::JoinError>,
        in_flight: &mut HashMap<tokio::task::Id, (Key, String, Duration)>,
        backoff: &mut HashMap<Key, Backoff>,
        wants: &[Want],
    ) {
        let (id, filled) = match done {
            Ok((id, filled)) => (id, Some(filled)),
            Err(e) => (e.id(), None),
        };
        let Some((key, role, settle)) = in_flight.remove(&id) else {
            return;
        };
        let outcome = filled.unwrap_or(Filled::MintFailed {
            error: "the fill task panicked".into(),
            settle: Some(settle),
        });
        match outcome {
            Filled::Ready(entry) => {
                let entry = *entry;
                if let Some(b) = backoff.remove(&key) {
                    tracing::info!(
                        template = %key.template, database = %key.database,
                        failures = b.failures, "warm pool: filling works again"
                    );
                }
                let mut state = self.pool.lock();
                state.filling.remove(&role);
                let wanted = wants
                    .iter()
                    .any(|w| w.key == key && w.fingerprint == entry.fingerprint);
                if wanted && !state.closed {
                    tracing::debug!(role = %role, template = %key.template, database = %key.database, "warm pool: role ready");
                    state.ready.entry(key).or_default().push_back(entry);
                } else {
                    drop(state);
                    self.retire_entry(entry, "no longer wanted");
                }
            }
            Filled::MintFailed { error, settle } => {
                if let Some(settle) = settle {
                    self.revoker.schedule_failed_mint(
                        &role,
                        &key.database,
                        Some(&key.template),
                        settle,
                    );
                }
                self.pool.lock().filling.remove(&role);
                fail(backoff, &key, &error);
            }
            Filled::Failed { error } => {
                self.revoker.schedule(
                    &role,
                    &key.database,
                    Some(&key.template),
                    EndReason::Unclaimed,
                );
                self.pool.lock().filling.remove(&role);
                fail(backoff, &key, &error);
            }
        }
    }

    /// Takes out of the pool every entry that must go (too old, its
    /// template gone, shrunk or changed, its backend dead) and revokes it.
    ///
    /// All of it under the pool's lock and without an await: the entries
    /// never leave the pool while they are looked at, so a claim meanwhile
    /// finds them (probing outside the lock emptied the pool for a moment
    /// after every claim, and under churn most connections then missed).
    fn retire(&self, wants: &[Want]) {
        let now = Instant::now();
        let mut out: Vec<(Entry, &'static str)> = Vec::new();
        {
            let mut state = self.pool.lock();
            for (key, queue) in state.ready.iter_mut() {
                let want = wants.iter().find(|w| &w.key == key);
                let mut kept = VecDeque::with_capacity(queue.len());
                for mut entry in queue.drain(..) {
                    match want {
                        None => out.push((entry, "template no longer pooled")),
                        Some(w) if w.fingerprint != entry.fingerprint => {
                            out.push((entry, "template changed"))
                        }
                        Some(_) if entry.retire_at <= now => out.push((entry, "lifetime over")),
                        Some(_) => {
                            if is_dead(&mut entry.login.stream) {
                                out.push((entry, "backend gone"));
                            } else {
                                kept.push_back(entry);
                            }
                        }
                    }
                }
                // Over the size (a reload shrank it): the oldest go.
                let size = want.map_or(0, |w| w.size);
                while kept.len() > size {
                    if let Some(entry) = kept.pop_front() {
                        out.push((entry, "pool shrunk"));
                    }
                }
                *queue = kept;
            }
            state.ready.retain(|_, q| !q.is_empty());
        }
        for (entry, why) in out {
            self.retire_entry(entry, why);
        }
    }

    /// Closes an entry's backend and hands its role to the revoker.
    fn retire_entry(&self, entry: Entry, why: &str) {
        let Entry {
            role, key, login, ..
        } = entry;
        drop(login);
        tracing::debug!(role = %role, template = %key.template, database = %key.database, "warm pool: retiring an unclaimed role: {why}");
        self.revoker.schedule(
            &role,
            &key.database,
            Some(&key.template),
            EndReason::Unclaimed,
        );
    }

    /// `rolemint_warm_pool_ready{template}`: every pooled template, and
    /// once more (as 0) a template that is no longer pooled.
    fn publish(&self, wants: &[Want], published: &mut HashMap<String, usize>) {
        let mut now: HashMap<String, usize> = HashMap::new();
        for w in wants {
            now.insert(w.key.template.clone(), 0);
        }
        for template in published.keys() {
            if !now.contains_key(template) {
                crate::observe::metrics::warm_pool_ready(template, 0);
            }
        }
        for (template, n) in now.iter_mut() {
            *n = self.pool.ready(template);
            crate::observe::metrics::warm_pool_ready(template, *n);
        }
        *published = now;
    }

    /// Shutdown: no more claims; fills in flight get a bounded time to
    /// come back (each is bounded by its own timeouts); then every role,
    /// ready, filled or still filling, goes to the revoker.
    async fn shut_down(
        &self,
        mut fills: JoinSet<Filled>,
        mut in_flight: HashMap<tokio::task::Id, (Key, String, Duration)>,
    ) {
        let ready: Vec<Entry> = {
            let mut state = self.pool.lock();
            state.closed = true;
            state.ready.drain().flat_map(|(_, q)| q).collect()
        };
        let n = ready.len();
        for entry in ready {
            self.retire_entry(entry, "shutting down");
        }
        let within =
            2 * self.config.admin_operation_timeout() + 2 * self.config.backend.connect_timeout;
        let mut backoff = HashMap::new();
        let deadline = Instant::now() + within;
        while !fills.is_empty() {
            match tokio::time::timeout_at(deadline, fills.join_next_with_id()).await {
                Ok(Some(done)) => self.finish(done, &mut in_flight, &mut backoff, &[]),
                Ok(None) => break,
                Err(_) => {
                    fills.abort_all();
                    break;
                }
            }
        }
        // Aborted fills: their roles may exist or be about to.
        for (_, (key, role, settle)) in in_flight.drain() {
            self.revoker
                .schedule_failed_mint(&role, &key.database, Some(&key.template), settle);
        }
        self.pool.lock().filling.clear();
        if n > 0 {
            tracing::info!(
                roles = n,
                "warm pool: unclaimed roles handed to the revoker"
            );
        }
    }
}

/// Counts a failed fill of `key` and says so on the 1st, 2nd, 4th, 8th...
/// failure of a streak.
fn fail(backoff: &mut HashMap<Key, Backoff>, key: &Key, error: &str) {
    let b = backoff.entry(key.clone()).or_insert(Backoff {
        failures: 0,
        delay: FIRST_BACKOFF / 2,
        next: Instant::now(),
    });
    b.failures = b.failures.saturating_add(1);
    b.delay = (b.delay * 2).min(MAX_BACKOFF);
    b.next = Instant::now() + b.delay;
    if b.failures.is_power_of_two() {
        tracing::warn!(
            template = %key.template, database = %key.database, failures = b.failures,
            "warm pool: filling failed, next try in {:?}: {error}", b.delay
        );
    }
}

/// One fill, on its own task: what it needs, owned.
struct Fill {
    admin_client: Arc<AdminClient>,
    backend: crate::config::BackendConfig,
    backend_tls: Option<Arc<rustls::ClientConfig>>,
    mint_timeout: Duration,
    key: Key,
    retire_at: Instant,
    fingerprint: u64,
}

impl Fill {
    /// Mint, log in, seal: each step bounded.
    async fn run(self, prepared: PreparedMint) -> Filled {
        let settle = prepared.settle_time(self.admin_client.statement_timeout());
        match tokio::time::timeout(self.mint_timeout, self.admin_client.create(&prepared)).await {
            Ok(Ok(())) => {}
            // No admin connection: no role can exist, nothing to queue.
            Ok(Err(e @ MintError::Connect { .. })) => {
                return Filled::MintFailed {
                    error: e.to_string(),
                    settle: None,
                }
            }
            Ok(Err(e)) => {
                return Filled::MintFailed {
                    error: e.to_string(),
                    settle: Some(settle),
                }
            }
            Err(_) => {
                return Filled::MintFailed {
                    error: "mint timed out".into(),
                    settle: Some(settle),
                }
            }
        }
        let role = prepared.role.name.clone();
        let login = async {
            let conn = backend::connect(&self.backend, self.backend_tls.as_ref()).await?;
            backend::login(
                conn,
                &role,
                &prepared.role.password,
                &self.key.database,
                &[],
                &self.backend,
            )
            .await
        };
        let login = match tokio::time::timeout(2 * self.backend.connect_timeout, login).await {
            Ok(Ok(login)) => login,
            Ok(Err(e)) => {
                return Filled::Failed {
                    error: format!("backend login: {e}"),
                }
            }
            Err(_) => {
                return Filled::Failed {
                    error: "backend login timed out".into(),
                }
            }
        };
        // The password is not needed again, by anyone.
        drop(prepared);
        let seal = self.admin_client.seal_warm(&role, &self.key.database);
        match tokio::time::timeout(self.mint_timeout, seal).await {
            Ok(Ok(())) => Filled::Ready(Box::new(Entry {
                role,
                key: self.key,
                login,
                retire_at: self.retire_at,
                fingerprint: self.fingerprint,
            })),
            Ok(Err(e)) => Filled::Failed {
                error: format!("NOLOGIN after login: {e}"),
            },
            Err(_) => Filled::Failed {
                error: "NOLOGIN after login timed out".into(),
            },
        }
    }
}

/// A pooled role's lease id until a session claims it:
/// `database/warm/<template>/<random>`, not a lease anyone holds.
fn warm_lease_id(template: &str) -> String {
    registry::new_lease_id(LeaseKind::Session, template).replacen(
        "database/sessions/",
        crate::pg::WARM_LEASE_PREFIX,
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn startup_parameters_become_one_escaped_set_batch() {
        assert_eq!(settings_sql(&[]), None);
        let sql = settings_sql(&fwd(&[
            ("application_name", "o'brien; DROP ROLE x"),
            ("DateStyle", "ISO"),
        ]))
        .unwrap();
        assert_eq!(
            sql,
            "SET \"application_name\" = 'o''brien; DROP ROLE x'; SET \"datestyle\" = 'ISO'"
        );
        assert!(can_claim(&fwd(&[
            ("application_name", "x"),
            ("timezone", "UTC")
        ])));
        assert!(!can_claim(&fwd(&[("options", "-c search_path=a")])));
        assert!(!can_claim(&fwd(&[("role", "postgres")])));
        // Never rendered, even if asked.
        assert_eq!(settings_sql(&fwd(&[("role", "postgres")])), None);
    }

    #[test]
    fn wants_one_pool_per_database_and_fingerprints_definitions() {
        let mut c = crate::config::tests::example();
        assert!(wants(&c).is_empty());
        let t = c.roles.get_mut("readonly").unwrap();
        t.warm_pool = 2;
        t.databases = vec!["appdb".into(), "other".into()];
        let w = wants(&c);
        assert_eq!(w.len(), 2);
        assert!(w
            .iter()
            .all(|w| w.size == 2 && w.key.template == "readonly"));
        let before = w[0].fingerprint;
        c.roles
            .get_mut("readonly")
            .unwrap()
            .creation_statements
            .push("GRANT x TO \"{{name}}\"".into());
        assert_ne!(wants(&c)[0].fingerprint, before);
    }

    #[test]
    fn an_empty_pool_has_nothing_to_take_or_hold() {
        let pool = WarmPool::default();
        assert!(pool.take("readonly", "appdb").is_none());
        assert!(!pool.holds("v-readonly-abc"));
        pool.lock().filling.insert(
            "v-readonly-abc".into(),
            Key {
                template: "readonly".into(),
                database: "appdb".into(),
            },
        );
        assert!(pool.holds("v-readonly-abc"));
        assert_eq!(pool.ready("readonly"), 0);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap() {
        let mut b = HashMap::new();
        let key = Key {
            template: "t".into(),
            database: "d".into(),
        };
        fail(&mut b, &key, "down");
        assert_eq!(b[&key].delay, FIRST_BACKOFF);
        for _ in 0..20 {
            fail(&mut b, &key, "down");
        }
        assert_eq!(b[&key].delay, MAX_BACKOFF);
        assert_eq!(b[&key].failures, 21);
    }
}
