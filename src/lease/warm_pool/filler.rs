//! The warm pool's filler: one task that keeps every pool of
//! [`super::WarmPool`] full, retires what must go (past `warm_lifetime`,
//! removed or changed templates, dead backends) and hands every unclaimed
//! role to the revoker at shutdown (see the module doc of `warm_pool`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{is_dead, Entry, Key, Want, WarmPool, MAX_CONCURRENT_FILLS};
use crate::config::Config;
use crate::lease::end::EndReason;
use crate::lease::registry::{self, LeaseKind};
use crate::lease::revoker::Revoker;
use crate::pg::backend;
use crate::pg::{AdminClient, MintError, NameTemplate, PreparedMint};

/// How often the filler looks at the pool when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);
/// First wait after a failed fill; doubled per failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between fills of a failing template and database.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A pooled role's `VALID UNTIL` is its lifetime plus at least this: the
/// filler retires it first, and a claim that began in time has finished.
const MIN_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

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
