//! rolemint's own state in PostgreSQL: what is written through the API
//! (templates, policies, auth roles) in a small schema `rolemint` of the
//! admin database (`backend.admin_database`), seen by every instance.
//!
//! - `schema.rs`: the schema and its append-only migrations, run at
//!   startup under an advisory lock (two instances starting at once do
//!   not race; a later rolemint appends, never edits).
//! - `objects.rs`: the SQL of the generic objects table
//!   (`rolemint.objects`: kind, name, a JSON body, who wrote it and when)
//!   and of its per-kind generation counter.
//! - [`tokens`]: Vault tokens (by hash only), their parent/child tree and
//!   the leases each created, in tables of their own; read per request,
//!   not snapshotted.
//! - `rolemint.leases`, the lease index (lease id to role): its migration
//!   is here, its SQL and its writer are `pg`'s (`pg/lease_index.rs`), since
//!   the mint and the revocation that feed it are; the store enables it
//!   once migrated and starts its writer.
//! - `watch.rs`: how every instance keeps its [`Snapshot`] current:
//!   `LISTEN rolemint_store` on a connection of its own (every write
//!   notifies in its own transaction), reconnect with backoff, and a
//!   periodic check of the generations as the fallback.
//!
//! Readers never wait on the network: [`Store::snapshot`] is the state as
//! last read, swapped whole. A write returns once committed and once this
//! instance's snapshot shows it (read-your-writes over the API); the other
//! instances see it within a second.
//!
//! It uses `pg`'s admin pool and nothing above it: `control` and `runtime`
//! use the store, never the other way round.

mod objects;
mod schema;
pub mod tokens;
mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch as tokio_watch;
use tokio_util::sync::CancellationToken;

use crate::pg::{AdminClient, MintError};

pub use schema::{preflight, MIGRATIONS};

/// Largest body stored, as compact JSON: a template or policy is a few
/// KiB; the bound keeps every instance's snapshot (read in full) small.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Most objects of one kind: the snapshot holds all of them in memory on
/// every instance, and a re-read of a kind reads them all.
pub const MAX_OBJECTS_PER_KIND: usize = 1000;
/// Longest name of an object.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest `written_by` kept (longer ones are cut): an identity or "operator".
const MAX_WRITER_BYTES: usize = 256;
/// How long a deleted template is kept for its leases: a lease lives at
/// most its template's `max_ttl` (at most 7 days) from its mint, which was
/// before the delete; a day more covers the reaper's grace.
pub const RETIRED_TEMPLATE_KEPT: std::time::Duration =
    std::time::Duration::from_secs(8 * 24 * 3600);
/// The channel every write notifies, with the kind as payload.
pub const CHANNEL: &str = "rolemint_store";

/// What the store keeps: one namespace of names per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Role templates written through `database/roles/NAME`.
    Template,
    /// Vault ACL policies (`sys/policy/NAME`).
    Policy,
    /// Auth roles of the jwt/kubernetes mounts (`auth/<mount>/role/NAME`).
    AuthRole,
    /// Database connections as Vault names them (`database/config/NAME`):
    /// which database of the backend a name stands for, and its
    /// `allowed_roles`.
    Connection,
    /// Access requests and their grants (`/v1/rolemint/requests`).
    AccessRequest,
    /// Templates deleted through `database/roles/NAME`, kept for the
    /// leases minted from them: whichever instance ends such a lease (a
    /// restarted one, one started after the delete) revokes it with the
    /// statements it was minted under. Never minted from; dropped once no
    /// lease can be left (see [`RETIRED_TEMPLATE_KEPT`]).
    RetiredTemplate,
}

impl Kind {
    /// Every kind, in the snapshot's order.
    pub const ALL: [Kind; 6] = [
        Kind::Template,
        Kind::Policy,
        Kind::AuthRole,
        Kind::Connection,
        Kind::AccessRequest,
        Kind::RetiredTemplate,
    ];

    /// The kind as stored in `rolemint.objects.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Template => "template",
            Kind::Policy => "policy",
            Kind::AuthRole => "auth_role",
            Kind::Connection => "connection",
            Kind::AccessRequest => "access_request",
            Kind::RetiredTemplate => "retired_template",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One stored object, as last read.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The JSON body as written (its shape is the kind's business).
    pub body: serde_json::Value,
    /// Who wrote it: "operator", or the writer's identity.
    pub written_by: String,
    /// When, RFC 3339 in UTC.
    pub written_at: String,
}

/// The objects of one kind, and the generation they were read at: every
/// write bumps its kind's generation in the same transaction, so a read
/// of an older generation never replaces a newer one.
#[derive(Debug, Clone, Default, PartialEq)]
struct Objects {
    generation: i64,
    items: BTreeMap<String, Stored>,
}

/// Everything stored, as last read; cheap to hold (an `Arc` per kind).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    kinds: [Arc<Objects>; Kind::ALL.len()],
}

impl Snapshot {
    /// The object `name` of `kind`.
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Stored> {
        self.kinds[kind.index()].items.get(name)
    }

    /// The names of `kind`, sorted.
    pub fn names(&self, kind: Kind) -> impl Iterator<Item = &str> {
        self.kinds[kind.index()].items.keys().map(String::as_str)
    }

