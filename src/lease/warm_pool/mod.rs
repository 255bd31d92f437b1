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
//! The filler ([`Filler::run`], in `filler.rs`; this file is the pool
//! itself, its bookkeeping and the claim) is one task: it refills after each claim
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
use tokio::time::Instant;

use crate::config::{Config, RoleTemplate};
use crate::lease::registry::LeaseKind;
use crate::pg::backend::{self, BackendError, Login};
use crate::pg::{AdminClient, LeaseComment, MintError};
use crate::tls::BackendStream;

mod filler;

pub use filler::Filler;

/// Fills in flight at once, all templates together (each holds an admin
/// connection for its mint and its seal, which sessions need too).
pub const MAX_CONCURRENT_FILLS: usize = 4;

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
}