    /// Every object of `kind`, sorted by name.
    pub fn iter(&self, kind: Kind) -> impl Iterator<Item = (&str, &Stored)> {
        self.kinds[kind.index()]
            .items
            .iter()
            .map(|(n, s)| (n.as_str(), s))
    }

    /// How many objects of `kind`.
    pub fn len(&self, kind: Kind) -> usize {
        self.kinds[kind.index()].items.len()
    }

    /// Whether `kind` has no object.
    pub fn is_empty(&self, kind: Kind) -> bool {
        self.len(kind) == 0
    }

    /// The generation `kind` was read at (0: never written).
    pub fn generation(&self, kind: Kind) -> i64 {
        self.kinds[kind.index()].generation
    }
}

/// Why a store operation failed. [`StoreError::is_client_error`] tells the
/// writer's mistakes (a 400) from the server's trouble.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A name or body the store refuses.
    #[error("{0}")]
    Invalid(String),
    /// The kind holds its maximum already.
    #[error("at most {limit} objects of kind {kind} may be stored; delete one first")]
    TooMany { kind: &'static str, limit: usize },
    /// The schema could not be created or migrated (the admin's privileges,
    /// the database unreachable); the reason says which.
    #[error("rolemint's schema in the admin database is not ready: {0}")]
    NotReady(String),
    /// The admin database failed a read or write.
    #[error("rolemint's store: {0}")]
    Backend(#[from] MintError),
}

impl StoreError {
    /// A mistake of the writer's (400), not the server's.
    pub fn is_client_error(&self) -> bool {
        matches!(self, StoreError::Invalid(_) | StoreError::TooMany { .. })
    }
}

/// rolemint's store; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// The admin pool: the schema is in `backend.admin_database`.
    admin: Arc<AdminClient>,
    /// What readers see; replaced whole, one kind at a time.
    snapshot: ArcSwap<Snapshot>,
    /// Serializes compare-and-install of a kind (the watcher and a writer
    /// may both have read).
    install: Mutex<()>,
    /// Bumped whenever the snapshot changed.
    changes: tokio_watch::Sender<u64>,
    /// The migrations have run on this instance (checked before writes).
    migrated: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("migrated", &self.inner.migrated.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store over `admin`'s pool; touches no network (see [`Store::open`]
    /// and [`Store::start`]).
    pub fn new(admin: Arc<AdminClient>) -> Store {
        Store {
            inner: Arc::new(Inner {
                admin,
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                install: Mutex::new(()),
                changes: tokio_watch::channel(0).0,
                migrated: AtomicBool::new(false),
            }),
        }
    }

    /// Creates or migrates the schema and reads everything once: at
    /// startup, so an instance serves what is stored from its first
    /// session. A failure leaves the store empty; [`Store::start`]'s task
    /// keeps trying.
    pub async fn open(&self) -> Result<(), StoreError> {
        self.ensure_schema().await?;
        self.refresh().await
    }

    /// Starts the task that keeps the snapshot current (see `watch.rs`),
    /// and the writer of the lease index (`rolemint.leases`, written by
    /// `pg`: see `crate::pg::AdminClient::run_lease_index`); both end with
    /// `shutdown`.
    pub fn start(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let admin = Arc::clone(&self.inner.admin);
        let stop = shutdown.clone();
        tokio::spawn(async move { admin.run_lease_index(stop).await });
        tokio::spawn(watch::run(self.clone(), shutdown))
    }

    /// The state as last read; never waits.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.snapshot.load_full()
    }

    /// A counter bumped after every re-read that changed the snapshot.
    pub fn changes(&self) -> tokio_watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Writes `body` as `kind`/`name` (insert or replace), notifies every
    /// instance in the same transaction, and returns once this instance's
    /// snapshot shows it.
    pub async fn put(
        &self,
        kind: Kind,
        name: &str,
        body: &serde_json::Value,
        written_by: &str,
    ) -> Result<(), StoreError> {
        check_name(name)?;
        let text = body.to_string();
        if text.len() > MAX_BODY_BYTES {
            return Err(StoreError::Invalid(format!(
                "the body is {} bytes; at most {MAX_BODY_BYTES} are stored",
                text.len()
            )));
        }
        let writer = cut(written_by, MAX_WRITER_BYTES);
        self.ensure_schema().await?;
        let sql = objects::put(kind, name, &text, writer, MAX_OBJECTS_PER_KIND);
        let mut conn = self.inner.admin.admin_connection().await?;
        match conn.batch(&sql).await {
            Ok(_) => {}
            Err(MintError::Sql { sqlstate, .. }) if sqlstate == objects::TOO_MANY_SQLSTATE => {
                return Err(StoreError::TooMany {
                    kind: kind.as_str(),
                    limit: MAX_OBJECTS_PER_KIND,
                })
            }
            Err(e) => return Err(e.into()),
        }
        drop(conn);
        self.refresh_kind(kind).await
    }

    /// Replaces `kind`/`name`'s body with `body` only if it is still
    /// `expected` (what the caller read): false when someone else wrote it
    /// in between, and the caller decides again on a fresh read. Notifies
    /// like `put`.
    pub async fn replace(
        &self,
        kind: Kind,
        name: &str,
        expected: &serde_json::Value,
        body: &serde_json::Value,
        written_by: &str,
    ) -> Result<bool, StoreError> {
        check_name(name)?;
        let text = body.to_string();
        if text.len() > MAX_BODY_BYTES {
            return Err(StoreError::Invalid(format!(
                "the body is {} bytes; at most {MAX_BODY_BYTES} are stored",
                text.len()
            )));
        }
        self.ensure_schema().await?;
        let sql = objects::replace(
            kind,
            name,
            &expected.to_string(),
            &text,
            cut(written_by, MAX_WRITER_BYTES),
        );
        let mut conn = self.inner.admin.admin_connection().await?;
        let rows = conn.batch(&sql).await?;
        drop(conn);
        let replaced = objects::deleted(&rows);
        self.refresh_kind(kind).await?;
        Ok(replaced)
    }

    /// Reads `kind` again now, for a reader that must not miss a write of
    /// the last second (an object another instance just created).
    pub async fn reread(&self, kind: Kind) -> Result<(), StoreError> {
        self.ensure_schema().await?;
        self.refresh_kind(kind).await
    }

    /// Deletes `kind`/`name`; whether it existed. Notifies like `put`.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        self.ensure_schema().await?;
        let mut conn = self.inner.admin.admin_connection().await?;
        let rows = conn.batch(&objects::delete(kind, name)).await?;
        drop(conn);
        let deleted = objects::deleted(&rows);
        self.refresh_kind(kind).await?;
        Ok(deleted)
    }

    /// Deletes template `name` and keeps its body as a retired template
    /// (one transaction, both kinds notified); whether it existed. Retired
    /// templates older than [`RETIRED_TEMPLATE_KEPT`], or past the newest
    /// [`MAX_OBJECTS_PER_KIND`], go in the same transaction.
    pub async fn retire_template(&self, name: &str, written_by: &str) -> Result<bool, StoreError> {
        check_name(name)?;
        self.ensure_schema().await?;
        let sql = objects::retire(
            name,
            cut(written_by, MAX_WRITER_BYTES),
            RETIRED_TEMPLATE_KEPT,
            MAX_OBJECTS_PER_KIND,
        );
        let mut conn = self.inner.admin.admin_connection().await?;
        let rows = conn.batch(&sql).await?;
        drop(conn);
        let existed = objects::deleted(&rows);
        self.refresh_kind(Kind::RetiredTemplate).await?;
        self.refresh_kind(Kind::Template).await?;
        Ok(existed)
    }

    /// Creates or migrates the schema once per process (retried on the
    /// next call after a failure).
    async fn ensure_schema(&self) -> Result<(), StoreError> {
        if self.inner.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        // On a task of its own: the migration holds one connection across
        // several batches of one transaction, and must not be dropped half
        // way by a caller that gave up (the connection would go back to
        // the pool inside the transaction).
        let admin = Arc::clone(&self.inner.admin);
        let done = tokio::spawn(async move { schema::migrate(&admin).await })
            .await
            .map_err(|e| StoreError::NotReady(format!("the migration task failed: {e}")))?;
        done?;
        self.inner.migrated.store(true, Ordering::Release);
        // `rolemint.leases` exists: the lease index may be written and read.
        self.inner.admin.enable_lease_index();
        Ok(())
    }

    /// Re-reads the kinds whose generation moved since the snapshot.
    async fn refresh(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.admin.admin_connection().await?;
        let rows = conn.batch(objects::GENERATIONS).await?;
        drop(conn);
        let current = self.snapshot();
        for (kind, generation) in objects::generations(&rows) {
            if generation != current.generation(kind) {
                self.refresh_kind(kind).await?;
            }
        }
        Ok(())
    }

    /// Reads every object of `kind` and installs it unless the snapshot
    /// already holds that generation or a newer one.
    async fn refresh_kind(&self, kind: Kind) -> Result<(), StoreError> {
        let mut conn = self.inner.admin.admin_connection().await?;
        let rows = conn
            .batch(&objects::read_kind(kind, MAX_OBJECTS_PER_KIND))
            .await?;
        drop(conn);
        let read = objects::parse_kind(kind, &rows, MAX_OBJECTS_PER_KIND);
        self.install(kind, read);
        Ok(())
    }

    fn install(&self, kind: Kind, read: Objects) {
        let _serial = self.inner.install.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.inner.snapshot.load_full();
        let old = &current.kinds[kind.index()];
        if read.generation <= old.generation {
            return;
        }
        let mut next = Snapshot::clone(&current);
        next.kinds[kind.index()] = Arc::new(read);
        self.inner.snapshot.store(Arc::new(next));
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Names are 1 to [`MAX_NAME_BYTES`] of `[A-Za-z0-9_.@-]` (each kind may
/// ask for less): they reach SQL only as escaped literals, and also appear
/// in URLs, audit lines and logs.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "names are 1 to {MAX_NAME_BYTES} bytes of letters, digits, '_', '-', '.', '@'"
        )))
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
